//! `ballast guest`: a guest in its own process.
//!
//! It connects to the daemon's guest socket, proves which VM it is, and receives its
//! memory (the VM's memfd, mapped here) and, for a Dynamic Memory guest, its VMBus ring.
//! Then it runs the guest side of the main job's model on real time: the VSC (as Linux's
//! `hv_balloon`) over the simulator's guest memory model, or the Xen balloon driver, with
//! a workload's demand, and it writes every page it is given, so the host's resident
//! memory is what it holds and a balloon really gives memory back. It runs until the
//! daemon closes the link (the VM was destroyed, or the daemon stopped), until
//! `duration`, or until it is killed.
//!
//! A Dynamic Memory guest also runs free page reporting, as Linux's `hv_balloon` does
//! (`ballast_sim::reporting`): it asks for the cold discard capability when its first
//! pass is due and, if the host offers it, hints its free 2 MiB blocks, its hypercalls
//! going to the daemon on the link. Whether the host offers it is the VM's
//! `free_page_reporting` setting: without it the query is refused and the guest never
//! reports.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use ballast_abi::types::GfnRange;
use ballast_backing::SharedRegion;
use ballast_core::{FlatMemory, MemoryOpResult};
use ballast_dm::vsc::{Vsc, VscConfig};
use ballast_host::VmId;
use ballast_sim::guest::{DmModel, XenGuest, XenHypervisor};
use ballast_sim::reporting::HvCaller;
use ballast_sim::workload::{Workload, WorkloadSpec};
use ballast_vmbus::ring::ChannelSetup;
use ballast_vmbus::session::GuestSession;
use thiserror::Error;

use crate::link::{self, Frame, GuestKind, Hello, LinkError, Resume, Welcome};

const PAGE: u64 = 4096;
/// How often a guest that lost its link tries to attach again.
const RECONNECT_EVERY: Duration = Duration::from_millis(100);
/// How often the workload's demand is read and the Xen driver runs.
const STEP: Duration = Duration::from_millis(100);

/// What the guest is told to be.
#[derive(Debug, Clone)]
pub struct GuestOptions {
    /// The daemon's guest socket.
    pub socket: PathBuf,
    /// The VM.
    pub name: String,
    /// The VM's secret.
    pub token: String,
    /// Its demand over time.
    pub workload: WorkloadSpec,
    /// The workload's seed.
    pub seed: u64,
    /// Seconds before a Dynamic Memory guest's first pressure report (Linux: 45).
    pub report_delay_s: u32,
    /// Stop after this long; `None`: until the daemon stops the VM.
    pub duration: Option<Duration>,
    /// How long to keep trying to attach again after the link is lost.
    pub reconnect_for: Duration,
}

/// Why the guest stopped.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum GuestError {
    /// The socket could not be reached.
    #[error("cannot reach the daemon's guest socket {path}: {source}")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The daemon refused this guest.
    #[error("the daemon refused: {0}")]
    Refused(String),
    /// The link failed.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// The memory or ring could not be set up.
    #[error("{0}")]
    Setup(String),
}

/// How the guest ended, when it ended in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GuestExit {
    /// The daemon closed the link.
    Closed,
    /// `duration` passed.
    Done,
}

/// What the guest reports as it runs, about once a second.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestStatus {
    /// Seconds since it started.
    pub elapsed_s: u64,
    /// Pages the workload wants.
    pub demand_pages: u64,
    /// Pages of RAM the guest has.
    pub ram_pages: u64,
    /// Pages it reported free (cold discard hints) and has not used since.
    pub reported_pages: u64,
}

/// The guest's memory: the VM's memfd, mapped to its current size and remapped when a
/// hot-add grows it.
struct Memory {
    fd: OwnedFd,
    region: SharedRegion,
}

impl Memory {
    fn new(fd: OwnedFd, bytes: u64) -> Result<Self, GuestError> {
        let region = Self::map(&fd, bytes)?;
        Ok(Memory { fd, region })
    }

    fn map(fd: &OwnedFd, bytes: u64) -> Result<SharedRegion, GuestError> {
        let dup = fd
            .try_clone()
            .map_err(|e| GuestError::Setup(format!("dup of the memfd: {e}")))?;
        let len =
            usize::try_from(bytes).map_err(|_| GuestError::Setup("memfd too large".into()))?;
        SharedRegion::from_fd(dup, len).map_err(|e| GuestError::Setup(format!("memory: {e}")))
    }

