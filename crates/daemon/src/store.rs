//! The VM definitions on disk: one JSON file in the state directory, replaced atomically
//! on every change (written to a temporary file, fsynced, renamed over the old one, and
//! the directory fsynced), so that a crash at any moment leaves the old or the new
//! definitions, never a mix. The file holds each VM's secret, so the directory is 0700
//! and the file 0600.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use ballast_balancer::VmSettings;
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::link::GuestKind;

/// The file's name in the state directory.
pub const FILE: &str = "vms.json";

/// One VM as the daemon keeps it across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmDef {
    /// Its name.
    pub name: String,
    /// Its interface.
    pub kind: GuestKind,
    /// Startup memory, bytes.
    pub startup: u64,
    /// Minimum, bytes.
    pub minimum: u64,
    /// Maximum, bytes.
    pub maximum: u64,
    /// Buffer, percent of demand.
    pub buffer_percent: u32,
    /// Weight under contention, 0-100.
    pub weight: u32,
    /// Virtual processors.
    pub vps: u32,
    /// An operator's fixed target (`mem-set`), bytes.
    pub pinned_target: Option<u64>,
    /// The secret a guest proves this VM with.
    pub token: String,
    /// Its guest may report free memory with the cold discard hint (a Dynamic Memory
    /// VM only). Absent from files written before the setting existed: off.
    #[serde(default)]
    pub free_page_reporting: bool,
}

impl VmDef {
    /// The balancer's settings.
    pub fn settings(&self) -> VmSettings {
        VmSettings {
            startup: self.startup,
            minimum: self.minimum,
            maximum: self.maximum,
            buffer_percent: self.buffer_percent,
            weight: self.weight,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OnDisk {
    version: u32,
    vms: Vec<VmDef>,
}

/// What went wrong with the state directory.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum StoreError {
    /// A file operation failed.
    #[error("{what} {path}: {source}")]
    Io {
        /// The operation.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The definitions file does not parse.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// Why.
        source: serde_json::Error,
    },
}

/// The state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    /// Opens (creating, 0700) the state directory.
    pub fn open(dir: &Path) -> Result<Self, StoreError> {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(|source| StoreError::Io {
                what: "create",
                path: dir.to_path_buf(),
                source,
            })?;
        Ok(Store {
            dir: dir.to_path_buf(),
        })
    }

    /// The definitions file.
    pub fn path(&self) -> PathBuf {
        self.dir.join(FILE)
    }

    /// Reads the definitions (none if the file does not exist yet).
    pub fn load(&self) -> Result<BTreeMap<String, VmDef>, StoreError> {
        let path = self.path();
        let text = match fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(source) => {
                return Err(StoreError::Io {
                    what: "read",
                    path,
                    source,
                });
            }
        };
        let d: OnDisk =
            serde_json::from_slice(&text).map_err(|source| StoreError::Parse { path, source })?;
        Ok(d.vms.into_iter().map(|v| (v.name.clone(), v)).collect())
    }

    /// Replaces the definitions with `vms`, atomically and durably.
    pub fn save(&self, vms: &BTreeMap<String, VmDef>) -> Result<(), StoreError> {
        let path = self.path();
        let tmp = self.dir.join(format!(".{FILE}.tmp"));
        let io = |what, p: &Path| {
            let p = p.to_path_buf();
            move |source| StoreError::Io {
                what,
                path: p,
                source,
            }
        };
        let body = serde_json::to_vec_pretty(&OnDisk {
            version: 1,
            vms: vms.values().cloned().collect(),
        })
        .expect("definitions serialise");
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io("create", &tmp))?;
        f.write_all(&body).map_err(io("write", &tmp))?;
        f.sync_all().map_err(io("fsync", &tmp))?;
        drop(f);
        fs::rename(&tmp, &path).map_err(io("rename", &path))?;
        // The rename is durable only once the directory's entry is.
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io("fsync", &self.dir))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn def(name: &str) -> VmDef {
        VmDef {
            name: name.into(),
            kind: GuestKind::Dm,
            startup: 1 << 30,
            minimum: 512 << 20,
            maximum: 4 << 30,
            buffer_percent: 20,
            weight: 50,
            vps: 2,
            pinned_target: Some(1 << 30),
            token: "t".into(),
            free_page_reporting: name == "b",
        }
    }

    #[test]
    fn definitions_survive_a_reopen_and_the_file_is_private() {
        let dir = std::env::temp_dir().join(format!("ballast-store-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = Store::open(&dir).unwrap();
        assert!(s.load().unwrap().is_empty());
        let mut vms = BTreeMap::new();
        vms.insert("a".to_string(), def("a"));
        vms.insert("b".to_string(), def("b"));
        s.save(&vms).unwrap();
        vms.remove("a");
        s.save(&vms).unwrap();
        let again = Store::open(&dir).unwrap().load().unwrap();
        assert_eq!(again, vms);
        let mode = fs::metadata(s.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert!(!dir.join(format!(".{FILE}.tmp")).exists());
        fs::write(s.path(), b"{not json").unwrap();
        assert!(matches!(s.load(), Err(StoreError::Parse { .. })));
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A file from before free page reporting (no `free_page_reporting` key) loads, with
    /// it off; a file written now keeps it.
    #[test]
    fn older_files_load_without_the_reporting_key() {
        let dir = std::env::temp_dir().join(format!("ballast-store-old-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let s = Store::open(&dir).unwrap();
        fs::write(
            s.path(),
            br#"{"version":1,"vms":[{"name":"old","kind":"dm","startup":1073741824,
                "minimum":536870912,"maximum":4294967296,"buffer_percent":20,"weight":50,
                "vps":2,"pinned_target":null,"token":"t"}]}"#,
        )
        .unwrap();
        let vms = s.load().unwrap();
        assert!(!vms["old"].free_page_reporting);
        let mut vms = BTreeMap::new();
        vms.insert("b".to_string(), def("b"));
        s.save(&vms).unwrap();
        assert!(s.load().unwrap()["b"].free_page_reporting);
        fs::remove_dir_all(&dir).unwrap();
    }
}
