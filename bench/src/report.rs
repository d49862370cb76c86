//! Results: one [`Run`] per (case, target), written as a Markdown table, a JSON file and a
//! latency CDF (SVG) under `bench/results/`, with per-figure ratios between targets and the
//! object-storage cost model (its assumptions printed with it).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Result;
use hdrhistogram::Histogram;
use serde::Serialize;

/// One measured run of one case against one target.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub scenario: String,
    /// The case's parameters in one line, e.g. `acks=1 record=1024B partitions=1 lz4 max`.
    pub case: String,
    pub target: String,
    pub params: BTreeMap<String, String>,
    /// Named figures (see [`COLUMNS`]); a figure a target cannot give is absent.
    pub figures: BTreeMap<String, f64>,
    pub notes: Vec<String>,
    /// Load average (1 min) of the machine when the run started and ended.
    pub load_before: f64,
    pub load_after: f64,
    /// (latency ms, quantile) points of the run's main latency, for the CDF.
    pub cdf: Vec<(f64, f64)>,
    /// The case of the peers' runs this one's ratios are taken against, when the peers have no
    /// run of this case (e.g. Sidestream's e2e on another agent against a single broker's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub compare_as: Option<String>,
    /// The object-store latency preset the run was measured with (absent: the target makes no
    /// object-store requests).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub store_latency: Option<String>,
}

impl Run {
    /// A run; the load averages are filled in by whoever times it.
    pub fn new(
        scenario: &str,
        case: &str,
        target: &str,
        params: &BTreeMap<String, String>,
        figures: BTreeMap<String, f64>,
        notes: Vec<String>,
        cdf: Vec<(f64, f64)>,
    ) -> Run {
        Run {
            scenario: scenario.into(),
            case: case.into(),
            target: target.into(),
            params: params.clone(),
            figures,
            notes,
            load_before: f64::NAN,
            load_after: f64::NAN,
            cdf,
            compare_as: None,
            store_latency: None,
        }
    }

    /// Marks the run with the store it was measured with: a preset other than `none` is named
    /// in the case (`... [store s3-standard]`), whose ratios are then taken against the peers'
    /// runs of the case without it.
    pub fn measured_with(&mut self, store: Option<crate::s3count::StoreLatency>) {
        let Some(p) = store else {
            return;
        };
        self.store_latency = Some(p.name().to_string());
        self.params.insert("store_latency".into(), p.name().to_string());
        if p != crate::s3count::StoreLatency::None {
            if self.compare_as.is_none() {
                self.compare_as = Some(self.case.clone());
            }
            self.case = format!("{} [store {}]", self.case, p.name());
        }
    }

    /// Ratios of this run are taken against the peers' runs of `case`.
    pub fn compared_as(mut self, case: &str) -> Run {
        self.compare_as = Some(case.to_string());
        self
    }
}

/// The figures shown in tables, in order, and whether lower is better (for reading ratios).
pub const COLUMNS: &[&str] = &[
    "MB/s",
    "records/s",
    "p50 ms",
    "p99 ms",
    "p999 ms",
    "max ms",
    "errors",
    "server CPU s",
    "CPU s per GB",
    "peak RSS MiB",
    "PUTs per GB",
    "GETs per GB",
    "$ per month (model)",
];

/// Figures whose ratios are printed.
const RATIO_COLUMNS: &[&str] = &["MB/s", "records/s", "p50 ms", "p99 ms", "p999 ms", "CPU s per GB", "peak RSS MiB", "$ per month (model)"];

pub fn load_avg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// Quantile points for a CDF drawn on a "nines" axis: dense near the tail.
pub fn cdf_points(h: &Histogram<u64>) -> Vec<(f64, f64)> {
    if h.is_empty() {
        return Vec::new();
    }
    let mut out: Vec<(f64, f64)> = (0..=100)
        .map(|i| {
            let q = 1.0 - 10f64.powf(-4.0 * i as f64 / 100.0);
            (h.value_at_quantile(q) as f64 / 1000.0, q)
        })
        .collect();
    out.push((h.max() as f64 / 1000.0, 1.0));
    out
}

/// Latency figures of a histogram in microseconds.
pub fn latency_figures(figures: &mut BTreeMap<String, f64>, prefix: &str, h: &Histogram<u64>) {
    if h.is_empty() {
        return;
    }
    let ms = |v: u64| v as f64 / 1000.0;
    figures.insert(format!("{prefix}p50 ms"), ms(h.value_at_quantile(0.5)));
    figures.insert(format!("{prefix}p99 ms"), ms(h.value_at_quantile(0.99)));
    figures.insert(format!("{prefix}p999 ms"), ms(h.value_at_quantile(0.999)));
    figures.insert(format!("{prefix}max ms"), ms(h.max()));
}

