//! Who may connect: the daemon's own user, root, and the configured group, checked on
//! each connection's peer credentials (SO_PEERCRED), on both sockets; and the sockets
//! themselves made 0600 (0660 with a group) before anyone can connect.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// The credentials a connection may come with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Access {
    uid: u32,
    group: Option<u32>,
}

impl Access {
    /// The daemon's effective user, root, and `group`.
    pub fn for_this_process(group: Option<u32>) -> Self {
        Access {
            uid: rustix::process::geteuid().as_raw(),
            group,
        }
    }

    /// Whether a peer of `uid` and `gid` may connect.
    pub fn permits(&self, uid: u32, gid: u32) -> bool {
        uid == 0 || uid == self.uid || self.group == Some(gid)
    }

    /// Checks a connected socket's peer; the error says who was refused.
    pub fn check(&self, socket: impl AsFd) -> Result<(), String> {
        let c = rustix::net::sockopt::socket_peercred(socket)
            .map_err(|e| format!("SO_PEERCRED: {e}"))?;
        let (uid, gid) = (c.uid.as_raw(), c.gid.as_raw());
        if self.permits(uid, gid) {
            Ok(())
        } else {
            Err(format!(
                "uid {uid} (gid {gid}, pid {}) may not use this daemon",
                c.pid.as_raw_nonzero()
            ))
        }
    }
}

/// Binds a Unix socket at `path` that only the daemon's user (and `group`) can reach:
/// created under a umask that leaves no one else any access, then set to 0600 or 0660
/// and given to `group`. A stale socket file (no daemon answers on it) is replaced; a
/// live one is an error, so that two daemons never share a state directory.
pub fn bind_private(
    path: &Path,
    group: Option<u32>,
) -> io::Result<std::os::unix::net::UnixListener> {
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(io::Error::new(
                io::ErrorKind::AddrInUse,
                format!("{}: a daemon is already listening there", path.display()),
            ));
        }
        std::fs::remove_file(path)?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    rustix::process::umask(old);
    let listener = bound?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    if let Some(gid) = group {
        std::os::unix::fs::chown(path, None, Some(gid))?;
    }
    Ok(listener)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn owner_root_and_group_only() {
        let a = Access {
            uid: 1000,
            group: Some(50),
        };
        assert!(a.permits(1000, 1000));
        assert!(a.permits(0, 0));
        assert!(a.permits(1234, 50));
        assert!(!a.permits(1234, 1234));
        let b = Access {
            uid: 1000,
            group: None,
        };
        assert!(!b.permits(1234, 50));
    }

    #[test]
    fn sockets_are_private_and_a_live_one_is_not_taken_over() {
        let dir = std::env::temp_dir().join(format!("ballast-peer-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let path = dir.join("s.sock");
        let l = bind_private(&path, None).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let e = bind_private(&path, None).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::AddrInUse);
        let c = std::os::unix::net::UnixStream::connect(&path).unwrap();
        let (s, _) = l.accept().unwrap();
        Access::for_this_process(None).check(&s).unwrap();
        drop((c, s, l));
        // Nobody listens now: the stale file is replaced.
        bind_private(&path, None).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