    /// Writes one word into every page of `ranges`: each becomes resident, as pages a
    /// guest zeroes and uses do.
    fn touch(&mut self, ranges: &mut Vec<GfnRange>) -> Result<(), GuestError> {
        for r in ranges.drain(..) {
            let end = r.end() * PAGE;
            if end > self.region.len() as u64 {
                let size = rustix::fs::fstat(&self.fd)
                    .map_err(|e| GuestError::Setup(format!("fstat of the memfd: {e}")))?
                    .st_size as u64;
                self.region = Self::map(&self.fd, size)?;
            }
            for g in r.iter() {
                let off = (g * PAGE) as usize;
                // A page beyond the file (a range the host has not grown the file for)
                // is refused by the region, not faulted: skip it.
                let _ = self.region.write(off, &g.to_le_bytes());
            }
        }
        Ok(())
    }
}

/// A Xen guest's hypervisor: the daemon, over the link.
struct LinkXen<'a> {
    socket: &'a UnixStream,
    target: Option<u64>,
    closed: bool,
}

impl LinkXen<'_> {
    /// Takes a frame the daemon sent unasked (a target); false if the link ended.
    fn unasked(&mut self, f: Frame) -> Result<(), LinkError> {
        match f {
            Frame::XenTarget { pages } => {
                self.target = Some(pages);
                Ok(())
            }
            Frame::Refused(why) => Err(LinkError::Malformed {
                kind: "refused",
                why,
            }),
            // The VM was destroyed.
            Frame::Stop(why) => Err(LinkError::Malformed { kind: "stop", why }),
            _ => Err(LinkError::Malformed {
                kind: "unexpected",
                why: "a frame the daemon does not send".into(),
            }),
        }
    }

    /// Takes every target waiting on the link without blocking.
    fn poll(&mut self) -> Result<(), LinkError> {
        loop {
            match peek(self.socket) {
                Peek::Closed => return Err(LinkError::Closed),
                Peek::Empty => return Ok(()),
                Peek::Data => {
                    let (f, _) = link::recv(self.socket)?;
                    self.unasked(f)?;
                }
            }
        }
    }
}

impl XenHypervisor for LinkXen<'_> {
    type Error = LinkError;
    fn target_pages(&self) -> Option<u64> {
        self.target
    }
    fn memory_op(
        &mut self,
        cmd: u64,
        arg: u64,
        mem: &mut FlatMemory,
    ) -> Result<MemoryOpResult, LinkError> {
        let call = Frame::XenMemoryOp {
            cmd,
            arg,
            base: mem.base,
            bytes: mem.bytes.clone(),
        };
        link::send(self.socket, &call, &[])?;
        loop {
            match link::recv(self.socket) {
                Ok((
                    Frame::XenResult {
                        ret,
                        continuation,
                        bytes,
                    },
                    _,
                )) => {
                    if bytes.len() == mem.bytes.len() {
                        mem.bytes = bytes;
                    }
                    return Ok(MemoryOpResult {
                        ret,
                        continuation,
                        stop: None,
                    });
                }
                Ok((f, _)) => self.unasked(f)?,
                Err(e) => {
                    self.closed = true;
                    return Err(e);
                }
            }
        }
    }
    fn report(&mut self, committed_bytes: u64) -> Result<(), LinkError> {
        link::send(self.socket, &Frame::XenReport { committed_bytes }, &[])
    }
}

/// A Dynamic Memory guest's Hyper-V hypercalls: made by the daemon, over the link. The
/// daemon sends a DM guest nothing unasked but a stop, which ends a call with the error
/// a [`LinkXen`] gives it.
struct LinkHv<'a> {
    socket: &'a UnixStream,
}

impl LinkHv<'_> {
    fn call(&mut self, control: u64, input: &[u8], output: &mut [u8]) -> Result<u64, LinkError> {
        let output_len = u16::try_from(output.len())
            .ok()
            .filter(|&n| usize::from(n) <= link::MAX_HV_OUTPUT)
            .ok_or_else(|| LinkError::Malformed {
                kind: "hv_call",
                why: format!("an output of {} bytes, more than a page", output.len()),
            })?;
        let call = Frame::HvCall {
            control,
            input: input.to_vec(),
            output_len,
        };
        link::send(self.socket, &call, &[])?;
        // The answer is the next frame: a DM guest's link carries nothing unasked but a
        // stop (no targets: its balloon runs on its ring).
        match link::recv(self.socket)? {
            (Frame::HvResult { rax, output: out }, _) => {
                if out.len() != output.len() {
                    return Err(LinkError::Malformed {
                        kind: "hv_result",
                        why: format!("{} bytes of output, not {}", out.len(), output.len()),
                    });
                }
                output.copy_from_slice(&out);
                Ok(rax)
            }
            (Frame::Stop(why), _) => Err(LinkError::Malformed { kind: "stop", why }),
            (Frame::Refused(why), _) => Err(LinkError::Malformed {
                kind: "refused",
                why,
            }),
            (f, _) => Err(LinkError::Malformed {
                kind: "unexpected",
                why: format!(
                    "a {} frame while waiting for a hypercall's result",
                    f.name()
                ),
            }),
        }
    }
}

