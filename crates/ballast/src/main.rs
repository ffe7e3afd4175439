//! `ballast`: a hypervisor memory manager's command line.
//!
//! `ballast run` runs a host with guests of both kinds (Hyper-V Dynamic Memory and Xen)
//! whose memory demand moves, balanced by one policy, on real memory, and writes
//! `results.json` and `report.html`. `ballast compare` runs every policy on the same
//! scenario or trace and prints them side by side.

#![forbid(unsafe_code)]

mod ctl;
mod top;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use ballast_balancer::POLICIES;
use ballast_sim::compare::{self, CompareError, Reporting};
use ballast_sim::record::{Mode, RunResult};
use ballast_sim::report;
use ballast_sim::scenario::{Scenario, default_mode};
use ballast_sim::size::{format_size, parse_size};
use clap::{Parser, Subcommand, ValueEnum};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};

#[derive(Parser)]
#[command(
    name = "ballast",
    version,
    about = "A hypervisor memory manager: Hyper-V memory pools, Xen memory_op and Dynamic Memory on one memory model",
    long_about = "A hypervisor memory manager: Hyper-V memory pools, Xen memory_op and Dynamic Memory on one memory model.\n\n\
`ballast run` runs a host whose guests (Hyper-V Dynamic Memory guests over a VMBus ring, and Xen guests with a Linux-like balloon driver) have memory demand that moves; a balancer follows it through the real interfaces, on real host memory (a memfd per guest). `ballast compare` runs every balancing policy on the same scenario, or on a trace of real VMs, and prints them side by side. Both write results.json and a self-contained report.html."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
    #[command(flatten)]
    socket: ctl::SocketArg,
}

/// `compare --free-page-reporting`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum ReportingChoice {
    /// Each policy twice: without reporting, then with every DM guest reporting.
    Both,
    /// Every DM guest reports.
    On,
    /// No guest reports.
    Off,
    /// As the scenario says for each guest.
    Scenario,
}

