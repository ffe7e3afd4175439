//! The daemon's state and every operation on it, free of HTTP and sockets: the API
//! handlers, the guest connections and the clock loop all call in here, under one lock.
//!
//! A VM is *defined* (its settings persisted) from `create` until `destroy`. It *runs*
//! while a guest process is attached: then it has a partition, made when the guest
//! connects, and memory; when the guest's link ends (the process exited or was killed),
//! the partition is torn down and every frame of it comes back to the host.

use std::collections::BTreeMap;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ballast_balancer::Balancer;
use ballast_core::FlatMemory;
use ballast_core::GfnRange;
use ballast_dm::vsp::VspConfig;
use ballast_host::{
    BackingMode, DmRing, Host, HostConfig, ResumeReport, VmConfig, VmError, VmId, VmKind,
};
use ballast_vmbus::ring::ChannelSetup;
use thiserror::Error;

use crate::api::types::{
    CreateVm, Created, HostInfo, Operations, Settings, UpdateVm, VmInfo, VmState,
};
use crate::config::DaemonConfig;
use crate::link::{self, Frame, GuestKind, Hello, Welcome};
use crate::store::{Store, StoreError, VmDef};

const PAGE: u64 = 4096;
/// The least startup memory a VM may have (the host's own floor for a guest).
const MIN_STARTUP: u64 = 4 << 20;
/// Most VMs one daemon defines.
pub const MAX_VMS: usize = 4096;

/// What an operation could not do, with the HTTP status it answers.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum ServiceError {
    /// No VM of that name.
    #[error("no VM named {0:?}")]
    NotFound(String),
    /// A request that cannot be carried out as asked.
    #[error("{0}")]
    Invalid(String),
    /// The request conflicts with the VM's state.
    #[error("{0}")]
    Conflict(String),
    /// The host refused.
    #[error("{0}")]
    Host(#[from] VmError),
    /// The definitions could not be written: nothing changed.
    #[error("could not persist the VM definitions: {0}")]
    Store(#[from] StoreError),
}

impl ServiceError {
    /// The HTTP status this error answers with.
    pub fn status(&self) -> u16 {
        match self {
            ServiceError::NotFound(_) => 404,
            ServiceError::Invalid(_) => 400,
            ServiceError::Conflict(_) => 409,
            ServiceError::Host(VmError::NoMemory { .. }) => 507,
            ServiceError::Host(VmError::Settings { .. }) => 400,
            // An operation for the other interface: the request's fault, not the host's.
            ServiceError::Host(VmError::WrongKind(..)) => 400,
            ServiceError::Host(_) | ServiceError::Store(_) => 500,
        }
    }
}

/// The writing half of a guest's link, shared by its connection and the clock loop.
pub type LinkWriter = Arc<Mutex<UnixStream>>;

struct Running {
    vm: VmId,
    /// Which attachment this is: a connection that ended after a newer one attached must
    /// not stop the newer one.
    generation: u64,
    writer: LinkWriter,
    /// The Xen target last sent to the guest, pages.
    sent_target: Option<u64>,
    /// Whether the guest's connection has sent the welcome: nothing else may go on the
    /// link before it, or the guest reads a target where its welcome should be.
    welcomed: bool,
}

/// Everything under the lock.
pub struct State {
    host: Host,
    defs: BTreeMap<String, VmDef>,
    running: BTreeMap<String, Running>,
    violations: BTreeMap<String, u64>,
    next_generation: u64,
    /// Bytes taken back from guests that have stopped since the daemon started.
    discarded_by_stopped: u64,
    /// What each VM taken over from a guest that outlived an earlier daemon held.
    resumed: BTreeMap<String, ResumeReport>,
}

/// The daemon's service.
pub struct Service {
    state: Mutex<State>,
    store: Store,
    config: DaemonConfig,
    started: Instant,
}

/// What a guest is given when it attaches.
#[derive(Debug)]
pub struct Attached {
    /// Which attachment, for [`Service::detach`].
    pub generation: u64,
    /// The welcome frame.
    pub welcome: Welcome,
    /// A descriptor of the VM's memfd, to pass to the guest.
    pub memory: OwnedFd,
    /// A Dynamic Memory guest's ring, to send after the welcome.
    pub ring: Option<ChannelSetup>,
}

/// Checks a VM name: 1-64 of `A-Z a-z 0-9 . _ -`, not starting with `.` or `-` (so it is
/// safe in a file name, a metric label and a command line).
pub fn check_name(name: &str) -> Result<(), ServiceError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && !name.starts_with(['.', '-'])
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(ServiceError::Invalid(format!(
            "bad VM name {name:?}: 1-64 of A-Z a-z 0-9 . _ -, not starting with . or -"
        )))
    }
}

