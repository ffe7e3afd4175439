//! The daemon's configuration file (TOML).
//!
//! ```toml
//! state_dir = "/var/lib/ballast"       # VM definitions; the sockets by default
//! # control_socket = "/var/lib/ballast/control.sock"
//! # guest_socket = "/var/lib/ballast/guest.sock"
//! # group = 1001                       # a gid also allowed on both sockets
//!
//! [host]
//! memory = "8G"                        # managed memory for guests
//! reserve = "256M"                     # what the balancer leaves free
//! policy = "ballast"
//! balance_interval_ms = 1000
//! dm_start_delay_s = 50                # quiet time before a DM guest's first request
//!
//! [metrics]
//! listen = "127.0.0.1:9848"            # off when absent
//! ```

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use ballast_sim::size::parse_size;
use serde::Deserialize;
use thiserror::Error;

/// What is wrong with a configuration.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The file is not valid TOML for a daemon configuration.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: Box<toml::de::Error>,
    },
    /// A value is out of range or unknown.
    #[error("{0}")]
    Invalid(String),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct File {
    state_dir: Option<PathBuf>,
    control_socket: Option<PathBuf>,
    guest_socket: Option<PathBuf>,
    group: Option<u32>,
    #[serde(default)]
    host: HostSection,
    #[serde(default)]
    metrics: MetricsSection,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostSection {
    memory: Option<String>,
    reserve: Option<String>,
    policy: Option<String>,
    balance_interval_ms: Option<u64>,
    dm_start_delay_s: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct MetricsSection {
    listen: Option<SocketAddr>,
}

/// The daemon's settings, with every default filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct DaemonConfig {
    /// Where the VM definitions live (created 0700 if missing).
    pub state_dir: PathBuf,
    /// The control API's socket.
    pub control_socket: PathBuf,
    /// The guests' socket.
    pub guest_socket: PathBuf,
    /// A group allowed on both sockets besides the daemon's user and root.
    pub group: Option<u32>,
    /// Managed memory for guests, bytes.
    pub memory_bytes: u64,
    /// Memory the balancer leaves free, bytes.
    pub reserve_bytes: u64,
    /// The balancing policy.
    pub policy: String,
    /// How often the balancer runs, milliseconds.
    pub balance_interval_ms: u64,
    /// Quiet time after a Dynamic Memory guest's capabilities before the first request,
    /// seconds: 50 by default, as Hyper-V and QEMU wait (Windows Server 2019 crashes on
    /// requests right after boot).
    pub dm_start_delay_s: f64,
    /// The Prometheus endpoint's address; `None`: off.
    pub metrics: Option<SocketAddr>,
}

/// Defaults: 1 GiB of guest memory, 64 MiB reserve, the `ballast` policy each second.
pub const DEFAULT_MEMORY: u64 = 1 << 30;
/// The default reserve.
pub const DEFAULT_RESERVE: u64 = 64 << 20;

impl DaemonConfig {
    /// The defaults with state in `state_dir`.
    pub fn with_state_dir(state_dir: impl Into<PathBuf>) -> Self {
        let state_dir = state_dir.into();
        DaemonConfig {
            control_socket: state_dir.join("control.sock"),
            guest_socket: state_dir.join("guest.sock"),
            state_dir,
            group: None,
            memory_bytes: DEFAULT_MEMORY,
            reserve_bytes: DEFAULT_RESERVE,
            policy: "ballast".into(),
            balance_interval_ms: 1000,
            dm_start_delay_s: 50.0,
            metrics: None,
        }
    }

    /// Reads a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses a configuration; `path` names it in errors and anchors relative paths.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let f: File = toml::from_str(text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source: Box::new(source),
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let anchor = |p: PathBuf| if p.is_absolute() { p } else { base.join(p) };
        let state_dir = anchor(
            f.state_dir
                .unwrap_or_else(|| PathBuf::from("ballast-state")),
        );
        let mut c = DaemonConfig::with_state_dir(state_dir);
        if let Some(p) = f.control_socket {
            c.control_socket = anchor(p);
        }
        if let Some(p) = f.guest_socket {
            c.guest_socket = anchor(p);
        }
        c.group = f.group;
        let size = |what: &str, v: &str| {
            parse_size(v).map_err(|e| ConfigError::Invalid(format!("host.{what} = {v:?}: {e}")))
        };
        if let Some(m) = f.host.memory {
            c.memory_bytes = size("memory", &m)?;
        }
        if let Some(r) = f.host.reserve {
            c.reserve_bytes = size("reserve", &r)?;
        }
        if let Some(p) = f.host.policy {
            c.policy = p;
        }
        if let Some(ms) = f.host.balance_interval_ms {
            c.balance_interval_ms = ms;
        }
        if let Some(d) = f.host.dm_start_delay_s {
            c.dm_start_delay_s = d;
        }
        c.metrics = f.metrics.listen;
        c.validate()?;
        Ok(c)
    }

    /// Checks the values that parse but cannot work.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if !ballast_balancer::POLICIES.contains(&self.policy.as_str()) {
            return Err(ConfigError::Invalid(format!(
                "host.policy = {:?}: the policies are {}",
                self.policy,
                ballast_balancer::POLICIES.join(", ")
            )));
        }
        if self.memory_bytes < 64 << 20 {
            return Err(ConfigError::Invalid(
                "host.memory: at least 64 MiB".to_string(),
            ));
        }
        if self.reserve_bytes >= self.memory_bytes {
            return Err(ConfigError::Invalid(
                "host.reserve must be below host.memory".to_string(),
            ));
        }
        if !(10..=60_000).contains(&self.balance_interval_ms) {
            return Err(ConfigError::Invalid(
                "host.balance_interval_ms: 10 to 60000".to_string(),
            ));
        }
        if !(self.dm_start_delay_s.is_finite() && (0.0..=3600.0).contains(&self.dm_start_delay_s)) {
            return Err(ConfigError::Invalid(
                "host.dm_start_delay_s: 0 to 3600".to_string(),
            ));
        }
        if let Some(a) = self.metrics {
            if !a.ip().is_loopback() {
                return Err(ConfigError::Invalid(format!(
                    "metrics.listen = {a}: the metrics endpoint serves on loopback only"
                )));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_file_parses_and_relative_paths_follow_it() {
        let c = DaemonConfig::parse(
            "state_dir = \"st\"\ngroup = 7\n[host]\nmemory = \"2G\"\nreserve = \"128M\"\npolicy = \"hyperv\"\nbalance_interval_ms = 500\n[metrics]\nlisten = \"127.0.0.1:9848\"\n",
            Path::new("/etc/ballast/daemon.toml"),
        )
        .unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/etc/ballast/st"));
        assert_eq!(
            c.control_socket,
            PathBuf::from("/etc/ballast/st/control.sock")
        );
        assert_eq!(c.memory_bytes, 2 << 30);
        assert_eq!(c.reserve_bytes, 128 << 20);
        assert_eq!(c.policy, "hyperv");
        assert_eq!(c.group, Some(7));
        assert_eq!(c.metrics, Some("127.0.0.1:9848".parse().unwrap()));
    }

    #[test]
    fn bad_values_say_what_is_wrong() {
        let p = Path::new("d.toml");
        let e = DaemonConfig::parse("[host]\npolicy = \"greedy\"\n", p).unwrap_err();
        assert!(e.to_string().contains("the policies are"), "{e}");
        let e = DaemonConfig::parse("[host]\nmemory = \"lots\"\n", p).unwrap_err();
        assert!(e.to_string().contains("host.memory"), "{e}");
        let e = DaemonConfig::parse("[metrics]\nlisten = \"0.0.0.0:1\"\n", p).unwrap_err();
        assert!(e.to_string().contains("loopback"), "{e}");
        let e = DaemonConfig::parse("colour = 1\n", p).unwrap_err();
        assert!(e.to_string().contains("colour"), "{e}");
    }
}
