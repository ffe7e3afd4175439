//! The daemon under load: 200 guest sessions reporting every second while targets change,
//! for at least 60 s, against an idle daemon measured in the same run.
//!
//! Run: `cargo bench -p ballast --bench daemon_load`
//!
//! Two `ballast daemon` processes run side by side, each with the same 200 VMs defined
//! (64 MiB startup, 32 MiB minimum, 128 MiB maximum; half Dynamic Memory, half Xen;
//! `dm_start_delay_s = 1`): the loaded one with a guest attached to every VM, the idle one
//! with none. The guests are `ballast guest` processes, one per VM (or, with
//! `BALLAST_LOAD_GUESTS=threads`, threads of this process, each running
//! `ballast_daemon::guest::run` over its own connection: still one session per guest). A
//! Dynamic Memory guest's VSC reports its pressure every second after `--report-delay 1`;
//! a Xen guest reports at each of its steps.
//!
//! Once every guest runs and reports, the load phase (60 s, `BALLAST_LOAD_SECONDS` to
//! change it) makes a few control API calls a second: each round a fixed target on a
//! random VM (`PUT /v1/vms/{name}/target`, within its minimum and maximum, now and then
//! cleared instead) and one of `GET /v1/vms/{name}`, `GET /v1/vms` and `GET /v1/host`,
//! each call made to both daemons in an order that alternates from round to round (as
//! `ballast_benchkit::interleaved` does), each on its own connection as the CLI makes
//! them. Every call is timed; each daemon's CPU (utime + stime, /proc/PID/stat) and
//! memory (VmRSS, /proc/PID/status) are sampled every second.
//!
//! At the end: every session must still be attached (`state == running`), no VM stuck or
//! unresponsive, every VM's violations 0, and the fixed targets set more than
//! [`SETTLE`] before the end reached. The bench prints latency p50/p99/max per call for
//! the loaded daemon, the idle one's, and their ratios (of the percentiles, and the
//! median of the per-round ratios with its spread), the daemon's CPU (% of one core, and
//! per guest) and RSS (and per guest, over the idle daemon's), and exits non-zero if a
//! check failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ballast_benchkit::{Spread, XorShift, sig};
use ballast_daemon::api::types::{CreateVm, VmInfo, VmState};
use ballast_daemon::client::Client;
use ballast_daemon::guest::{GuestOptions, run as run_guest};
use ballast_daemon::link::GuestKind;
use ballast_sim::workload::WorkloadSpec;

/// The `ballast` binary: the one built with this bench, or `BALLAST_BIN` (a target
/// directory shared between checkouts may have had its `ballast` replaced since).
fn bin() -> std::ffi::OsString {
    std::env::var_os("BALLAST_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_ballast").into())
}
const MIB: u64 = 1 << 20;
const GUESTS: usize = 200;
const STARTUP: u64 = 64 * MIB;
const MINIMUM: u64 = 32 * MIB;
const MAXIMUM: u64 = 128 * MIB;
/// Each guest's steady demand: small enough that a Dynamic Memory guest can balloon to
/// its minimum above Linux's balloon floor (8 MiB + half its RAM below 128 MiB).
const DEMAND: &str = "4M";
/// Managed memory: room for every guest at its maximum.
const HOST_MEMORY: &str = "26G";
/// Rounds of calls per second.
const ROUNDS_PER_S: u32 = 5;
/// A target within this of what a guest has is reached (the host's own slack: smaller
/// moves cost a protocol round trip for less than a 2 MiB block).
const SLACK: u64 = 2 * MIB;
/// A fixed target set this long before the end must have been reached.
const SETTLE: Duration = Duration::from_secs(5);
/// The bench stops early, failing, if the machine's available memory falls below this:
/// the guests' memory is real, and the machine is shared.
const MIN_AVAILABLE: u64 = 2 << 30;
/// USER_HZ: the unit of /proc/PID/stat's times (100 on x86 and arm64 Linux).
const USER_HZ: f64 = 100.0;

