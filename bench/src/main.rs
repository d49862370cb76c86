//! `sidestream-bench`: the scenarios behind Sidestream's published numbers, measured from outside
//! with librdkafka, against Sidestream and, in the same run, against its peers.
//!
//! Each scenario starts a fresh broker per case on free loopback ports (see `target.rs`), drives
//! it with librdkafka (`load.rs`), reads the broker's CPU seconds and peak RSS from /proc and its
//! object-store requests from a counting proxy in front of the shared S3 server (`s3count.rs`),
//! and writes a Markdown table, a JSON file and a latency CDF under `bench/results/`
//! (`report.rs`). `compare` runs every case against each target in turn (Sidestream, Apache
//! Kafka 4.4, Tansu 0.6.0) and prints the ratios. Cases only Sidestream has (e2e on another
//! agent, a new agent joining) start a `sidestream controller` and agents in remote mode on one
//! bucket (`Cluster`). `own` keeps the first, Sidestream-only load
//! generator that speaks the protocol itself (`own.rs`).

mod load;
mod own;
mod report;
mod s3count;
mod scrape;
mod target;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::{Args, Parser, Subcommand};

use report::{COST, Run};
use s3count::{S3, StoreLatency};
use target::{Controller, Kind, Placement, Programs, Remote, Target, parse_kind};

#[derive(Parser)]
#[command(name = "sidestream-bench", about = "Sidestream benchmarks and the peer comparison (librdkafka load)")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Producer throughput (rate 0) and fixed-rate latency over the cross product of the lists.
    Produce(ProduceArgs),
    /// End-to-end latency: produce timestamp to consume, tail consumers on the same agent and
    /// (Sidestream: a controller and two agents) on another agent.
    E2e(E2eArgs),
    /// Producer latency at a fixed rate alone, then while a consumer reads cold history.
    Catchup(CatchupArgs),
    /// Start to first acknowledged produce (restart; a new agent joining a cluster); SIGKILL
    /// with acks=1 data, restart to all committed.
    Elastic(ElasticArgs),
    /// Transactional producer: back-to-back transactions, records/s and commit latency.
    Txn(TxnArgs),
    /// The scenarios against every target, alternately, in one run; ratios per figure.
    Compare(CompareArgs),
    /// A 1-2 minute smoke of produce, e2e (same and other agent) and txn against Sidestream (CI:
    /// completes, valid JSON).
    Quick(Common),
    /// The first load generator (own Kafka client, Sidestream only).
    #[command(subcommand)]
    Own(own::Command),
}

#[derive(Args, Clone, Debug)]
struct Common {
    /// Targets, in the order each case runs against them: sidestream, kafka, tansu.
    #[arg(long, value_delimiter = ',', value_parser = parse_kind)]
    targets: Option<Vec<Kind>>,
    /// Sidestream's binary.
    #[arg(long, default_value = "target/release/sidestream")]
    bin: PathBuf,
    /// Starts Apache Kafka 4.4 (fetches the jars from Maven Central once).
    #[arg(long, default_value = "scripts/kafka-reference-broker")]
    kafka_script: PathBuf,
    /// Tansu's binary (bench/peers/fetch installs it there).
    #[arg(long, default_value = "bench/peers/tansu-0.6.0/bin/tansu")]
    tansu_bin: PathBuf,
    /// s3s-fs (default: $S3S_FS_BIN, else s3s-fs on the PATH, else ~/.cargo/bin/s3s-fs).
    #[arg(long)]
    s3s_fs_bin: Option<String>,
    /// Extra Sidestream settings, SIDESTREAM_<SECTION>_<KEY>=VALUE (repeatable).
    #[arg(long = "server-env", value_parser = parse_key_value)]
    server_env: Vec<(String, String)>,
    /// Seconds of load per case (including the warm-up).
    #[arg(long, default_value_t = 15)]
    duration_s: u64,
    /// Seconds at the start of each case that are neither timed nor counted.
    #[arg(long, default_value_t = 3)]
    warmup_s: u64,
    /// Base name of the result files (default: the subcommand's name).
    #[arg(long)]
    name: Option<String>,
    /// Where result files go.
    #[arg(long, default_value = "bench/results")]
    out: PathBuf,
    /// Object-store latency presets the proxy adds (none, s3-standard, s3-express); Sidestream
    /// runs every case once per preset, Tansu with the first (default: none; compare: all three).
    #[arg(long, value_delimiter = ',', value_enum)]
    store_latency: Option<Vec<StoreLatency>>,
    /// Seed of the latency model's generator (default: from the clock; printed with the results).
    #[arg(long)]
    store_latency_seed: Option<u64>,
}

#[derive(Args, Clone, Debug)]
struct ProduceLists {
    /// acks values: 1, all.
    #[arg(long, value_delimiter = ',', default_value = "1,all")]
    acks: Vec<String>,
    /// Record sizes in bytes.
    #[arg(long, value_delimiter = ',', default_value = "1024")]
    record_bytes: Vec<usize>,
    #[arg(long, value_delimiter = ',', default_value = "1")]
    partitions: Vec<i32>,
    /// none or lz4.
    #[arg(long, value_delimiter = ',', default_value = "none")]
    compression: Vec<String>,
    /// Records/s; 0 = max throughput.
    #[arg(long, value_delimiter = ',', default_value = "0")]
    rate: Vec<u64>,
    /// librdkafka's queue.buffering.max.kbytes (what may wait in the client at max speed).
    #[arg(long, default_value_t = 32768)]
    queue_kb: u64,
}

#[derive(Args, Clone, Debug)]
struct ProduceArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    lists: ProduceLists,
}

#[derive(Args, Clone, Debug)]
struct E2eArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    e2e: E2eParams,
}

#[derive(Args, Clone, Debug)]
struct E2eParams {
    /// Producer acks for the e2e run.
    #[arg(id = "e2e_acks", long = "e2e-acks", default_value = "1")]
    acks: String,
    /// Records/s of the e2e producer.
    #[arg(id = "e2e_rate", long = "e2e-rate", default_value_t = 5000)]
    rate: u64,
    #[arg(id = "e2e_record_bytes", long = "e2e-record-bytes", default_value_t = 1024)]
    record_bytes: usize,
}

#[derive(Args, Clone, Debug)]
struct CatchupParams {
    /// MB of history written at max speed (acks=1) before the broker restarts with cold caches.
    #[arg(long, default_value_t = 1024)]
    history_mb: u64,
    /// Records/s of the producer measured alone and during the catch-up.
    #[arg(id = "catchup_rate", long = "catchup-rate", default_value_t = 5000)]
    rate: u64,
}

#[derive(Args, Clone, Debug)]
struct CatchupArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    catchup: CatchupParams,
}

#[derive(Args, Clone, Debug)]
struct ElasticParams {
    /// Records/s (acks=1) written before the SIGKILL.
    #[arg(id = "elastic_rate", long = "elastic-rate", default_value_t = 5000)]
    rate: u64,
    /// Sidestream: new agents joining the cluster, one after another (medians reported).
    #[arg(id = "elastic_joins", long = "elastic-joins", default_value_t = 3)]
    joins: u32,
}