impl HvCaller for LinkHv<'_> {
    type Error = LinkError;
    fn hypercall(
        &mut self,
        control: u64,
        input: &[u8],
        output: &mut [u8],
    ) -> Result<u64, LinkError> {
        self.call(control, input, output)
    }
}

enum Peek {
    Data,
    Empty,
    Closed,
}

/// What waits on `socket`, without blocking or reading.
fn peek(socket: &UnixStream) -> Peek {
    let mut b = [0u8; 1];
    match rustix::net::recv(
        socket,
        &mut b[..],
        rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
    ) {
        Ok((0, _)) => Peek::Closed,
        Ok(_) => Peek::Data,
        Err(rustix::io::Errno::AGAIN | rustix::io::Errno::INTR) => Peek::Empty,
        Err(_) => Peek::Closed,
    }
}

/// Whether the daemon has closed `socket`.
fn closed(socket: &UnixStream) -> bool {
    matches!(peek(socket), Peek::Closed)
}

/// The guest's side of the machine, kept across reconnections.
enum Side {
    /// The VSC and the OS's memory; the VSC is out of its session between links.
    Dm(Option<Box<Vsc>>, Box<DmModel>),
    /// The balloon driver.
    Xen(XenGuest),
}

impl Side {
    /// What the guest holds, for a resume: its RAM's top and the ranges it gave the host.
    fn holding(&self) -> (u64, Vec<(u64, u64)>) {
        match self {
            Side::Dm(vsc, model) => (
                model.ram_top(),
                vsc.as_ref()
                    .map(|v| {
                        v.ballooned()
                            .ranges()
                            .map(|r| (r.start(), r.count()))
                            .collect()
                    })
                    .unwrap_or_default(),
            ),
            Side::Xen(x) => (x.pages(), Vec::new()),
        }
    }

    /// Pages the guest owns whose contents it gave up (reported free with the cold
    /// discard hint): they read zero, by design.
    fn given_up_contents(&self) -> Vec<(u64, u64)> {
        match self {
            Side::Dm(_, model) => model
                .reporter()
                .map(|r| {
                    r.reported()
                        .ranges()
                        .map(|g| (g.start(), g.count()))
                        .collect()
                })
                .unwrap_or_default(),
            Side::Xen(_) => Vec::new(),
        }
    }
}

/// How one attachment ended.
enum Ended {
    /// The daemon said the VM is gone.
    Stopped,
    /// `duration` passed.
    Done,
    /// The link was lost: the daemon died or restarted.
    Lost,
}

/// A resume: the memfd, the top of RAM and the ranges given to the host.
type Resuming<'a> = (&'a OwnedFd, u64, &'a [(u64, u64)]);

/// Connects and says hello (with a resume and the memfd if `resume` is set).
fn attach(
    opts: &GuestOptions,
    resume: Option<Resuming<'_>>,
) -> Result<(UnixStream, Welcome, Vec<OwnedFd>), GuestError> {
    let socket = UnixStream::connect(&opts.socket).map_err(|source| GuestError::Connect {
        path: opts.socket.clone(),
        source,
    })?;
    let hello = Hello {
        version: link::VERSION,
        name: opts.name.clone(),
        token: opts.token.clone(),
        resume: resume.map(|(_, ram_top, ranges)| Resume {
            ram_top,
            ranges: ranges.len() as u64,
        }),
    };
    let sent = match resume {
        None => link::send(&socket, &Frame::Hello(hello), &[]),
        Some((fd, _, ranges)) => {
            link::send(&socket, &Frame::Hello(hello), &[fd.as_fd()]).and_then(|()| {
                ranges
                    .chunks(link::MAX_RANGES_PER_FRAME)
                    .try_for_each(|c| link::send(&socket, &Frame::Ranges(c.to_vec()), &[]))
            })
        }
    };
    // A daemon that refuses may do so before it reads the hello, and close: its reason
    // is still there to read when the send failed.
    match (link::recv(&socket), sent) {
        (Ok((Frame::Refused(why), _)), _) => Err(GuestError::Refused(why)),
        (_, Err(e)) => Err(e.into()),
        (Ok((Frame::Welcome(w), fds)), Ok(())) => Ok((socket, w, fds)),
        (Ok((other, _)), Ok(())) => Err(GuestError::Setup(format!(
            "the daemon answered with no welcome: {}",
            other.name()
        ))),
        (Err(e), Ok(())) => Err(e.into()),
    }
}