/// The machine the numbers came from.
#[derive(Clone, Debug, Serialize)]
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub memory_gib: f64,
    pub kernel: String,
}

pub fn machine() -> Machine {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").map(|v| v.trim_start_matches([' ', '\t', ':']).to_string()))
        .unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let kb = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .unwrap_or(0.0);
    Machine {
        cpu,
        cores: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        memory_gib: (kb / 1048576.0 * 10.0).round() / 10.0,
        kernel: std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default().trim().to_string(),
    }
}

/// The cost model's prices and workload; printed with every result.
#[derive(Clone, Debug, Serialize)]
pub struct CostAssumptions {
    pub workload: &'static str,
    pub write_mb_per_s: f64,
    pub retention_days: f64,
    pub reads_per_byte: f64,
    pub s3_put_per_1000: f64,
    pub s3_get_per_1000: f64,
    pub s3_gb_month: f64,
    pub block_gb_month: f64,
    pub block_fill: f64,
    pub kafka_replicas: f64,
    pub cross_zone_per_gb_each_way: f64,
    pub zones: f64,
    pub excluded: &'static str,
}

pub const COST: CostAssumptions = CostAssumptions {
    workload: "10 MB/s written 24x7 (25,920 GB/month), each byte read once by a tail consumer, 7 days retention",
    write_mb_per_s: 10.0,
    retention_days: 7.0,
    reads_per_byte: 1.0,
    s3_put_per_1000: 0.005,
    s3_get_per_1000: 0.0004,
    s3_gb_month: 0.023,
    block_gb_month: 0.08,
    block_fill: 0.5,
    kafka_replicas: 3.0,
    cross_zone_per_gb_each_way: 0.01,
    zones: 3.0,
    excluded: "compute (instances), S3 requests of the metadata store, snapshots; Sidestream's and Tansu's reads assume \
               tail consumers served from cache (0 GETs) unless the run measured reads",
};

impl CostAssumptions {
    fn gb_month(&self) -> f64 {
        self.write_mb_per_s / 1000.0 * 86400.0 * 30.0
    }
    fn retained_gb(&self) -> f64 {
        self.write_mb_per_s / 1000.0 * 86400.0 * self.retention_days
    }

    /// Monthly cost of an object-storage broker from its measured requests per GB and the
    /// bytes it stores per byte written (retention is enforced: what a partition holds is its
    /// retention window of writes, in the broker's stored form).
    pub fn object_storage(&self, puts_per_gb: f64, gets_per_gb_read: f64, stored_per_written: f64) -> f64 {
        let written = self.gb_month();
        written * puts_per_gb * self.s3_put_per_1000 / 1000.0
            + written * self.reads_per_byte * gets_per_gb_read * self.s3_get_per_1000 / 1000.0
            + self.retained_gb() * stored_per_written * self.s3_gb_month
    }

    /// Monthly cost of Kafka with 3 replicas on block storage across zones.
    pub fn kafka(&self) -> f64 {
        let written = self.gb_month();
        let cross = 2.0 * self.cross_zone_per_gb_each_way;
        let away = (self.zones - 1.0) / self.zones;
        // Producer to a leader in another zone, two follower copies, consumer from another zone.
        let transfer = written * (away * cross + (self.kafka_replicas - 1.0) * cross + self.reads_per_byte * away * cross);
        transfer + self.retained_gb() * self.kafka_replicas * self.block_gb_month / self.block_fill
    }

    pub fn markdown(&self) -> String {
        format!(
            "Cost model (per month; prices of AWS us-east-1 list prices): workload {}. Object storage: PUT-class \
             ${}/1000, GET-class ${}/1000, ${}/GB-month, one copy of the retention window's writes in the run's measured \
             stored bytes per byte written (PUT bodies on the wire; retention is enforced), no cross-zone traffic \
             (clients talk to a local agent, S3 is regional). Kafka: {} replicas on block storage at ${}/GB-month filled to {:.0}%, \
             cross-zone ${}/GB each way ({} zones: producers and consumers reach a leader in another zone {:.0}% of \
             the time, followers copy every byte across zones); Kafka's figure is the model alone (it makes no \
             object-store requests). Requests per GB are the run's own, at its write rate (below flush_bytes \
             per flush interval every flush is one PUT, so a slower stream costs more PUTs per GB). \
             Not included: {}.",
            self.workload,
            self.s3_put_per_1000,
            self.s3_get_per_1000,
            self.s3_gb_month,
            self.kafka_replicas,
            self.block_gb_month,
            self.block_fill * 100.0,
            self.cross_zone_per_gb_each_way,
            self.zones,
            (self.zones - 1.0) / self.zones * 100.0,
            self.excluded
        )
    }
}

