//! One run of the simulation from a seed: the plan (cluster shape, settings, faults, all drawn
//! from the seed), the driver (idempotent producers at acks=1 and acks=all, a consumer
//! committing group offsets, agent crashes with torn WAL tails, controller restarts, full and
//! failing disks under the WALs), and the
//! invariants, checked during the run and once every fault has healed.
//!
//! Determinism: one current-thread runtime with a paused clock; blocking work and the WAL's
//! writer run inline (`clock::set_blocking_inline`); acks=1 produce requests (a pipelined
//! group of them) run to completion in place ([`block_here`]) before any other task runs, so no
//! real-time race decides what happens. The WAL lives on a real temporary directory (on tmpfs when there is one).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use sidestream::agent::client::ControllerClient;
use sidestream::agent::produce::{ProduceBatch, Produced};
use sidestream::agent::{Agent, Turn};
use sidestream::api::groups::{CommitOffset, OffsetCommitRequest};
use sidestream::api::{CreateTopic, TopicMeta};
use sidestream::clock::{Clock, SeededEntropy};
use sidestream::config::TopicsConfig;
use sidestream::controller::Controller;
use sidestream::controller::store::sqlite::SqliteStore;
use sidestream::format::records;
use sidestream::object::ObjectStore;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep};
use uuid::Uuid;

use crate::node::{Node, NodeSettings};
use crate::world::{ControllerFaults, DiskFaults, Life, Rng, SimClock, SimController, StoreFaults, Windows, World, block_here};

const TOPIC: &str = "sim";
const GROUP: &str = "sim-group";
/// The simulated wall clock at the start of every run.
const START_MS: i64 = 1_800_000_000_000;
/// A run's clients act for this much simulated time at most (drawn per run).
const DURATION_MS_MAX: u64 = 3 * 3_600_000;
/// Steps of a run at most (each: a client request, maybe a crash or an offset commit).
const STEPS_MAX: usize = 1_500;
/// A producer's request timeout.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// Rounds of retries after the faults healed, before the run is called stuck.
const SETTLE_ROUNDS_MAX: usize = 600;
/// Records read per partition at the end, at most.
const READ_BYTES_MAX: u64 = 64 << 20;
/// Bytes one fetch of the reading consumer asks for.
const FETCH_BYTES_MAX: u64 = 16 << 10;

/// What a run left: its trace, and the broken invariant if any.
pub struct Outcome {
    pub trace: Vec<String>,
    pub failure: Option<String>,
    pub summary: String,
}

/// Runs `seed` on a fresh runtime and a fresh temporary directory.
pub fn run(seed: u64) -> Outcome {
    sidestream::clock::set_blocking_inline(true);
    // On tmpfs when there is one: the WALs' fsyncs then cost no real time (the disk faults are
    // the sim's; a loaded disk's fsync latency would only slow the run down).
    let shm = Path::new("/dev/shm");
    let dir = if shm.is_dir() { tempfile::tempdir_in(shm) } else { tempfile::tempdir() }.expect("sim: tempdir");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().start_paused(true).build().expect("sim: runtime");
    rt.block_on(async { Sim::new(seed, dir.path()).run().await })
}

/// The run's shape and settings, drawn from the seed.
#[derive(Debug, Clone)]
struct Plan {
    agents: usize,
    clients: usize,
    partitions: i32,
    /// The clients act until then (simulated ms), or for [`STEPS_MAX`] steps.
    duration_ms: u64,
    node: NodeSettings,
    commit_window_ms: i64,
    crash_rate: f64,
    torn_tail_rate: f64,
    store: StoreFaults,
    controller: ControllerFaults,
    disk: DiskFaults,
}

/// Up to `most` windows starting within `duration_ms`: half of them short (1 s to 1 min), half
/// long (up to 3 hours: past the orphan grace and the commit window).
fn windows(rng: &mut Rng, most: u64, duration_ms: u64) -> Windows {
    let n = rng.range(0, most);
    Windows(
        (0..n)
            .map(|_| {
                let start = rng.range(0, duration_ms);
                let len = if rng.chance(0.5) { rng.range(1_000, 60_000) } else { rng.range(60_000, 3 * 3_600_000) };
                (start, start + len)
            })
            .collect(),
    )
}

