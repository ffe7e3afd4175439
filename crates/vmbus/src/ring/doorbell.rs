//! Doorbells: how one end of a channel wakes the other (VMBus's channel interrupt).
//!
//! A doorbell is level-like and coalescing: any number of signals before a wait wake it
//! once, and a signal raised before the waiter sleeps is not lost. The ring's signalling
//! rules decide when to ring; a waiter always re-checks its rings after waking, so a
//! spurious wakeup costs one empty pass and nothing else.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::{Condvar, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rustix::event::{EventfdFlags, PollFd, PollFlags, Timespec};
use rustix::fs::OFlags;
use rustix::io::Errno;

/// One direction of wakeups between the two ends of a channel.
pub trait Doorbell: Send + Sync + fmt::Debug {
    /// Wakes the waiter, now or at its next wait.
    fn signal(&self);

    /// Consumes a pending signal without blocking; `true` if there was one.
    fn try_consume(&self) -> io::Result<bool>;

    /// Blocks until a signal arrives (and consumes it) or `timeout` passes; `None` waits
    /// for ever. `true` if a signal was consumed.
    fn wait_timeout(&self, timeout: Option<Duration>) -> io::Result<bool>;

    /// Blocks until a signal arrives, and consumes it.
    fn wait(&self) -> io::Result<()> {
        while !self.wait_timeout(None)? {}
        Ok(())
    }
}

/// A doorbell on an eventfd, which can be handed to another process.
///
/// The fd is non-blocking; [`wait_timeout`](Doorbell::wait_timeout) blocks in `poll`. An
/// owner with its own event loop can poll [`fd`](Self::fd) itself and call
/// [`try_consume`](Doorbell::try_consume) when it is readable.
#[derive(Debug)]
pub struct EventFdDoorbell {
    fd: OwnedFd,
}

impl EventFdDoorbell {
    /// A fresh eventfd with no signal pending.
    pub fn new() -> io::Result<Self> {
        let fd = rustix::event::eventfd(0, EventfdFlags::CLOEXEC | EventfdFlags::NONBLOCK)?;
        Ok(Self { fd })
    }

    /// An eventfd received from the peer. It is made non-blocking, so a read can never
    /// hang the owner; an fd that is not an eventfd shows up as errors from the waits.
    pub fn from_fd(fd: OwnedFd) -> io::Result<Self> {
        let flags = rustix::fs::fcntl_getfl(&fd)?;
        rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?;
        Ok(Self { fd })
    }

    /// The eventfd, to send to the peer or to add to an event loop.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

fn retry<T>(mut f: impl FnMut() -> Result<T, Errno>) -> Result<T, Errno> {
    loop {
        match f() {
            Err(Errno::INTR) => continue,
            other => return other,
        }
    }
}

impl Doorbell for EventFdDoorbell {
    fn signal(&self) {
        // The only failure of a write of 1 to an eventfd we own is EAGAIN, when the counter
        // is already at its maximum: the waiter is signalled already. A bogus fd from the
        // peer fails here too, and only the peer goes unwoken.
        let _ = retry(|| rustix::io::write(&self.fd, &1u64.to_ne_bytes()));
    }