fn fmt(v: f64) -> String {
    if v.is_nan() {
        "-".into()
    } else if v.abs() >= 1000.0 {
        format!("{v:.0}")
    } else if v.abs() >= 100.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Everything one invocation wrote.
#[derive(Serialize)]
struct Document<'a> {
    name: &'a str,
    command: String,
    started_utc: String,
    machine: Machine,
    targets: BTreeMap<String, String>,
    runs: &'a [Run],
    ratios: Vec<Ratio>,
    cost_assumptions: CostAssumptions,
    notes: &'a [String],
}

#[derive(Serialize, Clone)]
struct Ratio {
    scenario: String,
    case: String,
    /// e.g. "sidestream/kafka".
    pair: String,
    figures: BTreeMap<String, f64>,
}

fn ratios(runs: &[Run]) -> Vec<Ratio> {
    let mut out = Vec::new();
    for base in runs.iter().filter(|r| r.target == "sidestream") {
        let case = base.compare_as.as_deref().unwrap_or(&base.case);
        for peer in runs
            .iter()
            .filter(|r| r.target != "sidestream" && r.scenario == base.scenario && r.case == case)
            // A failed run has no figures: nothing to compare with.
            .filter(|r| !r.figures.is_empty())
        {
            let figures = base
                .figures
                .iter()
                .filter_map(|(k, v)| {
                    let p = peer.figures.get(k)?;
                    (*p != 0.0 && p.is_finite() && v.is_finite()).then(|| (k.clone(), v / p))
                })
                .collect();
            out.push(Ratio {
                scenario: base.scenario.clone(),
                case: base.case.clone(),
                pair: match &base.compare_as {
                    Some(c) => format!("sidestream/{} (its {c})", peer.target),
                    None => format!("sidestream/{}", peer.target),
                },
                figures,
            });
        }
    }
    out
}

