//! The guest link: the Unix-socket connection between the ballast daemon and a guest in
//! its own process. No specification defines it: it carries what, for a real VM, the VMM
//! and the hypervisor would (the guest's memory and its VMBus ring at start, a Xen guest's
//! hypercalls and xenstore keys), between processes of one host.
//!
//! A guest connects to the daemon's guest socket and says who it is ([`Hello`]: the VM's
//! name and the secret the daemon gave that VM). The daemon answers [`Welcome`] with the
//! guest's memory (its memfd, passed with SCM_RIGHTS) and, for a Dynamic Memory guest, the
//! VMBus ring setup (`ballast_vmbus::ring::ChannelSetup`) right after it; or [`Frame::Refused`]
//! and closes. A Dynamic Memory guest then talks only over its ring; the link stays open so
//! that each side sees the other die (end of file). A Xen guest has no ring: its
//! `memory_op` hypercalls travel on the link ([`Frame::XenMemoryOp`], the argument memory
//! with them, as a hypercall page would hold it), as do its target (xenstore
//! `memory/target`) and its reports (`data/meminfo`). A Dynamic Memory guest's Hyper-V
//! hypercalls, the extended ones of free page reporting, travel on it the same way
//! ([`Frame::HvCall`], its input block with it, and the output page back in
//! [`Frame::HvResult`]).
//!
//! Frames are a 12-byte header (magic, kind, payload length, little-endian) and a payload
//! of at most [`MAX_PAYLOAD`] bytes. Decoding is total: any bytes give a frame or a
//! [`LinkError`], and the memory one frame can make the reader allocate is bounded by its
//! header's length, which is bounded by [`MAX_PAYLOAD`].

#![forbid(unsafe_code)]

use std::io::{self, IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// The first bytes of every frame.
pub const MAGIC: [u8; 4] = *b"BLNK";
/// The link's version, in [`Hello::version`].
pub const VERSION: u32 = 1;
/// Bytes of a frame header.
pub const HEADER_LEN: usize = 12;
/// The largest payload: a `memory_op` argument block with a full page of extents fits
/// many times over.
pub const MAX_PAYLOAD: usize = 64 * 1024;
/// The most descriptors one frame carries.
pub const MAX_FDS: usize = 4;
/// The largest input block of a [`Frame::HvCall`]: a Hyper-V hypercall's input
/// parameters are one page (TLFS "Hypercall Inputs and Outputs": they may not cross a
/// page boundary), and a heat hint's 511 ranges fill exactly one.
pub const MAX_HV_INPUT: usize = 4096;
/// The largest output a [`Frame::HvCall`] may ask for: one page, as the input.
pub const MAX_HV_OUTPUT: usize = 4096;

/// The interface a guest moves memory through, on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GuestKind {
    /// Hyper-V Dynamic Memory over a VMBus ring.
    Dm,
    /// Xen `memory_op` over the link.
    Xen,
}

/// A guest's first frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// [`VERSION`].
    pub version: u32,
    /// The VM it is.
    pub name: String,
    /// The VM's secret, as the daemon gave it out when the VM was created.
    pub token: String,
    /// Set by a guest that ran on while its daemon restarted: what it holds. Its memfd
    /// travels with the hello, and `ranges` [`Frame::Ranges`] frames of what it had
    /// given the host follow.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<Resume>,
}

/// What a guest that outlived its daemon holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resume {
    /// Its RAM is guest-physical `[0, ram_top)`, pages...
    pub ram_top: u64,
    /// ...except this many ranges it had given the host, sent next.
    pub ranges: u64,
}

/// The daemon's answer to a [`Hello`] it accepts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Welcome {
    /// The VM.
    pub name: String,
    /// Its interface.
    pub kind: GuestKind,
    /// Memory it boots with, bytes: guest-physical `[0, startup)` is RAM.
    pub startup_bytes: u64,
    /// The memfd's size now, bytes (it grows with hot-adds).
    pub memory_bytes: u64,
    /// The most the VM may hold, bytes.
    pub maximum_bytes: u64,
}