#[derive(Args, Clone, Debug)]
struct ElasticArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    elastic: ElasticParams,
}

#[derive(Args, Clone, Debug)]
struct TxnParams {
    /// Records per transaction (one case each).
    #[arg(id = "txn_records", long = "txn-records", value_delimiter = ',', default_value = "100,1000")]
    records: Vec<u64>,
    #[arg(id = "txn_record_bytes", long = "txn-record-bytes", default_value_t = 1024)]
    record_bytes: usize,
    /// Partitions of the topic; a transaction's records are spread over all of them.
    #[arg(id = "txn_partitions", long = "txn-partitions", default_value_t = 1)]
    partitions: i32,
}

#[derive(Args, Clone, Debug)]
struct TxnArgs {
    #[command(flatten)]
    common: Common,
    #[command(flatten)]
    txn: TxnParams,
}

#[derive(Args, Clone, Debug)]
struct CompareArgs {
    #[command(flatten)]
    common: Common,
    /// Scenarios to run: produce, e2e, catchup, elastic, txn.
    #[arg(long, value_delimiter = ',', default_value = "produce,e2e,catchup,elastic,txn")]
    scenarios: Vec<String>,
    #[command(flatten)]
    lists: ProduceLists,
    #[command(flatten)]
    e2e: E2eParams,
    #[command(flatten)]
    catchup: CatchupParams,
    #[command(flatten)]
    elastic: ElasticParams,
    #[command(flatten)]
    txn: TxnParams,
}

fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=').map(|(k, v)| (k.to_string(), v.to_string())).ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

/// One scenario against Sidestream alone, written out under `name`.
fn sidestream_only(common: &Common, name: &str, scenario: impl FnOnce(&mut Session) -> Result<()>) -> Result<()> {
    let mut s = Session::new(common, &[Kind::Sidestream], name)?;
    scenario(&mut s)?;
    s.finish()
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Own(c) => own::run(c),
        Cmd::Produce(a) => sidestream_only(&a.common, "produce", |s| s.produce(&a.lists)),
        Cmd::E2e(a) => sidestream_only(&a.common, "e2e", |s| s.e2e(&a.e2e)),
        Cmd::Catchup(a) => sidestream_only(&a.common, "catchup", |s| s.catchup(&a.catchup)),
        Cmd::Elastic(a) => sidestream_only(&a.common, "elastic", |s| s.elastic(&a.elastic)),
        Cmd::Txn(a) => sidestream_only(&a.common, "txn", |s| s.txn(&a.txn)),
        Cmd::Compare(mut a) => {
            // Sidestream's latencies with the store as it is and with each preset.
            a.common.store_latency.get_or_insert_with(|| StoreLatency::ALL.to_vec());
            let mut s = Session::new(&a.common, &[Kind::Sidestream, Kind::Kafka, Kind::Tansu], "compare")?;
            for scenario in &a.scenarios {
                match scenario.as_str() {
                    "produce" => s.produce(&a.lists)?,
                    "e2e" => s.e2e(&a.e2e)?,
                    "catchup" => s.catchup(&a.catchup)?,
                    "elastic" => s.elastic(&a.elastic)?,
                    "txn" => s.txn(&a.txn)?,
                    other => {
                        bail!("unknown scenario {other:?}: produce, e2e, catchup, elastic or txn")
                    }
                }
            }
            s.finish()
        }
        Cmd::Quick(mut common) => {
            // Short cases; results outside the source tree unless --out says otherwise.
            if common.out == std::path::Path::new("bench/results") {
                common.out = PathBuf::from("target/bench-results");
            }
            common.duration_s = common.duration_s.min(8);
            common.warmup_s = common.warmup_s.min(2);
            let mut s = Session::new(&common, &[Kind::Sidestream], "quick")?;
            let lists = ProduceLists {
                acks: vec!["1".into(), "all".into()],
                record_bytes: vec![1024],
                partitions: vec![1],
                compression: vec!["none".into()],
                rate: vec![0],
                queue_kb: 32768,
            };
            s.produce(&lists)?;
            // e2e: the same agent, then a controller and two agents (same and other agent).
            s.e2e(&E2eParams { acks: "1".into(), rate: 2000, record_bytes: 1024 })?;
            s.txn(&TxnParams { records: vec![100], record_bytes: 1024, partitions: 1 })?;
            let failed: Vec<String> =
                s.runs.iter().filter(|r| r.figures.is_empty()).map(|r| format!("{} {}", r.scenario, r.case)).collect();
            s.finish()?;
            if !failed.is_empty() {
                bail!("quick: runs without results: {}", failed.join(", "));
            }
            Ok(())
        }
    }
}

/// One invocation: the shared S3 server, the targets, and every run so far.
struct Session {
    common: Common,
    targets: Vec<Kind>,
    programs: Programs,
    s3: Option<S3>,
    /// Object-store latency presets: Sidestream runs each case once per preset, Tansu with the
    /// first.
    presets: Vec<StoreLatency>,
    /// Runs the S3 proxy; kept alive for the session.
    _rt: tokio::runtime::Runtime,
    seq: usize,
    name: String,
    started: String,
    runs: Vec<Run>,
    notes: Vec<String>,
    /// Targets that could not start: skipped for the rest of the session, reason noted once.
    broken: BTreeMap<Kind, String>,
}

fn s3s_fs_bin(explicit: &Option<String>) -> String {
    if let Some(b) = explicit {
        return b.clone();
    }
    if let Ok(b) = std::env::var("S3S_FS_BIN") {
        return b;
    }
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cargo/bin/s3s-fs");
    if std::process::Command::new("s3s-fs").arg("--version").output().is_ok() || !home.exists() {
        "s3s-fs".into()
    } else {
        home.display().to_string()
    }
}

/// A Sidestream cluster: one controller service, agents in remote mode on one bucket.
struct Cluster {
    controller: Controller,
    agents: Vec<Target>,
    /// The first agent's placement (owns the bucket).
    first: Placement,
}

impl Cluster {
    /// (CPU seconds, peak RSS bytes) summed over the controller and every agent.
    fn usage(&self) -> (f64, u64) {
        self.agents
            .iter()
            .map(Target::usage)
            .chain([self.controller.usage()])
            .fold((0.0, 0), |(c, r), (c1, r1)| (c + c1, r + r1))
    }

    /// How an agent ended, if one did during a run.
    fn exited(&mut self) -> Option<String> {
        self.agents
            .iter_mut()
            .enumerate()
            .find_map(|(i, t)| t.exited().map(|how| format!("agent {} {how}; log: {}", i + 1, t.log_tail())))
    }
}

/// One point of a produce matrix.
#[derive(Clone, Debug)]
struct Case {
    acks: String,
    record_bytes: usize,
    partitions: i32,
    compression: String,
    rate: u64,
}

impl Case {
    fn label(&self) -> String {
        format!(
            "acks={} {}B p={} {} {}",
            self.acks,
            self.record_bytes,
            self.partitions,
            self.compression,
            if self.rate == 0 { "max".to_string() } else { format!("{}/s", self.rate) }
        )
    }
}