pub fn utc_now() -> String {
    std::process::Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

/// The Markdown for a set of runs (tables per scenario, ratios, notes, cost assumptions).
pub fn markdown(name: &str, started: &str, runs: &[Run], notes: &[String], targets: &BTreeMap<String, String>) -> String {
    let m = machine();
    let mut s = String::new();
    let _ = writeln!(s, "# {name}\n");
    let _ = writeln!(
        s,
        "Run {started} on {} cores ({}), {} GiB, Linux {}; load average (1 min) before/after each run in the \
         `load` column. Command: `{}`\n",
        m.cores,
        m.cpu,
        m.memory_gib,
        m.kernel,
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    for (k, v) in targets {
        let _ = writeln!(s, "- {k}: {v}");
    }
    let _ = writeln!(s);
    let mut scenarios: Vec<&str> = runs.iter().map(|r| r.scenario.as_str()).collect();
    scenarios.dedup();
    for scenario in scenarios {
        let rows: Vec<&Run> = runs.iter().filter(|r| r.scenario == scenario).collect();
        let extra: Vec<String> = {
            let mut e: Vec<String> =
                rows.iter().flat_map(|r| r.figures.keys().cloned()).filter(|k| !COLUMNS.contains(&k.as_str())).collect();
            e.sort();
            e.dedup();
            e
        };
        let cols: Vec<String> = COLUMNS
            .iter()
            .filter(|c| rows.iter().any(|r| r.figures.contains_key(**c)))
            .map(|c| c.to_string())
            .chain(extra)
            .collect();
        let _ = writeln!(s, "## {scenario}\n");
        let _ = writeln!(s, "| case | target | {} | load |", cols.join(" | "));
        let _ = writeln!(s, "|---|---|{}---|", "---|".repeat(cols.len()));
        for r in &rows {
            let cells: Vec<String> = cols.iter().map(|c| r.figures.get(c).map_or("-".into(), |v| fmt(*v))).collect();
            let _ = writeln!(s, "| {} | {} | {} | {:.1}/{:.1} |", r.case, r.target, cells.join(" | "), r.load_before, r.load_after);
        }
        let rs: Vec<Ratio> = ratios(runs).into_iter().filter(|r| r.scenario == scenario).collect();
        if !rs.is_empty() {
            let rcols: Vec<&str> = RATIO_COLUMNS
                .iter()
                .copied()
                .chain(["e2e p99 ms", "txn p99 ms", "producer p99 ms with catch-up", "start to first ack s", "restart to committed s"])
                .filter(|c| rs.iter().any(|r| r.figures.contains_key(*c)))
                .collect();
            let _ = writeln!(s, "\nRatios (Sidestream / peer; above 1 means Sidestream's figure is larger):\n");
            let _ = writeln!(s, "| case | pair | {} |", rcols.join(" | "));
            let _ = writeln!(s, "|---|---|{}", "---|".repeat(rcols.len()));
            for r in rs {
                let cells: Vec<String> = rcols.iter().map(|c| r.figures.get(*c).map_or("-".into(), |v| format!("{v:.2}x"))).collect();
                let _ = writeln!(s, "| {} | {} | {} |", r.case, r.pair, cells.join(" | "));
            }
        }
        if rows.iter().any(|r| !r.cdf.is_empty()) {
            let _ = writeln!(s, "\n![latency CDF]({name}-{scenario}.svg)\n");
        } else {
            let _ = writeln!(s);
        }
    }
    let all_notes: Vec<String> = notes
        .iter()
        .cloned()
        .chain(runs.iter().flat_map(|r| r.notes.iter().map(move |n| format!("{} {} ({}): {n}", r.scenario, r.case, r.target))))
        .collect();
    if !all_notes.is_empty() {
        let _ = writeln!(s, "## Notes\n");
        for n in all_notes {
            let _ = writeln!(s, "- {n}");
        }
        let _ = writeln!(s);
    }
    let _ = writeln!(s, "{}\n", COST.markdown());
    s
}

/// Writes bench/results/<name>.md, .json and one CDF SVG per scenario; prints the Markdown.
pub fn write(dir: &Path, name: &str, started: &str, runs: &[Run], notes: &[String], targets: &BTreeMap<String, String>) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let md = markdown(name, started, runs, notes, targets);
    println!("{md}");
    std::fs::write(dir.join(format!("{name}.md")), &md)?;
    let doc = Document {
        name,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started_utc: started.to_string(),
        machine: machine(),
        targets: targets.clone(),
        runs,
        ratios: ratios(runs),
        cost_assumptions: COST,
        notes,
    };
    std::fs::write(dir.join(format!("{name}.json")), serde_json::to_string_pretty(&doc)? + "\n")?;
    let mut scenarios: Vec<&str> = runs.iter().map(|r| r.scenario.as_str()).collect();
    scenarios.dedup();
    for scenario in scenarios {
        let rows: Vec<&Run> = runs.iter().filter(|r| r.scenario == scenario && !r.cdf.is_empty()).collect();
        if !rows.is_empty() {
            let path = dir.join(format!("{name}-{scenario}.svg"));
            if let Err(e) = plot(&path, &format!("{name}: {scenario} latency CDF"), &rows) {
                eprintln!("plot {}: {e}", path.display());
            }
        }
    }
    Ok(())
}

/// Latency CDF: x = latency (ms, log), y = percentile on a "nines" scale.
fn plot(path: &PathBuf, title: &str, runs: &[&Run]) -> Result<()> {
    use plotters::prelude::*;
    let nines = |q: f64| -(1.0 - q.min(0.9999)).log10();
    let lo = runs.iter().flat_map(|r| r.cdf.iter().map(|p| p.0)).fold(f64::INFINITY, f64::min).max(0.01) / 1.5;
    let hi = runs.iter().flat_map(|r| r.cdf.iter().map(|p| p.0)).fold(0.0, f64::max).max(lo * 10.0) * 1.5;
    let root = SVGBackend::new(path, (960, 600)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| anyhow::anyhow!("{e}"))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d((lo..hi).log_scale(), 0f64..4.05f64)
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    chart
        .configure_mesh()
        .x_desc("latency (ms, log scale)")
        .y_desc("percentile")
        .y_labels(9)
        .y_label_formatter(&|v| format!("{:.2}%", 100.0 * (1.0 - 10f64.powf(-v))))
        .x_label_formatter(&|v| {
            if *v >= 1.0 { format!("{v:.0}") } else { format!("{v:.2}") }
        })
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    for (i, r) in runs.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(r.cdf.iter().map(|&(ms, q)| (ms.max(lo), nines(q))), color.stroke_width(2)))
            .map_err(|e| anyhow::anyhow!("{e}"))?
            .label(format!("{} {}", r.target, r.case))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    root.present().map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_model_adds_up() {
        // 25,920 GB written a month, 6,048 GB retained.
        let storage_only = COST.object_storage(0.0, 0.0, 1.0);
        assert!((storage_only - 6048.0 * 0.023).abs() < 0.01, "{storage_only}");
        // Compressed to half: half the storage.
        assert!((COST.object_storage(0.0, 0.0, 0.5) - storage_only / 2.0).abs() < 0.01);
        // 120 PUTs per GB: 3,110,400 PUTs at $0.005 per 1000.
        assert!((COST.object_storage(120.0, 0.0, 1.0) - storage_only - 15.552).abs() < 0.01);
        // Kafka: transfer 25,920 x (2/3 x 0.02 + 2 x 0.02 + 2/3 x 0.02) + 6,048 x 3 x 0.08 / 0.5.
        let kafka = 25920.0 * (0.02 * 2.0 / 3.0 * 2.0 + 0.04) + 6048.0 * 3.0 * 0.16;
        assert!((COST.kafka() - kafka).abs() < 0.01, "{} vs {kafka}", COST.kafka());
    }

    #[test]
    fn cdf_points_end_at_the_maximum() {
        let mut h = Histogram::<u64>::new_with_bounds(1, 1_000_000, 3).unwrap();
        for v in 1..=1000u64 {
            h.record(v * 100).unwrap();
        }
        let pts = cdf_points(&h);
        assert_eq!(pts.last().map(|p| p.1), Some(1.0));
        assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
    }

    #[test]
    fn ratios_follow_compare_as_and_skip_failed_peers() {
        let f = |v: f64| BTreeMap::from([("p99 ms".to_string(), v)]);
        let p = BTreeMap::new();
        let runs = vec![
            Run::new("e2e", "same", "sidestream", &p, f(10.0), vec![], vec![]),
            Run::new("e2e", "same", "kafka", &p, f(5.0), vec![], vec![]),
            Run::new("e2e", "same", "tansu", &p, BTreeMap::new(), vec![], vec![]),
            Run::new("e2e", "other", "sidestream", &p, f(20.0), vec![], vec![]).compared_as("same"),
        ];
        let r = ratios(&runs);
        assert_eq!(r.len(), 2, "one pair per run with a peer that has figures");
        assert_eq!((r[0].case.as_str(), r[0].figures["p99 ms"]), ("same", 2.0));
        assert_eq!((r[1].case.as_str(), r[1].figures["p99 ms"]), ("other", 4.0));
        assert_eq!(r[1].pair, "sidestream/kafka (its same)");
    }

    #[test]
    fn a_run_on_a_store_preset_says_so_and_compares_with_the_peers_plain_case() {
        use crate::s3count::StoreLatency;
        let f = |v: f64| BTreeMap::from([("p99 ms".to_string(), v)]);
        let p = BTreeMap::new();
        let mut plain = Run::new("e2e", "same", "sidestream", &p, f(10.0), vec![], vec![]);
        plain.measured_with(Some(StoreLatency::None));
        let mut slow = Run::new("e2e", "same", "sidestream", &p, f(30.0), vec![], vec![]);
        slow.measured_with(Some(StoreLatency::S3Standard));
        let mut other = Run::new("e2e", "other", "sidestream", &p, f(40.0), vec![], vec![]).compared_as("same");
        other.measured_with(Some(StoreLatency::S3Express));
        let mut kafka = Run::new("e2e", "same", "kafka", &p, f(5.0), vec![], vec![]);
        kafka.measured_with(None);
        assert_eq!((plain.case.as_str(), plain.store_latency.as_deref()), ("same", Some("none")));
        assert_eq!((slow.case.as_str(), slow.store_latency.as_deref()), ("same [store s3-standard]", Some("s3-standard")));
        assert_eq!(slow.params["store_latency"], "s3-standard");
        assert_eq!(other.case, "other [store s3-express]");
        assert_eq!(kafka.store_latency, None);
        let r = ratios(&[plain, slow, other, kafka]);
        let got: Vec<(&str, &str, f64)> = r.iter().map(|r| (r.case.as_str(), r.pair.as_str(), r.figures["p99 ms"])).collect();
        assert_eq!(
            got,
            [
                ("same", "sidestream/kafka", 2.0),
                ("same [store s3-standard]", "sidestream/kafka (its same)", 6.0),
                ("other [store s3-express]", "sidestream/kafka (its same)", 8.0),
            ]
        );
    }
}