/// One message on the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Guest to daemon, first: who it is.
    Hello(Hello),
    /// Daemon to guest: accepted; the memfd travels with this frame.
    Welcome(Welcome),
    /// Daemon to guest: refused, and why; the daemon closes the link.
    Refused(String),
    /// Daemon to a Xen guest: its balloon target, pages (xenstore `memory/target`).
    XenTarget {
        /// Pages.
        pages: u64,
    },
    /// A Xen guest to the daemon: its committed memory (a guest agent's `data/meminfo`).
    XenReport {
        /// Bytes.
        committed_bytes: u64,
    },
    /// A Xen guest's `memory_op` hypercall: the command word, the argument's guest
    /// address, and the guest memory the call may read and write, from `base`.
    XenMemoryOp {
        /// `rdi`: the command (and continuation bits).
        cmd: u64,
        /// `rsi`: the argument's address.
        arg: u64,
        /// Address of `bytes[0]`.
        base: u64,
        /// The argument memory.
        bytes: Vec<u8>,
    },
    /// A resuming guest to the daemon: ranges `(start, count)` of pages it had given the
    /// host, at most [`MAX_RANGES_PER_FRAME`] a frame.
    Ranges(Vec<(u64, u64)>),
    /// Daemon to guest: the VM is stopped for good (destroyed); do not reconnect.
    Stop(String),
    /// The daemon's answer to a [`Frame::XenMemoryOp`]: what the hypercall returned, the
    /// command word to re-issue if it was preempted, and the argument memory after it.
    XenResult {
        /// `rax`.
        ret: i64,
        /// The continuation, if any.
        continuation: Option<u64>,
        /// The argument memory as the call left it.
        bytes: Vec<u8>,
    },
    /// A Dynamic Memory guest's Hyper-V hypercall, made as itself: the control word, the
    /// input block, and how many bytes of output page it wants back.
    HvCall {
        /// RCX: the call code, rep count and rep start.
        control: u64,
        /// The input parameters, at most [`MAX_HV_INPUT`] bytes.
        input: Vec<u8>,
        /// Bytes of output, at most [`MAX_HV_OUTPUT`].
        output_len: u16,
    },
    /// The daemon's answer to a [`Frame::HvCall`]: the result value and the output.
    HvResult {
        /// RAX: the status and reps completed.
        rax: u64,
        /// The output page as the call left it, exactly the `output_len` bytes asked for
        /// (so at most [`MAX_HV_OUTPUT`]).
        output: Vec<u8>,
    },
}

const HELLO: u32 = 1;
const WELCOME: u32 = 2;
const REFUSED: u32 = 3;
const XEN_TARGET: u32 = 4;
const XEN_REPORT: u32 = 5;
const XEN_MEMORY_OP: u32 = 6;
const XEN_RESULT: u32 = 7;
const RANGES: u32 = 8;
const STOP: u32 = 9;
const HV_CALL: u32 = 10;
const HV_RESULT: u32 = 11;

/// Ranges one [`Frame::Ranges`] carries: 16 bytes each.
pub const MAX_RANGES_PER_FRAME: usize = MAX_PAYLOAD / 16;

/// What went wrong on the link.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum LinkError {
    /// The peer closed the link (at a frame boundary or inside one).
    #[error("the link was closed")]
    Closed,
    /// A header without the magic.
    #[error("not a ballast guest link (magic {0:02x?})")]
    Magic([u8; 4]),
    /// A header announcing a payload over [`MAX_PAYLOAD`].
    #[error("a frame of {0} bytes: more than the link allows")]
    TooLong(u32),
    /// A frame kind this side does not know.
    #[error("unknown frame kind {0}")]
    Kind(u32),
    /// A payload that does not decode as its kind says.
    #[error("malformed {kind} frame: {why}")]
    Malformed {
        /// The frame's kind.
        kind: &'static str,
        /// What is wrong.
        why: String,
    },
    /// More descriptors than a frame may carry, or descriptors cut short.
    #[error("descriptors cut short or too many")]
    Fds,
    /// The socket failed.
    #[error("guest link I/O: {0}")]
    Io(#[from] io::Error),
}

