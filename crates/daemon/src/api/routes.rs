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

fn body<T>(b: Result<Json<T>, JsonRejection>) -> Result<T, Response> {
    b.map(|Json(t)| t)
        .map_err(|e| error(e.status().as_u16(), e.body_text()))
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
        Err(r) => r,
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
        Err(r) => r,
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
        Err(r) => r,
    }
}

async fn maximum(
    State(s): Svc,
    Path(name): Path<String>,
    b: Result<Json<SetMaximum>, JsonRejection>,
) -> Response {
    match body(b) {
        Ok(m) => answer(s.set_maximum(&name, m.bytes)),
        Err(r) => r,
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