impl Plan {
    fn draw(rng: &mut Rng) -> Plan {
        let duration_ms = rng.range(10 * 60_000, DURATION_MS_MAX);
        let mut plan = Plan {
            agents: rng.range(1, 2) as usize,
            clients: rng.range(2, 4) as usize,
            partitions: rng.range(1, 3) as i32,
            duration_ms,
            node: NodeSettings {
                flush_interval_ms: rng.range(20, 400),
                flush_bytes: rng.range(512, 16 << 10),
                max_in_flight_objects: rng.range(1, 4) as usize,
                orphan_grace_ms: rng.range(10_000, 30 * 60_000),
                orphan_scan_ms: rng.range(1_000, 60_000),
                gc_interval_ms: rng.range(1_000, 60_000),
                wal_segment_bytes: rng.range(1 << 10, 64 << 10),
                quiet_flush_ms: 0,
                puts_per_s: 0,
                puts_burst: 0,
                wal_fsync: false,
            },
            commit_window_ms: rng.range(20 * 60_000, 24 * 3_600_000) as i64,
            crash_rate: [0.0, 0.005, 0.02][rng.range(0, 2) as usize],
            torn_tail_rate: 0.5,
            store: StoreFaults {
                error_rate: [0.0, 0.01, 0.05][rng.range(0, 2) as usize],
                slow_down_rate: [0.0, 0.01, 0.05][rng.range(0, 2) as usize],
                lying_put_rate: [0.0, 0.02, 0.1][rng.range(0, 2) as usize],
                latency_max_ms: [0, 20, 300][rng.range(0, 2) as usize],
                outages: windows(rng, 2, duration_ms),
            },
            controller: ControllerFaults {
                fail_rate: [0.0, 0.01, 0.05][rng.range(0, 2) as usize],
                lost_reply_rate: [0.0, 0.01, 0.05][rng.range(0, 2) as usize],
                delay_max_ms: [0, 20, 500][rng.range(0, 2) as usize],
                outages: windows(rng, 2, duration_ms),
            },
            disk: DiskFaults::default(),
        };
        // Drawn last, so the seeds before early seals existed still draw the same plans.
        plan.node.quiet_flush_ms = rng.range(0, plan.node.flush_interval_ms.min(5));
        plan.node.puts_per_s = [0, 4, 50][rng.range(0, 2) as usize];
        plan.node.puts_burst = rng.range(1, 8) as u32;
        // Drawn after the early seals, for the same reason.
        plan.node.wal_fsync = rng.chance(0.2);
        plan.disk = DiskFaults { error_rate: [0.0, 0.01, 0.05][rng.range(0, 2) as usize], full: windows(rng, 2, duration_ms) };
        plan
    }
}

/// One produced batch, kept for retries (sent again byte for byte, same sequence).
#[derive(Debug, Clone)]
struct Sent {
    partition: i32,
    seq: i32,
    values: Vec<String>,
    batch: Bytes,
}

/// An idempotent producer with one connection to one agent.
struct Client {
    id: usize,
    node: usize,
    acks: i16,
    producer: (i64, i16),
    next_seq: Vec<i32>,
    /// Not acknowledged yet: sent again first, in order.
    retry: VecDeque<Sent>,
    /// acks=all: the one request under way.
    inflight: Option<(JoinHandle<Produced>, Sent)>,
    /// The connection's produce order.
    last_turn: Option<oneshot::Receiver<()>>,
}

/// The consumer committing group offsets, one commit at a time.
#[derive(Default)]
struct Consumer {
    inflight: Option<(JoinHandle<bool>, i32, i64)>,
    /// Per partition: the highest offset whose commit was acknowledged.
    acked: BTreeMap<i32, i64>,
    /// Per partition: the last committed offset read back.
    seen: BTreeMap<i32, i64>,
}

/// A fetch's records by absolute offset, or why it failed.
type Fetched = Result<Vec<(i64, String)>, String>;

/// A consumer reading the partitions through the agents while the faults run (read_uncommitted,
/// one fetch at a time, from where it got to).
#[derive(Default)]
struct Reader {
    /// The fetch under way: its task (the records read, by offset), the agent asked, the partition.
    inflight: Option<(JoinHandle<Fetched>, usize, i32)>,
    /// Per partition: the next offset to fetch.
    next: BTreeMap<i32, i64>,
    /// Every record read: (partition, offset) -> value. The log must hold the same at the end.
    read: HashMap<(i32, i64), String>,
}