impl Session {
    fn new(common: &Common, default_targets: &[Kind], scenario: &str) -> Result<Session> {
        let targets = common.targets.clone().unwrap_or_else(|| default_targets.to_vec());
        let mut presets = common.store_latency.clone().unwrap_or_else(|| vec![StoreLatency::None]);
        presets.dedup();
        if presets.is_empty() {
            bail!("--store-latency: at least one of none, s3-standard, s3-express");
        }
        let seed = common.store_latency_seed.unwrap_or_else(clock_seed);
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build()?;
        let s3 = if targets.iter().any(|k| k.uses_s3()) {
            Some(S3::start(&s3s_fs_bin(&common.s3s_fs_bin), &rt, presets[0], seed)?)
        } else {
            None
        };
        // Absolute paths: Tansu runs in its data dir.
        let abs = |p: &PathBuf| std::fs::canonicalize(p).unwrap_or_else(|_| p.clone());
        let programs = Programs {
            sidestream_bin: abs(&common.bin),
            kafka_script: abs(&common.kafka_script),
            tansu_bin: abs(&common.tansu_bin),
            sidestream_env: common.server_env.clone(),
        };
        let name = common.name.clone().unwrap_or_else(|| scenario.to_string());
        let mut notes = vec![format!(
            "Load: librdkafka {} through the rdkafka crate, in the bench process on the same machine; \
             linger.ms=5, idempotence off, one producer; latency per record from its intended send time to its \
             delivery report. Warm-up {} s of {} s per case not counted.",
            rdkafka::util::get_rdkafka_version().1,
            common.warmup_s,
            common.duration_s
        )];
        if targets.iter().any(|k| k.uses_s3()) {
            notes.push(
                "Object store: s3s-fs 0.14.1 on tmpfs behind the bench's counting proxy (PUT/GET counts are HTTP requests seen there)."
                    .into(),
            );
            notes.push(store_latency_note(&presets, seed));
            eprintln!("store latency: {}, seed {seed}", presets.iter().map(|p| p.name()).collect::<Vec<_>>().join(","));
        }
        Ok(Session {
            common: common.clone(),
            targets,
            programs,
            s3,
            presets,
            _rt: rt,
            seq: 0,
            name,
            started: report::utc_now(),
            runs: Vec::new(),
            notes,
            broken: BTreeMap::new(),
        })
    }

    fn finish(self) -> Result<()> {
        let targets: BTreeMap<String, String> = self.targets.iter().map(|k| (k.name().to_string(), k.describe().to_string())).collect();
        let mut notes = self.notes.clone();
        for (k, why) in &self.broken {
            notes.push(format!("{} did not run: {why}", k.name()));
        }
        report::write(&self.common.out, &self.name, &self.started, &self.runs, &notes, &targets)
    }

    fn placement(&mut self, kind: Kind) -> Result<Placement> {
        self.seq += 1;
        Placement::fresh(kind, self.s3.as_ref(), self.seq)
    }

    fn start(&mut self, kind: Kind) -> Result<Target> {
        let at = self.placement(kind)?;
        Target::start(kind, &self.programs, self.s3.as_ref(), &at)
    }

    fn cleanup(&self, t: Target) {
        let at = t.placement();
        t.stop();
        self.remove_placement(&at);
    }

    /// A controller and `agents` Sidestream agents in remote mode, sharing one bucket (node ids
    /// 1..=agents), every agent ready.
    fn start_cluster(&mut self, agents: u32) -> Result<Cluster> {
        let mut first = self.placement(Kind::Sidestream)?;
        let controller = match Controller::start(&self.programs, first.data_dir.with_extension("controller")) {
            Ok(c) => c,
            Err(e) => {
                self.remove_placement(&first);
                return Err(e);
            }
        };
        first.remote = Some(Remote { controller: controller.address.clone(), node_id: 1 });
        let mut cluster = Cluster { controller, agents: Vec::new(), first: first.clone() };
        for node_id in 1..=agents {
            let at = if node_id == 1 { Ok(first.clone()) } else { first.peer(node_id) };
            match at.and_then(|at| Target::start(Kind::Sidestream, &self.programs, self.s3.as_ref(), &at)) {
                Ok(t) => cluster.agents.push(t),
                Err(e) => {
                    self.remove_cluster(cluster);
                    return Err(e);
                }
            }
        }
        Ok(cluster)
    }

    /// Stops a cluster's agents and controller; removes their data and the bucket.
    fn remove_cluster(&self, cluster: Cluster) {
        for t in cluster.agents {
            let at = t.placement();
            t.stop();
            let _ = std::fs::remove_dir_all(&at.data_dir);
        }
        cluster.controller.remove();
        self.remove_placement(&cluster.first);
    }

    fn remove_placement(&self, at: &Placement) {
        let _ = std::fs::remove_dir_all(&at.data_dir);
        if let (Some(s3), Some(b)) = (&self.s3, &at.bucket) {
            s3.remove_bucket(b);
        }
    }

    /// [`Session::each_target`] for Sidestream alone (a case the peers have no counterpart
    /// of), when Sidestream is among the targets.
    fn sidestream_only(
        &mut self,
        scenario: &str,
        case: &str,
        params: BTreeMap<String, String>,
        f: &dyn Fn(&mut Session, Kind) -> Result<Vec<Run>>,
    ) {
        if !self.targets.contains(&Kind::Sidestream) {
            return;
        }
        let all = std::mem::replace(&mut self.targets, vec![Kind::Sidestream]);
        // A cluster that cannot start does not stop Sidestream's other cases.
        let broken = self.broken.clone();
        self.each_target(scenario, case, params, f);
        self.targets = all;
        self.broken = broken;
    }

    fn s3_counts(&self) -> s3count::Counts {
        self.s3.as_ref().map(|s| s.counts()).unwrap_or_default()
    }

    fn spec(&self, bootstrap: &str, topic: &str, c: &Case) -> load::ProduceSpec {
        load::ProduceSpec {
            bootstrap: bootstrap.to_string(),
            topic: topic.to_string(),
            partitions: c.partitions,
            acks: c.acks.clone(),
            record_bytes: c.record_bytes,
            compression: c.compression.clone(),
            rate: c.rate,
            duration: Duration::from_secs(self.common.duration_s),
            warmup: Duration::from_secs(self.common.warmup_s.min(self.common.duration_s.saturating_sub(1))),
            queue_kbytes: 32768,
            max_records: None,
        }
    }

