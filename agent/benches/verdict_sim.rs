//! The verdict simulation of issue 15: `cargo bench -p msagent --bench verdict_sim`
//! (`-- --suites N --seed S`). Drives the real verdict code under every noise setting of
//! `msagent::bench::sim::settings` and prints false alarms, noisy rate, detection of 5/10/15/20%
//! slowdowns, the single-run oracle's detection at the same false-alarm rate and the gap.

use msagent::bench::sim;
use std::time::Instant;

fn main() {
    let mut suites = 400usize;
    let mut seed = 0x15u64;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--suites" => match args.next().and_then(|v| v.parse().ok()) {
                Some(n) if n > 0 => suites = n,
                _ => {
                    eprintln!("--suites needs a positive number, e.g. --suites 400");
                    std::process::exit(2);
                }
            },
            "--seed" => match args.next().and_then(|v| v.parse().ok()) {
                Some(s) => seed = s,
                None => {
                    eprintln!("--seed needs a number, e.g. --seed 21");
                    std::process::exit(2);
                }
            },
            // `cargo bench` passes --bench.
            "--bench" => {}
            other => {
                eprintln!("unknown argument '{other}': use --suites N and --seed S");
                std::process::exit(2);
            }
        }
    }
    let t0 = Instant::now();
    let reports: Vec<sim::SimReport> = sim::settings()
        .iter()
        .enumerate()
        .map(|(i, m)| sim::simulate(m, suites, seed.wrapping_add(i as u64)))
        .collect();
    println!(
        "verdict simulation: {suites} suites per setting, seed {seed}, {:.1}s\n",
        t0.elapsed().as_secs_f64()
    );
    print!("{}", sim::table(&reports));
}
