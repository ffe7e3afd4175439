//! The control API: versioned HTTP/JSON routes over the control socket.

pub mod routes;
pub mod types;