/// Fetches partition `p` of `topic` through `agent` from `offset` (up to [`FETCH_BYTES_MAX`]),
/// as a consumer's fetch reaches it; the records, by absolute offset.
async fn fetch(agent: Arc<Agent>, topic: Uuid, p: i32, offset: i64) -> Fetched {
    let read = agent.read_partition(topic, p, offset, FETCH_BYTES_MAX, true, false).await.map_err(|e| format!("fetch: {e}"))?;
    let data = read.records.to_bytes();
    let mut out = Vec::new();
    for (at, h) in records::batches(&data) {
        let batch = &data[at..at + h.size_bytes as usize];
        let recs = records::decode_records(batch, &h, 1 << 20).map_err(|e| format!("p{p}: fetched batch: {e}"))?;
        out.extend(recs.into_iter().map(|r| (r.offset, String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).to_string())));
    }
    Ok(out)
}

/// What clients were promised.
#[derive(Default)]
struct Ledger {
    /// acks=1: acknowledged values (durable in a WAL), by partition.
    logged: Vec<(i32, String)>,
    /// acks=all: value -> (partition, offset) answered.
    committed: HashMap<String, (i32, i64)>,
    /// Every value sent: (client, partition, sequence of its first record).
    sent: HashMap<String, (usize, i32, i32)>,
}

struct Sim {
    seed: u64,
    rng: Rng,
    plan: Plan,
    db: std::path::PathBuf,
    dir: std::path::PathBuf,
    world: Option<Arc<World>>,
    topic: Option<Arc<TopicMeta>>,
    nodes: Vec<Node>,
    clients: Vec<Client>,
    consumer: Consumer,
    reader: Reader,
    ledger: Ledger,
    /// Controller outage windows already followed by a restart.
    restarted: usize,
    controller_opens: u64,
    /// Steps taken.
    steps: usize,
    /// The consumer's link to the controller (its faults, never crashed).
    consumer_link: Option<Arc<dyn ControllerClient>>,
}

fn open_controller(db: &Path, clock: Arc<SimClock>, entropy: u64, commit_window_ms: i64, took_over: bool) -> Arc<Controller> {
    let store = Arc::new(SqliteStore::open(db).expect("sim: controller store"));
    let c = Controller::open(store, TopicsConfig::default(), 7 * 86_400_000, clock, Arc::new(SeededEntropy::new(entropy)))
        .expect("sim: controller")
        .with_job_leases(30_000, took_over)
        .with_commit_window_ms(commit_window_ms);
    Arc::new(c)
}

impl Sim {
    fn new(seed: u64, dir: &Path) -> Sim {
        let mut rng = Rng::new(seed);
        let plan = Plan::draw(&mut rng);
        Sim {
            seed,
            rng,
            plan,
            db: dir.join("controller.db"),
            dir: dir.to_path_buf(),
            world: None,
            topic: None,
            nodes: Vec::new(),
            clients: Vec::new(),
            consumer: Consumer::default(),
            reader: Reader::default(),
            ledger: Ledger::default(),
            restarted: 0,
            controller_opens: 0,
            steps: 0,
            consumer_link: None,
        }
    }

    fn world(&self) -> &Arc<World> {
        self.world.as_ref().expect("world")
    }

    fn topic(&self) -> &Arc<TopicMeta> {
        self.topic.as_ref().expect("topic")
    }

    async fn run(mut self) -> Outcome {
        let failure = self.simulate().await.err();
        let world = self.world().clone();
        if let Some(f) = &failure {
            world.trace.log(format_args!("FAILED: {f}"));
        }
        let summary = format!(
            "seed {}: {} agents, {} clients, {} partitions, {} steps; {} acks=1 and {} acks=all batches acknowledged; {} simulated s",
            self.seed,
            self.plan.agents,
            self.plan.clients,
            self.plan.partitions,
            self.steps,
            self.ledger.logged.len(),
            self.ledger.committed.len(),
            world.clock.elapsed_ms() / 1000
        );
        // Everything stops with the runtime; the incarnations go first (their WAL threads end).
        for node in &mut self.nodes {
            node.crash(&world, None);
        }
        Outcome { trace: world.trace.lines(), failure, summary }
    }