/// A parsed frame header: kind and payload length.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The frame kind.
    pub kind: u32,
    /// Payload bytes.
    pub len: usize,
}

impl Header {
    /// Parses a header; refuses a wrong magic and an oversized length before anything is
    /// allocated for the payload.
    pub fn parse(bytes: &[u8; HEADER_LEN]) -> Result<Header, LinkError> {
        let word = |at: usize| [bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]];
        if word(0) != MAGIC {
            return Err(LinkError::Magic(word(0)));
        }
        let kind = u32::from_le_bytes(word(4));
        let len = u32::from_le_bytes(word(8));
        if len as usize > MAX_PAYLOAD {
            return Err(LinkError::TooLong(len));
        }
        Ok(Header {
            kind,
            len: len as usize,
        })
    }
}

fn malformed(kind: &'static str, why: impl ToString) -> LinkError {
    LinkError::Malformed {
        kind,
        why: why.to_string(),
    }
}

/// A Hyper-V call's input or output of `len` bytes, refused over `max` (a page).
fn check_hv_len(kind: &'static str, what: &str, len: usize, max: usize) -> Result<(), LinkError> {
    if len > max {
        return Err(malformed(
            kind,
            format!("{what} of {len} bytes, more than a page ({max})"),
        ));
    }
    Ok(())
}

fn u64_at(p: &[u8], at: usize) -> Option<u64> {
    let b = p.get(at..at + 8)?;
    let mut w = [0u8; 8];
    w.copy_from_slice(b);
    Some(u64::from_le_bytes(w))
}

