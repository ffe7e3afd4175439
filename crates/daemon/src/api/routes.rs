//! The control API's routes (axum), each a thin call into the [`Service`].
//!
//! Every answer is JSON; every error is an [`ApiError`] with the status the service's
//! error names (400 bad request, 404 no such VM, 409 conflict, 507 no memory). Bodies
//! are limited to [`MAX_BODY`] bytes.

use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, put};
use axum::{Json, Router};

use crate::api::types::{ApiError, CreateVm, SetMaximum, SetTarget, UpdateVm};
use crate::service::{Service, ServiceError};

/// The largest request body.
pub const MAX_BODY: usize = 64 * 1024;

/// The OpenAPI document, as served at `/v1/openapi.json`.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Every route: (method, path), in the OpenAPI document's spelling.
pub const ROUTES: &[(&str, &str)] = &[
    ("get", "/v1/host"),
    ("get", "/v1/openapi.json"),
    ("get", "/v1/vms"),
    ("post", "/v1/vms"),
    ("get", "/v1/vms/{name}"),
    ("patch", "/v1/vms/{name}"),
    ("delete", "/v1/vms/{name}"),
    ("put", "/v1/vms/{name}/target"),
    ("put", "/v1/vms/{name}/maximum"),
];

type Svc = State<Arc<Service>>;

fn error(status: u16, message: String) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, Json(ApiError { error: message })).into_response()
}

impl IntoResponse for ServiceError {
    fn into_response(self) -> Response {
        error(self.status(), self.to_string())
    }
}

/// A request body that did not decode: its status and why.
struct Rejected(u16, String);

impl IntoResponse for Rejected {
    fn into_response(self) -> Response {
        error(self.0, self.1)
    }
}

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Rejected> {
    b.map(|Json(t)| t)
        .map_err(|e| Rejected(e.status().as_u16(), e.body_text()))
}

