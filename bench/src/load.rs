//! librdkafka load (through the `rdkafka` crate): a producer at max throughput or at a fixed
//! rate, a transactional producer (back-to-back transactions), and a consumer that reads from the
//! beginning of a topic.
//!
//! Latency is per record, from its intended send time (open loop: with a fixed rate a stalled
//! broker cannot hide behind coordinated omission; at max throughput the intended time is the
//! moment the record was handed to librdkafka) to its delivery report. Every payload starts with
//! its intended send time in microseconds since the Unix epoch, which the consumer turns into
//! end-to-end latency. Payloads are word-like text so lz4 has something realistic to do.
//! This module knows nothing of which broker it talks to.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result, bail};
use hdrhistogram::Histogram;
use rdkafka::ClientContext;
use rdkafka::admin::{AdminClient, AdminOptions, NewPartitions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::Message;
use rdkafka::producer::{BaseRecord, DefaultProducerContext, DeliveryResult, Producer, ProducerContext, ThreadedProducer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::util::Timeout;

/// Highest latency a histogram holds: 10 minutes in microseconds.
const LATENCY_US_MAX: u64 = 600_000_000;

pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, LATENCY_US_MAX, 3).expect("constant histogram bounds are valid")
}

/// One producer load.
#[derive(Clone, Debug)]
pub struct ProduceSpec {
    pub bootstrap: String,
    pub topic: String,
    pub partitions: i32,
    /// "1" or "all".
    pub acks: String,
    pub record_bytes: usize,
    /// "none" or "lz4".
    pub compression: String,
    /// Records per second; 0: as fast as librdkafka's queue allows.
    pub rate: u64,
    pub duration: Duration,
    /// Records sent in this first part are neither timed nor counted.
    pub warmup: Duration,
    /// librdkafka's queue.buffering.max.kbytes: bounds what waits in the client at max speed.
    pub queue_kbytes: u64,
    /// Stop after sending this many records (None: at the end of `duration`).
    pub max_records: Option<u64>,
}

/// What a producer load measured (records sent after the warm-up only).
pub struct ProduceOutcome {
    pub records: u64,
    pub bytes: u64,
    pub window_s: f64,
    /// Records acknowledged over the whole run, warm-up included.
    pub acked_total: u64,
    pub errors: u64,
    pub first_error: Option<String>,
    pub latency_us: Histogram<u64>,
}

/// Delivery reports land here, on librdkafka's polling thread.
struct Ctx {
    origin: Instant,
    /// Microseconds after `origin` from which deliveries are timed and counted.
    measure_from_us: AtomicU64,
    hist: Mutex<Histogram<u64>>,
    ok_window: AtomicU64,
    ok_total: AtomicU64,
    errors: AtomicU64,
    first_error: Mutex<Option<String>>,
}

impl ClientContext for Ctx {}

impl ProducerContext for Ctx {
    type DeliveryOpaque = Box<Instant>;

    fn delivery(&self, result: &DeliveryResult<'_>, intended: Box<Instant>) {
        match result {
            Ok(_) => {
                self.ok_total.fetch_add(1, Ordering::Relaxed);
                let from = self.origin + Duration::from_micros(self.measure_from_us.load(Ordering::Relaxed));
                if *intended >= from {
                    self.ok_window.fetch_add(1, Ordering::Relaxed);
                    let us = intended.elapsed().as_micros() as u64;
                    if let Ok(mut h) = self.hist.lock() {
                        h.saturating_record(us.clamp(1, LATENCY_US_MAX));
                    }
                }
            }
            Err((e, _)) => {
                self.errors.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut first) = self.first_error.lock() {
                    first.get_or_insert_with(|| e.to_string());
                }
            }
        }
    }
}

