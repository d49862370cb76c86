//! The deterministic simulation (issue #24): agents, the controller, the object store and
//! Kafka clients in one process, on one thread, under simulated time, every fault drawn from
//! one seed; it hunts for lost acknowledged data. See `run.rs` for what a run does and checks.
//!
//! - `cargo test --release --test sim`: [`SEEDS_DEFAULT`] seeds from a fixed start (CI).
//! - `SIM_SEEDS=5000 cargo test --release --test sim seeds`: more seeds (`SIM_SEED_FROM=N` picks
//!   where they start).
//! - `SIM_SEED=S cargo test --release --test sim seeds -- --nocapture`: replays seed S and
//!   prints the end of its trace (`SIM_TRACE=file` writes all of it).
//!
//! A failing seed panics with `sim: seed S failed: <invariant>; replay: SIM_SEED=S cargo test
//! --release --test sim`.

mod node;
mod run;
mod world;

/// Seeds a plain `cargo test` runs (about a minute in release on two cores).
const SEEDS_DEFAULT: u64 = 100;
/// Where the default seeds start.
const SEED_FROM_DEFAULT: u64 = 1;

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().map(|v| v.trim().parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a number")))
}

fn check(seed: u64) {
    let outcome = run::run(seed);
    if let Ok(path) = std::env::var("SIM_TRACE") {
        std::fs::write(&path, outcome.trace.join("\n")).unwrap_or_else(|e| panic!("SIM_TRACE={path}: {e}"));
    }
    if let Some(failure) = outcome.failure {
        let tail = outcome.trace[outcome.trace.len().saturating_sub(40)..].join("\n");
        panic!("{tail}\n{}\nsim: seed {seed} failed: {failure}; replay: SIM_SEED={seed} cargo test --release --test sim", outcome.summary);
    }
    if env_u64("SIM_SEED").is_some() {
        println!("{}", outcome.trace[outcome.trace.len().saturating_sub(60)..].join("\n"));
    }
    println!("{}", outcome.summary);
}

#[test]
fn seeds() {
    if let Some(seed) = env_u64("SIM_SEED") {
        println!("SIM_SEED={seed}");
        check(seed);
        return;
    }
    let from = env_u64("SIM_SEED_FROM").unwrap_or(SEED_FROM_DEFAULT);
    let count = env_u64("SIM_SEEDS").unwrap_or(SEEDS_DEFAULT);
    for seed in from..from + count {
        println!("SIM_SEED={seed}");
        check(seed);
    }
}

/// The same seed twice: the same trace, line for line.
#[test]
fn same_seed_same_trace() {
    let seed = env_u64("SIM_SEED").unwrap_or(7);
    let a = run::run(seed);
    let b = run::run(seed);
    assert!(a.trace.len() > 10, "a trace of {} lines", a.trace.len());
    if let Some(i) = (0..a.trace.len().min(b.trace.len())).find(|&i| a.trace[i] != b.trace[i]) {
        panic!("seed {seed}: traces differ at line {i}:\n{}\n{}", a.trace[i], b.trace[i]);
    }
    assert_eq!(a.trace.len(), b.trace.len(), "seed {seed}: traces of different lengths");
}