    async fn simulate(&mut self) -> Result<(), String> {
        let clock = Arc::new(SimClock::new(START_MS));
        self.controller_opens += 1;
        let controller = open_controller(&self.db, clock.clone(), self.rng.next_u64(), self.plan.commit_window_ms, false);
        let world = Arc::new(World::new(
            clock,
            controller,
            self.plan.store.clone(),
            self.plan.controller.clone(),
            self.plan.disk.clone(),
            &mut self.rng,
        ));
        world.trace.log(format_args!("seed {} plan {:?}", self.seed, self.plan));
        let topic = world
            .controller()
            .create_topic(&CreateTopic {
                name: TOPIC.into(),
                partitions: self.plan.partitions,
                replication_factor: -1,
                configs: BTreeMap::new(),
                validate_only: false,
            })
            .map_err(|e| format!("create topic: {e}"))?;
        self.world = Some(world.clone());
        self.consumer_link = Some(Arc::new(SimController { world: world.clone(), life: Life::new(), node: usize::MAX }));
        self.topic = Some(topic);
        for id in 0..self.plan.agents {
            let mut node = Node::new(id, self.dir.join(format!("agent-{id}")));
            node.start(&world, &self.plan.node, &mut self.rng).await;
            self.nodes.push(node);
        }
        for id in 0..self.plan.clients {
            let producer = world.controller().init_producer_id().map_err(|e| format!("init producer id: {e}"))?;
            let acks = if self.rng.chance(0.5) { 1 } else { -1 };
            self.clients.push(Client {
                id,
                node: id % self.plan.agents,
                acks,
                producer,
                next_seq: vec![0; self.plan.partitions as usize],
                retry: VecDeque::new(),
                inflight: None,
                last_turn: None,
            });
        }
        for step in 0..STEPS_MAX {
            if world.clock.elapsed_ms() >= self.plan.duration_ms {
                break;
            }
            self.steps = step + 1;
            self.step(step).await?;
            self.check_during()?;
            // Mostly busy clients; now and then a quiet spell, more of them during an outage.
            let outage = world.controller_down() || self.plan.store.outages.active(world.clock.elapsed_ms());
            let dt =
                if self.rng.chance(if outage { 0.2 } else { 0.05 }) { self.rng.range(5_000, 10 * 60_000) } else { self.rng.range(1, 150) };
            sleep(Duration::from_millis(dt)).await;
        }
        self.settle().await?;
        self.check_after().await
    }

    /// One step: maybe a crash or a controller restart, then a client and the consumer act.
    async fn step(&mut self, step: usize) -> Result<(), String> {
        let world = self.world().clone();
        self.restart_controller_after_outages();
        if self.rng.chance(self.plan.crash_rate) {
            let node = self.rng.range(0, self.plan.agents as u64 - 1) as usize;
            self.crash_and_restart(node).await;
        }
        for c in 0..self.clients.len() {
            self.collect(c);
        }
        let c = self.rng.range(0, self.clients.len() as u64 - 1) as usize;
        if self.clients[c].acks == 1 {
            self.produce_logged(c, step)?;
        } else {
            self.produce_committed(c);
        }
        if self.rng.chance(0.2) {
            self.commit_group_offset();
        }
        if self.rng.chance(0.3) {
            self.read_through_agent()?;
        }
        let _ = world;
        Ok(())
    }

    /// A controller whose outage window ended restarts from its store (what it held only in
    /// memory is gone).
    fn restart_controller_after_outages(&mut self) {
        let world = self.world().clone();
        let now = world.clock.elapsed_ms();
        let mut ended: Vec<u64> = world.controller_outages().0.iter().map(|w| w.1).filter(|&e| e <= now).collect();
        ended.sort();
        if ended.len() > self.restarted {
            self.restarted = ended.len();
            self.controller_opens += 1;
            let c = open_controller(&self.db, world.clock.clone(), self.rng.next_u64(), self.plan.commit_window_ms, true);
            world.replace_controller(c);
            world.trace.log("controller restarted from its store");
        }
    }

    async fn crash_and_restart(&mut self, node: usize) {
        let world = self.world().clone();
        let torn = self.rng.chance(self.plan.torn_tail_rate).then(|| {
            let n = self.rng.range(1, 40) as usize;
            (0..n).map(|_| self.rng.next_u64() as u8).collect::<Vec<u8>>()
        });
        if let Some((task, _, _)) = self.reader.inflight.take_if(|(_, n, _)| *n == node) {
            task.abort();
        }
        for client in self.clients.iter_mut().filter(|c| c.node == node) {
            if let Some((task, sent)) = client.inflight.take() {
                task.abort();
                client.retry.push_front(sent);
            }
            client.last_turn = None;
        }
        self.nodes[node].crash(&world, torn);
        // The aborted requests let go of the agent before it starts again.
        tokio::task::yield_now().await;
        let down = self.rng.range(0, 5_000);
        sleep(Duration::from_millis(down)).await;
        let settings = self.plan.node.clone();
        self.nodes[node].start(&world, &settings, &mut self.rng).await;
    }