    /// Runs `f` against each target; a failure becomes a run with a note and no figures.
    fn each_target(
        &mut self,
        scenario: &str,
        case: &str,
        params: BTreeMap<String, String>,
        f: &dyn Fn(&mut Session, Kind) -> Result<Vec<Run>>,
    ) {
        for kind in self.targets.clone() {
            // Sidestream once per preset; Tansu with the first; Kafka makes no S3 requests.
            let presets = match kind {
                Kind::Sidestream => self.presets.clone(),
                _ => vec![self.presets[0]],
            };
            for preset in presets {
                let store = kind.uses_s3().then_some(preset);
                let shown = store.filter(|p| *p != StoreLatency::None).map_or(String::new(), |p| format!(" [store {}]", p.name()));
                eprintln!("== {scenario} [{case}]{shown} on {} (load {:.1})", kind.name(), report::load_avg());
                if let Some(why) = self.broken.get(&kind) {
                    eprintln!("   skipped: {why}");
                    continue;
                }
                if let (Some(s3), Some(p)) = (&self.s3, store) {
                    s3.set_store_latency(p);
                }
                let load_before = report::load_avg();
                match f(self, kind) {
                    Ok(runs) => {
                        for mut r in runs {
                            r.load_before = load_before;
                            r.load_after = report::load_avg();
                            r.measured_with(store);
                            eprintln!("   {}", summary(&r));
                            self.runs.push(r);
                        }
                    }
                    Err(e) => {
                        let why = format!("{e:#}");
                        eprintln!("   FAILED: {why}");
                        if why.contains("cannot start") || why.contains("before it was ready") || why.contains("not ready on") {
                            self.broken.insert(kind, why.clone());
                        }
                        let mut r =
                            Run::new(scenario, case, kind.name(), &params, BTreeMap::new(), vec![format!("failed: {why}")], Vec::new());
                        r.load_before = load_before;
                        r.load_after = report::load_avg();
                        r.measured_with(store);
                        self.runs.push(r);
                    }
                }
            }
        }
        if let Some(s3) = &self.s3 {
            s3.set_store_latency(self.presets[0]);
        }
    }

    /// Usage, S3 requests and cost figures common to every scenario.
    /// `usage`: (CPU seconds, peak RSS bytes).
    fn resource_figures(
        &self,
        kind: Kind,
        figures: &mut BTreeMap<String, f64>,
        usage: (f64, u64),
        written_gb: f64,
        s3: &s3count::Counts,
        read_gb: f64,
    ) {
        let (cpu_s, rss) = usage;
        figures.insert("server CPU s".into(), cpu_s);
        if written_gb > 0.0 {
            figures.insert("CPU s per GB".into(), cpu_s / written_gb);
        }
        figures.insert("peak RSS MiB".into(), rss as f64 / 1048576.0);
        if kind.uses_s3() {
            let puts_per_gb = if written_gb > 0.0 { s3.puts() as f64 / written_gb } else { 0.0 };
            figures.insert("PUTs per GB".into(), puts_per_gb);
            let gets_per_gb = if read_gb > 0.0 { s3.gets() as f64 / read_gb } else { 0.0 };
            if read_gb > 0.0 {
                figures.insert("GETs per GB".into(), gets_per_gb);
            }
            // Bytes the bucket was made to store per byte written (object framing, compression),
            // measured on the wire; 1 when the run wrote nothing measurable.
            let put_bytes = s3.get(s3count::PUT_BYTES) as f64;
            let stored_per_written = if written_gb > 0.0 && put_bytes > 0.0 { put_bytes / (written_gb * 1e9) } else { 1.0 };
            figures.insert("stored bytes per byte written".into(), stored_per_written);
            figures.insert("$ per month (model)".into(), COST.object_storage(puts_per_gb, gets_per_gb, stored_per_written));
            // What the latency model added (the wire's count of requests; absent for `none`).
            let requests: u64 = s3count::REQUEST_NAMES.iter().map(|k| s3.get(k)).sum();
            let delay_us = s3.get(s3count::DELAY_US);
            if delay_us > 0 && requests > 0 {
                figures.insert("store delay mean ms".into(), delay_us as f64 / requests as f64 / 1000.0);
            }
            if s3.get(s3count::SLOW_DOWN) > 0 {
                figures.insert("store SlowDown".into(), s3.get(s3count::SLOW_DOWN) as f64);
            }
        } else {
            figures.insert("$ per month (model)".into(), COST.kafka());
        }
    }

    fn produce(&mut self, lists: &ProduceLists) -> Result<()> {
        let mut cases = Vec::new();
        for acks in &lists.acks {
            for &rate in &lists.rate {
                for &record_bytes in &lists.record_bytes {
                    for &partitions in &lists.partitions {
                        for compression in &lists.compression {
                            cases.push(Case { acks: acks.clone(), record_bytes, partitions, compression: compression.clone(), rate });
                        }
                    }
                }
            }
        }
        for c in cases {
            let params = named([
                ("acks", c.acks.clone()),
                ("record_bytes", c.record_bytes.to_string()),
                ("partitions", c.partitions.to_string()),
                ("compression", c.compression.clone()),
                ("rate", if c.rate == 0 { "max".into() } else { c.rate.to_string() }),
                ("queue_kbytes", lists.queue_kb.to_string()),
                ("duration_s", self.common.duration_s.to_string()),
                ("warmup_s", self.common.warmup_s.to_string()),
            ]);
            let queue_kb = lists.queue_kb;
            let case = c.clone();
            self.each_target("produce", &c.label(), params.clone(), &move |s, kind| {
                let mut t = s.start(kind)?;
                let result = (|| {
                    load::create_topic(&t.bootstrap, "bench", case.partitions)?;
                    let (cpu0, _) = t.usage();
                    let s30 = s.s3_counts();
                    let own0 = t.store_requests();
                    let m0 = t.metrics();
                    let mut spec = s.spec(&t.bootstrap, "bench", &case);
                    spec.queue_kbytes = queue_kb;
                    let out = load::produce(&spec)?;
                    // Let acks=1 data reach the object store before counting its requests.
                    std::thread::sleep(Duration::from_millis(1500));
                    if let Some(how) = t.exited() {
                        bail!("the {} broker {how} during the run; log: {}", kind.name(), t.log_tail());
                    }
                    let (cpu1, rss) = t.usage();
                    let wire = s.s3_counts().minus(&s30);
                    let mut notes = Vec::new();
                    let s3 = server_counts(&t, own0, &wire, &mut notes);
                    let mut figures = BTreeMap::new();
                    throughput_figures(&mut figures, &out);
                    report::latency_figures(&mut figures, "", &out.latency_us);
                    let written_gb = out.acked_total as f64 * case.record_bytes as f64 / 1e9;
                    s.resource_figures(kind, &mut figures, (cpu1 - cpu0, rss), written_gb, &s3, 0.0);
                    wal_figures(&mut figures, &m0, &t.metrics());
                    if let Some(e) = out.first_error {
                        notes.push(format!("{} delivery errors, first: {e}", out.errors));
                    }
                    Ok(vec![Run::new("produce", &case.label(), kind.name(), &params, figures, notes, report::cdf_points(&out.latency_us))])
                })();
                s.cleanup(t);
                result
            });
        }
        Ok(())
    }

