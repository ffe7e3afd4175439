//! The daemon end to end, with real processes: `ballast daemon`, guests of both kinds as
//! `ballast guest` processes, and the CLI verbs, over the real sockets.
//!
//! Targets set with `mem-set` are reached; a guest killed with SIGKILL in the middle of a
//! balloon stops its VM and every byte of its memory comes back; garbage and oversized
//! messages on both sockets are refused without disturbing the other guests; a connection
//! from another uid is refused; the metrics endpoint parses as Prometheus text and agrees
//! with the API; and the daemon killed with SIGKILL and started again keeps the VM
//! definitions.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

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

    // The DM guest starts again: a fresh VM at its startup memory, then its fixed target.
    let mut web = d.guest("web", &dm_token, "96M");
    wait_for(
        "web to start again at its target",
        Duration::from_secs(20),
        || u(&d.vm("web"), "assigned") == 280 * MIB,
    );

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