/// Word-like text: lz4 compresses it about 2x, as it would log lines or JSON.
fn text_pool(bytes: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "order",
        "user",
        "id",
        "amount",
        "currency",
        "EUR",
        "USD",
        "status",
        "paid",
        "pending",
        "shipped",
        "sku",
        "warehouse",
        "timestamp",
        "region",
        "eu-west-1",
        "us-east-1",
        "session",
        "click",
        "view",
        "cart",
        "checkout",
        "price",
        "quantity",
        "true",
        "false",
        "null",
        "{\"",
        "\":",
        ",\"",
        "}",
        "event",
        "version",
        "source",
        "mobile",
        "web",
        "android",
        "ios",
        "latency",
        "error",
        "retry",
        "agent",
        "partition",
        "offset",
        "topic",
        "payload",
    ];
    let mut out = Vec::with_capacity(bytes + 16);
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while out.len() < bytes {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(WORDS[(x % WORDS.len() as u64) as usize].as_bytes());
        if x & 0x300 == 0 {
            out.extend_from_slice(format!("{}", x % 100_000).as_bytes());
        }
        out.push(b' ');
    }
    out.truncate(bytes);
    out
}

/// Record payloads: slices of the text pool at pseudo-random places, each starting with its send
/// stamp (µs since the Unix epoch, big-endian) for the consumer's end-to-end latency.
struct Payloads {
    pool: Vec<u8>,
    buf: Vec<u8>,
    rng: u64,
}

impl Payloads {
    fn new(record_bytes: usize) -> Payloads {
        Payloads {
            pool: text_pool((4 << 20).max(record_bytes * 4)),
            buf: vec![0u8; record_bytes.max(8)],
            rng: 0x2545_F491_4F6C_DD1D,
        }
    }

    fn next(&mut self, stamp_us: u64) -> &[u8] {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let len = self.buf.len();
        let at = (self.rng % (self.pool.len() - len + 1) as u64) as usize;
        self.buf.copy_from_slice(&self.pool[at..at + len]);
        self.buf[..8].copy_from_slice(&stamp_us.to_be_bytes());
        &self.buf
    }
}

pub fn wall_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

pub fn client_config(bootstrap: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", bootstrap).set("client.id", "sidestream-bench").set("log_level", "3");
    c
}

/// Runs one producer load to its end (then waits for every outstanding delivery report).
pub fn produce(spec: &ProduceSpec) -> Result<ProduceOutcome> {
    let origin = Instant::now();
    let ctx = Ctx {
        origin,
        measure_from_us: AtomicU64::new(u64::MAX / 4),
        hist: Mutex::new(histogram()),
        ok_window: AtomicU64::new(0),
        ok_total: AtomicU64::new(0),
        errors: AtomicU64::new(0),
        first_error: Mutex::new(None),
    };
    let acks = match spec.acks.as_str() {
        "1" => "1",
        "all" | "-1" => "all",
        other => bail!("acks must be 1 or all, not {other}"),
    };
    let producer: ThreadedProducer<Ctx> = client_config(&spec.bootstrap)
        .set("acks", acks)
        .set("compression.type", &spec.compression)
        .set("linger.ms", "5")
        .set("enable.idempotence", "false")
        .set("message.timeout.ms", "60000")
        .set("queue.buffering.max.kbytes", spec.queue_kbytes.to_string())
        .set("queue.buffering.max.messages", "2000000")
        .set("message.max.bytes", "16777216")
        .create_with_context(ctx)
        .context("cannot create the librdkafka producer")?;
    let mut payloads = Payloads::new(spec.record_bytes);
    let start = Instant::now();
    let start_wall = wall_us();
    let measure_from = start + spec.warmup;
    producer.context().measure_from_us.store((measure_from - origin).as_micros() as u64, Ordering::Relaxed);
    let end = start + spec.duration;
    let interval = (spec.rate > 0).then(|| Duration::from_secs_f64(1.0 / spec.rate as f64));
    let mut k: u64 = 0;
    let mut sent_in_window = 0u64;
    loop {
        let intended = match interval {
            Some(i) => start + i.mul_f64(k as f64),
            None => Instant::now(),
        };
        if intended >= end || spec.max_records.is_some_and(|n| k >= n) {
            break;
        }
        let now = Instant::now();
        if intended > now {
            std::thread::sleep(intended - now);
        }
        let payload = payloads.next(start_wall + (intended - start).as_micros() as u64);
        let partition = (k % spec.partitions.max(1) as u64) as i32;
        let record = BaseRecord::<(), [u8], Box<Instant>>::with_opaque_to(&spec.topic, Box::new(intended))
            .partition(partition)
            .payload(payload);
        send_when_queue_has_room(&producer, record).with_context(|| format!("produce to {}", spec.topic))?;
        if intended >= measure_from {
            sent_in_window += 1;
        }
        k += 1;
    }
    let window_s = (end - measure_from).as_secs_f64();
    producer
        .flush(Timeout::After(Duration::from_secs(90)))
        .context("delivery reports did not all arrive within 90 s")?;
    let ctx = producer.context();
    let records = ctx.ok_window.load(Ordering::Relaxed);
    let latency_us = ctx.hist.lock().map_err(|_| anyhow::anyhow!("histogram lock poisoned"))?.clone();
    let first_error = ctx.first_error.lock().ok().and_then(|f| f.clone());
    let _ = sent_in_window;
    Ok(ProduceOutcome {
        records,
        bytes: records * spec.record_bytes as u64,
        window_s,
        acked_total: ctx.ok_total.load(Ordering::Relaxed),
        errors: ctx.errors.load(Ordering::Relaxed),
        first_error,
        latency_us,
    })
}