    fn e2e(&mut self, p: &E2eParams) -> Result<()> {
        let case = Case { acks: p.acks.clone(), record_bytes: p.record_bytes, partitions: 1, compression: "none".into(), rate: p.rate };
        let label = format!("{} same agent", case.label());
        let mut params = named([
            ("acks", case.acks.clone()),
            ("record_bytes", case.record_bytes.to_string()),
            ("partitions", "1".into()),
            ("rate", case.rate.to_string()),
            ("consumer", "tail, same agent, fetch.wait.max.ms=100".into()),
            ("duration_s", self.common.duration_s.to_string()),
        ]);
        let l2 = label.clone();
        let c2 = case.clone();
        let p2 = params.clone();
        self.each_target("e2e", &label, params.clone(), &move |s, kind| {
            let mut t = s.start(kind)?;
            let result = (|| {
                load::create_topic(&t.bootstrap, "bench", 1)?;
                let (cpu0, _) = t.usage();
                let s30 = s.s3_counts();
                let own0 = t.store_requests();
                let spec = s.spec(&t.bootstrap, "bench", &c2);
                let ignore_before_us = load::wall_us() + spec.warmup.as_micros() as u64;
                let tail = Tail::start(&t.bootstrap, ignore_before_us);
                let out = load::produce(&spec)?;
                if let Some(how) = t.exited() {
                    bail!("the {} broker {how} during the run; log: {}", kind.name(), t.log_tail());
                }
                let read = Tail::finish(vec![tail], out.acked_total)?.remove(0);
                let (cpu1, rss) = t.usage();
                let wire = s.s3_counts().minus(&s30);
                let mut notes = Vec::new();
                let s3 = server_counts(&t, own0, &wire, &mut notes);
                let mut figures = e2e_figures(&out, &read, &mut notes);
                let written_gb = out.acked_total as f64 * c2.record_bytes as f64 / 1e9;
                s.resource_figures(kind, &mut figures, (cpu1 - cpu0, rss), written_gb, &s3, read.bytes as f64 / 1e9);
                Ok(vec![Run::new("e2e", &l2, kind.name(), &p2, figures, notes, report::cdf_points(&read.e2e_us))])
            })();
            s.cleanup(t);
            result
        });

        // A controller and two agents on one bucket: the producer on agent 1, tail consumers on
        // agent 1 and agent 2 at once.
        params.insert(
            "consumer".into(),
            "tail on the producer's agent and on another agent of the same cluster (controller service, \
             SQLite; two agents in remote mode on one bucket), both at once, fetch.wait.max.ms=100"
                .into(),
        );
        let cluster_label = format!("{} remote controller, 2 agents", case.label());
        let same = label.clone();
        self.sidestream_only("e2e", &cluster_label, params.clone(), &move |s, kind| {
            let mut cl = s.start_cluster(2)?;
            let result = (|| {
                let (a, b) = (cl.agents[0].bootstrap.clone(), cl.agents[1].bootstrap.clone());
                load::create_topic(&a, "bench", 1)?;
                load::wait_topic(&b, "bench", 1)?;
                let (cpu0, _) = cl.usage();
                let s30 = s.s3_counts();
                let spec = s.spec(&a, "bench", &case);
                let ignore_before_us = load::wall_us() + spec.warmup.as_micros() as u64;
                let tails = vec![Tail::start(&a, ignore_before_us), Tail::start(&b, ignore_before_us)];
                let out = load::produce(&spec)?;
                if let Some(how) = cl.exited() {
                    bail!("{how}");
                }
                let reads = Tail::finish(tails, out.acked_total)?;
                let (cpu1, rss) = cl.usage();
                let wire = s.s3_counts().minus(&s30);
                let read_gb = reads.iter().map(|r| r.bytes as f64).sum::<f64>() / 1e9;
                let written_gb = out.acked_total as f64 * case.record_bytes as f64 / 1e9;
                let mut runs = Vec::new();
                for (consumer, read) in ["same agent", "other agent"].into_iter().zip(&reads) {
                    let mut notes = vec![
                        "CPU s and peak RSS: the controller and both agents together; object-store requests: the \
                         proxy's count for the cluster (both consumers' reads)"
                            .to_string(),
                    ];
                    let mut figures = e2e_figures(&out, read, &mut notes);
                    s.resource_figures(kind, &mut figures, (cpu1 - cpu0, rss), written_gb, &wire, read_gb);
                    runs.push(
                        Run::new(
                            "e2e",
                            &format!("{} {consumer}, remote controller", case.label()),
                            kind.name(),
                            &params,
                            figures,
                            notes,
                            report::cdf_points(&read.e2e_us),
                        )
                        .compared_as(&same),
                    );
                }
                Ok(runs)
            })();
            s.remove_cluster(cl);
            result
        });
        Ok(())
    }

    fn catchup(&mut self, p: &CatchupParams) -> Result<()> {
        let case = Case { acks: "1".into(), record_bytes: 1024, partitions: 1, compression: "none".into(), rate: p.rate };
        let label = format!("acks=1 1024B {}/s, history {} MB", p.rate, p.history_mb);
        let params = named([
            ("acks", "1".to_string()),
            ("record_bytes", "1024".into()),
            ("rate", p.rate.to_string()),
            ("history_mb", p.history_mb.to_string()),
            ("duration_s", self.common.duration_s.to_string()),
        ]);
        let history_records = p.history_mb * 1_000_000 / 1024;
        let l2 = label.clone();
        self.each_target("catchup", &label, params.clone(), &move |s, kind| {
            let t = s.start(kind)?;
            let at = t.placement();
            let filled = (|| {
                load::create_topic(&t.bootstrap, "history", 1)?;
                load::create_topic(&t.bootstrap, "bench", 1)?;
                let mut fill = s.spec(&t.bootstrap, "history", &Case { rate: 0, ..case.clone() });
                fill.duration = Duration::from_secs(900);
                fill.warmup = Duration::ZERO;
                fill.max_records = Some(history_records);
                let filled = load::produce(&fill)?;
                if filled.acked_total < history_records {
                    bail!("history: only {} of {history_records} records acknowledged", filled.acked_total);
                }
                // acks=1: give the last history records time to be committed before the restart.
                std::thread::sleep(Duration::from_secs(2));
                Ok(filled.acked_total)
            })();
            let history = match filled {
                Ok(n) => n,
                Err(e) => {
                    s.cleanup(t);
                    return Err(e);
                }
            };
            // Cold reads: restart the broker (Sidestream without its read cache) and drop the
            // kernel's page cache where it lets us.
            t.stop();
            let _ = std::fs::remove_dir_all(at.data_dir.join("cache"));
            let dropped = std::fs::write("/proc/sys/vm/drop_caches", "1").is_ok();
            let t = Target::start(kind, &s.programs, s.s3.as_ref(), &at)?;
            let result = (|| {
                let spec = s.spec(&t.bootstrap, "bench", &case);
                let alone = load::produce(&spec)?;
                let (cpu0, _) = t.usage();
                let s30 = s.s3_counts();
                let own0 = t.store_requests();
                let stop = Arc::new(AtomicBool::new(false));
                let cspec = load::ConsumeSpec {
                    bootstrap: t.bootstrap.clone(),
                    topic: "history".into(),
                    partitions: 1,
                    until_records: Some(history),
                    stop: stop.clone(),
                    ignore_before_us: 0,
                    progress: Arc::new(AtomicU64::new(0)),
                };
                let consumer = std::thread::spawn(move || load::consume(&cspec));
                let with = load::produce(&spec)?;
                let deadline = Instant::now() + Duration::from_secs(600);
                while !consumer.is_finished() && Instant::now() < deadline {
                    std::thread::sleep(Duration::from_millis(100));
                }
                stop.store(true, Ordering::Relaxed);
                let read = consumer.join().map_err(|_| anyhow::anyhow!("consumer thread panicked"))??;
                let (cpu1, rss) = t.usage();
                let wire = s.s3_counts().minus(&s30);
                let mut check = Vec::new();
                let s3 = server_counts(&t, own0, &wire, &mut check);
                let mut runs = Vec::new();
                for (phase, out) in [("alone", &alone), ("with catch-up", &with)] {
                    let mut figures = BTreeMap::new();
                    throughput_figures(&mut figures, out);
                    report::latency_figures(&mut figures, "", &out.latency_us);
                    let mut notes = Vec::new();
                    if phase != "alone" {
                        notes.extend(check.iter().cloned());
                        figures.insert("producer p99 ms with catch-up".into(), out.latency_us.value_at_quantile(0.99) as f64 / 1000.0);
                        figures.insert("history MB read".into(), read.bytes as f64 / 1e6);
                        figures.insert("catch-up MB/s".into(), read.bytes as f64 / read.elapsed_s / 1e6);
                        let read_gb = read.bytes as f64 / 1e9;
                        s.resource_figures(kind, &mut figures, (cpu1 - cpu0, rss), out.acked_total as f64 * 1024.0 / 1e9, &s3, read_gb);
                        if read.records < history {
                            notes.push(format!("catch-up read {} of {history} records within 600 s", read.records));
                        }
                        if !dropped {
                            notes.push("page cache not dropped (no permission): Kafka's history may be read from memory".into());
                        }
                    }
                    runs.push(Run::new(
                        "catchup",
                        &format!("{l2}: producer {phase}"),
                        kind.name(),
                        &params,
                        figures,
                        notes,
                        report::cdf_points(&out.latency_us),
                    ));
                }
                Ok(runs)
            })();
            s.cleanup(t);
            result
        });
        Ok(())
    }