    /// A new batch of 1 to 3 records for `partition`.
    fn new_batch(&mut self, c: usize, partition: i32) -> Sent {
        let n = self.rng.range(1, 3) as i32;
        let now_ms = self.world().clock.now_ms();
        let client = &mut self.clients[c];
        let seq = client.next_seq[partition as usize];
        client.next_seq[partition as usize] += n;
        let values: Vec<String> = (0..n).map(|i| format!("c{}-p{partition}-s{}", client.id, seq + i)).collect();
        let refs: Vec<&[u8]> = values.iter().map(|v| v.as_bytes()).collect();
        let (pid, epoch) = client.producer;
        let batch = records::encode_producer_batch(Some((pid, epoch, seq)), now_ms, &refs);
        for v in &values {
            self.ledger.sent.insert(v.clone(), (client.id, partition, seq));
        }
        Sent { partition, seq, values, batch }
    }

    fn agent_of(&self, c: usize) -> Option<Arc<Agent>> {
        self.nodes[self.clients[c].node].agent().cloned()
    }

    fn checked(&self, agent: &Agent, sent: &Sent) -> Result<ProduceBatch, String> {
        let item = agent.check_batch(self.topic(), sent.partition, &sent.batch, 9).map_err(|e| format!("check_batch: {e}"))?;
        Ok(ProduceBatch { topic: self.topic().clone(), item })
    }

    /// acks=1: the retries and 1 to 3 new requests, pipelined on the client's connection (each
    /// request reaches `Agent::produce` after a seeded number of scheduling points, as handler
    /// tasks do), run to completion in place.
    fn produce_logged(&mut self, c: usize, step: usize) -> Result<(), String> {
        let Some(agent) = self.agent_of(c) else { return Ok(()) };
        let mut batch: Vec<Sent> = self.clients[c].retry.drain(..).collect();
        for _ in 0..self.rng.range(1, 3) {
            let p = self.rng.range(0, self.plan.partitions as u64 - 1) as i32;
            let sent = self.new_batch(c, p);
            batch.push(sent);
        }
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let mut futures: Vec<Pin<Box<dyn Future<Output = Produced> + '_>>> = Vec::new();
        for sent in &batch {
            let pb = self.checked(&agent, sent)?;
            let turn = Turn::next(&mut self.clients[c].last_turn, None);
            let hand_off = agent.hand_offs.enter();
            let yields = self.rng.range(0, 3) as u32;
            let agent = agent.clone();
            futures.push(Box::pin(async move {
                yield_times(yields).await;
                agent.produce(vec![pb], None, false, 1, deadline, Some(turn), hand_off).await
            }));
        }
        let results = block_here(join_all(futures));
        let world = self.world().clone();
        for (sent, produced) in batch.into_iter().zip(results) {
            match produced.into_iter().next() {
                Some(Ok(_)) => {
                    world.trace.log(format_args!("step {step} c{c} acks=1 p{} s{} acked", sent.partition, sent.seq));
                    self.ledger.logged.extend(sent.values.iter().map(|v| (sent.partition, v.clone())));
                }
                other => {
                    world.trace.log(format_args!("step {step} c{c} acks=1 p{} s{} failed: {other:?}", sent.partition, sent.seq));
                    self.clients[c].retry.push_back(sent);
                }
            }
        }
        Ok(())
    }

    /// acks=all: one request under way per client; the oldest unacknowledged batch first.
    fn produce_committed(&mut self, c: usize) {
        if self.clients[c].inflight.is_some() {
            return;
        }
        let Some(agent) = self.agent_of(c) else { return };
        let sent = match self.clients[c].retry.pop_front() {
            Some(s) => s,
            None => {
                let p = self.rng.range(0, self.plan.partitions as u64 - 1) as i32;
                self.new_batch(c, p)
            }
        };
        let pb = match self.checked(&agent, &sent) {
            Ok(pb) => pb,
            Err(e) => {
                self.world().trace.log(format_args!("c{c} acks=all refused at check: {e}"));
                self.clients[c].retry.push_front(sent);
                return;
            }
        };
        let deadline = Instant::now() + REQUEST_TIMEOUT;
        let hand_off = agent.hand_offs.enter();
        let task = tokio::spawn(async move { agent.produce(vec![pb], None, false, -1, deadline, None, hand_off).await });
        self.world().trace.log(format_args!("c{c} acks=all p{} s{} sent", sent.partition, sent.seq));
        self.clients[c].inflight = Some((task, sent));
    }

