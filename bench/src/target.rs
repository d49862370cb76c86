//! The brokers under test, as child processes on free loopback ports: Sidestream (`sidestream
//! serve`, objects on the shared S3 server), Apache Kafka 4.4 (a single KRaft broker on local
//! disk through `scripts/kafka-reference-broker`, jars from Maven Central) and Tansu 0.6.0 (its
//! S3 storage engine on the same S3 server as Sidestream).
//!
//! A Sidestream agent can also run in remote mode against a [`Controller`] (`sidestream
//! controller`, SQLite store), several agents sharing one bucket.
//!
//! Each target runs in its own process group, so a wrapper script and the JVM it starts are
//! signalled together; CPU seconds and peak RSS are summed over the process tree from /proc.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};

use crate::s3count::{ACCESS_KEY, S3, SECRET_KEY};

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Sidestream,
    Kafka,
    Tansu,
}

impl Kind {
    pub fn name(self) -> &'static str {
        match self {
            Kind::Sidestream => "sidestream",
            Kind::Kafka => "kafka",
            Kind::Tansu => "tansu",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Kind::Sidestream => "Sidestream (embedded controller, WAL on local disk, objects on s3s-fs)",
            Kind::Kafka => "Apache Kafka 4.4.0 (one KRaft broker+controller, log on local disk, -Xmx1g)",
            Kind::Tansu => "Tansu 0.6.0 (S3 storage engine on s3s-fs)",
        }
    }

    pub fn uses_s3(self) -> bool {
        self != Kind::Kafka
    }
}

pub fn parse_kind(s: &str) -> Result<Kind, String> {
    match s {
        "sidestream" => Ok(Kind::Sidestream),
        "kafka" => Ok(Kind::Kafka),
        "tansu" => Ok(Kind::Tansu),
        other => Err(format!("unknown target {other:?}: sidestream, kafka or tansu")),
    }
}

/// Where the brokers' programs are, and extra settings for Sidestream.
#[derive(Clone, Debug)]
pub struct Programs {
    pub sidestream_bin: PathBuf,
    pub kafka_script: PathBuf,
    pub tansu_bin: PathBuf,
    pub sidestream_env: Vec<(String, String)>,
}

pub fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

/// One running broker.
pub struct Target {
    pub kind: Kind,
    group: Group,
    pub bootstrap: String,
    metrics: Option<String>,
    pub data_dir: PathBuf,
    pub bucket: Option<String>,
    port: u16,
    remote: Option<Remote>,
}

/// How to (re)start a target: the same data dir, bucket and port each time.
#[derive(Clone, Debug)]
pub struct Placement {
    pub data_dir: PathBuf,
    pub bucket: Option<String>,
    pub port: u16,
    /// Sidestream only: an agent of a cluster (remote controller) instead of a standalone one.
    pub remote: Option<Remote>,
}

/// A Sidestream agent's place in a cluster: its controller and its node id.
#[derive(Clone, Debug)]
pub struct Remote {
    /// The controller's gRPC address, `host:port`.
    pub controller: String,
    pub node_id: u32,
}

/// Shared by the bench's controller and its agents (the controller refuses others).
const CLUSTER_TOKEN: &str = "sidestream-bench";

impl Placement {
    pub fn fresh(kind: Kind, s3: Option<&S3>, seq: usize) -> Result<Placement> {
        let tag = format!("{}-{}-{seq}", kind.name(), std::process::id());
        let data_dir = std::env::temp_dir().join(format!("sidestream-bench-{tag}"));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir)?;
        let bucket = match (kind.uses_s3(), s3) {
            (true, Some(s3)) => Some(s3.bucket(&format!("b-{tag}"))?),
            (true, None) => bail!("{} needs the S3 server", kind.name()),
            _ => None,
        };
        Ok(Placement { data_dir, bucket, port: free_port()?, remote: None })
    }

    /// Another agent of the same cluster: its own data dir and port, the same bucket.
    pub fn peer(&self, node_id: u32) -> Result<Placement> {
        let Some(remote) = &self.remote else { bail!("only an agent of a cluster has peers") };
        let name = self.data_dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let data_dir = self.data_dir.with_file_name(format!("{name}-agent{node_id}"));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir)?;
        Ok(Placement {
            data_dir,
            bucket: self.bucket.clone(),
            port: free_port()?,
            remote: Some(Remote { controller: remote.controller.clone(), node_id }),
        })
    }
}

