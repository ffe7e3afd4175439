//! `ballast top` in a real terminal: tmux runs it against a daemon with two VMs, one of
//! them with a guest process attached, and the test reads the screen as a person would.
//!
//! The rows show both VMs with the API's figures (`ballast stats --json`); `s` moves the
//! sort column and the order follows; a daemon killed under it turns into an error line
//! that goes away when a daemon is back; `q` ends it with status 0 and the terminal back
//! on its main screen.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use ballast_sim::size::format_size;
use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_ballast");
const MIB: u64 = 1 << 20;

/// A child killed when the test ends, however it ends.
struct Kill(Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Daemon {
    child: Kill,
    dir: PathBuf,
}

impl Daemon {
    fn start(dir: &Path) -> Daemon {
        // A DM guest's first request waits 1 s, not Hyper-V's 50.
        let config = dir.with_extension("toml");
        std::fs::write(
            &config,
            format!(
                "state_dir = {dir:?}\n[host]\nmemory = \"1G\"\npolicy = \"ballast\"\ndm_start_delay_s = 1\n"
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
            child: Kill(child),
            dir: dir.to_path_buf(),
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

    fn ok(&self, args: &[&str]) -> String {
        let out = Command::new(BIN)
            .arg("--socket")
            .arg(self.control())
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "ballast {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn vm(&self, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["stats", name, "--json"])).unwrap()
    }

    fn create(&self, args: &[&str]) -> String {
        let v: Value =
            serde_json::from_str(&self.ok(&[&["create", "--json"], args].concat())).unwrap();
        v["token"].as_str().unwrap().to_string()
    }

    fn guest(&self, name: &str, token: &str) -> Kill {
        Kill(
            Command::new(BIN)
                .args([
                    "guest",
                    "--quiet",
                    "--report-delay",
                    "1",
                    "--reconnect-for",
                    "0",
                ])
                .args(["--workload", "96M"])
                .arg("--connect")
                .arg(self.guests())
                .args(["--name", name, "--token", token])
                .spawn()
                .unwrap(),
        )
    }
}

/// A tmux server of the test's own (`-L`), so that nothing else's sessions are touched;
/// killed at the end.
struct Tmux {
    name: String,
    config: PathBuf,
}

impl Tmux {
    fn new(dir: &Path) -> Tmux {
        let config = dir.with_extension("tmux.conf");
        // remain-on-exit keeps the pane after `top` exits, so its exit status can be read;
        // no status bar, so the pane is the whole 160 x 40.
        std::fs::write(&config, "set -g remain-on-exit on\nset -g status off\n").unwrap();
        Tmux {
            name: format!("ballast-top-{}", std::process::id()),
            config,
        }
    }

    fn run(&self, args: &[&str]) -> Output {
        // -u: the box drawing and arrows come back as UTF-8 whatever the locale.
        Command::new("tmux")
            .arg("-u")
            .arg("-L")
            .arg(&self.name)
            .arg("-f")
            .arg(&self.config)
            .args(args)
            .output()
            .expect("tmux runs (scripts/test installs it)")
    }

    fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "tmux {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn screen(&self) -> String {
        self.ok(&["capture-pane", "-p", "-t", "top"])
    }

    fn pane(&self, format: &str) -> String {
        self.ok(&["display-message", "-p", "-t", "top", format])
            .trim()
            .to_string()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.run(&["kill-server"]);
    }
}

fn wait_for(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until the screen satisfies `f`; the last screen is in the message if it never
/// does.
fn wait_screen(t: &Tmux, what: &str, limit: Duration, f: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let s = t.screen();
        if f(&s) {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "timed out after {limit:?} waiting for {what}; the screen:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn words(line: &str) -> Vec<String> {
    line.trim_matches(['│', ' '])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// The screen line whose first word is `name` (that VM's row), as words.
fn row(screen: &str, name: &str) -> Option<(usize, Vec<String>)> {
    screen
        .lines()
        .map(words)
        .enumerate()
        .find(|(_, w)| w.first().map(String::as_str) == Some(name))
}

fn u(v: &Value, k: &str) -> u64 {
    v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"))
}

/// What the row of a VM should read, from its API answer: the same figures, in the
/// table's columns, split into words as the screen is.
fn expected(v: &Value) -> Vec<String> {
    let running = v["state"] == "running";
    let size = |k: &str| format_size(u(v, k));
    let live = |k: &str| if running { size(k) } else { "-".into() };
    let opt = |k: &str| v[k].as_u64().map_or_else(|| "-".into(), format_size);
    let target = match (running, v["pinned_target"].as_u64()) {
        (true, None) => size("target"),
        (true, Some(_)) => format!("{}*", size("target")),
        (false, Some(p)) => format!("{}*", format_size(p)),
        (false, None) => "-".into(),
    };
    let cells = [
        v["name"].as_str().unwrap().to_string(),
        v["kind"].as_str().unwrap().to_string(),
        v["state"].as_str().unwrap().to_string(),
        live("assigned"),
        target,
        opt("committed"),
        v["pressure"]
            .as_f64()
            .map_or_else(|| "-".into(), |p| format!("{p:.0}%")),
        live("ballooned"),
        opt("resident"),
        format_size(u(&v["settings"], "minimum")),
        format_size(u(&v["settings"], "maximum")),
        if v["unresponsive"] == true {
            "unresp".into()
        } else if v["stuck"] == true {
            "stuck".into()
        } else {
            "-".into()
        },
        u(v, "violations").to_string(),
    ];
    words(&cells.join(" "))
}

/// The screen's row for `name` matches the API; both move, so they are read again until
/// they agree or `limit` passes.
fn row_matches_api(t: &Tmux, d: &Daemon, name: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let s = t.screen();
        let want = expected(&d.vm(name));
        let got = row(&s, name).map(|(_, w)| w);
        if got.as_ref() == Some(&want) {
            return s;
        }
        assert!(
            start.elapsed() < limit,
            "{name}'s row never matched the API within {limit:?}:\n want {want:?}\n  got {got:?}\nthe screen:\n{s}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn top_shows_the_daemon_live_in_a_terminal_sorts_survives_the_daemon_and_quits() {
    let started = Instant::now();
    let dir = std::env::temp_dir().join(format!("ballast-top-e2e-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = Daemon::start(&dir);
    let token = d.create(&["web", "--startup", "512M", "--min", "128M", "--max", "768M"]);
    d.create(&[
        "db",
        "--kind",
        "xen",
        "--startup",
        "384M",
        "--min",
        "64M",
        "--max",
        "512M",
    ]);
    let mut web = d.guest("web", &token);
    wait_for("web running and reporting", Duration::from_secs(20), || {
        let v = d.vm("web");
        v["state"] == "running" && !v["committed"].is_null()
    });
    // A fixed target: the row marks it, and the figures settle where they can be compared.
    d.ok(&["mem-set", "web", "320M"]);
    wait_for("web at its fixed target", Duration::from_secs(20), || {
        u(&d.vm("web"), "assigned") == 320 * MIB
    });

    let t = Tmux::new(&dir);
    // The shell tmux runs the command with writes `top`'s exit status down: tmux's own
    // #{pane_dead_status} is not always filled in (it may not reap the process at once).
    let status = dir.with_extension("status");
    let cmd = format!(
        "'{BIN}' --socket '{}' top; echo \"exit $?\" > '{}'",
        d.control().display(),
        status.display()
    );
    t.ok(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "40",
        &cmd,
    ]);
    let s = wait_screen(&t, "both VMs on the screen", Duration::from_secs(15), |s| {
        row(s, "web").is_some_and(|(_, w)| w.get(2).map(String::as_str) == Some("running"))
            && row(s, "db").is_some()
    });
    for want in [
        "ballast top",
        "policy ballast",
        "VMs 1 running / 2 defined",
        "memory 1.00 GiB",
        "sort NAME ▲",
        "ASSIGNED",
        "q quit",
    ] {
        assert!(s.contains(want), "{want:?} in\n{s}");
    }
    let s = row_matches_api(&t, &d, "web", Duration::from_secs(15));
    println!("the screen:\n{s}");
    row_matches_api(&t, &d, "db", Duration::from_secs(5));
    let (_, w) = row(&s, "web").unwrap();
    assert!(w.contains(&"MiB*".to_string()), "the fixed target: {w:?}");
    // The gauge's figure is the host's.
    let h: Value = serde_json::from_str(&d.ok(&["host", "--json"])).unwrap();
    let used = format_size(u(&h, "memory_bytes") - u(&h, "free_bytes"));
    wait_screen(&t, "the gauge", Duration::from_secs(5), |s| {
        s.contains(&format!("used {used} of 1.00 GiB"))
    });
    let line = |s: &str, n: &str| row(s, n).map(|(i, _)| i);
    assert!(line(&s, "db") < line(&s, "web"), "by name:\n{s}");

    // `s`: the next column, KIND, ascending: dm (web) before xen (db).
    t.ok(&["send-keys", "-t", "top", "s"]);
    wait_screen(&t, "the order by kind", Duration::from_secs(5), |s| {
        s.contains("sort KIND ▲") && line(s, "web") < line(s, "db")
    });

    // The daemon goes away: an error line, the last figures kept, `top` still running.
    let Daemon { child, dir: _ } = d;
    drop(child);
    assert!(
        web.0.wait().unwrap().success(),
        "the guest, told not to wait for a new daemon, sees its link end"
    );
    let s = wait_screen(&t, "the error line", Duration::from_secs(10), |s| {
        s.contains("error (for") && s.contains("cannot reach the daemon")
    });
    assert!(s.contains("the last figures received"), "{s}");
    assert_eq!(t.pane("#{pane_dead}"), "0", "top keeps running");
    // A daemon again: the error goes, the figures are live (web stopped with it).
    let d = Daemon::start(&dir);
    wait_screen(&t, "the daemon back", Duration::from_secs(10), |s| {
        !s.contains("error (for") && s.contains("VMs 0 running / 2 defined")
    });
    row_matches_api(&t, &d, "web", Duration::from_secs(5));

    // `q`: the process exits 0 and the terminal is back on its main screen.
    t.ok(&["send-keys", "-t", "top", "q"]);
    wait_for("top to exit on q", Duration::from_secs(5), || {
        std::fs::read_to_string(&status).is_ok_and(|s| s.contains("exit"))
    });
    assert_eq!(
        std::fs::read_to_string(&status).unwrap().trim(),
        "exit 0",
        "top's exit status"
    );
    wait_for("the pane to close", Duration::from_secs(5), || {
        t.pane("#{pane_dead}") == "1"
    });
    let after = t.screen();
    assert!(
        !after.contains("ASSIGNED"),
        "the alternate screen was left:\n{after}"
    );
    drop(t);
    drop(d);
    let _ = std::fs::remove_dir_all(&dir);
    for f in [
        status,
        dir.with_extension("toml"),
        dir.with_extension("tmux.conf"),
    ] {
        let _ = std::fs::remove_file(f);
    }
    println!("top end to end: {:.1} s", started.elapsed().as_secs_f64());
}