    fn elastic(&mut self, p: &ElasticParams) -> Result<()> {
        let case = Case { acks: "1".into(), record_bytes: 1024, partitions: 1, compression: "none".into(), rate: p.rate };
        let label = format!("acks=1 1024B {}/s for {} s then SIGKILL", p.rate, self.common.duration_s);
        let params = named([
            ("acks", "1".to_string()),
            ("record_bytes", "1024".into()),
            ("rate", p.rate.to_string()),
            ("duration_s", self.common.duration_s.to_string()),
        ]);
        self.notes.push(
            "elastic, start to first ack: the broker restarts on its existing data (topic known) after a clean \
             stop; Sidestream also: a new agent (empty data dir) joining a controller service and one agent."
                .into(),
        );
        let join_case = case.clone();
        let l2 = label.clone();
        self.each_target("elastic", &label, params.clone(), &move |s, kind| {
            let t = s.start(kind)?;
            let at = t.placement();
            let warm = (|| {
                load::create_topic(&t.bootstrap, "elastic", 1)?;
                load::create_topic(&t.bootstrap, "killed", 1)?;
                load::first_ack(&t.bootstrap, "elastic", Instant::now() + Duration::from_secs(60))
            })();
            if let Err(e) = warm {
                s.cleanup(t);
                return Err(e);
            }
            let bootstrap = t.bootstrap.clone();
            t.stop();
            let t0 = Instant::now();
            let t = Target::spawn(kind, &s.programs, s.s3.as_ref(), &at)?;
            let result = (|| {
                let first = load::first_ack(&bootstrap, "elastic", t0 + Duration::from_secs(180))?;
                let start_to_ack = first.duration_since(t0).as_secs_f64();
                let mut spec = s.spec(&bootstrap, "killed", &case);
                spec.warmup = Duration::ZERO;
                let out = load::produce(&spec)?;
                Ok((start_to_ack, out))
            })();
            let (start_to_ack, out) = match result {
                Ok(v) => v,
                Err(e) => {
                    s.cleanup(t);
                    return Err(e);
                }
            };
            t.kill9();
            let t1 = Instant::now();
            let t = Target::spawn(kind, &s.programs, s.s3.as_ref(), &at)?;
            // Every acknowledged record committed (Some(seconds)), or what was there after 300 s.
            let deadline = t1 + Duration::from_secs(300);
            let mut last_hw = None;
            let restart_s = loop {
                last_hw = load::high_watermarks(&bootstrap, "killed", 1).or(last_hw);
                if last_hw.is_some_and(|hw| hw >= out.acked_total as i64) {
                    break Some(t1.elapsed().as_secs_f64());
                }
                if Instant::now() > deadline {
                    break None;
                }
                std::thread::sleep(Duration::from_millis(20));
            };
            let (cpu, rss) = t.usage();
            s.cleanup(t);
            let mut figures = BTreeMap::new();
            let mut notes = Vec::new();
            figures.insert("start to first ack s".into(), start_to_ack);
            if let Some(r) = restart_s {
                figures.insert("restart to committed s".into(), r);
            } else {
                notes.push(format!(
                    "after 300 s the partition held {} records; {} were acknowledged (acks=1) before the SIGKILL",
                    last_hw.map_or("no answer".to_string(), |h| h.to_string()),
                    out.acked_total
                ));
            }
            figures.insert("acked before kill".into(), out.acked_total as f64);
            if let Some(hw) = last_hw {
                figures.insert("records after restart".into(), hw as f64);
            }
            figures.insert("server CPU s".into(), cpu);
            figures.insert("peak RSS MiB".into(), rss as f64 / 1048576.0);
            Ok(vec![Run::new("elastic", &l2, kind.name(), &params, figures, notes, Vec::new())])
        });

        // A new agent joining a cluster: a controller and one agent with data in the topic,
        // then a second agent (empty data dir) from spawn to its first acknowledged produce.
        let fill_s = self.common.duration_s.clamp(1, 5);
        let joins = p.joins.max(1);
        let join_label = format!("new agent joins (remote controller, 1 agent, topic with {fill_s} s of acks=1 1024B at {}/s)", p.rate);
        let join_params = named([
            ("acks", "1".to_string()),
            ("record_bytes", "1024".into()),
            ("rate", p.rate.to_string()),
            ("fill_s", fill_s.to_string()),
            ("joins", joins.to_string()),
        ]);
        let jl = join_label.clone();
        let jp = join_params.clone();
        self.sidestream_only("elastic", &join_label, join_params, &move |s, kind| {
            let cl = s.start_cluster(1)?;
            let result = (|| {
                let a = cl.agents[0].bootstrap.clone();
                load::create_topic(&a, "elastic", 1)?;
                let mut spec = s.spec(&a, "elastic", &join_case);
                spec.duration = Duration::from_secs(fill_s);
                spec.warmup = Duration::ZERO;
                let filled = load::produce(&spec)?;
                // Until the data is committed (visible to every agent).
                let deadline = Instant::now() + Duration::from_secs(60);
                while load::high_watermarks(&a, "elastic", 1).is_none_or(|hw| hw < filled.acked_total as i64) {
                    if Instant::now() > deadline {
                        bail!("the {} filled records were not committed within 60 s", filled.acked_total);
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                // Each join: a new agent (fresh node id, empty data dir) from spawn to listening
                // (ApiVersions answered), to its first acknowledged produce, and to the history
                // visible through it; then it is stopped again.
                let mut samples: Vec<[f64; 3]> = Vec::new();
                let (mut cpu, mut rss) = (0.0f64, 0u64);
                let mut notes = Vec::new();
                for j in 0..joins {
                    let at = cl.first.peer(2 + j)?;
                    let bootstrap = format!("127.0.0.1:{}", at.port);
                    let t0 = Instant::now();
                    let mut t = Target::spawn(kind, &s.programs, s.s3.as_ref(), &at)?;
                    let measured = (|| {
                        t.wait_ready(Duration::from_secs(180))?;
                        let listening = t0.elapsed().as_secs_f64();
                        let first = load::first_ack(&bootstrap, "elastic", t0 + Duration::from_secs(180))?;
                        let deadline = Instant::now() + Duration::from_secs(60);
                        let history = loop {
                            // At least the filled records (earlier joins added one each).
                            if load::high_watermarks(&bootstrap, "elastic", 1).is_some_and(|hw| hw >= filled.acked_total as i64) {
                                break t0.elapsed().as_secs_f64();
                            }
                            if Instant::now() > deadline {
                                bail!("the new agent's high watermark did not cover the history within 60 s");
                            }
                            std::thread::sleep(Duration::from_millis(20));
                        };
                        Ok([listening, first.duration_since(t0).as_secs_f64(), history])
                    })();
                    let (c, r) = t.usage();
                    cpu = cpu.max(c);
                    rss = rss.max(r);
                    t.stop();
                    let _ = std::fs::remove_dir_all(&at.data_dir);
                    samples.push(measured?);
                }
                let median = |i: usize| {
                    let mut v: Vec<f64> = samples.iter().map(|s| s[i]).collect();
                    v.sort_by(f64::total_cmp);
                    v[v.len() / 2]
                };
                let max = |i: usize| samples.iter().map(|s| s[i]).fold(0.0, f64::max);
                let mut figures = BTreeMap::new();
                figures.insert("start to listening s".into(), median(0));
                figures.insert("start to first ack s".into(), median(1));
                figures.insert("start to first ack max s".into(), max(1));
                figures.insert("start to history visible s".into(), median(2));
                figures.insert("records before join".into(), filled.acked_total as f64);
                figures.insert("server CPU s".into(), cpu);
                figures.insert("peak RSS MiB".into(), rss as f64 / 1048576.0);
                notes.push(format!(
                    "{} joins, one after another (each agent stopped before the next); medians, and the \
                     slowest first ack; per join (listening, first ack, history visible) s: {}. CPU s and \
                     peak RSS: the largest of the new agents'",
                    samples.len(),
                    samples.iter().map(|s| format!("({:.2}, {:.2}, {:.2})", s[0], s[1], s[2])).collect::<Vec<_>>().join(", ")
                ));
                Ok(vec![Run::new("elastic", &jl, kind.name(), &jp, figures, notes, Vec::new())])
            })();
            s.remove_cluster(cl);
            result
        });
        Ok(())
    }

    fn txn(&mut self, p: &TxnParams) -> Result<()> {
        self.notes.push(
            "txn: one librdkafka transactional producer (acks=all, idempotence on, linger.ms=5), back-to-back \
             transactions (closed loop); p50/p99/p999/max are commit_transaction latency (flushing the \
             transaction's records, then EndTxn); txn p.. ms: begin to commit returned."
                .into(),
        );
        for &n in &p.records {
            let label = format!("{n} records/txn {}B p={}", p.record_bytes, p.partitions);
            let params = named([
                ("records_per_txn", n.to_string()),
                ("record_bytes", p.record_bytes.to_string()),
                ("partitions", p.partitions.to_string()),
                ("duration_s", self.common.duration_s.to_string()),
                ("warmup_s", self.common.warmup_s.to_string()),
            ]);
            let (l2, p2, record_bytes, partitions) = (label.clone(), params.clone(), p.record_bytes, p.partitions);
            self.each_target("txn", &label, params, &move |s, kind| {
                let mut t = s.start(kind)?;
                let result = (|| {
                    load::create_topic(&t.bootstrap, "bench", partitions)?;
                    let (cpu0, _) = t.usage();
                    let s30 = s.s3_counts();
                    let own0 = t.store_requests();
                    let warmup = s.common.warmup_s.min(s.common.duration_s.saturating_sub(1));
                    let out = load::transactions(&load::TxnSpec {
                        bootstrap: t.bootstrap.clone(),
                        topic: "bench".into(),
                        partitions,
                        record_bytes,
                        records_per_txn: n,
                        duration: Duration::from_secs(s.common.duration_s),
                        warmup: Duration::from_secs(warmup),
                    })?;
                    if let Some(how) = t.exited() {
                        bail!("the {} broker {how} during the run; log: {}", kind.name(), t.log_tail());
                    }
                    if out.transactions == 0 {
                        bail!("no transaction began and committed after the warm-up");
                    }
                    let (cpu1, rss) = t.usage();
                    let wire = s.s3_counts().minus(&s30);
                    let mut notes = Vec::new();
                    let s3 = server_counts(&t, own0, &wire, &mut notes);
                    let mut figures = BTreeMap::new();
                    figures.insert("MB/s".into(), out.bytes as f64 / out.window_s / 1e6);
                    figures.insert("records/s".into(), out.records as f64 / out.window_s);
                    figures.insert("transactions/s".into(), out.transactions as f64 / out.window_s);
                    report::latency_figures(&mut figures, "", &out.commit_us);
                    report::latency_figures(&mut figures, "txn ", &out.txn_us);
                    // Every committed record is in the log (control markers take offsets too).
                    let hw = load::high_watermarks(&t.bootstrap, "bench", partitions);
                    match hw {
                        Some(hw) if hw >= out.committed_total as i64 => {}
                        other => notes
                            .push(format!("high watermark {other:?} below the {} records of committed transactions", out.committed_total)),
                    }
                    let written_gb = out.committed_total as f64 * record_bytes as f64 / 1e9;
                    s.resource_figures(kind, &mut figures, (cpu1 - cpu0, rss), written_gb, &s3, 0.0);
                    Ok(vec![Run::new("txn", &l2, kind.name(), &p2, figures, notes, report::cdf_points(&out.commit_us))])
                })();
                s.cleanup(t);
                result
            });
        }
        Ok(())
    }
}

/// Sidestream: the object-store requests its own /metrics counted (what the issue asks for),
/// checked against the proxy's count; other targets: the proxy's count.
fn server_counts(t: &Target, before: Option<s3count::Counts>, wire: &s3count::Counts, notes: &mut Vec<String>) -> s3count::Counts {
    let (Some(before), Some(after)) = (before, t.store_requests()) else {
        return wire.clone();
    };
    let mut own = after.minus(&before);
    // /metrics counts requests, not bodies: the stored bytes and what the proxy did come from
    // the wire.
    for k in [s3count::PUT_BYTES, s3count::DELAY_US, s3count::SLOW_DOWN] {
        own.0.insert(k, wire.get(k));
    }
    let (a, b) = ((own.puts() + own.gets()) as f64, (wire.puts() + wire.gets()) as f64);
    if (a - b).abs() > 0.05 * a.max(b) + 2.0 {
        notes.push(format!(
            "object-store requests: /metrics {} PUTs {} GETs, wire {} PUTs {} GETs",
            own.puts(),
            own.gets(),
            wire.puts(),
            wire.gets()
        ));
    }
    own
}

/// Sidestream's WAL group commits during a run (acks=1 answers wait for them).
fn wal_figures(figures: &mut BTreeMap<String, f64>, before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) {
    let delta = |k: &str| after.get(k).copied().unwrap_or(0.0) - before.get(k).copied().unwrap_or(0.0);
    let syncs = delta("sidestream_wal_syncs_total");
    if syncs > 0.0 {
        figures.insert("WAL entries per sync".into(), delta("sidestream_wal_entries_total") / syncs);
        figures.insert("WAL MB per sync".into(), delta("sidestream_wal_bytes_total") / syncs / 1e6);
        if let Some(p99) = after.get("sidestream_wal_sync_seconds:p0.99") {
            figures.insert("WAL sync p99 ms".into(), p99 * 1000.0);
        }
    }
}

/// A tail consumer of the e2e topic ("bench", partition 0) on its own thread.
struct Tail {
    stop: Arc<AtomicBool>,
    progress: Arc<AtomicU64>,
    thread: std::thread::JoinHandle<Result<load::ConsumeOutcome>>,
}

impl Tail {
    fn start(bootstrap: &str, ignore_before_us: u64) -> Tail {
        let spec = load::ConsumeSpec {
            bootstrap: bootstrap.to_string(),
            topic: "bench".into(),
            partitions: 1,
            until_records: None,
            stop: Arc::new(AtomicBool::new(false)),
            ignore_before_us,
            progress: Arc::new(AtomicU64::new(0)),
        };
        Tail {
            stop: spec.stop.clone(),
            progress: spec.progress.clone(),
            thread: std::thread::spawn(move || load::consume(&spec)),
        }
    }

    /// Waits (up to 30 s) until every tail has read `acked` records, so a consumer that falls
    /// behind shows as latency, not as missing data; then stops them.
    fn finish(tails: Vec<Tail>, acked: u64) -> Result<Vec<load::ConsumeOutcome>> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while tails.iter().any(|t| t.progress.load(Ordering::Relaxed) < acked) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
        std::thread::sleep(Duration::from_millis(200));
        for t in &tails {
            t.stop.store(true, Ordering::Relaxed);
        }
        tails.into_iter().map(|t| t.thread.join().map_err(|_| anyhow::anyhow!("consumer thread panicked"))?).collect()
    }
}

/// The e2e figures of one tail consumer: its latency first, then the producer's p99.
fn e2e_figures(out: &load::ProduceOutcome, read: &load::ConsumeOutcome, notes: &mut Vec<String>) -> BTreeMap<String, f64> {
    let mut figures = BTreeMap::new();
    throughput_figures(&mut figures, out);
    report::latency_figures(&mut figures, "", &read.e2e_us);
    figures.insert("e2e p99 ms".into(), read.e2e_us.value_at_quantile(0.99) as f64 / 1000.0);
    figures.insert("produce p99 ms".into(), out.latency_us.value_at_quantile(0.99) as f64 / 1000.0);
    figures.insert("records consumed".into(), read.records as f64);
    if read.records < out.acked_total {
        notes.push(format!(
            "the consumer read {} of {} acknowledged records by 30 s after the producer stopped",
            read.records, out.acked_total
        ));
    }
    figures
}

/// A seed for the latency model when none is given: the clock's nanoseconds and the pid.
fn clock_seed() -> u64 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64);
    nanos ^ (u64::from(std::process::id()) << 32)
}