impl Target {
    /// Starts the broker (does not wait: see [`Target::wait_ready`]).
    pub fn spawn(kind: Kind, programs: &Programs, s3: Option<&S3>, at: &Placement) -> Result<Target> {
        let bootstrap = format!("127.0.0.1:{}", at.port);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(at.data_dir.join("broker.log"))?;
        let mut metrics = None;
        let mut cmd = match kind {
            Kind::Sidestream => {
                let m = format!("127.0.0.1:{}", free_port()?);
                let mut c = Command::new(&programs.sidestream_bin);
                c.arg("serve")
                    .env("SIDESTREAM_AGENT_LISTEN", &bootstrap)
                    .env("SIDESTREAM_AGENT_DATA_DIR", &at.data_dir)
                    .env("SIDESTREAM_METRICS_LISTEN", &m)
                    .env("SIDESTREAM_LOG_LEVEL", "warn");
                if let (Some(s3), Some(bucket)) = (s3, &at.bucket) {
                    c.env("SIDESTREAM_OBJECT_STORE_URL", format!("s3://{bucket}/bench"))
                        .env("SIDESTREAM_OBJECT_STORE_ENDPOINT", &s3.endpoint)
                        .env("SIDESTREAM_OBJECT_STORE_REGION", "us-east-1")
                        .env("SIDESTREAM_OBJECT_STORE_PATH_STYLE", "true")
                        .env("SIDESTREAM_OBJECT_STORE_ACCESS_KEY_ID", ACCESS_KEY)
                        .env("SIDESTREAM_OBJECT_STORE_SECRET_ACCESS_KEY", SECRET_KEY);
                }
                if let Some(r) = &at.remote {
                    c.env("SIDESTREAM_CONTROLLER_MODE", "remote")
                        .env("SIDESTREAM_CONTROLLER_ADDRESSES", &r.controller)
                        .env("SIDESTREAM_CONTROLLER_TOKEN", CLUSTER_TOKEN)
                        .env("SIDESTREAM_AGENT_NODE_ID", r.node_id.to_string());
                }
                for (k, v) in &programs.sidestream_env {
                    c.env(k, v);
                }
                metrics = Some(m);
                c
            }
            Kind::Kafka => {
                let mut c = Command::new(&programs.kafka_script);
                c.arg("serve").env("SIDESTREAM_AGENT_LISTEN", &bootstrap).env("SIDESTREAM_AGENT_DATA_DIR", &at.data_dir);
                c
            }
            Kind::Tansu => {
                let (Some(s3), Some(bucket)) = (s3, &at.bucket) else { bail!("tansu needs the S3 server") };
                let url = format!("tcp://{bootstrap}");
                let mut c = Command::new(&programs.tansu_bin);
                c.args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
                    .args(["--storage-engine", &format!("s3://{bucket}/")])
                    .env("AWS_ACCESS_KEY_ID", ACCESS_KEY)
                    .env("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
                    .env("AWS_DEFAULT_REGION", "us-east-1")
                    .env("AWS_ENDPOINT", &s3.endpoint)
                    .env("AWS_ALLOW_HTTP", "true")
                    .env("RUST_LOG", "warn")
                    .current_dir(&at.data_dir);
                c
            }
        };
        cmd.stdin(Stdio::null()).stdout(log.try_clone()?).stderr(log).process_group(0);
        let child = cmd.spawn().with_context(|| format!("cannot start the {} broker", kind.name()))?;
        Ok(Target {
            kind,
            group: Group(child),
            bootstrap,
            metrics,
            data_dir: at.data_dir.clone(),
            bucket: at.bucket.clone(),
            port: at.port,
            remote: at.remote.clone(),
        })
    }

    pub fn start(kind: Kind, programs: &Programs, s3: Option<&S3>, at: &Placement) -> Result<Target> {
        let mut t = Target::spawn(kind, programs, s3, at)?;
        t.wait_ready(Duration::from_secs(180))?;
        Ok(t)
    }

    /// Polls ApiVersions until the broker answers.
    pub fn wait_ready(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            if api_versions_ok(&self.bootstrap) {
                return Ok(());
            }
            if let Ok(Some(status)) = self.group.0.try_wait() {
                bail!("{} exited ({status}) before it was ready; log: {}", self.kind.name(), self.log_tail());
            }
            if Instant::now() > deadline {
                bail!("{} not ready on {} within {limit:?}; log: {}", self.kind.name(), self.bootstrap, self.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// How the broker ended, if it did (a run it did not survive is not a result).
    pub fn exited(&mut self) -> Option<String> {
        self.group.exited()
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.data_dir.join("broker.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    pub fn placement(&self) -> Placement {
        Placement { data_dir: self.data_dir.clone(), bucket: self.bucket.clone(), port: self.port, remote: self.remote.clone() }
    }

    /// (CPU seconds, peak RSS bytes) summed over the broker's process tree.
    pub fn usage(&self) -> (f64, u64) {
        self.group.usage()
    }

    /// Sidestream's /metrics, summed over labels (histogram quantiles as `name:pQ`, see
    /// [`crate::scrape`]).
    pub fn metrics(&self) -> BTreeMap<String, f64> {
        let Some(addr) = &self.metrics else {
            return BTreeMap::new();
        };
        let Ok(mut s) = std::net::TcpStream::connect(addr) else {
            return BTreeMap::new();
        };
        let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
        let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n");
        let mut text = String::new();
        let _ = s.read_to_string(&mut text);
        crate::scrape::parse(&text)
    }

    /// Object-store HTTP requests by name, as the server counts them (Sidestream only).
    pub fn store_requests(&self) -> Option<crate::s3count::Counts> {
        self.metrics.as_ref()?;
        let m = self.metrics();
        let mut c = crate::s3count::Counts::default();
        for name in crate::s3count::REQUEST_NAMES {
            let v = m.get(&format!("sidestream_object_store_http_requests_total{{request=\"{name}\"}}")).copied().unwrap_or(0.0);
            c.0.insert(name, v as u64);
        }
        Some(c)
    }

    /// SIGTERM to the process group, then SIGKILL after 60 s; the data dir stays.
    pub fn stop(mut self) {
        self.group.stop();
    }

    /// SIGKILL to the whole process group, no goodbye.
    pub fn kill9(mut self) {
        self.group.kill9();
    }
}

/// A child process leading its own process group (a wrapper script and the JVM it starts are
/// signalled together); killed when dropped.
struct Group(Child);

impl Group {
    /// Signals the process group (never anything else: the group id is the child's pid, checked
    /// to be a real process id first).
    fn signal(&self, sig: libc::c_int) -> bool {
        let pgid = self.0.id() as libc::pid_t;
        // SAFETY: kill(2) has no memory effects; pgid > 1 keeps it off "every process" (-1).
        pgid > 1 && unsafe { libc::kill(-pgid, sig) } == 0
    }

    /// SIGTERM, then SIGKILL after 60 s.
    fn stop(&mut self) {
        self.signal(libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            let _ = self.0.try_wait();
            if !self.signal(0) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.kill9();
    }

    fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        let _ = self.0.wait();
    }

    fn exited(&mut self) -> Option<String> {
        use std::os::unix::process::ExitStatusExt as _;
        let status = self.0.try_wait().ok()??;
        Some(match status.signal() {
            Some(sig) => format!("killed by signal {sig}"),
            None => format!("exited with {status}"),
        })
    }

    /// (CPU seconds, peak RSS bytes) summed over the process tree.
    fn usage(&self) -> (f64, u64) {
        let mut cpu = 0.0;
        let mut rss = 0;
        for pid in tree(self.0.id()) {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let after = stat.rsplit_once(')').map(|(_, a)| a).unwrap_or("");
            let f: Vec<&str> = after.split_whitespace().collect();
            let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
            cpu += (ticks(11) + ticks(12)) / 100.0;
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            rss += status
                .lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
                .unwrap_or(0)
                * 1024;
        }
        (cpu, rss)
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.kill9();
        }
    }
}

/// `sidestream controller`: the shared controller service of a cluster of agents (SQLite store
/// in its data dir), on a free loopback port.
pub struct Controller {
    group: Group,
    /// gRPC address, `host:port`.
    pub address: String,
    pub data_dir: PathBuf,
}

impl Controller {
    /// Starts the controller and waits (up to 60 s) until its port accepts connections.
    pub fn start(programs: &Programs, data_dir: PathBuf) -> Result<Controller> {
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir)?;
        let address = format!("127.0.0.1:{}", free_port()?);
        let log = std::fs::OpenOptions::new().create(true).append(true).open(data_dir.join("controller.log"))?;
        let child = Command::new(&programs.sidestream_bin)
            .arg("controller")
            .env("SIDESTREAM_CONTROLLER_LISTEN", &address)
            .env("SIDESTREAM_CONTROLLER_STORE", format!("sqlite://{}", data_dir.join("controller.db").display()))
            .env("SIDESTREAM_CONTROLLER_TOKEN", CLUSTER_TOKEN)
            .env("SIDESTREAM_AGENT_DATA_DIR", &data_dir)
            .env("SIDESTREAM_LOG_LEVEL", "warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("cannot start the sidestream controller")?;
        let mut c = Controller { group: Group(child), address, data_dir };
        let deadline = Instant::now() + Duration::from_secs(60);
        while std::net::TcpStream::connect(&c.address).is_err() {
            if let Some(how) = c.group.exited() {
                bail!("the sidestream controller {how} before it was ready; log: {}", c.log_tail());
            }
            if Instant::now() > deadline {
                bail!("the sidestream controller was not ready on {} within 60 s; log: {}", c.address, c.log_tail());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(c)
    }

    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.data_dir.join("controller.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// (CPU seconds, peak RSS bytes).
    pub fn usage(&self) -> (f64, u64) {
        self.group.usage()
    }

    /// Stops the controller and removes its data dir.
    pub fn remove(mut self) {
        self.group.stop();
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// `pid` and all its descendants.
fn tree(pid: u32) -> Vec<u32> {
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let p = out[i];
        if let Ok(tasks) = std::fs::read_dir(format!("/proc/{p}/task")) {
            for t in tasks.flatten() {
                let children = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
                out.extend(children.split_whitespace().filter_map(|c| c.parse::<u32>().ok()));
            }
        }
        i += 1;
    }
    out
}

/// One ApiVersions v0 round trip.
fn api_versions_ok(addr: &str) -> bool {
    let Ok(mut s) = std::net::TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    // size 14 | api key 18 | version 0 | correlation id 1 | client id "benc"
    let req = [0, 0, 0, 14, 0, 18, 0, 0, 0, 0, 0, 1, 0, 4, b'b', b'e', b'n', b'c'];
    if s.write_all(&req).is_err() {
        return false;
    }
    let mut len = [0u8; 4];
    s.read_exact(&mut len).is_ok() && i32::from_be_bytes(len) > 4
}