fn answer<T: serde::Serialize>(r: Result<T, ServiceError>) -> Response {
    match r {
        Ok(t) => Json(t).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn host(State(s): Svc) -> Response {
    Json(s.host_info()).into_response()
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn list(State(s): Svc) -> Response {
    Json(s.list()).into_response()
}

async fn create(State(s): Svc, b: Result<Json<CreateVm>, JsonRejection>) -> Response {
    match body(b) {
        Ok(req) => match s.create(req) {
            Ok(c) => (StatusCode::CREATED, Json(c)).into_response(),
            Err(e) => e.into_response(),
        },
        Err(r) => r.into_response(),
    }
}

async fn show(State(s): Svc, Path(name): Path<String>) -> Response {
    answer(s.get(&name))
}

async fn update(
    State(s): Svc,
    Path(name): Path<String>,
    b: Result<Json<UpdateVm>, JsonRejection>,
) -> Response {
    match body(b) {
        Ok(u) => answer(s.update(&name, u)),
        Err(r) => r.into_response(),
    }
}

async fn destroy(State(s): Svc, Path(name): Path<String>) -> Response {
    match s.destroy(&name) {
        Ok(()) => StatusCode::NO_CONTENT.into_response(),
        Err(e) => e.into_response(),
    }
}

async fn target(
    State(s): Svc,
    Path(name): Path<String>,
    b: Result<Json<SetTarget>, JsonRejection>,
) -> Response {
    match body(b) {
        Ok(t) => answer(s.set_target(&name, t.bytes)),
        Err(r) => r.into_response(),
    }
}

async fn maximum(
    State(s): Svc,
    Path(name): Path<String>,
    b: Result<Json<SetMaximum>, JsonRejection>,
) -> Response {
    match body(b) {
        Ok(m) => answer(s.set_maximum(&name, m.bytes)),
        Err(r) => r.into_response(),
    }
}

async fn no_route() -> Response {
    error(404, "no such route; see /v1/openapi.json".to_string())
}

/// The control API.
pub fn router(service: Arc<Service>) -> Router {
    Router::new()
        .route("/v1/host", get(host))
        .route("/v1/openapi.json", get(openapi))
        .route("/v1/vms", get(list).post(create))
        .route("/v1/vms/{name}", get(show).patch(update).delete(destroy))
        .route("/v1/vms/{name}/target", put(target))
        .route("/v1/vms/{name}/maximum", put(maximum))
        .fallback(no_route)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(service)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::DaemonConfig;
    use axum::body::Body;
    use axum::http::{Method, Request};
    use http_body_util::BodyExt;
    use tower::ServiceExt;

    fn service() -> (Arc<Service>, std::path::PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "ballast-routes-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        let mut c = DaemonConfig::with_state_dir(&dir);
        c.memory_bytes = 256 << 20;
        (Arc::new(Service::new(c).unwrap()), dir)
    }

    async fn call(app: &Router, method: &str, path: &str, body: &str) -> (u16, String) {
        let req = Request::builder()
            .method(Method::from_bytes(method.to_uppercase().as_bytes()).unwrap())
            .uri(path)
            .header("content-type", "application/json")
            .body(Body::from(body.to_string()))
            .unwrap();
        let r = app.clone().oneshot(req).await.unwrap();
        let status = r.status().as_u16();
        let b = r.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8_lossy(&b).into_owned())
    }

    /// The OpenAPI document names exactly the routes the router serves, and every one
    /// of them is served (not the fallback, not "method not allowed").
    #[tokio::test]
    async fn the_openapi_document_matches_the_routes() {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let mut documented: Vec<(String, String)> = Vec::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                if method != "parameters" {
                    documented.push((method.clone(), path.clone()));
                }
            }
        }
        documented.sort();
        let mut routes: Vec<(String, String)> = ROUTES
            .iter()
            .map(|(m, p)| (m.to_string(), p.to_string()))
            .collect();
        routes.sort();
        assert_eq!(documented, routes);
        // Every $ref resolves.
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for r in OPENAPI.match_indices("#/components/schemas/") {
            let rest = &OPENAPI[r.0 + r.1.len()..];
            let name: String = rest.chars().take_while(|c| c.is_alphanumeric()).collect();
            assert!(schemas.contains_key(&name), "{name}");
        }

        let (svc, dir) = service();
        let app = router(svc);
        let (s, _) = call(
            &app,
            "post",
            "/v1/vms",
            r#"{"name":"a","startup":67108864}"#,
        )
        .await;
        assert_eq!(s, 201);
        // Deletion last: the other routes need the VM.
        let mut order: Vec<_> = ROUTES.iter().collect();
        order.sort_by_key(|(m, _)| *m == "delete");
        for (method, path) in order {
            let path = path.replace("{name}", "a");
            let body = match (*method, path.as_str()) {
                ("post", _) => r#"{"name":"b","startup":67108864}"#,
                ("patch", _) => r#"{"weight":60,"free_page_reporting":true}"#,
                ("put", p) if p.ends_with("/target") => r#"{"bytes":null}"#,
                ("put", _) => r#"{"bytes":134217728}"#,
                _ => "",
            };
            let (status, text) = call(&app, method, &path, body).await;
            assert!(
                (200..300).contains(&status),
                "{method} {path}: {status} {text}"
            );
        }
        let (s, t) = call(&app, "get", "/v1/nothing", "").await;
        assert_eq!(s, 404);
        assert!(t.contains("no such route"), "{t}");
        let (s, t) = call(&app, "post", "/v1/vms", "{").await;
        assert_eq!(s, 400, "{t}");
        assert!(serde_json::from_str::<ApiError>(&t).is_ok(), "{t}");
        let (s, _) = call(&app, "get", "/v1/vms/zz", "").await;
        assert_eq!(s, 404);
        let (s, _) = call(&app, "post", "/v1/vms", &"x".repeat(MAX_BODY + 1)).await;
        assert_eq!(s, 413);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