    /// Takes the answer of client `c`'s acks=all request, if it came.
    fn collect(&mut self, c: usize) {
        let finished = self.clients[c].inflight.as_ref().is_some_and(|(t, _)| t.is_finished());
        if !finished {
            return;
        }
        let (task, sent) = self.clients[c].inflight.take().expect("inflight");
        let produced = block_here(task);
        let world = self.world().clone();
        match produced.ok().and_then(|p| p.into_iter().next()) {
            Some(Ok(Some(base))) => {
                world.trace.log(format_args!("c{c} acks=all p{} s{} committed at {base}", sent.partition, sent.seq));
                for (i, v) in sent.values.iter().enumerate() {
                    self.ledger.committed.insert(v.clone(), (sent.partition, base + i as i64));
                }
            }
            other => {
                world.trace.log(format_args!("c{c} acks=all p{} s{} failed: {other:?}", sent.partition, sent.seq));
                self.clients[c].retry.push_front(sent);
            }
        }
    }

    /// Takes the answer to the consumer's offset commit, if it came.
    fn collect_group_commit(&mut self) {
        let Some((task, p, offset)) = &self.consumer.inflight else { return };
        if !task.is_finished() {
            return;
        }
        let (p, offset) = (*p, *offset);
        let (task, _, _) = self.consumer.inflight.take().expect("inflight");
        let ok = block_here(task).unwrap_or(false);
        self.world().trace.log(format_args!("group commit p{p} at {offset}: {}", if ok { "acked" } else { "failed" }));
        if ok {
            let acked = self.consumer.acked.entry(p).or_insert(offset);
            *acked = (*acked).max(offset);
        }
    }

    /// The consumer commits the high watermark of a partition (one commit at a time).
    fn commit_group_offset(&mut self) {
        let world = self.world().clone();
        self.collect_group_commit();
        if self.consumer.inflight.is_some() {
            return;
        }
        let Some(controller) = self.consumer_link.clone() else { return };
        let p = self.rng.range(0, self.plan.partitions as u64 - 1) as i32;
        let Ok(offsets) = world.controller().offsets(self.topic().id, p) else { return };
        let offset = offsets.next_offset;
        let req = OffsetCommitRequest {
            group_id: GROUP.into(),
            generation_id_or_member_epoch: -1,
            member_id: String::new(),
            group_instance_id: None,
            api_version: 8,
            offsets: vec![CommitOffset { topic: TOPIC.into(), partition: p, offset, leader_epoch: -1, metadata: String::new() }],
        };
        let task = tokio::spawn(async move { matches!(controller.commit_offsets(req).await, Ok(rs) if rs.iter().all(|r| r.is_ok())) });
        self.consumer.inflight = Some((task, p, offset));
    }

    /// The reading consumer: takes its fetch's answer if it came (what it read must never
    /// change), else starts the next fetch on a random agent.
    fn read_through_agent(&mut self) -> Result<(), String> {
        let world = self.world().clone();
        if let Some((task, node, p)) = self.reader.inflight.take() {
            if !task.is_finished() {
                self.reader.inflight = Some((task, node, p));
                return Ok(());
            }
            match block_here(task).map_err(|e| format!("fetch task: {e}"))? {
                Ok(records) => {
                    world.trace.log(format_args!("a{node} fetch p{p}: {} records", records.len()));
                    for (offset, value) in records {
                        if let Some(before) = self.reader.read.insert((p, offset), value.clone())
                            && before != value
                        {
                            return Err(format!("p{p} offset {offset} read as {before}, then as {value}"));
                        }
                        let next = self.reader.next.entry(p).or_insert(0);
                        *next = (*next).max(offset + 1);
                    }
                }
                Err(e) => world.trace.log(format_args!("a{node} fetch p{p} failed: {e}")),
            }
            return Ok(());
        }
        let node = self.rng.range(0, self.plan.agents as u64 - 1) as usize;
        let p = self.rng.range(0, self.plan.partitions as u64 - 1) as i32;
        let Some(agent) = self.nodes[node].agent().cloned() else { return Ok(()) };
        let offset = self.reader.next.get(&p).copied().unwrap_or(0);
        let topic = self.topic().id;
        self.reader.inflight = Some((tokio::spawn(fetch(agent, topic, p, offset)), node, p));
        Ok(())
    }