impl Frame {
    /// The frame's kind, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Hello(_) => "hello",
            Frame::Welcome(_) => "welcome",
            Frame::Refused(_) => "refused",
            Frame::XenTarget { .. } => "target",
            Frame::XenReport { .. } => "report",
            Frame::XenMemoryOp { .. } => "memory_op",
            Frame::XenResult { .. } => "result",
            Frame::Ranges(_) => "ranges",
            Frame::Stop(_) => "stop",
            Frame::HvCall { .. } => "hv_call",
            Frame::HvResult { .. } => "hv_result",
        }
    }

    fn kind(&self) -> u32 {
        match self {
            Frame::Hello(_) => HELLO,
            Frame::Welcome(_) => WELCOME,
            Frame::Refused(_) => REFUSED,
            Frame::XenTarget { .. } => XEN_TARGET,
            Frame::XenReport { .. } => XEN_REPORT,
            Frame::XenMemoryOp { .. } => XEN_MEMORY_OP,
            Frame::XenResult { .. } => XEN_RESULT,
            Frame::Ranges(_) => RANGES,
            Frame::Stop(_) => STOP,
            Frame::HvCall { .. } => HV_CALL,
            Frame::HvResult { .. } => HV_RESULT,
        }
    }

    /// The frame as bytes: header and payload. Fails only for a payload over
    /// [`MAX_PAYLOAD`] (argument memory too large), or a Hyper-V call's input or output
    /// over a page, which the peer would refuse.
    pub fn encode(&self) -> Result<Vec<u8>, LinkError> {
        let mut payload = Vec::new();
        match self {
            Frame::Hello(h) => {
                payload = serde_json::to_vec(h).map_err(|e| malformed("hello", e))?;
            }
            Frame::Welcome(w) => {
                payload = serde_json::to_vec(w).map_err(|e| malformed("welcome", e))?;
            }
            Frame::Refused(why) | Frame::Stop(why) => payload.extend_from_slice(why.as_bytes()),
            Frame::Ranges(rs) => {
                for (start, count) in rs {
                    payload.extend_from_slice(&start.to_le_bytes());
                    payload.extend_from_slice(&count.to_le_bytes());
                }
            }
            Frame::XenTarget { pages } => payload.extend_from_slice(&pages.to_le_bytes()),
            Frame::XenReport { committed_bytes } => {
                payload.extend_from_slice(&committed_bytes.to_le_bytes())
            }
            Frame::XenMemoryOp {
                cmd,
                arg,
                base,
                bytes,
            } => {
                for w in [cmd, arg, base] {
                    payload.extend_from_slice(&w.to_le_bytes());
                }
                payload.extend_from_slice(bytes);
            }
            Frame::XenResult {
                ret,
                continuation,
                bytes,
            } => {
                payload.extend_from_slice(&ret.to_le_bytes());
                payload.push(u8::from(continuation.is_some()));
                payload.extend_from_slice(&continuation.unwrap_or(0).to_le_bytes());
                payload.extend_from_slice(bytes);
            }
            Frame::HvCall {
                control,
                input,
                output_len,
            } => {
                check_hv_len("hv_call", "input", input.len(), MAX_HV_INPUT)?;
                check_hv_len("hv_call", "output", usize::from(*output_len), MAX_HV_OUTPUT)?;
                payload.extend_from_slice(&control.to_le_bytes());
                payload.extend_from_slice(&output_len.to_le_bytes());
                payload.extend_from_slice(input);
            }
            Frame::HvResult { rax, output } => {
                check_hv_len("hv_result", "output", output.len(), MAX_HV_OUTPUT)?;
                payload.extend_from_slice(&rax.to_le_bytes());
                payload.extend_from_slice(output);
            }
        }
        if payload.len() > MAX_PAYLOAD {
            return Err(LinkError::TooLong(
                u32::try_from(payload.len()).unwrap_or(u32::MAX),
            ));
        }
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
        out.extend_from_slice(&MAGIC);
        out.extend_from_slice(&self.kind().to_le_bytes());
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        out.extend_from_slice(&payload);
        Ok(out)
    }

    /// Decodes the payload of a frame of `kind`.
    pub fn decode(kind: u32, p: &[u8]) -> Result<Frame, LinkError> {
        if p.len() > MAX_PAYLOAD {
            return Err(LinkError::TooLong(
                u32::try_from(p.len()).unwrap_or(u32::MAX),
            ));
        }
        let exact_u64 = |name: &'static str| {
            if p.len() != 8 {
                return Err(malformed(name, format!("{} bytes, not 8", p.len())));
            }
            u64_at(p, 0).ok_or_else(|| malformed(name, "short"))
        };
        Ok(match kind {
            HELLO => Frame::Hello(serde_json::from_slice(p).map_err(|e| malformed("hello", e))?),
            WELCOME => {
                Frame::Welcome(serde_json::from_slice(p).map_err(|e| malformed("welcome", e))?)
            }
            REFUSED => Frame::Refused(
                std::str::from_utf8(p)
                    .map_err(|e| malformed("refused", e))?
                    .to_string(),
            ),
            STOP => Frame::Stop(
                std::str::from_utf8(p)
                    .map_err(|e| malformed("stop", e))?
                    .to_string(),
            ),
            RANGES => {
                if p.len() % 16 != 0 {
                    return Err(malformed("ranges", format!("{} bytes", p.len())));
                }
                Frame::Ranges(
                    p.chunks_exact(16)
                        .map(|c| (u64_at(c, 0).unwrap_or(0), u64_at(c, 8).unwrap_or(0)))
                        .collect(),
                )
            }
            XEN_TARGET => Frame::XenTarget {
                pages: exact_u64("target")?,
            },
            XEN_REPORT => Frame::XenReport {
                committed_bytes: exact_u64("report")?,
            },
            XEN_MEMORY_OP => {
                let word =
                    |i: usize| u64_at(p, i * 8).ok_or_else(|| malformed("memory_op", "short"));
                Frame::XenMemoryOp {
                    cmd: word(0)?,
                    arg: word(1)?,
                    base: word(2)?,
                    bytes: p[24..].to_vec(),
                }
            }
            XEN_RESULT => {
                let ret = u64_at(p, 0).ok_or_else(|| malformed("result", "short"))? as i64;
                let has = *p.get(8).ok_or_else(|| malformed("result", "short"))?;
                let cont = u64_at(p, 9).ok_or_else(|| malformed("result", "short"))?;
                let continuation = match has {
                    0 => None,
                    1 => Some(cont),
                    b => return Err(malformed("result", format!("continuation flag {b}"))),
                };
                Frame::XenResult {
                    ret,
                    continuation,
                    bytes: p[17..].to_vec(),
                }
            }
            HV_CALL => {
                let control = u64_at(p, 0).ok_or_else(|| malformed("hv_call", "short"))?;
                let len = p.get(8..10).ok_or_else(|| malformed("hv_call", "short"))?;
                let output_len = u16::from_le_bytes([len[0], len[1]]);
                let input = &p[10..];
                // Both limits before the input is copied.
                check_hv_len("hv_call", "input", input.len(), MAX_HV_INPUT)?;
                check_hv_len("hv_call", "output", usize::from(output_len), MAX_HV_OUTPUT)?;
                Frame::HvCall {
                    control,
                    input: input.to_vec(),
                    output_len,
                }
            }
            HV_RESULT => {
                let rax = u64_at(p, 0).ok_or_else(|| malformed("hv_result", "short"))?;
                let output = &p[8..];
                check_hv_len("hv_result", "output", output.len(), MAX_HV_OUTPUT)?;
                Frame::HvResult {
                    rax,
                    output: output.to_vec(),
                }
            }
            other => return Err(LinkError::Kind(other)),
        })
    }
}

