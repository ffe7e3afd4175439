//! The guest socket: one thread per guest connection, blocking on its link.
//!
//! A connection must send its [`Hello`](crate::link::Hello) within [`HELLO_DEADLINE`];
//! anything but a well-formed frame the guest may send ends the connection (and so the
//! VM) and is counted as a violation (a frame of the other interface among them: a Xen
//! guest's Hyper-V call, a Dynamic Memory guest's `memory_op`); frames beyond
//! [`MAX_FRAMES_PER_SECOND`] are slowed to that rate. What one guest does costs only its
//! own connection's thread.

use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use crate::link::{self, Frame, LinkError};
use crate::peer::Access;
use crate::service::Service;

/// How long a new connection has to say who it is.
pub const HELLO_DEADLINE: Duration = Duration::from_secs(5);
/// The most ranges a resuming guest may bring (16 MiB of them).
pub const MAX_RESUME_RANGES: u64 = 1 << 20;
/// The most frames a guest's connection is served per second.
pub const MAX_FRAMES_PER_SECOND: u32 = 5000;

/// Accepts guests until `stop` is set (checked on every connection).
pub fn serve(listener: UnixListener, service: Arc<Service>, access: Access, stop: Arc<AtomicBool>) {
    for conn in listener.incoming() {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let Ok(stream) = conn else { continue };
        let service = Arc::clone(&service);
        let _ = std::thread::Builder::new()
            .name("ballast-guest".into())
            .spawn(move || serve_one(&service, stream, access));
    }
}

fn refuse(stream: &UnixStream, why: &str) {
    let _ = link::send(stream, &Frame::Refused(why.to_string()), &[]);
}

fn serve_one(service: &Service, stream: UnixStream, access: Access) {
    if let Err(why) = access.check(&stream) {
        refuse(&stream, &why);
        return;
    }
    let _ = stream.set_read_timeout(Some(HELLO_DEADLINE));
    let (hello, mut fds) = match link::recv(&stream) {
        Ok((Frame::Hello(h), fds)) => (h, fds),
        Ok(_) => return refuse(&stream, "the first frame must be a hello"),
        Err(e) => return refuse(&stream, &format!("no hello: {e}")),
    };
    // A resuming guest's ranges follow its hello, as many as it said, each checked as it
    // comes: at most one range per two pages of the most any guest may hold.
    let mut ballooned = Vec::new();
    if let Some(r) = hello.resume {
        if r.ranges > MAX_RESUME_RANGES {
            return refuse(&stream, "too many ranges to resume");
        }
        while (ballooned.len() as u64) < r.ranges {
            match link::recv(&stream) {
                Ok((Frame::Ranges(rs), _))
                    if ballooned.len() as u64 + rs.len() as u64 <= r.ranges =>
                {
                    for (start, count) in rs {
                        match ballast_core::GfnRange::new(start, count) {
                            Ok(g) => ballooned.push(g),
                            Err(e) => return refuse(&stream, &format!("bad range: {e}")),
                        }
                    }
                }
                Ok(_) => return refuse(&stream, "the resume's ranges do not add up"),
                Err(e) => return refuse(&stream, &format!("resume: {e}")),
            }
        }
    }
    let memory = (fds.len() == 1).then(|| fds.remove(0));
    let Ok(w) = stream.try_clone() else {
        return refuse(&stream, "the daemon could not keep the link");
    };
    let writer = Arc::new(Mutex::new(w));
    let attached = match service.attach(&hello, Arc::clone(&writer), memory, &ballooned) {
        Ok(a) => a,
        Err(why) => return refuse(&stream, &why),
    };
    let name = hello.name;
    let generation = attached.generation;
    let sent = {
        let w = writer.lock().unwrap_or_else(|e| e.into_inner());
        link::send(
            &w,
            &Frame::Welcome(attached.welcome),
            &[attached.memory.as_fd()],
        )
        .map_err(|e| e.to_string())
        .and_then(|()| match &attached.ring {
            Some(ring) => ring.send(&w).map_err(|e| e.to_string()),
            None => Ok(()),
        })
    };
    drop(attached.memory);
    drop(attached.ring);
    if sent.is_ok() {
        service.welcomed(&name, generation);
        let _ = stream.set_read_timeout(None);
        serve_link(service, &stream, &writer, &name, generation);
    }
    service.detach(&name, generation);
}

/// The guest's frames until its link ends or misbehaves.
fn serve_link(
    service: &Service,
    stream: &UnixStream,
    writer: &Mutex<UnixStream>,
    name: &str,
    generation: u64,
) {
    let mut window = Instant::now();
    let mut frames = 0u32;
    loop {
        let frame = match link::recv(stream) {
            Ok((f, _fds)) => f,
            Err(LinkError::Closed) => return,
            Err(_) => {
                service.violation(name);
                return;
            }
        };
        frames += 1;
        if frames > MAX_FRAMES_PER_SECOND {
            let left = Duration::from_secs(1).saturating_sub(window.elapsed());
            if !left.is_zero() {
                service.violation(name);
                std::thread::sleep(left);
            }
            window = Instant::now();
            frames = 0;
        } else if window.elapsed() >= Duration::from_secs(1) {
            window = Instant::now();
            frames = 0;
        }
        let reply = match frame {
            Frame::XenMemoryOp {
                cmd,
                arg,
                base,
                bytes,
            } => match service.xen_memory_op(name, generation, cmd, arg, base, bytes) {
                Ok(r) => r,
                Err(_) => {
                    service.violation(name);
                    return;
                }
            },
            // A DM guest's Hyper-V hypercall (free page reporting). From a Xen guest, which
            // has no Hyper-V interface, it is a violation, as a memory_op from a DM guest
            // is; an input or output over a page never decodes.
            Frame::HvCall {
                control,
                input,
                output_len,
            } => match service.hv_call(name, generation, control, &input, output_len) {
                Ok(r) => r,
                Err(_) => {
                    service.violation(name);
                    return;
                }
            },
            Frame::XenReport { committed_bytes } => {
                if service
                    .xen_report(name, generation, committed_bytes)
                    .is_err()
                {
                    service.violation(name);
                    return;
                }
                continue;
            }
            _ => {
                // A frame only the daemon sends, or a second hello.
                service.violation(name);
                return;
            }
        };
        let w = writer.lock().unwrap_or_else(|e| e.into_inner());
        if link::send(&w, &reply, &[]).is_err() {
            return;
        }
    }
}