    /// Invariants checked after every step.
    fn check_during(&mut self) -> Result<(), String> {
        for node in &self.nodes {
            let lost = node.lost_batches + node.agent().map_or(0, |a| a.uploader.losses().batches());
            if lost > 0 {
                return Err(format!("agent {} gave up {lost} acknowledged batches", node.id));
            }
        }
        let controller = self.world().controller();
        let fetched = controller.groups().fetch_offsets(GROUP, None, None).map_err(|e| format!("fetch offsets: {e}"))?;
        for (tp, committed) in fetched {
            let Some(committed) = committed else { continue };
            let p = tp.1;
            if let Some(&acked) = self.consumer.acked.get(&p)
                && committed.offset < acked
            {
                return Err(format!("group offset of p{p} is {} below the acknowledged commit {acked}", committed.offset));
            }
            let seen = self.consumer.seen.entry(p).or_insert(committed.offset);
            if committed.offset < *seen {
                return Err(format!("group offset of p{p} moved backwards: {} after {}", committed.offset, *seen));
            }
            *seen = committed.offset;
        }
        Ok(())
    }

    /// Every fault heals; the clients retry until every batch is acknowledged; every agent
    /// commits what it holds, then restarts (WAL replay, cold cache).
    async fn settle(&mut self) -> Result<(), String> {
        let world = self.world().clone();
        world.heal();
        world.trace.log("faults healed");
        self.restart_controller_after_outages();
        for round in 0..SETTLE_ROUNDS_MAX {
            for c in 0..self.clients.len() {
                self.collect(c);
                if self.clients[c].acks == 1 {
                    if !self.clients[c].retry.is_empty() {
                        self.produce_logged(c, usize::MAX)?;
                    }
                } else if !self.clients[c].retry.is_empty() {
                    self.produce_committed(c);
                }
            }
            self.collect_group_commit();
            self.check_during()?;
            let idle = self.clients.iter().all(|c| c.retry.is_empty() && c.inflight.is_none());
            if idle && self.consumer.inflight.is_none() {
                world.trace.log(format_args!("clients settled after {round} rounds"));
                break;
            }
            if round + 1 == SETTLE_ROUNDS_MAX {
                return Err("clients did not settle after the faults healed".into());
            }
            sleep(Duration::from_secs(1)).await;
        }
        for node in 0..self.nodes.len() {
            if let Some(agent) = self.nodes[node].agent() {
                agent.uploader.barrier(Instant::now() + Duration::from_secs(3600)).await.map_err(|e| format!("barrier: {e}"))?;
            }
            self.crash_and_restart_clean(node).await;
        }
        self.check_during()
    }

    async fn crash_and_restart_clean(&mut self, node: usize) {
        let world = self.world().clone();
        self.nodes[node].crash(&world, None);
        tokio::task::yield_now().await;
        let settings = self.plan.node.clone();
        self.nodes[node].start(&world, &settings, &mut self.rng).await;
    }