/// The session note that says which stores the figures were measured with.
fn store_latency_note(presets: &[StoreLatency], seed: u64) -> String {
    let figures = |p: StoreLatency| match p.preset() {
        None => "none: s3s-fs as it is".to_string(),
        Some(f) => format!(
            "{}: PUT p50/p99 {}/{} ms (0 B) to {}/{} ms (8 MiB), linear in the body size; GET and other requests first byte \
             {}/{} ms, GET body at {} MB/s; 503 SlowDown for {}% of PUTs",
            p.name(),
            f.put_small.p50_ms,
            f.put_small.p99_ms,
            f.put_8mib.p50_ms,
            f.put_8mib.p99_ms,
            f.first_byte.p50_ms,
            f.first_byte.p99_ms,
            f.get_bytes_per_s / 1e6,
            f.slow_down_per_million as f64 / 1e4
        ),
    };
    format!(
        "Object-store latency (--store-latency {}, seed {seed}): the proxy holds each response's first byte for a \
         log-normal delay fitted to the preset's p50 and p99; {}. Sidestream runs every case once per preset \
         (a case name ending [store <preset>]; its ratios are taken against the peers' run of the case without it); \
         Tansu runs with {}; runs without a [store ...] suffix ran on the store as it is.",
        presets.iter().map(|p| p.name()).collect::<Vec<_>>().join(","),
        presets.iter().map(|p| figures(*p)).collect::<Vec<_>>().join("; "),
        presets[0].name()
    )
}

