use ballast_sim::record::Mode;
fn main() {
    let args: Vec<String> = std::env::args().collect();
    let path = args
        .get(1)
        .map(String::as_str)
        .unwrap_or("crates/sim/scenarios/bursty.toml");
    let mut s = ballast_sim::scenario::Scenario::load(path).unwrap();
    s.mode = Mode::Accounting;
    for policy in ["ballast", "hyperv", "oracle"] {
        let r = ballast_sim::compare::run_scenario(&s, policy, false, &mut |_| {}).unwrap();
        print!("{policy:8}");
        for g in r.series.guests.iter() {
            let n = g.assigned.len() as f64;
            let a: f64 = g.assigned.iter().map(|&x| x as f64).sum::<f64>() / n / 1048576.0;
            let d: f64 = g.committed.iter().map(|&x| x as f64).sum::<f64>() / n / 1048576.0;
            print!(" {}:{:.0}/{:.0}", &g.name[..g.name.len().min(7)], a, d);
        }
        println!();
        let g = &r.series.guests[1];
        for i in (0..g.assigned.len()).step_by(10).take(60) {
            print!(
                " {}/{}/{}",
                g.assigned[i] >> 20,
                g.target[i] >> 20,
                g.committed[i] >> 20
            );
        }
        println!();
    }
}