/// Checks that every page the guest owns still holds what it wrote there: a restart of
/// the daemon must not lose a byte of guest memory. Pages it gave the host (`ballooned`)
/// are not its own; pages it reported free (`reported`) are, but it gave up their
/// contents, so they read zero and are skipped (reading them through the mapping would
/// also make them resident again).
fn verify(
    memory: &Memory,
    ram_top: u64,
    ballooned: &[(u64, u64)],
    reported: &[(u64, u64)],
) -> Result<(), GuestError> {
    let mut given: Vec<(u64, u64)> = ballooned.iter().chain(reported).copied().collect();
    given.sort_unstable();
    let mut next = given.iter().peekable();
    let mut g = 0;
    while g < ram_top {
        if let Some(&&(start, count)) = next.peek() {
            if g >= start {
                g = g.max(start + count);
                next.next();
                continue;
            }
        }
        let mut b = [0u8; 8];
        if memory.region.read((g * PAGE) as usize, &mut b).is_ok() && b != g.to_le_bytes() {
            return Err(GuestError::Setup(format!(
                "memory lost: page {g:#x} no longer holds what the guest wrote"
            )));
        }
        g += 1;
    }
    Ok(())
}

/// Connects, attaches and runs the guest; `status` is called about once a second. If
/// the link is lost without the daemon saying the VM stopped (the daemon was killed or
/// restarted), the guest runs on, on its own memory, and attaches again for up to
/// `reconnect_for`, bringing its memfd and what it holds; it checks then that none of
/// its memory was lost.
pub fn run(
    opts: &GuestOptions,
    mut status: impl FnMut(&Welcome, GuestStatus),
) -> Result<GuestExit, GuestError> {
    let (mut socket, mut welcome, mut fds) = attach(opts, None)?;
    if fds.len() != 1 {
        return Err(GuestError::Setup(format!(
            "the welcome came with {} descriptors, not the memfd",
            fds.len()
        )));
    }
    let mut memory = Memory::new(fds.remove(0), welcome.memory_bytes)?;
    let workload = Workload::new(&opts.workload, opts.seed, 0)
        .map_err(|e| GuestError::Setup(format!("workload: {e}")))?;
    let boot = welcome.startup_bytes / PAGE;
    let start = Instant::now();
    let mut side = match welcome.kind {
        GuestKind::Dm => Side::Dm(
            Some(Box::new(Vsc::new(VscConfig {
                status_delay_periods: opts.report_delay_s,
                ..VscConfig::newest_linux()
            }))),
            // Linux's driver always starts reporting if the host offers it; the
            // VM's setting decides whether it does.
            Box::new(DmModel::new(boot).with_reporting()),
        ),
        GuestKind::Xen => Side::Xen(XenGuest::new(VmId(0), boot, 0)),
    };
    loop {
        match run_attached(
            opts,
            &socket,
            &welcome,
            &mut side,
            &mut memory,
            &workload,
            start,
            &mut status,
        )? {
            Ended::Stopped => return Ok(GuestExit::Closed),
            Ended::Done => return Ok(GuestExit::Done),
            Ended::Lost => {}
        }
        let (ram_top, ranges) = side.holding();
        let reported = side.given_up_contents();
        let given_up = start.elapsed() + opts.reconnect_for;
        let attached = loop {
            if opts.duration.is_some_and(|d| start.elapsed() >= d) {
                return Ok(GuestExit::Done);
            }
            match attach(opts, Some((&memory.fd, ram_top, &ranges))) {
                Ok(a) => break a,
                Err(GuestError::Connect { .. } | GuestError::Link(_))
                    if start.elapsed() < given_up =>
                {
                    std::thread::sleep(RECONNECT_EVERY);
                }
                Err(GuestError::Connect { .. } | GuestError::Link(_)) => {
                    return Ok(GuestExit::Closed);
                }
                Err(e) => return Err(e),
            }
        };
        (socket, welcome, _) = attached;
        verify(&memory, ram_top, &ranges, &reported)?;
    }
}