fn check_settings(d: &VmDef) -> Result<(), ServiceError> {
    let bad = |why: String| Err(ServiceError::Invalid(format!("VM {:?}: {why}", d.name)));
    if d.startup < MIN_STARTUP {
        return bad("startup memory below 4 MiB".into());
    }
    if d.minimum > d.startup || d.startup > d.maximum {
        return bad(format!(
            "minimum ({}) <= startup ({}) <= maximum ({}) must hold",
            d.minimum, d.startup, d.maximum
        ));
    }
    if d.maximum >= (u64::from(u32::MAX) - 2) * PAGE {
        return bad("maximum beyond 16 TiB".into());
    }
    if !(5..=2000).contains(&d.buffer_percent) {
        return bad("buffer must be 5-2000 percent".into());
    }
    if d.weight > 100 {
        return bad("weight must be 0-100".into());
    }
    if !(1..=240).contains(&d.vps) {
        return bad("1-240 virtual processors".into());
    }
    if let Some(p) = d.pinned_target {
        if p < d.minimum || p > d.maximum {
            return bad("a fixed target must lie within the minimum and the maximum".into());
        }
    }
    Ok(())
}

/// Free page reporting is Hyper-V's (the cold discard hint, an extended hypercall of a
/// Dynamic Memory guest's partition): a Xen VM cannot have it switched on.
fn check_reporting(d: &VmDef) -> Result<(), ServiceError> {
    if d.free_page_reporting && d.kind == GuestKind::Xen {
        return Err(ServiceError::Invalid(format!(
            "VM {:?} is a Xen guest: free page reporting (Hyper-V's cold discard hint) is for Dynamic Memory guests only",
            d.name
        )));
    }
    Ok(())
}