    /// Reads every partition from the bucket as the controller indexes it and checks what was
    /// promised.
    async fn check_after(&mut self) -> Result<(), String> {
        let world = self.world().clone();
        let controller = world.controller();
        let topic = self.topic().clone();
        let mut found: HashMap<String, (i32, i64)> = HashMap::new();
        for p in 0..self.plan.partitions {
            let offsets = controller.offsets(topic.id, p).map_err(|e| format!("offsets: {e}"))?;
            let mut next = offsets.log_start_offset;
            // Per client: the last sequence seen in this partition.
            let mut last_seq: HashMap<usize, i32> = HashMap::new();
            let mut extents = Vec::new();
            while next < offsets.next_offset {
                let found = controller.find_extents(topic.id, p, next, READ_BYTES_MAX).map_err(|e| format!("find extents: {e}"))?;
                match found.last() {
                    Some(last) if last.end_offset > next => next = last.end_offset,
                    _ => return Err(format!("p{p}: no extent holds offset {next} (high watermark {})", offsets.next_offset)),
                }
                extents.extend(found);
            }
            next = offsets.log_start_offset;
            for e in &extents {
                if e.base_offset != next {
                    return Err(format!("p{p}: offsets not dense: extent at {} after {next}", e.base_offset));
                }
                let data = world
                    .bucket
                    .get_range(&e.object_key, e.position..e.position + e.length)
                    .await
                    .map_err(|err| format!("p{p}: committed object {} unreadable: {err}", e.object_key))?;
                let mut base = e.base_offset;
                for (at, h) in records::batches(&data) {
                    let batch = &data[at..at + h.size_bytes as usize];
                    let recs = records::decode_records(batch, &h, 1 << 20).map_err(|err| format!("p{p}: decode: {err}"))?;
                    for r in recs {
                        let offset = base + (r.offset - h.base_offset);
                        let value = String::from_utf8_lossy(r.value.as_deref().unwrap_or_default()).to_string();
                        if let Some(&(client, sent_p, seq)) = self.ledger.sent.get(&value) {
                            if sent_p != p {
                                return Err(format!("{value} found in p{p}"));
                            }
                            if let Some(&last) = last_seq.get(&client)
                                && seq < last
                            {
                                return Err(format!("p{p}: client {client}'s batch s{seq} after s{last} (out of order)"));
                            }
                            last_seq.insert(client, seq);
                        }
                        if let Some(first) = found.insert(value.clone(), (p, offset)) {
                            return Err(format!("{value} stored twice: at {:?} and p{p} {offset}", first));
                        }
                    }
                    base += h.offset_count();
                }
                if base != e.end_offset {
                    return Err(format!("p{p}: extent {}..{} holds batches up to {base}", e.base_offset, e.end_offset));
                }
                next = e.end_offset;
            }
            if next != offsets.next_offset {
                return Err(format!("p{p}: extents end at {next}, high watermark {}", offsets.next_offset));
            }
        }
        for (p, v) in &self.ledger.logged {
            match found.get(v) {
                Some((fp, _)) if fp == p => {}
                _ => return Err(format!("acknowledged (acks=1) record {v} lost")),
            }
        }
        for (v, at) in &self.ledger.committed {
            if found.get(v) != Some(at) {
                return Err(format!("acknowledged (acks=all) record {v} at {at:?} found at {:?}", found.get(v)));
            }
        }
        // What the consumer read during the run, and everything read through an agent now.
        for ((p, offset), v) in &self.reader.read {
            if found.get(v) != Some(&(*p, *offset)) {
                return Err(format!("the consumer read {v} at p{p} offset {offset}; the log holds it at {:?}", found.get(v)));
            }
        }
        let agent = self.nodes[0].agent().cloned().ok_or("agent 0 is not running")?;
        let mut through_agent = 0;
        for p in 0..self.plan.partitions {
            let high_watermark = controller.offsets(topic.id, p).map_err(|e| format!("offsets: {e}"))?.next_offset;
            let mut next = 0;
            while next < high_watermark {
                let records = fetch(agent.clone(), topic.id, p, next).await?;
                let Some(last) = records.last() else { return Err(format!("p{p}: a fetch at {next} returned nothing")) };
                next = last.0 + 1;
                for (offset, v) in records {
                    if found.get(&v) != Some(&(p, offset)) {
                        return Err(format!("fetched {v} at p{p} offset {offset}; the log holds it at {:?}", found.get(&v)));
                    }
                    through_agent += 1;
                }
            }
        }
        if through_agent != found.len() {
            return Err(format!("fetched {through_agent} records through the agent, the log holds {}", found.len()));
        }
        world
            .trace
            .log(format_args!("checked: {} records in the log, {} read during the run", found.len(), self.reader.read.len()));
        Ok(())
    }
}

/// Returns Pending `n` times (waking itself): a request's scheduling points before it reaches
/// the agent.
async fn yield_times(n: u32) {
    let mut left = n;
    std::future::poll_fn(|cx| {
        if left == 0 {
            return Poll::Ready(());
        }
        left -= 1;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// Polls every future in order until all are done; their outputs in order.
async fn join_all<T>(futures: Vec<Pin<Box<dyn Future<Output = T> + '_>>>) -> Vec<T> {
    let mut futures: Vec<Option<Pin<Box<dyn Future<Output = T> + '_>>>> = futures.into_iter().map(Some).collect();
    let mut out: Vec<Option<T>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (i, slot) in futures.iter_mut().enumerate() {
            if let Some(f) = slot
                && let Poll::Ready(v) = f.as_mut().poll(cx)
            {
                out[i] = Some(v);
                *slot = None;
            }
        }
        if futures.iter().all(Option::is_none) { Poll::Ready(()) } else { Poll::Pending }
    })
    .await;
    out.into_iter().map(|o| o.expect("joined")).collect()
}