struct Daemon {
    child: Child,
    dir: PathBuf,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let config = dir.join("daemon.toml");
        let state = dir.join("state");
        std::fs::write(
            &config,
            format!(
                "state_dir = {state:?}\n[host]\nmemory = \"{HOST_MEMORY}\"\npolicy = \"ballast\"\ndm_start_delay_s = 1\n"
            ),
        )
        .unwrap();
        let child = Command::new(bin())
            .arg("daemon")
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Daemon { child, dir: state };
        let start = Instant::now();
        while std::os::unix::net::UnixStream::connect(d.control()).is_err()
            || std::os::unix::net::UnixStream::connect(d.guests()).is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "daemon did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    fn guests(&self) -> PathBuf {
        self.dir.join("guest.sock")
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn client(&self) -> Client {
        Client::new(self.control())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// CPU seconds (user + system) a process has used.
fn cpu_s(pid: u32) -> f64 {
    let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0.0;
    };
    // Fields after the command name, which is in parentheses and may hold spaces.
    let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
    (t(11) + t(12)) / USER_HZ
}

/// CPU seconds of a process's threads, by thread name.
fn cpu_by_thread(pid: u32) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let Ok(tid) = t.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/comm"))
            .unwrap_or_default()
            .trim()
            .to_string();
        let Ok(s) = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")) else {
            continue;
        };
        let rest = s.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<&str> = rest.split_whitespace().collect();
        let t = |i: usize| f.get(i).and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
        *out.entry(comm).or_default() += (t(11) + t(12)) / USER_HZ;
    }
    out
}

/// A `kB` line of /proc/PID/status, bytes.
fn status_bytes(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |k| k * 1024)
}

fn mem_available() -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(u64::MAX, |k| k * 1024)
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

fn name(i: usize) -> String {
    format!("g{i:03}")
}

fn kind(i: usize) -> GuestKind {
    if i % 2 == 0 {
        GuestKind::Dm
    } else {
        GuestKind::Xen
    }
}

/// The sessions, as processes or as threads of this process.
enum Sessions {
    Processes(Vec<Child>),
    Threads(Vec<std::thread::JoinHandle<Result<(), String>>>),
}

impl Sessions {
    fn start(threads: bool, socket: &Path, tokens: &[String]) -> Sessions {
        if threads {
            let hs = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    let opts = GuestOptions {
                        socket: socket.to_path_buf(),
                        name: name(i),
                        token: t.clone(),
                        workload: WorkloadSpec::Steady {
                            level: 4 * MIB,
                            noise_percent: 0.0,
                        },
                        seed: i as u64,
                        report_delay_s: 1,
                        duration: None,
                        // The bench's end is the daemon's: nothing to wait for.
                        reconnect_for: Duration::ZERO,
                    };
                    std::thread::Builder::new()
                        .name(name(i))
                        .stack_size(256 << 10)
                        .spawn(move || {
                            run_guest(&opts, |_, _| {})
                                .map(|_| ())
                                .map_err(|e| e.to_string())
                        })
                        .unwrap()
                })
                .collect();
            Sessions::Threads(hs)
        } else {
            let cs = tokens
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    Command::new(bin())
                        .args([
                            "guest",
                            "--quiet",
                            "--report-delay",
                            "1",
                            "--reconnect-for",
                            "0",
                        ])
                        .args(["--workload", DEMAND, "--seed", &i.to_string()])
                        .arg("--connect")
                        .arg(socket)
                        .args(["--name", &name(i)])
                        .env("BALLAST_TOKEN", t)
                        .stdin(Stdio::null())
                        .spawn()
                        .unwrap()
                })
                .collect();
            Sessions::Processes(cs)
        }
    }

    fn what(&self) -> &'static str {
        match self {
            Sessions::Processes(_) => "one `ballast guest` process per guest",
            Sessions::Threads(_) => "one thread per guest in the load generator",
        }
    }

    /// Sessions that ended.
    fn ended(&mut self) -> Vec<String> {
        match self {
            Sessions::Processes(cs) => cs
                .iter_mut()
                .enumerate()
                .filter_map(|(i, c)| match c.try_wait() {
                    Ok(None) => None,
                    Ok(Some(st)) => Some(format!("{}: exited {st}", name(i))),
                    Err(e) => Some(format!("{}: {e}", name(i))),
                })
                .collect(),
            Sessions::Threads(hs) => hs
                .iter()
                .enumerate()
                .filter(|(_, h)| h.is_finished())
                .map(|(i, _)| format!("{}: its thread ended", name(i)))
                .collect(),
        }
    }

    /// CPU seconds of the guests' side (their processes, or this whole process).
    fn cpu_s(&self) -> f64 {
        match self {
            Sessions::Processes(cs) => cs.iter().map(|c| cpu_s(c.id())).sum(),
            Sessions::Threads(_) => cpu_s(std::process::id()),
        }
    }

    fn stop(self) {
        match self {
            Sessions::Processes(mut cs) => {
                for c in &mut cs {
                    let _ = c.kill();
                }
                for c in &mut cs {
                    let _ = c.wait();
                }
            }
            // The daemon's end closes their links.
            Sessions::Threads(hs) => {
                for h in hs {
                    let _ = h.join();
                }
            }
        }
    }
}

