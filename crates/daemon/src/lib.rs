//! ballast's host service.
//!
//! `ballast daemon` owns one [`ballast_host::Host`] on real time and serves:
//!
//! - a control API, HTTP/JSON over a Unix socket (as Firecracker's and Cloud Hypervisor's
//!   are), versioned under `/v1/` and described by `openapi.json` beside this crate;
//! - a guest socket, where guests in their own processes connect over the [`link`],
//!   prove which VM they are, and receive their memory (a memfd) and, for Dynamic Memory
//!   guests, their VMBus ring (SCM_RIGHTS);
//! - optionally a Prometheus text endpoint on a localhost TCP port.
//!
//! VM definitions and their memory settings are persisted atomically in the state
//! directory, so a restart keeps them.
//!
//! Deviations: Hyper-V and Xen make a VM's memory settings part of its configuration in
//! their own toolstacks; here they are the daemon's, set through the API. A guest's
//! memory lives as long as its process holds it: when a guest's process dies, the VM is
//! stopped and its memory comes back to the host, as a VM that powers off.

#![forbid(unsafe_code)]

pub mod api;
pub mod client;
pub mod config;
pub mod guest;
pub mod guests;
pub use ballast_link as link;
pub mod metrics;
pub mod peer;
pub mod server;
pub mod service;
pub mod store;