impl ReportingChoice {
    fn variants(self) -> &'static [Reporting] {
        match self {
            Self::Both => &[Reporting::Off, Reporting::AllDm],
            Self::On => &[Reporting::AllDm],
            Self::Off => &[Reporting::Off],
            Self::Scenario => &[Reporting::AsScenario],
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a scenario with one policy (the embedded default scenario if none is given).
    #[command(long_about = "Run a scenario with one balancing policy.\n\n\
With no SCENARIO, runs the embedded default: 8 guests (4 Dynamic Memory, 4 Xen) with idle, steady, ramp, bursty and diurnal workloads on a 12 GiB host for 10 minutes of virtual time, in real memory. Prints a summary table and writes results.json and report.html into --out.")]
    Run {
        /// A scenario TOML file (see crates/sim/scenarios/ for examples).
        scenario: Option<PathBuf>,
        /// The policy; default: the scenario's (`ballast` unless it says otherwise).
        #[arg(long, value_parser = policy_name)]
        policy: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Run every policy on the same scenario or trace and compare them.
    #[command(
        long_about = "Run every balancing policy (ballast, static, hyperv, proportional, vpa, oracle) on the same scenario and seed, and print them side by side.\n\n\
With --trace FILE.csv (columns vm_id,t_seconds,mem_capacity_bytes,mem_used_bytes, as the bundled Bitbrains trace), one guest per VM replays its memory use. The host's memory then defaults to the sum of the VMs' provisioned memory, plus 16 MiB per VM for the hypervisor's own use and the 256 MiB reserve: what a host without ballooning needs, so that `static` (every VM keeps its provisioned memory) fits. A host larger than half of this machine's memory runs in accounting mode: the same stack with no guest memory behind it."
    )]
    Compare {
        /// A scenario TOML file; default: the embedded default scenario.
        #[arg(conflicts_with = "trace")]
        scenario: Option<PathBuf>,
        /// Replay a trace CSV instead of a scenario.
        #[arg(long, value_name = "FILE.csv")]
        trace: Option<PathBuf>,
        /// The host's memory (K/M/G/T suffixes); default: the scenario's, or for a trace
        /// the sum of the VMs' provisioned memory plus 16 MiB per VM and the reserve.
        #[arg(long, value_name = "SIZE", value_parser = size)]
        host_memory: Option<u64>,
        /// Policies to run, comma-separated; default: all.
        #[arg(long, value_delimiter = ',', value_parser = policy_name)]
        policies: Vec<String>,
        /// Runs at once; default: one per core (fewer in real memory if memory is short).
        #[arg(long)]
        jobs: Option<usize>,
        /// Free page reporting (the Hyper-V cold discard hint) in the DM guests: `both`
        /// runs every policy without it and again with every DM guest reporting (rows
        /// named POLICY+fpr); `on` and `off` run one way; `scenario` as each guest says.
        /// Default: `both` for a scenario, `off` for --trace (its runs take a minute or
        /// more each, and `both` doubles them).
        #[arg(long, value_enum, value_name = "WHICH")]
        free_page_reporting: Option<ReportingChoice>,
        #[command(flatten)]
        common: Common,
    },
    /// Run the host service: a host on real time, its control API on a Unix socket,
    /// guests attaching over the guest socket, and optionally Prometheus metrics.
    #[command(long_about = "Run the host service.\n\n\
Owns a host of --memory managed memory on real time, balanced by the policy. Serves the control API (HTTP/JSON, /v1/..., see crates/daemon/openapi.json) on STATE_DIR/control.sock and takes guests (`ballast guest`) on STATE_DIR/guest.sock; both sockets are 0600 and each connection's peer uid is checked. VM definitions persist in STATE_DIR/vms.json. Stops in order on SIGTERM or Ctrl-C.")]
    Daemon(ctl::DaemonArgs),
    /// Run a guest in this process, attached to a running daemon.
    #[command(
        long_about = "Run a guest in this process, attached to a running daemon.\n\n\
The guest proves which VM it is with the token `ballast create` printed, receives the VM's memory (a memfd) and, for a Dynamic Memory VM, its VMBus ring, and runs the guest side: the Dynamic Memory VSC (as Linux's hv_balloon) or a Xen balloon driver, with the workload's demand, writing every page it is given. Runs until the daemon closes the link, --duration passes, or it is killed; the VM then stops and its memory goes back to the host."
    )]
    Guest(ctl::GuestArgs),
    #[command(flatten)]
    Ctl(ctl::Ctl),
    /// A live view of a running daemon (xentop): the host's memory and one row per VM.
    #[command(
        long_about = "A live view of a running daemon, as xentop is of a Xen host.\n\n\
The header shows the host (policy, managed memory, free, resident, pools, VMs running and defined, uptime) and a gauge of the memory in use; the table has one row per VM (assigned, target, with * when fixed by mem-set, committed, pressure, ballooned, resident, minimum, maximum, stuck, protocol violations). Keys: s / S cycle the sort column, r reverses it, the arrows select a row, q, Esc or Ctrl-C quit. A daemon that goes away is shown as an error line and retried every interval."
    )]
    Top {
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0, value_name = "SECONDS")]
        interval: f64,
    },
}

#[derive(clap::Args)]
struct Common {
    /// Where results.json and report.html go.
    #[arg(long, default_value = "ballast-out", value_name = "DIR")]
    out: PathBuf,
    /// Override the scenario's seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Override the scenario's backing mode.
    #[arg(long, value_enum)]
    mode: Option<ModeArg>,
    /// Override the scenario's duration, seconds of virtual time.
    #[arg(long, value_name = "SECONDS")]
    duration: Option<f64>,
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    /// Real memory: a memfd per guest.
    RealMemory,
    /// Accounting only: no guest memory behind the accounts.
    Accounting,
}

fn size(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn policy_name(s: &str) -> Result<String, String> {
    if POLICIES.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "unknown policy {s:?}; the policies are {}",
            POLICIES.join(", ")
        ))
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("ballast: {e}");
            ExitCode::FAILURE
        }
    }
}

fn load(scenario: Option<&Path>) -> Result<Scenario, String> {
    match scenario {
        Some(p) => Scenario::load(p).map_err(|e| e.to_string()),
        None => Scenario::default_scenario().map_err(|e| e.to_string()),
    }
}

fn apply(s: &mut Scenario, c: &Common) -> Result<(), String> {
    if let Some(seed) = c.seed {
        s.seed = seed;
    }
    if let Some(m) = c.mode {
        s.mode = match m {
            ModeArg::RealMemory => Mode::RealMemory,
            ModeArg::Accounting => Mode::Accounting,
        };
    }
    if let Some(d) = c.duration {
        if !(d.is_finite() && d >= s.tick_s) {
            return Err(format!(
                "--duration {d}: must be at least the tick ({} s)",
                s.tick_s
            ));
        }
        s.duration_s = d;
    }
    Ok(())
}