fn retry<T>(mut f: impl FnMut() -> rustix::io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(rustix::io::Errno::INTR) => {}
            r => return r.map_err(io::Error::from),
        }
    }
}

/// Writes `frame` to `socket`, with `fds` attached to its first byte (SCM_RIGHTS).
pub fn send(socket: &UnixStream, frame: &Frame, fds: &[BorrowedFd<'_>]) -> Result<(), LinkError> {
    if fds.len() > MAX_FDS {
        return Err(LinkError::Fds);
    }
    let bytes = frame.encode()?;
    let mut sent = 0;
    if !fds.is_empty() {
        let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
        let mut control = SendAncillaryBuffer::new(&mut space);
        if !control.push(SendAncillaryMessage::ScmRights(fds)) {
            return Err(LinkError::Fds);
        }
        sent = retry(|| {
            rustix::net::sendmsg(
                socket,
                &[IoSlice::new(&bytes)],
                &mut control,
                SendFlags::NOSIGNAL,
            )
        })?;
    }
    // The descriptors went with the first byte; the rest are plain bytes.
    let mut w = socket;
    w.write_all(&bytes[sent..])?;
    Ok(())
}

/// Reads one frame from `socket`, with any descriptors that came with it. Blocks; the
/// payload is read only after its header passed [`Header::parse`].
pub fn recv(socket: &UnixStream) -> Result<(Frame, Vec<OwnedFd>), LinkError> {
    let mut header = [0u8; HEADER_LEN];
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(MAX_FDS))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let msg = retry(|| {
        rustix::net::recvmsg(
            socket,
            &mut [IoSliceMut::new(&mut header)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        )
    })?;
    let mut fds = Vec::new();
    for m in control.drain() {
        if let RecvAncillaryMessage::ScmRights(received) = m {
            fds.extend(received);
        }
    }
    if msg.flags.contains(ReturnFlags::CTRUNC) {
        return Err(LinkError::Fds);
    }
    let got = msg.bytes.min(HEADER_LEN);
    if got == 0 {
        return Err(LinkError::Closed);
    }
    let mut r = socket;
    read_full(&mut r, &mut header[got..])?;
    let h = Header::parse(&header)?;
    let mut payload = vec![0u8; h.len];
    read_full(&mut r, &mut payload)?;
    Ok((Frame::decode(h.kind, &payload)?, fds))
}

fn read_full(r: &mut impl Read, buf: &mut [u8]) -> Result<(), LinkError> {
    r.read_exact(buf).map_err(|e| match e.kind() {
        io::ErrorKind::UnexpectedEof => LinkError::Closed,
        _ => LinkError::Io(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn roundtrip(f: Frame) {
        let bytes = f.encode().unwrap();
        let h = Header::parse(bytes[..HEADER_LEN].try_into().unwrap()).unwrap();
        assert_eq!(h.len, bytes.len() - HEADER_LEN);
        assert_eq!(Frame::decode(h.kind, &bytes[HEADER_LEN..]).unwrap(), f);
    }

    #[test]
    fn every_frame_roundtrips() {
        roundtrip(Frame::Hello(Hello {
            version: VERSION,
            name: "web-1".into(),
            token: "ab".repeat(16),
            resume: None,
        }));
        roundtrip(Frame::Hello(Hello {
            version: VERSION,
            name: "web-1".into(),
            token: "ab".repeat(16),
            resume: Some(Resume {
                ram_top: 1 << 18,
                ranges: 3,
            }),
        }));
        roundtrip(Frame::Ranges(vec![(1, 2), (100, 1 << 40)]));
        roundtrip(Frame::Stop("destroyed".into()));
        roundtrip(Frame::Welcome(Welcome {
            name: "web-1".into(),
            kind: GuestKind::Xen,
            startup_bytes: 1 << 30,
            memory_bytes: 1 << 31,
            maximum_bytes: 1 << 32,
        }));
        roundtrip(Frame::Refused("no such VM".into()));
        roundtrip(Frame::XenTarget { pages: 12345 });
        roundtrip(Frame::XenReport {
            committed_bytes: 1 << 29,
        });
        roundtrip(Frame::XenMemoryOp {
            cmd: 6,
            arg: 0x1000,
            base: 0x1000,
            bytes: vec![7; 4096],
        });
        roundtrip(Frame::XenResult {
            ret: -22,
            continuation: Some(6 | 5 << 6),
            bytes: vec![1, 2, 3],
        });
        roundtrip(Frame::XenResult {
            ret: 512,
            continuation: None,
            bytes: vec![],
        });
        roundtrip(Frame::HvCall {
            control: 0x8003 | 2 << 32,
            input: vec![2, 0, 0, 0, 0, 0, 0, 0, 9, 9, 9, 9, 9, 9, 9, 9],
            output_len: 0,
        });
        roundtrip(Frame::HvCall {
            control: 0x8001,
            input: vec![],
            output_len: 8,
        });
        roundtrip(Frame::HvCall {
            control: u64::MAX,
            input: vec![0xAB; MAX_HV_INPUT],
            output_len: MAX_HV_OUTPUT as u16,
        });
        roundtrip(Frame::HvResult {
            rax: 0,
            output: vec![2, 1, 0, 0, 0, 0, 0, 0],
        });
        roundtrip(Frame::HvResult {
            rax: 3 << 32 | 6,
            output: vec![],
        });
        roundtrip(Frame::HvResult {
            rax: 1,
            output: vec![0xCD; MAX_HV_OUTPUT],
        });
    }

    #[test]
    fn hyper_v_calls_are_held_to_a_page_both_ways() {
        let big_input = Frame::HvCall {
            control: 0,
            input: vec![0; MAX_HV_INPUT + 1],
            output_len: 0,
        };
        let big_output = Frame::HvCall {
            control: 0,
            input: vec![],
            output_len: MAX_HV_OUTPUT as u16 + 1,
        };
        let big_result = Frame::HvResult {
            rax: 0,
            output: vec![0; MAX_HV_OUTPUT + 1],
        };
        for f in [&big_input, &big_output, &big_result] {
            assert!(
                matches!(f.encode(), Err(LinkError::Malformed { .. })),
                "{}",
                f.name()
            );
        }
        // The same payloads, made by hand, do not decode.
        let mut p = 0u64.to_le_bytes().to_vec();
        p.extend_from_slice(&0u16.to_le_bytes());
        p.extend_from_slice(&[0; MAX_HV_INPUT + 1]);
        assert!(matches!(
            Frame::decode(HV_CALL, &p),
            Err(LinkError::Malformed {
                kind: "hv_call",
                ..
            })
        ));
        let mut p = 0u64.to_le_bytes().to_vec();
        p.extend_from_slice(&(MAX_HV_OUTPUT as u16 + 1).to_le_bytes());
        assert!(matches!(
            Frame::decode(HV_CALL, &p),
            Err(LinkError::Malformed {
                kind: "hv_call",
                ..
            })
        ));
        let p = vec![0; 8 + MAX_HV_OUTPUT + 1];
        assert!(matches!(
            Frame::decode(HV_RESULT, &p),
            Err(LinkError::Malformed {
                kind: "hv_result",
                ..
            })
        ));
        // Cut short: the control word and the output length are both needed.
        for n in 0..10 {
            assert!(Frame::decode(HV_CALL, &vec![0; n]).is_err(), "{n} bytes");
        }
        for n in 0..8 {
            assert!(Frame::decode(HV_RESULT, &vec![0; n]).is_err(), "{n} bytes");
        }
    }

    #[test]
    fn headers_are_checked_before_the_payload() {
        let mut h = [0u8; HEADER_LEN];
        assert!(matches!(Header::parse(&h), Err(LinkError::Magic(_))));
        h[..4].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert!(matches!(Header::parse(&h), Err(LinkError::TooLong(_))));
        h[8..12].copy_from_slice(&(MAX_PAYLOAD as u32).to_le_bytes());
        assert!(Header::parse(&h).is_ok());
    }

    #[test]
    fn oversized_argument_memory_is_refused_at_encode() {
        let f = Frame::XenMemoryOp {
            cmd: 0,
            arg: 0,
            base: 0,
            bytes: vec![0; MAX_PAYLOAD],
        };
        assert!(matches!(f.encode(), Err(LinkError::TooLong(_))));
    }

    #[test]
    fn frames_and_descriptors_cross_a_socket() {
        let (a, b) = UnixStream::pair().unwrap();
        let memfd = rustix::fs::memfd_create("t", rustix::fs::MemfdFlags::CLOEXEC).unwrap();
        rustix::fs::ftruncate(&memfd, 8192).unwrap();
        let w = Frame::Welcome(Welcome {
            name: "x".into(),
            kind: GuestKind::Dm,
            startup_bytes: 4096,
            memory_bytes: 8192,
            maximum_bytes: 8192,
        });
        use std::os::fd::AsFd;
        send(&a, &w, &[memfd.as_fd()]).unwrap();
        send(&a, &Frame::XenTarget { pages: 3 }, &[]).unwrap();
        let (f, fds) = recv(&b).unwrap();
        assert_eq!(f, w);
        assert_eq!(fds.len(), 1);
        assert_eq!(rustix::fs::fstat(&fds[0]).unwrap().st_size, 8192);
        let (f, fds) = recv(&b).unwrap();
        assert_eq!(f, Frame::XenTarget { pages: 3 });
        assert!(fds.is_empty());
        drop(a);
        assert!(matches!(recv(&b), Err(LinkError::Closed)));
    }

    proptest! {
        /// Any bytes decode to a frame or an error, never a panic.
        #[test]
        fn decoding_is_total(kind in 0u32..13, payload in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Frame::decode(kind, &payload);
        }

        /// A Hyper-V call or result decodes from exactly the bytes it encodes to, up to
        /// and past its page limits.
        #[test]
        fn hyper_v_frames_reencode_to_their_bytes(
            kind in HV_CALL..=HV_RESULT,
            payload in proptest::collection::vec(any::<u8>(), 0..MAX_HV_INPUT + 64),
        ) {
            if let Ok(f) = Frame::decode(kind, &payload) {
                let bytes = f.encode().unwrap();
                prop_assert_eq!(&bytes[HEADER_LEN..], &payload[..]);
            }
        }

        /// A header of any bytes parses or is refused, and a parsed length is bounded.
        #[test]
        fn headers_are_bounded(bytes in proptest::array::uniform12(any::<u8>())) {
            if let Ok(h) = Header::parse(&bytes) {
                prop_assert!(h.len <= MAX_PAYLOAD);
            }
        }
    }
}