/// Latencies of one kind of call, seconds, in round order, for both daemons.
#[derive(Default)]
struct Calls {
    loaded: Vec<f64>,
    idle: Vec<f64>,
}

fn pct(v: &[f64], p: f64) -> f64 {
    let mut v = v.to_vec();
    v.sort_by(f64::total_cmp);
    if v.is_empty() {
        return f64::NAN;
    }
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i]
}

fn ms(s: f64) -> String {
    sig(s * 1e3)
}

/// One timed call; an error is a failed check, not a panic, so the report still prints.
async fn timed<T>(
    f: impl std::future::Future<Output = Result<T, ballast_daemon::client::ClientError>>,
    errors: &mut Vec<String>,
    what: &str,
) -> f64 {
    let t = Instant::now();
    let r = f.await;
    let dt = t.elapsed().as_secs_f64();
    if let Err(e) = r {
        errors.push(format!("{what}: {e}"));
    }
    dt
}

fn main() {
    let threads = std::env::var("BALLAST_LOAD_GUESTS").is_ok_and(|v| v == "threads");
    let seconds: u64 = std::env::var("BALLAST_LOAD_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(60);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let root = std::env::temp_dir().join(format!("ballast-load-{}", std::process::id()));
    let loaded = Daemon::start(&root.join("loaded"));
    let idle = Daemon::start(&root.join("idle"));
    let load_before = loadavg();

    // The same 200 VMs on both daemons.
    let (lc, ic) = (loaded.client(), idle.client());
    let tokens: Vec<String> = rt.block_on(async {
        let mut tokens = Vec::new();
        for i in 0..GUESTS {
            let req = CreateVm {
                name: name(i),
                kind: kind(i),
                startup: STARTUP,
                minimum: Some(MINIMUM),
                maximum: Some(MAXIMUM),
                buffer_percent: None,
                weight: None,
                vps: None,
                free_page_reporting: None,
            };
            tokens.push(lc.create(&req).await.unwrap().token);
            ic.create(&req).await.unwrap();
        }
        tokens
    });

    let mut sessions = Sessions::start(threads, &loaded.guests(), &tokens);
    let started = Instant::now();
    let mut failures: Vec<String> = Vec::new();
    // Every guest attached and reporting.
    loop {
        let vms = rt.block_on(lc.list()).unwrap();
        let ready = vms
            .iter()
            .filter(|v| v.state == VmState::Running && v.committed.is_some())
            .count();
        if ready == GUESTS {
            break;
        }
        if started.elapsed() > Duration::from_secs(60) {
            let late: Vec<String> = vms
                .iter()
                .filter(|v| v.state != VmState::Running || v.committed.is_none())
                .take(8)
                .map(|v| {
                    format!(
                        "{} {:?} {:?} assigned {} MiB, unresponsive {}",
                        v.name,
                        v.kind,
                        v.state,
                        v.assigned / MIB,
                        v.unresponsive
                    )
                })
                .collect();
            failures.push(format!(
                "only {ready} of {GUESTS} guests attached and reporting after 60 s: {late:?}"
            ));
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let attach_s = started.elapsed().as_secs_f64();

    // The load phase.
    let mut rng = XorShift(0x9e37_79b9_7f4a_7c15);
    let mut calls: BTreeMap<&'static str, Calls> = BTreeMap::new();
    let mut errors = Vec::new();
    let mut last_set: BTreeMap<String, (Instant, Option<u64>)> = BTreeMap::new();
    let (lp, ip) = (loaded.pid(), idle.pid());
    let (cpu0_l, cpu0_i, cpu0_g) = (cpu_s(lp), cpu_s(ip), sessions.cpu_s());
    let threads0 = cpu_by_thread(lp);
    let mut rss_l = Vec::new();
    let mut rss_i = Vec::new();
    let mut anon_l = Vec::new();
    let begin = Instant::now();
    let period = Duration::from_secs(1) / ROUNDS_PER_S;
    let mut round = 0u64;
    let mut next_sample = Duration::ZERO;
    while begin.elapsed() < Duration::from_secs(seconds) {
        let t0 = Instant::now();
        let vm = name((rng.next_u64() % GUESTS as u64) as usize);
        // One change in eight gives the VM back to the balancer.
        let target = if rng.next_u64() % 8 == 0 {
            None
        } else {
            let pages = (MAXIMUM - MINIMUM) / 4096;
            Some(MINIMUM + rng.next_u64() % (pages + 1) * 4096)
        };
        let other = match round % 3 {
            0 => "GET /v1/vms/{name}",
            1 => "GET /v1/vms",
            _ => "GET /v1/host",
        };
        rt.block_on(async {
            let order = if round % 2 == 0 {
                [(&lc, true), (&ic, false)]
            } else {
                [(&ic, false), (&lc, true)]
            };
            for (c, loaded_side) in order {
                let side = if loaded_side { "loaded" } else { "idle" };
                let dt = timed(
                    c.set_target(&vm, target),
                    &mut errors,
                    &format!("{side} set_target {vm}"),
                )
                .await;
                let e = calls.entry("PUT /v1/vms/{name}/target").or_default();
                if loaded_side {
                    &mut e.loaded
                } else {
                    &mut e.idle
                }
                .push(dt);
                let dt = match other {
                    "GET /v1/vms/{name}" => timed(c.get(&vm), &mut errors, "get").await,
                    "GET /v1/vms" => timed(c.list(), &mut errors, "list").await,
                    _ => timed(c.host(), &mut errors, "host").await,
                };
                let e = calls.entry(other).or_default();
                if loaded_side {
                    &mut e.loaded
                } else {
                    &mut e.idle
                }
                .push(dt);
            }
        });
        last_set.insert(vm, (Instant::now(), target));
        round += 1;
        if begin.elapsed() >= next_sample {
            next_sample += Duration::from_secs(1);
            rss_l.push(status_bytes(lp, "VmRSS:") as f64);
            anon_l.push(status_bytes(lp, "RssAnon:") as f64);
            rss_i.push(status_bytes(ip, "VmRSS:") as f64);
            if mem_available() < MIN_AVAILABLE {
                failures.push("the machine ran low on memory: stopped early".into());
                break;
            }
        }
        std::thread::sleep(period.saturating_sub(t0.elapsed()));
    }
    let wall = begin.elapsed().as_secs_f64();
    let cpu_l = cpu_s(lp) - cpu0_l;
    let cpu_i = cpu_s(ip) - cpu0_i;
    let cpu_g = sessions.cpu_s() - cpu0_g;
    let threads1 = cpu_by_thread(lp);
    let load_after = loadavg();

    // The checks.
    let vms: Vec<VmInfo> = rt.block_on(lc.list()).unwrap();
    let end = Instant::now();
    let not_running: Vec<&str> = vms
        .iter()
        .filter(|v| v.state != VmState::Running)
        .map(|v| v.name.as_str())
        .collect();
    let stuck: Vec<&str> = vms
        .iter()
        .filter(|v| v.stuck || v.unresponsive)
        .map(|v| v.name.as_str())
        .collect();
    let violations: u64 = vms.iter().map(|v| v.violations).sum();
    let (mut eligible, mut reached, mut recent, mut recent_reached) = (0, 0, 0, 0);
    let (mut beyond, mut beyond_at_most) = (0, 0);
    let mut missed = Vec::new();
    for v in &vms {
        let Some(p) = v.pinned_target else { continue };
        // A Dynamic Memory guest grows only by hot-adding whole memory blocks (128 MiB on
        // x86 Linux), and 64 MiB of room below its maximum holds none: a target above its
        // startup memory leaves it at the most it can have.
        let want = if v.kind == GuestKind::Dm && p > STARTUP {
            beyond += 1;
            STARTUP
        } else {
            p
        };
        let at = v.assigned.abs_diff(want) <= SLACK;
        if want != p {
            beyond_at_most += usize::from(at);
        }
        let since = last_set.get(&v.name).map(|(t, _)| *t).unwrap_or(begin);
        if end.duration_since(since) >= SETTLE {
            eligible += 1;
            if at {
                reached += 1;
            } else {
                missed.push(format!(
                    "{} ({:?}): {} MiB for {} MiB",
                    v.name,
                    v.kind,
                    v.assigned / MIB,
                    p / MIB
                ));
            }
        } else {
            recent += 1;
            recent_reached += usize::from(at);
        }
    }
    let ended = sessions.ended();
    if !ended.is_empty() {
        failures.push(format!("sessions ended: {ended:?}"));
    }
    if !not_running.is_empty() {
        failures.push(format!("VMs not running: {not_running:?}"));
    }
    if !stuck.is_empty() {
        failures.push(format!("VMs stuck or unresponsive: {stuck:?}"));
    }
    if violations != 0 {
        failures.push(format!("{violations} violations"));
    }
    if !errors.is_empty() {
        failures.push(format!(
            "{} API calls failed: {:?}",
            errors.len(),
            &errors[..errors.len().min(5)]
        ));
    }
    // Most: a guest may still be moving towards a target it was given just before.
    if reached * 10 < eligible * 9 {
        failures.push(format!(
            "only {reached} of {eligible} settled targets reached: {missed:?}"
        ));
    }

    // The report.
    let n_calls: usize = calls.values().map(|c| c.loaded.len() + c.idle.len()).sum();
    println!(
        "daemon under load: {GUESTS} guest sessions ({}), half Dynamic Memory, half Xen, 64 MiB startup (32..128 MiB), demand {DEMAND} each",
        sessions.what()
    );
    println!(
        "attached and reporting after {:.1} s; load phase {:.1} s, {round} rounds, {n_calls} API calls ({} per daemon); load average {load_before} before, {load_after} after",
        attach_s,
        wall,
        n_calls / 2
    );
    println!(
        "{:<28} {:>22} {:>22} {:>10} | {:>18} {:>18} | {:>10} {:>10} {:>28}",
        "latency, ms",
        "loaded p50",
        "loaded p99",
        "max",
        "idle p50",
        "idle p99",
        "p50 ratio",
        "p99 ratio",
        "per-round ratio"
    );
    for (k, c) in &calls {
        let r = Spread::of(c.loaded.iter().zip(&c.idle).map(|(a, b)| a / b).collect());
        println!(
            "{k:<28} {:>22} {:>22} {:>10} | {:>18} {:>18} | {:>10} {:>10} {:>28}",
            ms(pct(&c.loaded, 0.5)),
            ms(pct(&c.loaded, 0.99)),
            ms(pct(&c.loaded, 1.0)),
            ms(pct(&c.idle, 0.5)),
            ms(pct(&c.idle, 0.99)),
            sig(pct(&c.loaded, 0.5) / pct(&c.idle, 0.5)),
            sig(pct(&c.loaded, 0.99) / pct(&c.idle, 0.99)),
            format!("{} ({} .. {})", sig(r.median), sig(r.min), sig(r.max)),
        );
    }
    let all_l: Vec<f64> = calls.values().flat_map(|c| c.loaded.clone()).collect();
    let all_i: Vec<f64> = calls.values().flat_map(|c| c.idle.clone()).collect();
    println!(
        "{:<28} {:>22} {:>22} {:>10} | {:>18} {:>18} | {:>10} {:>10}",
        "every call",
        ms(pct(&all_l, 0.5)),
        ms(pct(&all_l, 0.99)),
        ms(pct(&all_l, 1.0)),
        ms(pct(&all_i, 0.5)),
        ms(pct(&all_i, 0.99)),
        sig(pct(&all_l, 0.5) / pct(&all_i, 0.5)),
        sig(pct(&all_l, 0.99) / pct(&all_i, 0.99)),
    );
    let pc = |c: f64| c / wall * 100.0;
    println!(
        "daemon CPU: loaded {}% of one core ({}% per guest) | idle {}% | guests' side ({}) {}% ({}% per guest)",
        sig(pc(cpu_l)),
        sig(pc(cpu_l) / GUESTS as f64),
        sig(pc(cpu_i)),
        match sessions {
            Sessions::Processes(_) => "their processes",
            Sessions::Threads(_) => "this whole process",
        },
        sig(pc(cpu_g)),
        sig(pc(cpu_g) / GUESTS as f64),
    );
    let by_thread: Vec<String> = threads1
        .iter()
        .map(|(n, c)| {
            let d = c - threads0.get(n).copied().unwrap_or(0.0);
            format!("{n} {}%", sig(pc(d)))
        })
        .collect();
    println!(
        "loaded daemon's CPU by thread name (% of one core; each thread's time is counted in 10 ms ticks, so many small threads undercount): {}",
        by_thread.join(", ")
    );
    let (rl, ri, al) = (Spread::of(rss_l), Spread::of(rss_i), Spread::of(anon_l));
    println!(
        "daemon RSS: loaded {} MiB (anonymous {} MiB) | idle {} MiB | per guest over idle {} KiB",
        sig(rl.median / MIB as f64),
        sig(al.median / MIB as f64),
        sig(ri.median / MIB as f64),
        sig((rl.median - ri.median) / GUESTS as f64 / 1024.0),
    );
    println!(
        "sessions at the end: {} of {GUESTS} running, {} stuck or unresponsive, {violations} violations; fixed targets reached (within 2 MiB): {reached} of {eligible} set over {} s before the end, {recent_reached} of {recent} set within it; {beyond} DM targets above the startup memory, {beyond_at_most} of them at the startup memory (a hot-add is a whole 128 MiB block)",
        GUESTS - not_running.len(),
        stuck.len(),
        SETTLE.as_secs()
    );

    drop(loaded);
    drop(idle);
    sessions.stop();
    let _ = std::fs::remove_dir_all(&root);
    if !failures.is_empty() {
        for f in &failures {
            eprintln!("FAILED: {f}");
        }
        std::process::exit(1);
    }
}
