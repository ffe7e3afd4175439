//! The daemon's verbs: `daemon`, `guest`, and the control verbs that talk to a running
//! daemon over its control socket (`list`, `create`, `mem-set`, `mem-max`, `set`, `stats`,
//! `destroy`), named as `xl` and `virsh` name them. `ballast top` (the live view) is in
//! `top.rs`.

use std::path::PathBuf;
use std::time::Duration;

use ballast_daemon::api::types::{CreateVm, UpdateVm, VmInfo, VmState};
use ballast_daemon::client::Client;
use ballast_daemon::config::DaemonConfig;
use ballast_daemon::guest::{GuestExit, GuestOptions};
use ballast_daemon::link::GuestKind;
use ballast_sim::size::{format_size, parse_size};
use ballast_sim::workload::WorkloadSpec;
use clap::{Args, Subcommand, ValueEnum};

/// The default state directory, and so the sockets' directory.
pub const DEFAULT_STATE_DIR: &str = "ballast-state";

/// Where the control socket is.
#[derive(Args, Clone)]
pub struct SocketArg {
    /// The daemon's control socket.
    #[arg(
        long,
        env = "BALLAST_SOCKET",
        default_value = "ballast-state/control.sock",
        value_name = "PATH",
        global = true
    )]
    pub socket: PathBuf,
    /// Print JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Clone, Copy, ValueEnum)]
pub enum KindArg {
    /// Hyper-V Dynamic Memory over a VMBus ring.
    Dm,
    /// Xen memory_op with a balloon driver.
    Xen,
}

/// `on` or `off`.
#[derive(Clone, Copy, ValueEnum)]
pub enum Switch {
    /// Switched on.
    On,
    /// Switched off.
    Off,
}

/// What `--free-page-reporting` does, for both verbs' help.
macro_rules! reporting_help {
    () => {
        "Free page reporting: the guest reports its free 2 MiB blocks with Hyper-V's cold \
         discard hint (HvExtCallMemoryHeatHint, as Linux's hv_balloon does) and the host \
         stops backing them, so its resident memory drops; the blocks stay the guest's and \
         read zero until it uses them again. Dynamic Memory guests only."
    };
}

fn size(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

/// A fixed target, or `auto`.
#[derive(Clone, Copy, Debug)]
pub struct TargetArg(Option<u64>);

fn size_or_auto(s: &str) -> Result<TargetArg, String> {
    if s == "auto" {
        Ok(TargetArg(None))
    } else {
        size(s).map(|b| TargetArg(Some(b)))
    }
}

/// The control verbs.
#[derive(Subcommand)]
pub enum Ctl {
    /// List the VMs (xl list).
    List,
    /// Define a VM; its guest attaches with `ballast guest` and the printed token.
    Create {
        /// The VM's name.
        name: String,
        /// Startup memory (K/M/G/T).
        #[arg(long, value_parser = size)]
        startup: u64,
        /// Minimum memory; default: the startup memory.
        #[arg(long, value_parser = size)]
        min: Option<u64>,
        /// Maximum memory; default: the startup memory.
        #[arg(long, value_parser = size)]
        max: Option<u64>,
        /// Buffer: memory over demand, percent (5-2000); default 20.
        #[arg(long)]
        buffer: Option<u32>,
        /// Weight under contention (0-100); default 50.
        #[arg(long)]
        weight: Option<u32>,
        /// Virtual processors; default 1.
        #[arg(long)]
        vps: Option<u32>,
        /// The interface.
        #[arg(long, value_enum, default_value = "dm")]
        kind: KindArg,
        /// Let the guest report free memory (the cold discard hint); DM guests only.
        #[arg(long, long_help = reporting_help!())]
        free_page_reporting: bool,
    },
    /// Fix a VM's target (xl mem-set); `auto` gives it back to the balancer.
    #[command(name = "mem-set")]
    MemSet {
        /// The VM.
        name: String,
        /// The target (K/M/G/T), or `auto`.
        #[arg(value_parser = size_or_auto)]
        size: TargetArg,
    },
    /// Set a VM's maximum (xl mem-max).
    #[command(name = "mem-max")]
    MemMax {
        /// The VM.
        name: String,
        /// The maximum (K/M/G/T).
        #[arg(value_parser = size)]
        size: u64,
    },
    /// Change a VM's memory settings (Set-VMMemory).
    Set {
        /// The VM.
        name: String,
        /// Startup memory (used at its next start).
        #[arg(long, value_parser = size)]
        startup: Option<u64>,
        /// Minimum memory.
        #[arg(long, value_parser = size)]
        min: Option<u64>,
        /// Maximum memory.
        #[arg(long, value_parser = size)]
        max: Option<u64>,
        /// Buffer, percent.
        #[arg(long)]
        buffer: Option<u32>,
        /// Weight, 0-100.
        #[arg(long)]
        weight: Option<u32>,
        /// Free page reporting on or off (the cold discard hint); DM guests only.
        #[arg(
            long,
            value_enum,
            value_name = "on|off",
            long_help = concat!(
                reporting_help!(),
                "\n\nOff, a running guest's next hints are refused and it stops reporting \
                 (what it reported stays unbacked until it uses it). On, a guest that was \
                 refused the capability reports from its next start, as Linux's driver \
                 asks for it once, when it loads."
            )
        )]
        free_page_reporting: Option<Switch>,
    },
    /// One VM's memory figures (virsh dommemstat).
    Stats {
        /// The VM.
        name: String,
    },
    /// Stop a VM and delete its definition.
    Destroy {
        /// The VM.
        name: String,
    },
    /// The host's figures.
    Host,
}

