//! A client of the control API over its Unix socket (hyper's HTTP/1 client), as the CLI
//! verbs and the tests use it.

use std::path::{Path, PathBuf};

use http_body_util::{BodyExt, Full};
use hyper::body::Bytes;
use hyper::{Method, Request};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::api::types::{
    ApiError, CreateVm, Created, HostInfo, SetMaximum, SetTarget, UpdateVm, VmInfo,
};

/// What a call could not do.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No daemon answers on the socket.
    #[error("cannot reach the daemon at {path}: {source} (is `ballast daemon` running?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon answered with an error.
    #[error("{message} (HTTP {status})")]
    Api {
        /// The status.
        status: u16,
        /// The daemon's message.
        message: String,
    },
    /// The exchange failed.
    #[error("talking to the daemon: {0}")]
    Http(String),
}

/// The answer to a raw request: status and body.
#[derive(Debug, Clone)]
pub struct Raw {
    /// The HTTP status.
    pub status: u16,
    /// The body.
    pub body: Vec<u8>,
}

/// A control API client bound to one socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the daemon listening on `socket`.
    pub fn new(socket: impl AsRef<Path>) -> Self {
        Client {
            socket: socket.as_ref().to_path_buf(),
        }
    }

    /// One request with a body of raw bytes; any status is returned, not an error.
    pub async fn raw(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Raw, ClientError> {
        let stream = tokio::net::UnixStream::connect(&self.socket)
            .await
            .map_err(|source| ClientError::Connect {
                path: self.socket.clone(),
                source,
            })?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        tokio::spawn(async move {
            let _ = conn.await;
        });
        let has_body = body.is_some();
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "localhost");
        if has_body {
            req = req.header("content-type", "application/json");
        }
        let req = req
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| ClientError::Http(e.to_string()))?
            .to_bytes()
            .to_vec();
        Ok(Raw { status, body })
    }

    async fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let body = body
            .map(|b| serde_json::to_vec(b).map_err(|e| ClientError::Http(e.to_string())))
            .transpose()?;
        let r = self.raw(method, path, body).await?;
        if !(200..300).contains(&r.status) {
            let message = serde_json::from_slice::<ApiError>(&r.body)
                .map(|e| e.error)
                .unwrap_or_else(|_| String::from_utf8_lossy(&r.body).into_owned());
            return Err(ClientError::Api {
                status: r.status,
                message,
            });
        }
        let body = if r.body.is_empty() {
            b"null".to_vec()
        } else {
            r.body
        };
        serde_json::from_slice(&body).map_err(|e| ClientError::Http(e.to_string()))
    }

    /// `GET /v1/host`.
    pub async fn host(&self) -> Result<HostInfo, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/host", None).await
    }

    /// `GET /v1/vms`.
    pub async fn list(&self) -> Result<Vec<VmInfo>, ClientError> {
        self.call::<(), _>(Method::GET, "/v1/vms", None).await
    }

    /// `POST /v1/vms`.
    pub async fn create(&self, req: &CreateVm) -> Result<Created, ClientError> {
        self.call(Method::POST, "/v1/vms", Some(req)).await
    }

    /// `GET /v1/vms/{name}`.
    pub async fn get(&self, name: &str) -> Result<VmInfo, ClientError> {
        self.call::<(), _>(Method::GET, &format!("/v1/vms/{name}"), None)
            .await
    }

    /// `PATCH /v1/vms/{name}`.
    pub async fn update(&self, name: &str, u: &UpdateVm) -> Result<VmInfo, ClientError> {
        self.call(Method::PATCH, &format!("/v1/vms/{name}"), Some(u))
            .await
    }

    /// `PUT /v1/vms/{name}/target`.
    pub async fn set_target(&self, name: &str, bytes: Option<u64>) -> Result<VmInfo, ClientError> {
        self.call(
            Method::PUT,
            &format!("/v1/vms/{name}/target"),
            Some(&SetTarget { bytes }),
        )
        .await
    }

    /// `PUT /v1/vms/{name}/maximum`.
    pub async fn set_maximum(&self, name: &str, bytes: u64) -> Result<VmInfo, ClientError> {
        self.call(
            Method::PUT,
            &format!("/v1/vms/{name}/maximum"),
            Some(&SetMaximum { bytes }),
        )
        .await
    }

    /// `DELETE /v1/vms/{name}`.
    pub async fn destroy(&self, name: &str) -> Result<(), ClientError> {
        self.call::<(), ()>(Method::DELETE, &format!("/v1/vms/{name}"), None)
            .await
    }
}