/// Runs the guest on one link until it ends.
#[allow(clippy::too_many_arguments)]
fn run_attached(
    opts: &GuestOptions,
    socket: &UnixStream,
    welcome: &Welcome,
    side: &mut Side,
    memory: &mut Memory,
    workload: &Workload,
    start: Instant,
    status: &mut impl FnMut(&Welcome, GuestStatus),
) -> Result<Ended, GuestError> {
    let mut last_status = Duration::ZERO;
    let done = |now: Duration| opts.duration.is_some_and(|d| now >= d);
    // The daemon says a VM is gone with a stop frame; an end of file without one is a
    // daemon that died.
    let ended = |socket: &UnixStream| -> Ended {
        match link::recv(socket) {
            Ok((Frame::Stop(_), _)) => Ended::Stopped,
            _ => Ended::Lost,
        }
    };
    match side {
        Side::Dm(vsc_slot, model) => {
            let channel = ChannelSetup::receive(socket)
                .map_err(|e| GuestError::Setup(format!("ring: {e}")))?;
            let vsc = vsc_slot
                .take()
                .ok_or_else(|| GuestError::Setup("no VSC".into()))?;
            // A guest's boot memory is in use before its balloon driver loads; the
            // handshake's timeout starts after it is written, or a slow start (many
            // guests faulting their memory in at once) would fail the handshake.
            memory.touch(&mut model.to_touch)?;
            let placeholder = DmModel::new(0);
            let mut session = GuestSession::connect(
                *vsc,
                channel,
                std::mem::replace(&mut **model, placeholder),
                start.elapsed(),
            );
            let mut hv = LinkHv { socket };
            let mut next_step = Duration::ZERO;
            let result = loop {
                let now = start.elapsed();
                if done(now) {
                    break Ok(Ended::Done);
                }
                let stepped = now >= next_step;
                if stepped {
                    next_step = now + STEP;
                    let demand = workload.demand_at(now.as_secs_f64()) / PAGE;
                    session.model.set_demand(demand);
                    match peek(socket) {
                        Peek::Closed => break Ok(Ended::Lost),
                        Peek::Data => break Ok(ended(socket)),
                        Peek::Empty => {}
                    }
                    if now >= last_status + Duration::from_secs(1) {
                        last_status = now;
                        status(
                            welcome,
                            GuestStatus {
                                elapsed_s: now.as_secs(),
                                demand_pages: demand,
                                ram_pages: session.model.total_pages(),
                                reported_pages: session.model.reported_pages(),
                            },
                        );
                    }
                }
                if session.pump(now).is_err() || session.is_ended() {
                    break Ok(ended(socket));
                }
                if let Err(e) = memory.touch(&mut session.model.to_touch) {
                    break Err(e);
                }
                // Free page reporting, once a step, after the pages the guest was given
                // are written (a page written after its hint would be backed again).
                if stepped {
                    // A hint the link lost comes back in `to_touch`, written before the
                    // guest checks its memory at its next attach.
                    match session.model.report(now.as_secs_f64(), &mut hv) {
                        Ok(()) => {}
                        Err(LinkError::Malformed { kind: "stop", .. }) => {
                            break Ok(Ended::Stopped);
                        }
                        Err(e) => {
                            break if matches!(e, LinkError::Closed) || closed(socket) {
                                Ok(Ended::Lost)
                            } else {
                                Err(e.into())
                            };
                        }
                    }
                }
                let wait = next_step.saturating_sub(start.elapsed());
                let _ = session.channel().wait(Some(wait.min(STEP)));
            };
            let GuestSession {
                mut vsc, model: m, ..
            } = session;
            vsc.reset();
            **model = m;
            *vsc_slot = Some(Box::new(vsc));
            memory.touch(&mut model.to_touch)?;
            result
        }
        Side::Xen(xen) => {
            let mut hv = LinkXen {
                socket,
                target: None,
                closed: false,
            };
            loop {
                let now = start.elapsed();
                if done(now) {
                    return Ok(Ended::Done);
                }
                let demand = workload.demand_at(now.as_secs_f64()) / PAGE;
                xen.set_demand(demand);
                match hv.poll().and_then(|()| xen.step_with(&mut hv)) {
                    Ok(()) => {}
                    Err(LinkError::Malformed { kind: "stop", .. }) => return Ok(Ended::Stopped),
                    Err(e) => {
                        return if hv.closed || matches!(e, LinkError::Closed) || closed(socket) {
                            Ok(Ended::Lost)
                        } else {
                            Err(e.into())
                        };
                    }
                }
                memory.touch(&mut xen.to_touch)?;
                if now >= last_status + Duration::from_secs(1) {
                    last_status = now;
                    status(
                        welcome,
                        GuestStatus {
                            elapsed_s: now.as_secs(),
                            demand_pages: demand,
                            ram_pages: xen.pages(),
                            reported_pages: 0,
                        },
                    );
                }
                std::thread::sleep(STEP);
            }
        }
    }
}