/// `ballast daemon`'s options.
#[derive(Args)]
pub struct DaemonArgs {
    /// The configuration file (TOML); without one, the defaults with state in
    /// ./ballast-state.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The state directory (overrides the file's).
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Managed memory for guests (overrides the file's).
    #[arg(long, value_parser = size, value_name = "SIZE")]
    pub memory: Option<u64>,
    /// The Prometheus endpoint, e.g. 127.0.0.1:9848 (overrides the file's).
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<std::net::SocketAddr>,
    /// The balancing policy (overrides the file's).
    #[arg(long)]
    pub policy: Option<String>,
}

/// `ballast guest`'s options.
#[derive(Args)]
pub struct GuestArgs {
    /// The daemon's guest socket.
    #[arg(long, default_value = "ballast-state/guest.sock", value_name = "PATH")]
    pub connect: PathBuf,
    /// The VM this guest is.
    #[arg(long)]
    pub name: String,
    /// The VM's token, as `ballast create` printed it.
    #[arg(long, env = "BALLAST_TOKEN", hide_env_values = true)]
    pub token: String,
    /// The workload: a size (a steady level) or a TOML inline table as in a scenario,
    /// e.g. 'kind = "ramp", from = "256M", to = "1G", start_s = 0, end_s = 60'.
    #[arg(long, default_value = "256M")]
    pub workload: String,
    /// The workload's seed.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Stop after this many seconds; default: until the daemon closes the link.
    #[arg(long, value_name = "SECONDS")]
    pub duration: Option<f64>,
    /// Seconds before the first pressure report (a Dynamic Memory guest); Linux's
    /// hv_balloon waits 45.
    #[arg(long, default_value_t = 45, value_name = "SECONDS")]
    pub report_delay: u32,
    /// After losing the daemon (killed or restarted), keep trying to attach again for
    /// this many seconds, on the guest's own memory, before giving up.
    #[arg(long, default_value_t = 300.0, value_name = "SECONDS")]
    pub reconnect_for: f64,
    /// Print nothing while running.
    #[arg(long)]
    pub quiet: bool,
}

fn workload(text: &str) -> Result<WorkloadSpec, String> {
    if let Ok(level) = parse_size(text) {
        return Ok(WorkloadSpec::Steady {
            level,
            noise_percent: 0.0,
        });
    }
    #[derive(serde::Deserialize)]
    struct W {
        w: WorkloadSpec,
    }
    toml::from_str::<W>(&format!("w = {{ {text} }}"))
        .map(|w| w.w)
        .map_err(|e| format!("--workload {text:?}: {e}"))
}

/// Runs the daemon.
pub fn daemon(a: DaemonArgs) -> Result<(), String> {
    let mut c = match &a.config {
        Some(p) => DaemonConfig::load(p).map_err(|e| e.to_string())?,
        None => DaemonConfig::with_state_dir(DEFAULT_STATE_DIR),
    };
    if let Some(d) = a.state_dir {
        let fresh = DaemonConfig::with_state_dir(&d);
        if a.config.is_none() {
            c.control_socket = fresh.control_socket;
            c.guest_socket = fresh.guest_socket;
        }
        c.state_dir = d;
    }
    if let Some(m) = a.memory {
        c.memory_bytes = m;
    }
    if a.metrics.is_some() {
        c.metrics = a.metrics;
    }
    if let Some(p) = a.policy {
        c.policy = p;
    }
    ballast_daemon::server::run(c, |c| {
        eprintln!(
            "ballast daemon: {} for guests, policy {}; control {}, guests {}{}",
            format_size(c.memory_bytes),
            c.policy,
            c.control_socket.display(),
            c.guest_socket.display(),
            c.metrics
                .map(|m| format!(", metrics http://{m}/metrics"))
                .unwrap_or_default()
        );
    })
}

/// Runs a guest.
pub fn guest(a: GuestArgs) -> Result<(), String> {
    let opts = GuestOptions {
        socket: a.connect,
        name: a.name,
        token: a.token,
        workload: workload(&a.workload)?,
        seed: a.seed,
        report_delay_s: a.report_delay,
        reconnect_for: Duration::from_secs_f64(a.reconnect_for.max(0.0)),
        duration: a
            .duration
            .filter(|d| d.is_finite() && *d >= 0.0)
            .map(Duration::from_secs_f64),
    };
    let quiet = a.quiet;
    let exit = ballast_daemon::guest::run(&opts, |w, s| {
        if !quiet {
            eprintln!(
                "{} [{}s]: demand {}, RAM {}{}",
                w.name,
                s.elapsed_s,
                format_size(s.demand_pages * 4096),
                format_size(s.ram_pages * 4096),
                if s.reported_pages > 0 {
                    format!(", reported free {}", format_size(s.reported_pages * 4096))
                } else {
                    String::new()
                }
            );
        }
    })
    .map_err(|e| e.to_string())?;
    if !quiet {
        match exit {
            GuestExit::Closed => eprintln!("{}: the VM was stopped", opts.name),
            GuestExit::Done => eprintln!("{}: done", opts.name),
        }
    }
    Ok(())
}

fn opt(b: Option<u64>) -> String {
    b.map(format_size).unwrap_or_else(|| "-".into())
}

fn table(vms: &[VmInfo]) -> String {
    let mut out = format!(
        "{:<20} {:<4} {:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}\n",
        "NAME", "KIND", "STATE", "ASSIGNED", "TARGET", "COMMITTED", "MIN", "MAX", "PRESSURE"
    );
    for v in vms {
        let kind = match v.kind {
            GuestKind::Dm => "dm",
            GuestKind::Xen => "xen",
        };
        let state = match v.state {
            VmState::Running => "running",
            VmState::Stopped => "stopped",
        };
        out.push_str(&format!(
            "{:<20} {:<4} {:<8} {:>10} {:>10} {:>10} {:>10} {:>10} {:>9}\n",
            v.name,
            kind,
            state,
            format_size(v.assigned),
            format_size(v.target),
            opt(v.committed),
            format_size(v.settings.minimum),
            format_size(v.settings.maximum),
            v.pressure
                .map(|p| format!("{p:.0}%"))
                .unwrap_or_else(|| "-".into()),
        ));
    }
    out
}

fn stats(v: &VmInfo) -> String {
    let o = &v.operations;
    let mut lines = vec![
        ("actual", format_size(v.assigned)),
        ("target", format_size(v.target)),
        (
            "fixed_target",
            v.pinned_target
                .map(format_size)
                .unwrap_or_else(|| "auto".into()),
        ),
        ("committed", opt(v.committed)),
        ("available", opt(v.available)),
        ("ballooned", format_size(v.ballooned)),
        ("rss", opt(v.resident)),
        ("minimum", format_size(v.settings.minimum)),
        ("maximum", format_size(v.settings.maximum)),
        ("startup", format_size(v.settings.startup)),
        ("buffer", format!("{}%", v.settings.buffer_percent)),
        ("weight", v.settings.weight.to_string()),
        (
            "page_reporting",
            if v.free_page_reporting { "on" } else { "off" }.to_string(),
        ),
        ("stuck", v.stuck.to_string()),
    ];
    lines.extend([
        (
            "balloon_ops",
            format!("{} ({})", o.balloon, format_size(o.balloon_bytes)),
        ),
        (
            "unballoon_ops",
            format!("{} ({})", o.unballoon, format_size(o.unballoon_bytes)),
        ),
        (
            "hot_add_ops",
            format!("{} ({})", o.hot_add, format_size(o.hot_add_bytes)),
        ),
        (
            "decrease_ops",
            format!("{} ({})", o.decrease, format_size(o.decrease_bytes)),
        ),
        (
            "populate_ops",
            format!("{} ({})", o.populate, format_size(o.populate_bytes)),
        ),
        (
            "hint_ops",
            format!("{} ({})", o.hint_calls, format_size(o.hinted_bytes)),
        ),
        ("failures", o.failures.to_string()),
        ("violations", v.violations.to_string()),
    ]);
    lines
        .into_iter()
        .map(|(k, v)| format!("{k:<14} {v}\n"))
        .collect()
}

fn print_json<T: serde::Serialize>(t: &T) -> Result<(), String> {
    println!(
        "{}",
        serde_json::to_string_pretty(t).map_err(|e| e.to_string())?
    );
    Ok(())
}

/// Runs a control verb against the daemon.
pub fn ctl(verb: Ctl, sock: SocketArg) -> Result<(), String> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    let c = Client::new(&sock.socket);
    let json = sock.json;
    rt.block_on(async move {
        let e = |e: ballast_daemon::client::ClientError| e.to_string();
        match verb {
            Ctl::List => {
                let vms = c.list().await.map_err(e)?;
                if json {
                    print_json(&vms)
                } else {
                    print!("{}", table(&vms));
                    Ok(())
                }
            }
            Ctl::Create {
                name,
                startup,
                min,
                max,
                buffer,
                weight,
                vps,
                kind,
                free_page_reporting,
            } => {
                let created = c
                    .create(&CreateVm {
                        name,
                        kind: match kind {
                            KindArg::Dm => GuestKind::Dm,
                            KindArg::Xen => GuestKind::Xen,
                        },
                        startup,
                        minimum: min,
                        maximum: max,
                        buffer_percent: buffer,
                        weight,
                        vps,
                        free_page_reporting: free_page_reporting.then_some(true),
                    })
                    .await
                    .map_err(e)?;
                if json {
                    print_json(&created)
                } else {
                    println!("created {}; its guest attaches with:", created.vm.name);
                    println!(
                        "  ballast guest --connect {} --name {} --token {}",
                        sock.socket.with_file_name("guest.sock").display(),
                        created.vm.name,
                        created.token
                    );
                    Ok(())
                }
            }
            Ctl::MemSet { name, size } => {
                let v = c.set_target(&name, size.0).await.map_err(e)?;
                if json {
                    print_json(&v)
                } else {
                    match v.pinned_target {
                        Some(t) => println!("{}: target fixed at {}", v.name, format_size(t)),
                        None => println!("{}: target follows the balancer", v.name),
                    }
                    Ok(())
                }
            }
            Ctl::MemMax { name, size } => {
                let v = c.set_maximum(&name, size).await.map_err(e)?;
                if json {
                    print_json(&v)
                } else {
                    println!("{}: maximum {}", v.name, format_size(v.settings.maximum));
                    Ok(())
                }
            }
            Ctl::Set {
                name,
                startup,
                min,
                max,
                buffer,
                weight,
                free_page_reporting,
            } => {
                let v = c
                    .update(
                        &name,
                        &UpdateVm {
                            startup,
                            minimum: min,
                            maximum: max,
                            buffer_percent: buffer,
                            weight,
                            free_page_reporting: free_page_reporting
                                .map(|s| matches!(s, Switch::On)),
                        },
                    )
                    .await
                    .map_err(e)?;
                if json {
                    print_json(&v)
                } else {
                    print!("{}", stats(&v));
                    Ok(())
                }
            }
            Ctl::Stats { name } => {
                let v = c.get(&name).await.map_err(e)?;
                if json {
                    print_json(&v)
                } else {
                    print!("{}", stats(&v));
                    Ok(())
                }
            }
            Ctl::Destroy { name } => {
                c.destroy(&name).await.map_err(e)?;
                if !json {
                    println!("destroyed {name}");
                }
                Ok(())
            }
            Ctl::Host => {
                let h = c.host().await.map_err(e)?;
                if json {
                    print_json(&h)
                } else {
                    println!(
                        "policy {}; memory {}, free {}, resident {}, reserve {}; {} VMs, {} running; up {:.0} s",
                        h.policy,
                        format_size(h.memory_bytes),
                        format_size(h.free_bytes),
                        format_size(h.resident_bytes),
                        format_size(h.reserve_bytes),
                        h.vms,
                        h.running,
                        h.uptime_s
                    );
                    Ok(())
                }
            }
        }
    })
}