    fn try_consume(&self) -> io::Result<bool> {
        let mut count = [0u8; 8];
        match retry(|| rustix::io::read(&self.fd, &mut count)) {
            Ok(8) => Ok(u64::from_ne_bytes(count) != 0),
            Ok(n) => Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("doorbell read returned {n} bytes, not an eventfd counter"),
            )),
            Err(Errno::AGAIN) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn wait_timeout(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let deadline = timeout.map(|t| Instant::now().checked_add(t));
        loop {
            if self.try_consume()? {
                return Ok(true);
            }
            let remaining = match deadline {
                None => None,
                // Too far in the future to represent: as good as for ever.
                Some(None) => None,
                Some(Some(d)) => match d.checked_duration_since(Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return Ok(false),
                },
            };
            let ts = remaining.map(|d| Timespec {
                tv_sec: i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
                tv_nsec: i64::from(d.subsec_nanos()),
            });
            let mut fds = [PollFd::new(&self.fd, PollFlags::IN)];
            match rustix::event::poll(&mut fds, ts.as_ref()) {
                Ok(_) | Err(Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            if fds[0]
                .revents()
                .intersects(PollFlags::ERR | PollFlags::NVAL | PollFlags::HUP)
            {
                return Err(io::Error::new(
                    io::ErrorKind::BrokenPipe,
                    "doorbell fd reports an error or hang-up",
                ));
            }
        }
    }
}

/// A doorbell between two ends in one process (the simulator, tests).
#[derive(Debug, Default)]
pub struct InProcessDoorbell {
    rung: Mutex<bool>,
    cond: Condvar,
}

impl InProcessDoorbell {
    /// No signal pending.
    pub fn new() -> Self {
        Self::default()
    }

    // A panic while holding the lock cannot leave the flag half-updated, so a poisoned
    // lock is as good as a healthy one.
    fn lock(&self) -> MutexGuard<'_, bool> {
        self.rung.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Doorbell for InProcessDoorbell {
    fn signal(&self) {
        *self.lock() = true;
        self.cond.notify_all();
    }

    fn try_consume(&self) -> io::Result<bool> {
        Ok(std::mem::take(&mut *self.lock()))
    }

    fn wait_timeout(&self, timeout: Option<Duration>) -> io::Result<bool> {
        let mut rung = self.lock();
        let deadline = timeout.and_then(|t| Instant::now().checked_add(t));
        while !*rung {
            match (timeout, deadline) {
                (Some(_), Some(d)) => {
                    let Some(left) = d.checked_duration_since(Instant::now()) else {
                        return Ok(false);
                    };
                    if left.is_zero() {
                        return Ok(false);
                    }
                    rung = self
                        .cond
                        .wait_timeout(rung, left)
                        .unwrap_or_else(PoisonError::into_inner)
                        .0;
                }
                _ => rung = self.cond.wait(rung).unwrap_or_else(PoisonError::into_inner),
            }
        }
        *rung = false;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    fn exercise(bell: Arc<dyn Doorbell>) {
        assert!(!bell.try_consume().unwrap());
        assert!(!bell.wait_timeout(Some(Duration::from_millis(5))).unwrap());
        // Signals coalesce and wait for the waiter.
        bell.signal();
        bell.signal();
        assert!(bell.try_consume().unwrap());
        assert!(!bell.try_consume().unwrap());
        bell.signal();
        assert!(bell.wait_timeout(Some(Duration::ZERO)).unwrap());
        // A signal from another thread wakes a blocked waiter.
        let other = Arc::clone(&bell);
        let t = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            other.signal();
        });
        bell.wait().unwrap();
        t.join().unwrap();
        assert!(!bell.try_consume().unwrap());
    }

    #[test]
    fn eventfd_doorbell() {
        exercise(Arc::new(EventFdDoorbell::new().unwrap()));
    }

    #[test]
    fn in_process_doorbell() {
        exercise(Arc::new(InProcessDoorbell::new()));
    }

    #[test]
    fn eventfd_shared_by_two_handles() {
        let a = EventFdDoorbell::new().unwrap();
        let dup = rustix::io::fcntl_dupfd_cloexec(a.fd(), 0).unwrap();
        let b = EventFdDoorbell::from_fd(dup).unwrap();
        a.signal();
        assert!(b.wait_timeout(Some(Duration::from_secs(5))).unwrap());
        assert!(!a.try_consume().unwrap());
    }

    #[test]
    fn a_non_eventfd_fails_instead_of_hanging() {
        let (x, _y) = std::os::unix::net::UnixStream::pair().unwrap();
        drop(_y);
        let bell = EventFdDoorbell::from_fd(OwnedFd::from(x)).unwrap();
        bell.signal();
        // The peer is gone: reads return 0 bytes, which is no eventfd counter.
        assert!(bell.try_consume().is_err());
        assert!(bell.wait_timeout(Some(Duration::from_secs(5))).is_err());
    }
}
