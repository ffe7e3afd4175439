//! The daemon end to end, with real processes: `ballast daemon`, guests of both kinds as
//! `ballast guest` processes, and the CLI verbs, over the real sockets.
//!
//! Targets set with `mem-set` are reached; a guest killed with SIGKILL in the middle of a
//! balloon stops its VM and every byte of its memory comes back; garbage and oversized
//! messages on both sockets are refused without disturbing the other guests; a connection
//! from another uid is refused; the metrics endpoint parses as Prometheus text and agrees
//! with the API; and the daemon killed with SIGKILL and started again keeps the VM
//! definitions. A DM guest with free page reporting hints its free blocks to the host,
//! whose resident memory drops by what was hinted, and still finds every page it owns
//! intact after the daemon's SIGKILL.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ballast_daemon::link::{self, Frame, Hello};
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ballast");
const MIB: u64 = 1 << 20;

struct Daemon {
    child: Child,
    dir: PathBuf,
    metrics: u16,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        let metrics = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        // A DM guest's first request waits 1 s, not Hyper-V's 50.
        let config = dir.with_extension("toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {dir:?}\n[host]\nmemory = \"1G\"\npolicy = \"ballast\"\ndm_start_delay_s = 1\n[metrics]\nlisten = \"127.0.0.1:{metrics}\"\n"
            ),
        )
        .unwrap();
        let child = Command::new(BIN)
            .arg("daemon")
            .arg("--config")
            .arg(&config)
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let d = Daemon {
            child,
            dir: dir.to_path_buf(),
            metrics,
        };
        wait_for("the daemon's sockets", Duration::from_secs(10), || {
            UnixStream::connect(d.control()).is_ok() && UnixStream::connect(d.guests()).is_ok()
        });
        d
    }

    fn control(&self) -> PathBuf {
        self.dir.join("control.sock")
    }

    fn guests(&self) -> PathBuf {
        self.dir.join("guest.sock")
    }

    /// Runs a CLI verb; panics with its stderr if it fails.
    fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(
            out.status.success(),
            "ballast {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn cli(&self, args: &[&str]) -> Output {
        Command::new(BIN)
            .arg("--socket")
            .arg(self.control())
            .args(args)
            .output()
            .unwrap()
    }

    fn vm(&self, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["stats", name, "--json"])).unwrap()
    }

    fn host(&self) -> Value {
        serde_json::from_str(&self.ok(&["host", "--json"])).unwrap()
    }

    fn guest(&self, name: &str, token: &str, workload: &str) -> Child {
        // Its log, for a failure's diagnosis.
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.with_extension(format!("{name}.log")))
            .unwrap();
        Command::new(BIN)
            .args(["guest", "--report-delay", "1", "--workload", workload])
            .arg("--connect")
            .arg(self.guests())
            .args(["--name", name, "--token", token])
            .stderr(log)
            .spawn()
            .unwrap()
    }

    fn metrics(&self) -> String {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", self.metrics)).unwrap();
        s.write_all(b"GET /metrics HTTP/1.1\r\nhost: localhost\r\nconnection: close\r\n\r\n")
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        body.to_string()
    }

    fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `ballast` as uid and gid 65534 (nobody), with no supplementary groups.
fn as_nobody() -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid",
        "65534",
        "--regid",
        "65534",
        "--clear-groups",
        BIN,
    ]);
    c
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// One sample of a per-VM family in a Prometheus exposition.
fn metric(text: &str, name: &str, vm: &str) -> f64 {
    let lines: Vec<std::io::Result<String>> = text.lines().map(|l| Ok(l.to_string())).collect();
    let scrape = prometheus_parse::Scrape::parse(lines.into_iter()).unwrap();
    scrape
        .samples
        .iter()
        .find(|s| s.metric == name && s.labels.get("vm") == Some(vm))
        .map(|s| match s.value {
            prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Counter(v) => v,
            _ => f64::NAN,
        })
        .unwrap_or_else(|| panic!("{name}{{vm={vm}}} in\n{text}"))
}