fn new_token() -> String {
    let mut b = [0u8; 16];
    let mut filled = 0;
    while filled < b.len() {
        match rustix::rand::getrandom(&mut b[filled..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => filled += n,
            Err(rustix::io::Errno::INTR) => {}
            // getrandom cannot fail on a kernel that has it once it is seeded; without a
            // secret a VM cannot be proven, so failing here is the right end.
            Err(e) => panic!("getrandom: {e}"),
        }
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Compares secrets in time independent of where they differ.
fn same_secret(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
}

impl Service {
    /// Opens the state directory, loads the definitions and makes the host.
    pub fn new(config: DaemonConfig) -> Result<Self, String> {
        let store = Store::open(&config.state_dir).map_err(|e| e.to_string())?;
        let defs = store.load().map_err(|e| e.to_string())?;
        let balancer = Balancer::by_name(&config.policy).map_err(|e| e.to_string())?;
        let host = Host::new(
            HostConfig {
                memory_bytes: config.memory_bytes,
                backing: BackingMode::RealMemory,
                reserve_bytes: config.reserve_bytes,
                vsp: VspConfig {
                    post_caps_wait: Duration::from_secs_f64(config.dm_start_delay_s),
                    ..VspConfig::default()
                },
                balance_interval: Duration::from_millis(config.balance_interval_ms),
            },
            balancer,
        )
        .map_err(|e| e.to_string())?;
        Ok(Service {
            state: Mutex::new(State {
                host,
                defs,
                running: BTreeMap::new(),
                violations: BTreeMap::new(),
                next_generation: 1,
                discarded_by_stopped: 0,
                resumed: BTreeMap::new(),
            }),
            store,
            config,
            started: Instant::now(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &DaemonConfig {
        &self.config
    }

    /// Time since start: the host's clock.
    pub fn now(&self) -> Duration {
        self.started.elapsed()
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // A panic under the lock leaves state that every operation re-checks; serving on
        // is better than refusing every later call.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `f` on the state, for the metrics and tests.
    pub fn with_state<T>(&self, f: impl FnOnce(&State) -> T) -> T {
        f(&self.lock())
    }

    /// Defines a VM.
    pub fn create(&self, req: CreateVm) -> Result<Created, ServiceError> {
        check_name(&req.name)?;
        let def = VmDef {
            name: req.name.clone(),
            kind: req.kind,
            startup: req.startup,
            minimum: req.minimum.unwrap_or(req.startup),
            maximum: req.maximum.unwrap_or(req.startup),
            buffer_percent: req.buffer_percent.unwrap_or(20),
            weight: req.weight.unwrap_or(50),
            vps: req.vps.unwrap_or(1),
            pinned_target: None,
            token: new_token(),
            free_page_reporting: req.free_page_reporting.unwrap_or(false),
        };
        check_settings(&def)?;
        check_reporting(&def)?;
        let mut s = self.lock();
        if s.defs.contains_key(&def.name) {
            return Err(ServiceError::Conflict(format!(
                "a VM named {:?} exists",
                def.name
            )));
        }
        if s.defs.len() >= MAX_VMS {
            return Err(ServiceError::Conflict(format!(
                "{MAX_VMS} VMs are defined: the most one daemon keeps"
            )));
        }
        let mut defs = s.defs.clone();
        defs.insert(def.name.clone(), def.clone());
        self.store.save(&defs)?;
        s.defs = defs;
        let vm = s
            .info(&def.name)
            .ok_or_else(|| ServiceError::NotFound(def.name.clone()))?;
        Ok(Created {
            vm,
            token: def.token,
        })
    }

    /// Every VM, by name.
    pub fn list(&self) -> Vec<VmInfo> {
        let s = self.lock();
        s.defs.keys().filter_map(|n| s.info(n)).collect()
    }

    /// One VM.
    pub fn get(&self, name: &str) -> Result<VmInfo, ServiceError> {
        self.lock()
            .info(name)
            .ok_or_else(|| ServiceError::NotFound(name.to_string()))
    }

    /// Changes a VM's settings (persisted first; applied at once if it runs).
    pub fn update(&self, name: &str, u: UpdateVm) -> Result<VmInfo, ServiceError> {
        let mut s = self.lock();
        let old = s
            .defs
            .get(name)
            .ok_or_else(|| ServiceError::NotFound(name.to_string()))?;
        let mut d = old.clone();
        d.startup = u.startup.unwrap_or(d.startup);
        d.minimum = u.minimum.unwrap_or(d.minimum);
        d.maximum = u.maximum.unwrap_or(d.maximum);
        d.buffer_percent = u.buffer_percent.unwrap_or(d.buffer_percent);
        d.weight = u.weight.unwrap_or(d.weight);
        d.free_page_reporting = u.free_page_reporting.unwrap_or(d.free_page_reporting);
        check_settings(&d)?;
        check_reporting(&d)?;
        s.apply_and_save(&self.store, d)?;
        s.info(name)
            .ok_or_else(|| ServiceError::NotFound(name.to_string()))
    }

    /// Sets (or with `None` clears) a VM's fixed target: `mem-set`.
    pub fn set_target(&self, name: &str, bytes: Option<u64>) -> Result<VmInfo, ServiceError> {
        let mut s = self.lock();
        let mut d = s
            .defs
            .get(name)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(name.to_string()))?;
        d.pinned_target = bytes.map(|b| b / PAGE * PAGE);
        check_settings(&d)?;
        s.apply_and_save(&self.store, d)?;
        s.info(name)
            .ok_or_else(|| ServiceError::NotFound(name.to_string()))
    }

    /// Sets a VM's maximum: `mem-max`. Lowering it below the startup memory lowers the
    /// startup memory too (and the minimum, and a fixed target above it), as a maximum is
    /// the upper bound of all of them.
    pub fn set_maximum(&self, name: &str, bytes: u64) -> Result<VmInfo, ServiceError> {
        let mut s = self.lock();
        let mut d = s
            .defs
            .get(name)
            .cloned()
            .ok_or_else(|| ServiceError::NotFound(name.to_string()))?;
        let bytes = bytes / PAGE * PAGE;
        d.maximum = bytes;
        d.startup = d.startup.min(bytes);
        d.minimum = d.minimum.min(bytes);
        d.pinned_target = d.pinned_target.map(|p| p.min(bytes));
        check_settings(&d)?;
        s.apply_and_save(&self.store, d)?;
        s.info(name)
            .ok_or_else(|| ServiceError::NotFound(name.to_string()))
    }

    /// Removes a VM: a running one is stopped (its guest's link closed, its memory
    /// returned) and its definition deleted.
    pub fn destroy(&self, name: &str) -> Result<(), ServiceError> {
        let mut s = self.lock();
        if !s.defs.contains_key(name) {
            return Err(ServiceError::NotFound(name.to_string()));
        }
        let mut defs = s.defs.clone();
        defs.remove(name);
        self.store.save(&defs)?;
        s.defs = defs;
        s.violations.remove(name);
        s.resumed.remove(name);
        if let Some(r) = s.running.remove(name) {
            {
                let w = r.writer.lock().unwrap_or_else(|e| e.into_inner());
                let _ = link::send(&w, &Frame::Stop(format!("VM {name:?} was destroyed")), &[]);
            }
            s.stop(r)?;
        }
        Ok(())
    }

    /// The host's figures.
    pub fn host_info(&self) -> HostInfo {
        let s = self.lock();
        let resident = s
            .running
            .values()
            .filter_map(|r| s.host.vm(r.vm)?.resident)
            .sum();
        HostInfo {
            version: env!("CARGO_PKG_VERSION").to_string(),
            policy: s.host.policy().to_string(),
            memory_bytes: s.host.total_bytes(),
            free_bytes: s.host.free_bytes(),
            pools_bytes: s
                .host
                .hv()
                .partitions()
                .map(|p| (p.pool_available() + p.pool_in_use()) * PAGE)
                .sum(),
            resident_bytes: resident,
            discarded_bytes: s.discarded_bytes(),
            reserve_bytes: self.config.reserve_bytes,
            vms: s.defs.len(),
            running: s.running.len(),
            uptime_s: self.started.elapsed().as_secs_f64(),
        }
    }

    /// A guest's hello: checks who it is and, if it may, starts its VM. `writer` is the
    /// link the daemon will write to (Xen targets, a shutdown).
    ///
    /// A resuming guest (`hello.resume`) brings its memory (`memory`, the memfd it kept)
    /// and the ranges it had given the host: its VM is taken over as it was, not started
    /// afresh (see `Host::resume_vm`).
    pub fn attach(
        &self,
        hello: &Hello,
        writer: LinkWriter,
        memory: Option<OwnedFd>,
        ballooned: &[GfnRange],
    ) -> Result<Attached, String> {
        if hello.version != link::VERSION {
            return Err(format!(
                "guest link version {} (this daemon speaks {})",
                hello.version,
                link::VERSION
            ));
        }
        let mut s = self.lock();
        let Some(def) = s.defs.get(&hello.name).cloned() else {
            return Err(format!("no VM named {:?}", hello.name));
        };
        if !same_secret(&def.token, &hello.token) {
            *s.violations.entry(def.name.clone()).or_default() += 1;
            return Err(format!("wrong token for VM {:?}", def.name));
        }
        if s.running.contains_key(&def.name) {
            return Err(format!("VM {:?} already has a guest attached", def.name));
        }
        let kind = match def.kind {
            GuestKind::Dm => VmKind::Dm,
            GuestKind::Xen => VmKind::Xen,
        };
        let config = VmConfig {
            name: def.name.clone(),
            kind,
            settings: def.settings(),
            vps: def.vps,
            // The partition's privilege, granted as it is made (or taken over): the guest
            // asks for the capability once its driver starts.
            free_page_reporting: def.free_page_reporting && kind == VmKind::Dm,
        };
        let vm = match (hello.resume, memory) {
            (None, _) => s
                .host
                .create_vm_with_ring(config, DmRing::Shared)
                .map_err(|e| e.to_string())?,
            (Some(r), Some(fd)) => {
                let (vm, report) = s
                    .host
                    .resume_vm(config, DmRing::Shared, fd, r.ram_top, ballooned)
                    .map_err(|e| format!("cannot take the VM over: {e}"))?;
                s.resumed.insert(def.name.clone(), report);
                vm
            }
            (Some(_), None) => return Err("a resuming guest must bring its memfd".into()),
        };
        let started = (|| -> Result<Attached, String> {
            if let Some(p) = def.pinned_target {
                s.host.pin_target(vm, Some(p)).map_err(|e| e.to_string())?;
            }
            let fd = s
                .host
                .memory_fd(vm)
                .ok_or("the VM has no memory")?
                .try_clone_to_owned()
                .map_err(|e| format!("dup of the VM's memfd: {e}"))?;
            let memory_bytes = rustix::fs::fstat(&fd)
                .map_err(|e| format!("fstat of the VM's memfd: {e}"))?
                .st_size as u64;
            let ring = match kind {
                VmKind::Dm => Some(s.host.take_dm_setup(vm).ok_or("the VM has no ring")?),
                VmKind::Xen => None,
            };
            let generation = s.next_generation;
            Ok(Attached {
                generation,
                welcome: Welcome {
                    name: def.name.clone(),
                    kind: def.kind,
                    startup_bytes: def.startup,
                    memory_bytes,
                    maximum_bytes: def.maximum,
                },
                memory: fd,
                ring,
            })
        })();
        match started {
            Ok(a) => {
                s.next_generation += 1;
                s.running.insert(
                    def.name.clone(),
                    Running {
                        vm,
                        generation: a.generation,
                        writer,
                        sent_target: None,
                        welcomed: false,
                    },
                );
                Ok(a)
            }
            Err(e) => {
                let _ = s.host.destroy_vm(vm);
                Err(e)
            }
        }
    }

    /// The guest's welcome (and ring) went out on its link: from now on the clock may
    /// send it targets. A stale `generation` changes nothing.
    pub fn welcomed(&self, name: &str, generation: u64) {
        if let Some(r) = self.lock().running.get_mut(name) {
            if r.generation == generation {
                r.welcomed = true;
            }
        }
    }

    /// A guest's link ended: its VM stops and its memory comes back. A stale
    /// `generation` (the VM was destroyed, or restarted by another guest) changes nothing.
    pub fn detach(&self, name: &str, generation: u64) {
        let mut s = self.lock();
        if s.running
            .get(name)
            .is_some_and(|r| r.generation == generation)
        {
            if let Some(r) = s.running.remove(name) {
                let _ = s.stop(r);
            }
        }
    }

    /// Counts a protocol violation against a VM's guest.
    pub fn violation(&self, name: &str) {
        *self.lock().violations.entry(name.to_string()).or_default() += 1;
    }

    /// A Xen guest's `memory_op`, as itself, on the argument memory it sent.
    pub fn xen_memory_op(
        &self,
        name: &str,
        generation: u64,
        cmd: u64,
        arg: u64,
        base: u64,
        bytes: Vec<u8>,
    ) -> Result<Frame, String> {
        let mut s = self.lock();
        let vm = s.current(name, generation)?;
        let mut mem = FlatMemory::new(base, 0);
        mem.bytes = bytes;
        let r = s
            .host
            .xen_memory_op(vm, cmd, arg, &mut mem)
            .map_err(|e| e.to_string())?;
        Ok(Frame::XenResult {
            ret: r.ret,
            continuation: r.continuation,
            bytes: mem.bytes,
        })
    }

    /// A Dynamic Memory guest's Hyper-V hypercall, as itself: `control` and `input` as it
    /// sent them, `output_len` bytes of output page (zeroed before the call) sent back.
    /// A Xen guest has no Hyper-V interface: refused, as a protocol violation.
    pub fn hv_call(
        &self,
        name: &str,
        generation: u64,
        control: u64,
        input: &[u8],
        output_len: u16,
    ) -> Result<Frame, String> {
        let mut s = self.lock();
        let vm = s.current(name, generation)?;
        // The link bounds `output_len` to a page.
        let mut output = vec![0u8; usize::from(output_len)];
        let rax = s
            .host
            .hv_hypercall(vm, control, input, &mut output)
            .map_err(|e| e.to_string())?;
        Ok(Frame::HvResult { rax, output })
    }

    /// A Xen guest's report of what it commits.
    pub fn xen_report(&self, name: &str, generation: u64, committed: u64) -> Result<(), String> {
        let mut s = self.lock();
        let vm = s.current(name, generation)?;
        s.host.xen_report(vm, committed);
        Ok(())
    }

    /// One pass of the clock: the host stepped to now (the balancer on its interval),
    /// its sessions pumped until quiet or for a bounded number of rounds, and each Xen
    /// guest told its new target. Returns whether anything moved.
    pub fn tick(&self) -> bool {
        let now = self.now();
        let mut s = self.lock();
        s.host.step(now);
        let mut moved = false;
        for _ in 0..64 {
            if !s.host.pump(now) {
                break;
            }
            moved = true;
        }
        let mut sends = Vec::new();
        let st = &mut *s;
        for r in st.running.values_mut().filter(|r| r.welcomed) {
            if let Some(t) = st.host.xen_target_pages(r.vm) {
                if r.sent_target != Some(t) {
                    r.sent_target = Some(t);
                    sends.push((Arc::clone(&r.writer), t));
                }
            }
        }
        drop(s);
        for (w, pages) in sends {
            let w = w.lock().unwrap_or_else(|e| e.into_inner());
            // A guest that cannot take its target is gone or stalled; its reader sees
            // the end of the link and stops it.
            let _ = link::send(&w, &Frame::XenTarget { pages }, &[]);
        }
        moved
    }

    /// Stops every running VM (the daemon is shutting down in order).
    pub fn stop_all(&self) {
        let mut s = self.lock();
        let names: Vec<String> = s.running.keys().cloned().collect();
        for n in names {
            if let Some(r) = s.running.remove(&n) {
                let _ = s.stop(r);
            }
        }
    }
}

impl State {
    /// The host.
    pub fn host(&self) -> &Host {
        &self.host
    }

    /// Names of the defined VMs.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.defs.keys().map(String::as_str)
    }

    /// One VM's figures.
    pub fn info(&self, name: &str) -> Option<VmInfo> {
        let d = self.defs.get(name)?;
        let view = self.running.get(name).and_then(|r| self.host.vm(r.vm));
        let settings = Settings {
            startup: d.startup,
            minimum: d.minimum,
            maximum: d.maximum,
            buffer_percent: d.buffer_percent,
            weight: d.weight,
            vps: d.vps,
        };
        let violations = self.violations.get(name).copied().unwrap_or(0);
        Some(match view {
            Some(v) => VmInfo {
                name: d.name.clone(),
                kind: d.kind,
                state: VmState::Running,
                settings,
                pinned_target: d.pinned_target,
                free_page_reporting: d.free_page_reporting,
                assigned: v.assigned,
                target: v.target,
                committed: v.committed,
                available: v.available,
                pressure: v
                    .committed
                    .filter(|_| v.assigned > 0)
                    .map(|c| c as f64 * 100.0 / v.assigned as f64),
                ballooned: v.ballooned,
                resident: v.resident,
                stuck: v.stuck,
                unresponsive: v.unresponsive,
                partition: Some(v.partition.0),
                domid: Some(v.domid.0),
                operations: Operations {
                    balloon: v.ops.balloon,
                    balloon_bytes: v.ops.balloon_pages * PAGE,
                    unballoon: v.ops.unballoon,
                    unballoon_bytes: v.ops.unballoon_pages * PAGE,
                    hot_add: v.ops.hot_add,
                    hot_add_bytes: v.ops.hot_add_pages * PAGE,
                    decrease: v.ops.decrease,
                    decrease_bytes: v.ops.decrease_pages * PAGE,
                    populate: v.ops.populate,
                    populate_bytes: v.ops.populate_pages * PAGE,
                    target_changes: v.ops.target_changes,
                    failures: v.ops.failures,
                    hint_calls: v.ops.hint,
                    hinted_bytes: v.ops.hint_pages * PAGE,
                },
                violations,
            },
            None => VmInfo {
                name: d.name.clone(),
                kind: d.kind,
                state: VmState::Stopped,
                settings,
                pinned_target: d.pinned_target,
                free_page_reporting: d.free_page_reporting,
                assigned: 0,
                target: 0,
                committed: None,
                available: None,
                pressure: None,
                ballooned: 0,
                resident: None,
                stuck: false,
                unresponsive: false,
                partition: None,
                domid: None,
                operations: Operations::default(),
                violations,
            },
        })
    }

    /// What a VM taken over after a restart held, if it was.
    pub fn resumed(&self, name: &str) -> Option<ResumeReport> {
        self.resumed.get(name).copied()
    }

    /// Bytes taken back from guests since the daemon started.
    pub fn discarded_bytes(&self) -> u64 {
        let live: u64 = self
            .running
            .values()
            .filter_map(|r| self.host.vm(r.vm))
            .map(|v| (v.ops.balloon_pages + v.ops.decrease_pages) * PAGE)
            .sum();
        self.discarded_by_stopped + live
    }

    fn current(&self, name: &str, generation: u64) -> Result<VmId, String> {
        match self.running.get(name) {
            Some(r) if r.generation == generation => Ok(r.vm),
            _ => Err(format!("VM {name:?} is not running on this link")),
        }
    }

    /// Persists `d` and applies it to the running VM, if any. The running VM is checked
    /// first, so a change the host refuses is neither applied nor saved.
    fn apply_and_save(&mut self, store: &Store, d: VmDef) -> Result<(), ServiceError> {
        if let Some(r) = self.running.get(&d.name) {
            let vm = r.vm;
            let old = self.defs.get(&d.name).cloned();
            let was_reporting = old.as_ref().is_some_and(|o| o.free_page_reporting);
            // Reporting first: a Xen VM never gets here with it on (`check_reporting`),
            // and for a DM VM the privilege change cannot fail; undone if what follows is
            // refused.
            if d.free_page_reporting != was_reporting {
                self.host
                    .set_free_page_reporting(vm, d.free_page_reporting)?;
            }
            let undo_reporting = |host: &mut Host| {
                if d.free_page_reporting != was_reporting {
                    let _ = host.set_free_page_reporting(vm, was_reporting);
                }
            };
            if let Err(e) = self.host.set_settings(vm, d.settings()) {
                undo_reporting(&mut self.host);
                return Err(e.into());
            }
            if let Err(e) = self.host.pin_target(vm, d.pinned_target) {
                if let Some(old) = &old {
                    let _ = self.host.set_settings(vm, old.settings());
                }
                undo_reporting(&mut self.host);
                return Err(e.into());
            }
        }
        let mut defs = self.defs.clone();
        defs.insert(d.name.clone(), d);
        store.save(&defs)?;
        self.defs = defs;
        Ok(())
    }

    /// Tears a running VM down and closes its guest's link.
    fn stop(&mut self, r: Running) -> Result<(), ServiceError> {
        if let Some(v) = self.host.vm(r.vm) {
            self.discarded_by_stopped += (v.ops.balloon_pages + v.ops.decrease_pages) * PAGE;
        }
        let result = self.host.destroy_vm(r.vm);
        let w = r.writer.lock().unwrap_or_else(|e| e.into_inner());
        let _ = w.shutdown(std::net::Shutdown::Both);
        result.map_err(Into::into)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::types::CreateVm;
    use ballast_abi::hv::{
        Control, HvError, HvExtCapabilities, HvStatus, HypercallCode, HypercallOutput,
    };

    fn service(tag: &str) -> (Service, std::path::PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("ballast-service-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut c = DaemonConfig::with_state_dir(&dir);
        c.memory_bytes = 256 << 20;
        (Service::new(c).unwrap(), dir)
    }

    fn waiting(s: &UnixStream) -> bool {
        let mut b = [0u8; 1];
        matches!(
            rustix::net::recv(
                s,
                &mut b[..],
                rustix::net::RecvFlags::PEEK | rustix::net::RecvFlags::DONTWAIT,
            ),
            Ok((n, _)) if n > 0
        )
    }

    /// The clock sends a Xen guest nothing between its attach and its welcome: a target
    /// sent in that gap reached the guest where it read its welcome, and the guest gave
    /// up on the link.
    #[test]
    fn no_target_goes_out_before_the_welcome() {
        let (svc, dir) = service("welcome");
        let c = svc
            .create(CreateVm {
                name: "x".into(),
                kind: GuestKind::Xen,
                startup: 32 << 20,
                minimum: Some(16 << 20),
                maximum: Some(64 << 20),
                buffer_percent: None,
                weight: None,
                vps: None,
                free_page_reporting: None,
            })
            .unwrap();
        let (daemon_end, guest_end) = UnixStream::pair().unwrap();
        let hello = Hello {
            version: link::VERSION,
            name: "x".into(),
            token: c.token,
            resume: None,
        };
        let a = svc
            .attach(&hello, Arc::new(Mutex::new(daemon_end)), None, &[])
            .unwrap();
        for _ in 0..3 {
            svc.tick();
        }
        assert!(!waiting(&guest_end), "a frame went out before the welcome");
        svc.welcomed("x", a.generation);
        svc.tick();
        let (f, _) = link::recv(&guest_end).unwrap();
        assert_eq!(f, Frame::XenTarget { pages: 8192 });
        let _ = std::fs::remove_dir_all(&dir);
    }

    fn vm(name: &str, kind: GuestKind, reporting: Option<bool>) -> CreateVm {
        CreateVm {
            name: name.into(),
            kind,
            startup: 32 << 20,
            minimum: None,
            maximum: None,
            buffer_percent: None,
            weight: None,
            vps: None,
            free_page_reporting: reporting,
        }
    }

    fn attach(svc: &Service, name: &str, token: String) -> (Attached, UnixStream) {
        let (daemon_end, guest_end) = UnixStream::pair().unwrap();
        let hello = Hello {
            version: link::VERSION,
            name: name.into(),
            token,
            resume: None,
        };
        let a = svc
            .attach(&hello, Arc::new(Mutex::new(daemon_end)), None, &[])
            .unwrap();
        (a, guest_end)
    }

    /// The capability query as the guest's driver makes it: its status and bits.
    fn query(svc: &Service, name: &str, generation: u64) -> (HvStatus, u64) {
        let control = Control::for_call(HypercallCode::HvExtCallQueryCapabilities, 0, 0);
        match svc.hv_call(name, generation, control.into_bits(), &[], 8) {
            Ok(Frame::HvResult { rax, output }) => (
                HypercallOutput::from_bits(rax).status(),
                u64::from_le_bytes(output.try_into().unwrap()),
            ),
            other => panic!("{other:?}"),
        }
    }

    /// Free page reporting is a Dynamic Memory VM's setting: refused for a Xen VM at
    /// create and in a change; persisted; for a running DM VM it is its partition's
    /// privilege, which the guest's capability query over the link sees at once.
    #[test]
    fn free_page_reporting_is_a_dm_setting_that_reaches_the_running_partition() {
        let (svc, dir) = service("reporting");
        let e = svc.create(vm("x", GuestKind::Xen, Some(true))).unwrap_err();
        assert_eq!(e.status(), 400);
        assert!(e.to_string().contains("Dynamic Memory"), "{e}");
        let x = svc.create(vm("x", GuestKind::Xen, Some(false))).unwrap();
        let on = UpdateVm {
            free_page_reporting: Some(true),
            ..UpdateVm::default()
        };
        assert_eq!(svc.update("x", on.clone()).unwrap_err().status(), 400);
        assert!(!svc.get("x").unwrap().free_page_reporting);

        let d = svc.create(vm("d", GuestKind::Dm, Some(true))).unwrap();
        assert!(d.vm.free_page_reporting);
        let plain = svc.create(vm("p", GuestKind::Dm, None)).unwrap();
        assert!(!plain.vm.free_page_reporting);
        let (a, _d_end) = attach(&svc, "d", d.token);
        let (st, caps) = query(&svc, "d", a.generation);
        assert_eq!(st, HvStatus::SUCCESS);
        assert!(HvExtCapabilities::from_bits(caps).memory_cold_discard_hint());
        let (p, _p_end) = attach(&svc, "p", plain.token);
        assert_eq!(
            query(&svc, "p", p.generation).0,
            HvStatus::from(HvError::ACCESS_DENIED)
        );

        // Switched at run time, both ways, and kept in the definitions.
        let off = UpdateVm {
            free_page_reporting: Some(false),
            ..UpdateVm::default()
        };
        assert!(!svc.update("d", off).unwrap().free_page_reporting);
        assert_eq!(
            query(&svc, "d", a.generation).0,
            HvStatus::from(HvError::ACCESS_DENIED)
        );
        assert!(svc.update("p", on).unwrap().free_page_reporting);
        assert_eq!(query(&svc, "p", p.generation).0, HvStatus::SUCCESS);
        let defs = Store::open(&dir).unwrap().load().unwrap();
        assert!(!defs["d"].free_page_reporting && defs["p"].free_page_reporting);

        // A stale link, and a Xen guest (no Hyper-V interface), are refused.
        let control = Control::for_call(HypercallCode::HvExtCallQueryCapabilities, 0, 0);
        assert!(
            svc.hv_call("p", p.generation + 100, control.into_bits(), &[], 8)
                .is_err()
        );
        let (xa, _x_end) = attach(&svc, "x", x.token);
        assert!(
            svc.hv_call("x", xa.generation, control.into_bits(), &[], 8)
                .is_err()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