fn bar_style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:>16} [{bar:40}] {percent:>3}% {elapsed_precise}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ")
}

fn describe(s: &Scenario) -> String {
    let dm = s
        .guests
        .iter()
        .filter(|g| g.kind == ballast_sim::record::GuestKind::Dm)
        .count();
    format!(
        "scenario {:?}: {} guests ({} Dynamic Memory, {} Xen), host {}, {} s of virtual time, seed {}, {}",
        s.name,
        s.guests.len(),
        dm,
        s.guests.len() - dm,
        format_size(s.host_memory),
        s.duration_s,
        s.seed,
        match s.mode {
            Mode::RealMemory => "real memory",
            Mode::Accounting => "accounting only",
        }
    )
}

fn run(cli: Cli) -> Result<(), String> {
    let started = Instant::now();
    let (result, out) = match cli.command {
        Command::Daemon(a) => return ctl::daemon(a),
        Command::Guest(a) => return ctl::guest(a),
        Command::Ctl(verb) => return ctl::ctl(verb, cli.socket),
        Command::Top { interval } => return top::top(&cli.socket.socket, interval),
        Command::Run {
            scenario,
            policy,
            common,
        } => {
            let mut s = load(scenario.as_deref())?;
            apply(&mut s, &common)?;
            let policy = policy.unwrap_or_else(|| s.policy.clone());
            eprintln!("{}; policy {policy}", describe(&s));
            let bar = ProgressBar::new(1000)
                .with_style(bar_style())
                .with_prefix(policy.clone());
            let r = compare::run_scenario(&s, &policy, false, &mut |f| {
                bar.set_position((f * 1000.0) as u64)
            })
            .map_err(|e| e.to_string())?;
            bar.finish_and_clear();
            (compare::finish(&s, vec![r]), common.out)
        }
        Command::Compare {
            scenario,
            trace,
            host_memory,
            policies,
            jobs,
            free_page_reporting,
            common,
        } => {
            let mut s = match &trace {
                Some(t) => {
                    let mut s = Scenario::from_trace(t, host_memory).map_err(|e| e.to_string())?;
                    if common.mode.is_none() {
                        s.mode = default_mode(s.host_memory);
                    }
                    s
                }
                None => {
                    let mut s = load(scenario.as_deref())?;
                    if let Some(h) = host_memory {
                        s.host_memory = h;
                    }
                    s
                }
            };
            apply(&mut s, &common)?;
            eprintln!("{}", describe(&s));
            let names: Vec<&str> = policies.iter().map(String::as_str).collect();
            let shown: Vec<&str> = if names.is_empty() {
                POLICIES.to_vec()
            } else {
                names.clone()
            };
            let variants = free_page_reporting
                .unwrap_or(if trace.is_some() {
                    ReportingChoice::Off
                } else {
                    ReportingChoice::Both
                })
                .variants();
            let multi = MultiProgress::new();
            let bars: Vec<(String, ProgressBar)> = shown
                .iter()
                .flat_map(|p| {
                    variants
                        .iter()
                        .map(move |v| compare::run_label(p, *v == Reporting::AllDm))
                })
                .map(|label| {
                    let b = multi.add(
                        ProgressBar::new(1000)
                            .with_style(bar_style())
                            .with_prefix(label.clone()),
                    );
                    (label, b)
                })
                .collect();
            let jobs = jobs.unwrap_or_else(|| compare::parallel_runs(&s));
            let r = compare::compare(&s, &names, variants, jobs, &|p, f| {
                if let Some((_, b)) = bars.iter().find(|(n, _)| n == p) {
                    b.set_position((f * 1000.0) as u64);
                }
            })
            .map_err(|e: CompareError| e.to_string())?;
            for (_, b) in &bars {
                b.finish_and_clear();
            }
            (r, common.out)
        }
    };
    write(&result, &out)?;
    eprintln!("done in {:.1} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn write(result: &RunResult, out: &Path) -> Result<(), String> {
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    print!("{}", report::summary_table(result));
    let json = out.join("results.json");
    let html = out.join("report.html");
    report::write_results_json(result, &json).map_err(|e| format!("{}: {e}", json.display()))?;
    report::write_html(result, &html).map_err(|e| format!("{}: {e}", html.display()))?;
    println!("results: {}", json.display());
    println!("report:  {}", html.display());
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