/// A guest connection made by hand: attached as `name`, its welcome read.
fn attach_raw(d: &Daemon, name: &str, token: &str) -> UnixStream {
    let s = UnixStream::connect(d.guests()).unwrap();
    let hello = Hello {
        version: link::VERSION,
        name: name.into(),
        token: token.into(),
        resume: None,
    };
    link::send(&s, &Frame::Hello(hello), &[]).unwrap();
    match link::recv(&s).unwrap() {
        (Frame::Welcome(_), _) => s,
        (f, _) => panic!("{name}: {f:?}"),
    }
}

fn create(d: &Daemon, args: &[&str]) -> String {
    let v: Value = serde_json::from_str(&d.ok(&[&["create", "--json"], args].concat())).unwrap();
    v["token"].as_str().unwrap().to_string()
}

#[test]
fn the_daemon_balances_guest_processes_of_both_kinds_and_survives_their_deaths_and_its_own() {
    let dir = std::env::temp_dir().join(format!("ballast-daemon-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = Daemon::start(&dir);
    let total = u(&d.host(), "memory_bytes");
    // Every frame is free, in a pool, or a running VM's.
    let accounted = |d: &Daemon| {
        let h = d.host();
        let list: Value = serde_json::from_str(&d.ok(&["list", "--json"])).unwrap();
        let assigned: u64 = list
            .as_array()
            .unwrap()
            .iter()
            .map(|v| u(v, "assigned"))
            .sum();
        assert_eq!(
            u(&h, "free_bytes") + u(&h, "pools_bytes") + assigned,
            total,
            "{h}"
        );
    };
    accounted(&d);

    let dm_token = create(
        &d,
        &["web", "--startup", "512M", "--min", "128M", "--max", "768M"],
    );
    let xen_token = create(
        &d,
        &[
            "db",
            "--kind",
            "xen",
            "--startup",
            "384M",
            "--min",
            "64M",
            "--max",
            "512M",
            "--weight",
            "80",
        ],
    );
    // A name taken, a bad name, a bad range: clear errors, non-zero exits.
    let dup = d.cli(&["create", "web", "--startup", "64M"]);
    assert!(!dup.status.success());
    assert!(String::from_utf8_lossy(&dup.stderr).contains("exists"));
    let bad = d.cli(&["create", "../x", "--startup", "64M"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("bad VM name"));
    let bad = d.cli(&["create", "x", "--startup", "64M", "--min", "128M"]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("must hold"));
    let none = d.cli(&["mem-set", "nosuch", "64M"]);
    assert!(String::from_utf8_lossy(&none.stderr).contains("no VM named"));

    // A guest with the wrong token is refused and counted.
    let wrong = Command::new(BIN)
        .args(["guest", "--quiet", "--name", "web", "--token", "00"])
        .arg("--connect")
        .arg(d.guests())
        .output()
        .unwrap();
    assert!(!wrong.status.success());
    assert!(String::from_utf8_lossy(&wrong.stderr).contains("wrong token"));
    assert_eq!(u(&d.vm("web"), "violations"), 1);

    let mut web = d.guest("web", &dm_token, "96M");
    let mut db = d.guest("db", &xen_token, "80M");
    wait_for(
        "both guests running and reporting",
        Duration::from_secs(20),
        || {
            ["web", "db"]
                .iter()
                .all(|n| d.vm(n)["state"] == "running" && !d.vm(n)["committed"].is_null())
        },
    );
    assert_eq!(u(&d.vm("web"), "assigned"), 512 * MIB);

    // Targets through the CLI, reached through the real interfaces; resident memory
    // follows (the guests wrote every page they were given). The DM guest keeps Linux's
    // balloon floor (about 168 MiB at 512 MiB) above its 96 MiB of use.
    d.ok(&["mem-set", "web", "320M"]);
    d.ok(&["mem-set", "db", "200M"]);
    wait_for("the targets", Duration::from_secs(20), || {
        u(&d.vm("web"), "assigned") == 320 * MIB && u(&d.vm("db"), "assigned") == 200 * MIB
    });
    accounted(&d);
    for (n, want) in [("web", 320 * MIB), ("db", 200 * MIB)] {
        let v = d.vm(n);
        let rss = u(&v, "resident");
        assert!(
            rss <= want && rss + 8 * MIB >= want,
            "{n}: rss {rss} for {want}"
        );
        assert_eq!(v["pinned_target"].as_u64(), Some(want));
    }
    let list = d.ok(&["list"]);
    assert!(list.contains("web") && list.contains("running"), "{list}");

    // The metrics endpoint: Prometheus text that agrees with the API.
    let text = d.metrics();
    let lines: Vec<std::io::Result<String>> = text.lines().map(|l| Ok(l.to_string())).collect();
    let scrape = prometheus_parse::Scrape::parse(lines.into_iter()).unwrap();
    let sample = |name: &str, vm: &str| {
        scrape
            .samples
            .iter()
            .find(|s| s.metric == name && s.labels.get("vm") == Some(vm))
            .map(|s| match s.value {
                prometheus_parse::Value::Gauge(v) | prometheus_parse::Value::Counter(v) => v,
                _ => f64::NAN,
            })
            .unwrap_or_else(|| panic!("{name}{{vm={vm}}} in\n{text}"))
    };
    assert_eq!(
        sample("ballast_vm_assigned_bytes", "db"),
        (200 * MIB) as f64
    );
    assert_eq!(sample("ballast_vm_target_bytes", "web"), (320 * MIB) as f64);
    assert!(sample("ballast_vm_operations_total", "web") >= 0.0);
    assert!(
        scrape
            .samples
            .iter()
            .any(|s| s.metric == "ballast_host_free_bytes")
    );

    // Garbage on the guest socket: refused, and nobody else notices.
    {
        let mut s = UnixStream::connect(d.guests()).unwrap();
        s.write_all(&[0xde; 64]).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(
            String::from_utf8_lossy(&buf).contains("no hello"),
            "{buf:?}"
        );
    }
    // An oversized frame header.
    {
        let mut s = UnixStream::connect(d.guests()).unwrap();
        let mut h = b"BLNK".to_vec();
        h.extend_from_slice(&1u32.to_le_bytes());
        h.extend_from_slice(&u32::MAX.to_le_bytes());
        s.write_all(&h).unwrap();
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        assert!(String::from_utf8_lossy(&buf).contains("more than the link allows"));
    }
    // Garbage and an oversized body on the control socket.
    for req in [
        b"\x00\x01garbage\r\n\r\n".to_vec(),
        format!(
            "POST /v1/vms HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
            1 << 20
        )
        .into_bytes()
        .into_iter()
        .chain(std::iter::repeat_n(b' ', 1 << 20))
        .collect(),
        b"POST /v1/vms HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: 5\r\n\r\n{\"na".to_vec(),
    ] {
        let mut s = UnixStream::connect(d.control()).unwrap();
        let _ = s.write_all(&req);
        let _ = s.shutdown(std::net::Shutdown::Write);
        let mut buf = Vec::new();
        let _ = s.read_to_end(&mut buf);
        let head = String::from_utf8_lossy(&buf);
        assert!(head.is_empty() || head.starts_with("HTTP/1.1 4"), "{head}");
    }
    assert_eq!(d.vm("db")["state"], "running");

    // Another uid is refused on both sockets, even where the file would let it in.
    for sock in [d.control(), d.guests()] {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let other = as_nobody()
        .arg("--socket")
        .arg(d.control())
        .arg("list")
        .output()
        .unwrap();
    assert!(!other.status.success());
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("uid 65534"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );
    let other = as_nobody()
        .args(["guest", "--quiet", "--name", "db", "--token", &xen_token])
        .arg("--connect")
        .arg(d.guests())
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&other.stderr).contains("uid 65534"),
        "{}",
        String::from_utf8_lossy(&other.stderr)
    );

    // SIGKILL the DM guest in the middle of a balloon: its VM stops, its memory returns.
    d.ok(&["mem-set", "web", "280M"]);
    std::thread::sleep(Duration::from_millis(30));
    web.kill().unwrap();
    web.wait().unwrap();
    wait_for(
        "the dead guest's VM to stop",
        Duration::from_secs(10),
        || d.vm("web")["state"] == "stopped",
    );
    assert_eq!(d.vm("db")["state"], "running");
    accounted(&d);
    assert_eq!(u(&d.vm("web"), "assigned"), 0);

    // The DM guest starts again, now with free page reporting: a fresh VM at its startup
    // memory, then its fixed target, and its free blocks hinted, so that the restart
    // below finds pages it gave up the contents of.
    d.ok(&["set", "web", "--free-page-reporting", "on"]);
    let mut web = d.guest("web", &dm_token, "96M");
    wait_for(
        "web to start again at its target",
        Duration::from_secs(20),
        || u(&d.vm("web"), "assigned") == 280 * MIB,
    );
    wait_for("web's first hints", Duration::from_secs(10), || {
        u(&d.vm("web")["operations"], "hint_calls") > 0
    });

    // SIGKILL the daemon in the middle of a decrease: the guests run on, on their own
    // memory, and attach again to the next daemon, which takes their VMs over as they
    // were (definitions, settings, fixed targets; their memfds audited against what they
    // hold), with no page counted twice and none lost (each guest checks every page it
    // owns still holds what it wrote, and exits with an error if not).
    d.ok(&["mem-set", "db", "160M"]);
    std::thread::sleep(Duration::from_millis(20));
    let web_before = u(&d.vm("web"), "assigned");
    d.kill();
    std::thread::sleep(Duration::from_millis(300));
    let d = Daemon::start(&dir);
    wait_for(
        "both guests to attach again",
        Duration::from_secs(20),
        || ["web", "db"].iter().all(|n| d.vm(n)["state"] == "running"),
    );
    assert!(web.try_wait().unwrap().is_none(), "web runs on");
    assert!(db.try_wait().unwrap().is_none(), "db runs on");
    let web_v = d.vm("web");
    assert_eq!(u(&web_v, "assigned"), web_before, "{web_v}");
    assert_eq!(web_v["pinned_target"].as_u64(), Some(280 * MIB));
    assert_eq!(web_v["free_page_reporting"], true);
    let db_v = d.vm("db");
    let db_now = u(&db_v, "assigned");
    assert!((160 * MIB..=200 * MIB).contains(&db_now), "{db_v}");
    assert_eq!(db_v["settings"]["weight"].as_u64(), Some(80));
    accounted(&d);
    for n in ["web", "db"] {
        let v = d.vm(n);
        assert!(u(&v, "resident") <= u(&v, "assigned"), "{n}: {v}");
    }
    wait_for(
        "db's fixed target after the restart",
        Duration::from_secs(20),
        || u(&d.vm("db"), "assigned") == 160 * MIB,
    );
    accounted(&d);

    // Destroying a running VM closes its guest's link; every byte is free again.
    d.ok(&["destroy", "db"]);
    d.ok(&["destroy", "web"]);
    assert!(db.wait().unwrap().success());
    assert!(web.wait().unwrap().success());
    accounted(&d);
    let h = d.host();
    assert_eq!(u(&h, "free_bytes") + u(&h, "pools_bytes"), total);
    assert_eq!(d.ok(&["list", "--json"]).trim(), "[]");
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
    for ext in ["toml", "web.log", "db.log"] {
        let _ = std::fs::remove_file(dir.with_extension(ext));
    }
}

/// Free page reporting end to end: a DM VM created with `--free-page-reporting`, its
/// guest of low demand, reports its free 2 MiB blocks (cold discard hints over the guest
/// link) within a few seconds, as its figures and the metrics show, and its resident
/// memory drops by what was hinted; a DM VM without the switch hints nothing; a Xen VM
/// cannot have it; it can be switched off at run time.
#[test]
fn free_page_reporting_gives_a_guests_free_memory_back_to_the_host() {
    let help = Command::new(BIN)
        .args(["create", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains("--free-page-reporting") && help.contains("cold discard hint"),
        "{help}"
    );

    let dir = std::env::temp_dir().join(format!("ballast-daemon-fpr-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = Daemon::start(&dir);
    // Minimum = startup = maximum: no balloon, so the hints alone move resident memory.
    let on = create(
        &d,
        &["reports", "--startup", "128M", "--free-page-reporting"],
    );
    let off = create(&d, &["plain", "--startup", "128M"]);
    let xen = d.cli(&[
        "create",
        "x",
        "--kind",
        "xen",
        "--startup",
        "64M",
        "--free-page-reporting",
    ]);
    assert!(!xen.status.success());
    assert!(
        String::from_utf8_lossy(&xen.stderr).contains("Dynamic Memory guests only"),
        "{}",
        String::from_utf8_lossy(&xen.stderr)
    );
    let xen_token = create(&d, &["x", "--kind", "xen", "--startup", "64M"]);
    let set_xen = d.cli(&["set", "x", "--free-page-reporting", "on"]);
    assert!(!set_xen.status.success());
    assert!(String::from_utf8_lossy(&set_xen.stderr).contains("Dynamic Memory guests only"));

    let mut a = d.guest("reports", &on, "16M");
    let mut b = d.guest("plain", &off, "16M");
    // The first pass runs 2 s after the guest sees a free block (Linux's delay).
    wait_for("the first hints", Duration::from_secs(15), || {
        u(&d.vm("reports")["operations"], "hint_calls") > 0
    });
    let v = d.vm("reports");
    let ops = &v["operations"];
    let hinted = u(ops, "hinted_bytes");
    let (assigned, resident) = (u(&v, "assigned"), u(&v, "resident"));
    assert_eq!(assigned, 128 * MIB);
    assert!(hinted >= 2 * MIB, "{v}");
    // Tolerance: one 2 MiB block (the smallest reported), for a block the guest could
    // have taken back and written between its hint and this read.
    assert!(
        assigned - resident + 2 * MIB >= hinted,
        "resident {resident} of {assigned} after {hinted} hinted: {v}"
    );
    assert_eq!(v["free_page_reporting"], true);
    assert!(d.ok(&["stats", "reports"]).contains("page_reporting on"));

    // The other VM: asked (its driver queries the capability), refused, never hinted.
    let p = d.vm("plain");
    assert_eq!(u(&p["operations"], "hint_calls"), 0, "{p}");
    assert_eq!(u(&p["operations"], "hinted_bytes"), 0, "{p}");
    assert!(u(&p, "resident") + 2 * MIB >= u(&p, "assigned"), "{p}");
    for n in ["reports", "plain"] {
        assert_eq!(u(&d.vm(n), "violations"), 0, "{n}");
    }

    let text = d.metrics();
    assert!(metric(&text, "ballast_vm_hint_calls_total", "reports") > 0.0);
    assert!(metric(&text, "ballast_vm_hinted_bytes_total", "reports") >= (2 * MIB) as f64);
    assert_eq!(metric(&text, "ballast_vm_hint_calls_total", "plain"), 0.0);
    assert_eq!(
        metric(&text, "ballast_vm_free_page_reporting", "reports"),
        1.0
    );
    assert_eq!(
        metric(&text, "ballast_vm_free_page_reporting", "plain"),
        0.0
    );

    // A Hyper-V call from a Xen guest, and one with more than a page of input from a DM
    // guest: protocol violations, which end the connection and so the VM.
    let raw_token = create(&d, &["raw", "--startup", "64M"]);
    for (name, token, bytes) in [
        (
            "x",
            &xen_token,
            Frame::HvCall {
                control: 0x8001,
                input: vec![],
                output_len: 8,
            }
            .encode()
            .unwrap(),
        ),
        ("raw", &raw_token, {
            let mut b = b"BLNK".to_vec();
            b.extend_from_slice(&10u32.to_le_bytes());
            b.extend_from_slice(&(10 + 4097u32).to_le_bytes());
            b.extend_from_slice(&0x8003u64.to_le_bytes());
            b.extend_from_slice(&0u16.to_le_bytes());
            b.extend_from_slice(&[0; 4097]);
            b
        }),
    ] {
        let mut s = attach_raw(&d, name, token);
        wait_for("the raw guest to run", Duration::from_secs(5), || {
            d.vm(name)["state"] == "running"
        });
        s.write_all(&bytes).unwrap();
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        wait_for(
            "the violation to stop the VM",
            Duration::from_secs(5),
            || d.vm(name)["state"] == "stopped",
        );
        assert_eq!(u(&d.vm(name), "violations"), 1, "{name}");
    }
    assert_eq!(d.vm("reports")["state"], "running");

    // Switched off at run time: kept, shown, and the guest runs on.
    let s: Value =
        serde_json::from_str(&d.ok(&["set", "reports", "--free-page-reporting", "off", "--json"]))
            .unwrap();
    assert_eq!(s["free_page_reporting"], false);
    assert_eq!(d.vm("reports")["state"], "running");

    d.ok(&["destroy", "reports"]);
    d.ok(&["destroy", "plain"]);
    assert!(a.wait().unwrap().success());
    assert!(b.wait().unwrap().success());
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
    for ext in ["toml", "reports.log", "plain.log"] {
        let _ = std::fs::remove_file(dir.with_extension(ext));
    }
}