/// A case's parameters as printed with its results.
fn named<const N: usize>(pairs: [(&str, String); N]) -> BTreeMap<String, String> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

fn throughput_figures(figures: &mut BTreeMap<String, f64>, out: &load::ProduceOutcome) {
    figures.insert("MB/s".into(), out.bytes as f64 / out.window_s / 1e6);
    figures.insert("records/s".into(), out.records as f64 / out.window_s);
    figures.insert("errors".into(), out.errors as f64);
}

fn summary(r: &Run) -> String {
    let f = |k: &str| r.figures.get(k).map_or("-".into(), |v| format!("{v:.2}"));
    format!(
        "{} {}: {} MB/s, {} rec/s, p50 {} p99 {} p999 {} ms, CPU {} s, RSS {} MiB, PUTs/GB {}",
        r.target,
        r.case,
        f("MB/s"),
        f("records/s"),
        f("p50 ms"),
        f("p99 ms"),
        f("p999 ms"),
        f("server CPU s"),
        f("peak RSS MiB"),
        f("PUTs per GB")
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory as _;

    #[test]
    fn every_subcommand_parses_with_its_defaults() {
        Cli::command().debug_assert();
        for args in [
            &["b", "compare"][..],
            &["b", "produce"],
            &["b", "e2e"],
            &["b", "catchup"],
            &["b", "elastic"],
            &["b", "txn"],
            &["b", "quick"],
            &["b", "compare", "--txn-records", "10,20", "--record-bytes", "100"],
            &["b", "quick", "--store-latency", "s3-standard", "--store-latency-seed", "7"],
            &["b", "compare", "--store-latency", "none,s3-express"],
            &["b", "produce", "--store-latency", "s3-express,s3-standard"],
        ] {
            if let Err(e) = Cli::try_parse_from(args) {
                panic!("{args:?}: {e}");
            }
        }
    }
}
