use ballast_sim::record::Mode;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let policy = args.get(1).map(String::as_str).unwrap_or("hyperv");
    let dur: f64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(1800.0);
    let mut s = ballast_sim::scenario::Scenario::from_trace(
        "traces/bitbrains-gwa-t-12-rnd/vm_mem.csv",
        None,
    )
    .unwrap();
    s.mode = Mode::Accounting;
    s.duration_s = dur;
    let r = ballast_sim::compare::run_scenario(&s, policy, false, &mut |_| {}).unwrap();
    println!("wall {:.1}", r.wall_s);
    for g in r.series.guests.iter().take(6) {
        println!("{} {:?}", g.name, g.kind);
        for i in (0..g.assigned.len()).step_by(12) {
            println!(
                "  t={:6} a={:6} t={:6} d={:6}",
                r.series.t_s[i],
                g.assigned[i] >> 20,
                g.target[i] >> 20,
                g.committed[i] >> 20
            );
        }
    }
}