/// A consumer of every partition of a topic from its beginning, on its own thread.
pub struct ConsumeSpec {
    pub bootstrap: String,
    pub topic: String,
    pub partitions: i32,
    /// Stop once this many records were read (None: only when `stop` is set).
    pub until_records: Option<u64>,
    pub stop: Arc<AtomicBool>,
    /// Records stamped before this (µs since the epoch: the warm-up) are not timed.
    pub ignore_before_us: u64,
    /// Records read so far, for whoever waits for the consumer to catch up.
    pub progress: Arc<AtomicU64>,
}

pub struct ConsumeOutcome {
    pub records: u64,
    pub bytes: u64,
    pub elapsed_s: f64,
    /// Consume time minus the payload's send stamp.
    pub e2e_us: Histogram<u64>,
}

pub fn consume(spec: &ConsumeSpec) -> Result<ConsumeOutcome> {
    let consumer: BaseConsumer = client_config(&spec.bootstrap)
        .set("group.id", "sidestream-bench")
        .set("enable.auto.commit", "false")
        .set("fetch.wait.max.ms", "100")
        .set("fetch.min.bytes", "1")
        .set("max.partition.fetch.bytes", "8388608")
        .set("fetch.max.bytes", "67108864")
        .create()
        .context("cannot create the librdkafka consumer")?;
    let mut tpl = TopicPartitionList::new();
    for p in 0..spec.partitions {
        tpl.add_partition_offset(&spec.topic, p, Offset::Beginning)?;
    }
    consumer.assign(&tpl)?;
    let started = Instant::now();
    let mut e2e_us = histogram();
    let (mut records, mut bytes) = (0u64, 0u64);
    while !spec.stop.load(Ordering::Relaxed) && spec.until_records.is_none_or(|n| records < n) {
        match consumer.poll(Duration::from_millis(100)) {
            Some(Ok(m)) => {
                let now = wall_us();
                let payload = m.payload().unwrap_or(&[]);
                records += 1;
                bytes += payload.len() as u64;
                spec.progress.store(records, Ordering::Relaxed);
                if payload.len() >= 8 {
                    let sent = u64::from_be_bytes(payload[..8].try_into().unwrap_or([0; 8]));
                    if sent < spec.ignore_before_us {
                        continue;
                    }
                    e2e_us.saturating_record(now.saturating_sub(sent).clamp(1, LATENCY_US_MAX));
                }
            }
            Some(Err(e)) => eprintln!("consumer: {e}"),
            None => {}
        }
    }
    Ok(ConsumeOutcome { records, bytes, elapsed_s: started.elapsed().as_secs_f64(), e2e_us })
}

