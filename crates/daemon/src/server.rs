//! `ballast daemon`: binds the sockets, runs the clock, serves the API and the metrics,
//! and stops in order on SIGTERM or SIGINT.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::response::IntoResponse;
use axum::routing::get;
use tokio::net::{UnixListener, UnixStream};

use crate::api::routes;
use crate::config::DaemonConfig;
use crate::peer::{self, Access};
use crate::service::Service;

/// How long the clock sleeps when nothing moved, and when something did.
const IDLE_SLEEP: Duration = Duration::from_millis(5);
const BUSY_SLEEP: Duration = Duration::from_micros(500);

/// The control socket's listener: every accepted connection's peer is checked, and one
/// that may not connect gets a 403 and is closed.
struct Checked {
    inner: UnixListener,
    access: Access,
}

impl axum::serve::Listener for Checked {
    type Io = UnixStream;
    type Addr = tokio::net::unix::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.inner.accept().await {
                Ok((s, a)) => match self.access.check(&s) {
                    Ok(()) => return (s, a),
                    Err(why) => {
                        // Answered as HTTP, so the client reads why; nothing else is
                        // served on the connection.
                        tokio::spawn(forbid(s, why));
                    }
                },
                // Out of descriptors, say: wait rather than spin.
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// Answers every request on `s` with 403 and `why`.
async fn forbid(s: UnixStream, why: String) {
    let body = serde_json::json!({ "error": why }).to_string();
    let service = hyper::service::service_fn(move |_req| {
        let body = body.clone();
        async move {
            hyper::Response::builder()
                .status(403)
                .header("content-type", "application/json")
                .header("connection", "close")
                .body(http_body_util::Full::new(hyper::body::Bytes::from(body)))
        }
    });
    let _ = tokio::time::timeout(
        Duration::from_secs(5),
        hyper::server::conn::http1::Builder::new()
            .keep_alive(false)
            .serve_connection(hyper_util::rt::TokioIo::new(s), service),
    )
    .await;
}

/// Runs the daemon until SIGTERM or SIGINT; `ready` is called once every socket is bound.
pub fn run(config: DaemonConfig, ready: impl FnOnce(&DaemonConfig)) -> Result<(), String> {
    config.validate().map_err(|e| e.to_string())?;
    let service = Arc::new(Service::new(config.clone())?);
    let access = Access::for_this_process(config.group);
    let control = peer::bind_private(&config.control_socket, config.group)
        .map_err(|e| format!("control socket {}: {e}", config.control_socket.display()))?;
    let guests = peer::bind_private(&config.guest_socket, config.group)
        .map_err(|e| format!("guest socket {}: {e}", config.guest_socket.display()))?;
    let stop = Arc::new(AtomicBool::new(false));

    let clock = {
        let (service, stop) = (Arc::clone(&service), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("ballast-clock".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let moved = service.tick();
                    std::thread::sleep(if moved { BUSY_SLEEP } else { IDLE_SLEEP });
                }
            })
            .map_err(|e| e.to_string())?
    };
    {
        let (service, stop) = (Arc::clone(&service), Arc::clone(&stop));
        std::thread::Builder::new()
            .name("ballast-guests".into())
            .spawn(move || crate::guests::serve(guests, service, access, stop))
            .map_err(|e| e.to_string())?;
    }

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let result = rt.block_on(async {
        control.set_nonblocking(true).map_err(|e| e.to_string())?;
        let control = UnixListener::from_std(control).map_err(|e| e.to_string())?;
        let metrics = match config.metrics {
            Some(addr) => Some(
                tokio::net::TcpListener::bind(addr)
                    .await
                    .map_err(|e| format!("metrics {addr}: {e}"))?,
            ),
            None => None,
        };
        ready(&config);
        let shutdown = async {
            let mut term =
                tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    .expect("SIGTERM handler");
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        let api = axum::serve(
            Checked {
                inner: control,
                access,
            },
            routes::router(Arc::clone(&service)),
        );
        match metrics {
            Some(m) => {
                let svc = Arc::clone(&service);
                let app = axum::Router::new().route(
                    "/metrics",
                    get(move || {
                        let svc = Arc::clone(&svc);
                        async move {
                            (
                                [(
                                    axum::http::header::CONTENT_TYPE,
                                    "text/plain; version=0.0.4",
                                )],
                                crate::metrics::render(&svc.host_info(), &svc.list()),
                            )
                                .into_response()
                        }
                    }),
                );
                tokio::select! {
                    r = api.with_graceful_shutdown(shutdown) => r.map_err(|e| e.to_string()),
                    r = axum::serve(m, app) => r.map_err(|e| e.to_string()),
                }
            }
            None => api
                .with_graceful_shutdown(shutdown)
                .await
                .map_err(|e| e.to_string()),
        }
    });
    stop.store(true, Ordering::Relaxed);
    // Wake the guest acceptor so it sees the stop.
    let _ = std::os::unix::net::UnixStream::connect(&config.guest_socket);
    let _ = clock.join();
    service.stop_all();
    let _ = std::fs::remove_file(&config.control_socket);
    let _ = std::fs::remove_file(&config.guest_socket);
    result
}