/// Creates a topic and waits until its metadata shows every partition.
pub fn create_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let admin: AdminClient<DefaultClientContext> = client_config(bootstrap).create()?;
    let opts = AdminOptions::new().operation_timeout(Some(Timeout::After(Duration::from_secs(120))));
    let create = |n: i32| rt.block_on(admin.create_topics(&[NewTopic::new(topic, n, TopicReplication::Fixed(1))], &opts));
    let mut results = create(partitions)?;
    // Kafka 4.4's controller refuses 10,000 partitions in one request (POLICY_VIOLATION): create
    // half, then add the rest with CreatePartitions.
    if partitions > 5000 && matches!(results.first(), Some(Err((_, RDKafkaErrorCode::PolicyViolation)))) {
        results = create(5000)?;
        check_created(results)?;
        let more = rt.block_on(admin.create_partitions(&[NewPartitions::new(topic, partitions as usize)], &opts))?;
        for r in more {
            if let Err((name, code)) = r {
                bail!("create partitions of {name}: {code}");
            }
        }
    } else {
        check_created(results)?;
    }
    wait_topic(bootstrap, topic, partitions)
}

/// Waits (up to 120 s) until `bootstrap`'s metadata shows every partition of a topic (another
/// agent of a cluster learns of a topic from the controller).
pub fn wait_topic(bootstrap: &str, topic: &str, partitions: i32) -> Result<()> {
    let probe: BaseConsumer = client_config(bootstrap).create()?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let md = probe.fetch_metadata(Some(topic), Timeout::After(Duration::from_secs(10)));
        if let Ok(md) = md
            && md.topics().first().is_some_and(|t| t.error().is_none() && t.partitions().len() == partitions as usize)
        {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("topic {topic} not visible on {bootstrap} with {partitions} partitions within 120 s");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn check_created(results: Vec<Result<String, (String, RDKafkaErrorCode)>>) -> Result<()> {
    for r in results {
        if let Err((name, code)) = r
            && code != RDKafkaErrorCode::TopicAlreadyExists
        {
            bail!("create topic {name}: {code}");
        }
    }
    Ok(())
}

/// Sum of the high watermarks of a topic's partitions (None while the broker does not answer).
pub fn high_watermarks(bootstrap: &str, topic: &str, partitions: i32) -> Option<i64> {
    let c: BaseConsumer = client_config(bootstrap).create().ok()?;
    let mut sum = 0;
    for p in 0..partitions {
        let (_, high) = c.fetch_watermarks(topic, p, Timeout::After(Duration::from_secs(2))).ok()?;
        sum += high;
    }
    Some(sum)
}

/// Counts delivery reports of [`first_ack`].
#[derive(Default)]
struct AckCtx {
    ok: AtomicU64,
    failed: AtomicU64,
}

impl ClientContext for AckCtx {}

impl ProducerContext for AckCtx {
    type DeliveryOpaque = ();

    fn delivery(&self, result: &DeliveryResult<'_>, _: ()) {
        let counter = if result.is_ok() { &self.ok } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

/// Sends single acks=1 records to partition 0 until one is acknowledged; returns when it was.
pub fn first_ack(bootstrap: &str, topic: &str, deadline: Instant) -> Result<Instant> {
    let producer: rdkafka::producer::BaseProducer<AckCtx> = client_config(bootstrap)
        .set("acks", "1")
        .set("linger.ms", "0")
        .set("message.timeout.ms", "1000")
        .set("socket.connection.setup.timeout.ms", "1000")
        .set("reconnect.backoff.ms", "10")
        .set("reconnect.backoff.max.ms", "50")
        .set("topic.metadata.refresh.interval.ms", "100")
        .set("log_level", "0")
        .create_with_context(AckCtx::default())?;
    loop {
        let failed = producer.context().failed.load(Ordering::Relaxed);
        if producer.send(BaseRecord::<(), [u8], ()>::to(topic).partition(0).payload(&b"elastic"[..])).is_ok() {
            let t = Instant::now();
            while t.elapsed() < Duration::from_millis(1500) && producer.context().failed.load(Ordering::Relaxed) == failed {
                producer.poll(Duration::from_millis(2));
                if producer.context().ok.load(Ordering::Relaxed) > 0 {
                    return Ok(Instant::now());
                }
            }
        } else {
            std::thread::sleep(Duration::from_millis(10));
        }
        if Instant::now() > deadline {
            bail!("no acknowledged produce before the deadline");
        }
    }
}

/// A transactional producer's load: back-to-back transactions of `records_per_txn` records
/// each, for `duration` (closed loop: the next transaction begins when the last one committed).
#[derive(Clone, Debug)]
pub struct TxnSpec {
    pub bootstrap: String,
    pub topic: String,
    pub partitions: i32,
    pub record_bytes: usize,
    pub records_per_txn: u64,
    pub duration: Duration,
    /// Transactions begun in this first part are neither timed nor counted.
    pub warmup: Duration,
}

/// What a transactional load measured (transactions begun after the warm-up only).
pub struct TxnOutcome {
    pub transactions: u64,
    pub records: u64,
    pub bytes: u64,
    /// From the end of the warm-up to the last counted commit.
    pub window_s: f64,
    /// Records in committed transactions over the whole run, warm-up included.
    pub committed_total: u64,
    /// `commit_transaction` (flush of the transaction's records, then EndTxn), per transaction.
    pub commit_us: Histogram<u64>,
    /// Begin to commit returned, per transaction.
    pub txn_us: Histogram<u64>,
}

/// Runs back-to-back transactions with librdkafka's transactional API (acks=all, idempotence
/// on, one transactional id). A failed commit ends the run with its error.
pub fn transactions(spec: &TxnSpec) -> Result<TxnOutcome> {
    let producer: ThreadedProducer<DefaultProducerContext> = client_config(&spec.bootstrap)
        .set("transactional.id", format!("sidestream-bench-{}-{}", std::process::id(), wall_us()))
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "5")
        .set("message.timeout.ms", "60000")
        .set("transaction.timeout.ms", "60000")
        .set("queue.buffering.max.messages", "2000000")
        .create()
        .context("cannot create the librdkafka transactional producer")?;
    producer.init_transactions(Duration::from_secs(60)).context("init_transactions")?;
    let mut payloads = Payloads::new(spec.record_bytes);
    let (mut commit_us, mut txn_us) = (histogram(), histogram());
    let start = Instant::now();
    let measure_from = start + spec.warmup;
    let end = start + spec.duration;
    let (mut transactions, mut records, mut committed_total) = (0u64, 0u64, 0u64);
    let mut last_done = measure_from;
    let mut k: u64 = 0;
    while Instant::now() < end {
        let began = Instant::now();
        producer.begin_transaction().context("begin_transaction")?;
        for _ in 0..spec.records_per_txn {
            let partition = (k % spec.partitions.max(1) as u64) as i32;
            k += 1;
            let record = BaseRecord::<(), [u8], ()>::to(&spec.topic).partition(partition).payload(payloads.next(wall_us()));
            send_when_queue_has_room(&producer, record).with_context(|| format!("transactional produce to {}", spec.topic))?;
        }
        let committing = Instant::now();
        producer.commit_transaction(Duration::from_secs(60)).context("commit_transaction")?;
        let done = Instant::now();
        committed_total += spec.records_per_txn;
        if began >= measure_from {
            let us = |d: Duration| (d.as_micros() as u64).clamp(1, LATENCY_US_MAX);
            commit_us.saturating_record(us(done - committing));
            txn_us.saturating_record(us(done - began));
            transactions += 1;
            records += spec.records_per_txn;
            last_done = done;
        }
    }
    Ok(TxnOutcome {
        transactions,
        records,
        bytes: records * spec.record_bytes as u64,
        window_s: (last_done - measure_from).as_secs_f64(),
        committed_total,
        commit_us,
        txn_us,
    })
}

/// Sends `record`, waiting while librdkafka's queue is full (the load never drops a record).
fn send_when_queue_has_room<C: ProducerContext>(
    producer: &ThreadedProducer<C>,
    mut record: BaseRecord<'_, (), [u8], C::DeliveryOpaque>,
) -> Result<()> {
    loop {
        match producer.send(record) {
            Ok(()) => return Ok(()),
            Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), r)) => {
                record = r;
                std::thread::sleep(Duration::from_micros(200));
            }
            Err((e, _)) => return Err(e.into()),
        }
    }
}
