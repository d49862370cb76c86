//! The PostgreSQL metadata store (`store = "postgres://..."`): the same schema and the same
//! [`MetadataStore`] contract as [`super::sqlite`], for controllers that must survive the loss
//! of a host. PostgreSQL provides the durability and the replication; this module provides
//! the schema (versioned, migrated under an advisory lock so replicas starting together do not
//! race), the transactions, and the controller lease that lets exactly one replica write.
//!
//! Fencing: a store opened by a replica that holds the lease ([`PgStore::acquire_lease`]) checks,
//! at the end of every writing transaction, that its lease epoch is still the current one (`FOR
//! SHARE` until the commit, so a takeover waits for commits in flight and every commit after it
//! fails with [`StoreError::Fenced`]). The check comes last so that a write waiting for a lock
//! does not hold the lease row meanwhile. Independently, a commit advances a partition only from
//! the offset it planned from (`next_offset = base_offset`), so two writers can never assign an
//! offset twice.
//!
//! Connections ([`super::conn`]): every write goes through one writer thread and its connection,
//! behind a bounded queue; reads through a small pool (`store_read_connections`); the lease has
//! a connection of its own, so a slow write never delays a renewal. Each connection opens within
//! `store_connect_timeout_ms`, runs with `statement_timeout` (and
//! `idle_in_transaction_session_timeout`) = `store_statement_timeout_ms`, has TCP keepalives so a
//! vanished server is noticed, and is reopened on its next use after it broke. Errors are sorted
//! by SQLSTATE ([`classify`]).
//!
//! Blocking: the `postgres` crate drives tokio-postgres on its own small runtime; call the store
//! off the async runtime's worker threads, like the SQLite store.
//! Must not touch: controller logic (planning, caching); it stores what it is given.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use postgres::error::SqlState;
use postgres::{Client, NoTls, Row, Transaction};
use uuid::Uuid;

use crate::api::acl::AclBinding;
use crate::api::client_metrics::ClientMetricsResource;
use crate::api::scram::{ScramCredential, ScramMechanism};
use crate::api::{ExtentRecord, WalMark};
use crate::controller::producers::ProducerKey;
use crate::controller::producers::{ProducerState, decode_batches, encode_batches};

use super::conn::{Open, ReadPool, STORE_WRITE_QUEUE_MAX, Slot, Writer};
use super::{
    GroupOffsetRecord, LogStartMove, MetadataStore, ObjectRecord, OpenTxnRecord, PartitionRecord, PartitionSize, SharePartitionRecord,
    Snapshot, StoreError, StoreSettings, StoredObjects, TopicRecord, TxnEffects, owned_commits,
};

/// Version 1: topics, partitions, objects, extents, producers, orphans. 2: group offsets.
/// 3: agent epochs and the controller lease. 4: transactions, open transactions per partition,
/// the aborted transaction index (as SQLite's version 4). 5: garbage objects, orphan marks by
/// time (as SQLite's version 5). 6: SCRAM credentials, ACLs, client quotas (as SQLite's version 6).
const SCHEMA_VERSION: i32 = 8;

/// Migrations from version N-1 to N, each applied in its own transaction with the version bump.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        1,
        "CREATE TABLE IF NOT EXISTS topics (
            id BYTEA PRIMARY KEY, name TEXT NOT NULL UNIQUE, partitions INTEGER NOT NULL,
            created_ms BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS topic_configs (
            topic_id BYTEA NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (topic_id, key));
        CREATE TABLE IF NOT EXISTS partitions (
            topic_id BYTEA NOT NULL, partition INTEGER NOT NULL, log_start_offset BIGINT NOT NULL,
            next_offset BIGINT NOT NULL, PRIMARY KEY (topic_id, partition));
        CREATE TABLE IF NOT EXISTS objects (
            key TEXT PRIMARY KEY, size_bytes BIGINT NOT NULL, agent TEXT NOT NULL, committed_ms BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS extents (
            topic_id BYTEA NOT NULL, partition INTEGER NOT NULL, base_offset BIGINT NOT NULL,
            end_offset BIGINT NOT NULL, object_key TEXT NOT NULL, position BIGINT NOT NULL,
            length BIGINT NOT NULL, batch_count BIGINT NOT NULL, max_timestamp BIGINT NOT NULL,
            PRIMARY KEY (topic_id, partition, base_offset));
        CREATE INDEX IF NOT EXISTS extents_by_object ON extents (object_key);
        CREATE TABLE IF NOT EXISTS wal_marks (log_id TEXT PRIMARY KEY, entry_id BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS producer_states (
            producer_id BIGINT NOT NULL, topic_id BYTEA NOT NULL, partition INTEGER NOT NULL,
            epoch SMALLINT NOT NULL, batches TEXT NOT NULL, last_seen_ms BIGINT NOT NULL,
            PRIMARY KEY (producer_id, topic_id, partition));
        CREATE TABLE IF NOT EXISTS orphans (key TEXT PRIMARY KEY, doomed_ms BIGINT NOT NULL);",
    ),
    (
        2,
        "CREATE TABLE IF NOT EXISTS group_offsets (
            group_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
            committed_offset BIGINT NOT NULL, leader_epoch INTEGER NOT NULL, metadata TEXT NOT NULL,
            commit_ms BIGINT NOT NULL, PRIMARY KEY (group_id, topic, partition));",
    ),
    (
        3,
        "CREATE TABLE IF NOT EXISTS agents (name TEXT PRIMARY KEY, epoch BIGINT NOT NULL);
        CREATE TABLE IF NOT EXISTS controller_lease (
            id INTEGER PRIMARY KEY CHECK (id = 1), holder TEXT NOT NULL, address TEXT NOT NULL,
            epoch BIGINT NOT NULL, expires_at TIMESTAMPTZ NOT NULL);",
    ),
    (
        4,
        "CREATE TABLE IF NOT EXISTS transactions (transactional_id TEXT PRIMARY KEY, body TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS open_txns (
            topic_id BYTEA NOT NULL, partition INTEGER NOT NULL, producer_id BIGINT NOT NULL,
            first_offset BIGINT NOT NULL, PRIMARY KEY (topic_id, partition, producer_id));
        CREATE TABLE IF NOT EXISTS aborted_txns (
            topic_id BYTEA NOT NULL, partition INTEGER NOT NULL, last_offset BIGINT NOT NULL,
            producer_id BIGINT NOT NULL, first_offset BIGINT NOT NULL,
            PRIMARY KEY (topic_id, partition, last_offset));",
    ),
    (
        5,
        "CREATE TABLE IF NOT EXISTS garbage (key TEXT PRIMARY KEY, since_ms BIGINT NOT NULL);
        CREATE INDEX IF NOT EXISTS garbage_by_time ON garbage (since_ms);
        CREATE INDEX IF NOT EXISTS orphans_by_time ON orphans (doomed_ms);",
    ),
    (
        6,
        "CREATE TABLE IF NOT EXISTS scram_credentials (
            username TEXT NOT NULL, mechanism TEXT NOT NULL, salt BYTEA NOT NULL, stored_key BYTEA NOT NULL,
            server_key BYTEA NOT NULL, iterations INTEGER NOT NULL, PRIMARY KEY (username, mechanism));
        CREATE TABLE IF NOT EXISTS acls (
            resource_type SMALLINT NOT NULL, resource_name TEXT NOT NULL, pattern_type SMALLINT NOT NULL,
            principal TEXT NOT NULL, host TEXT NOT NULL, operation SMALLINT NOT NULL, permission SMALLINT NOT NULL,
            PRIMARY KEY (resource_type, resource_name, pattern_type, principal, host, operation, permission));
        CREATE TABLE IF NOT EXISTS client_quotas (
            entity TEXT NOT NULL, quota_key TEXT NOT NULL, value DOUBLE PRECISION NOT NULL,
            PRIMARY KEY (entity, quota_key));",
    ),
    (
        7,
        "CREATE TABLE IF NOT EXISTS share_partitions (
            group_id TEXT NOT NULL, topic_id BYTEA NOT NULL, partition INTEGER NOT NULL, body TEXT NOT NULL,
            PRIMARY KEY (group_id, topic_id, partition));
        CREATE TABLE IF NOT EXISTS group_configs (
            group_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (group_id, name));",
    ),
    (8, "CREATE TABLE IF NOT EXISTS client_metrics (name TEXT PRIMARY KEY, configs TEXT NOT NULL);"),
];

/// Key of the advisory lock held while migrating (any constant unlikely to collide).
const MIGRATION_LOCK_KEY: i64 = 0x5349_4445_5354_524d;

/// Who holds the controller lease, as the store records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseHolder {
    pub holder: String,
    /// Where agents reach the holder (its gRPC address).
    pub address: String,
    pub epoch: i64,
    /// Whether the lease is still running (by the database's clock).
    pub live: bool,
}

pub struct PgStore {
    writer: Writer<Client>,
    readers: ReadPool<Client>,
    /// The lease's own connection: renewing never waits behind a write.
    lease: Mutex<Slot<Client>>,
    fence: Fence,
}

/// (holder, epoch) checked by every writing transaction once this replica holds the lease.
type Fence = Arc<Mutex<Option<(String, i64)>>>;

/// Sorts a PostgreSQL error by what the caller must do (see [`StoreError`]), by its SQLSTATE
/// when the server sent one.
fn classify(e: postgres::Error) -> StoreError {
    if let Some(code) = e.code() {
        let code = code.code();
        return match code {
            // serialization_failure, deadlock_detected, query_canceled (statement_timeout),
            // lock_not_available (lock_timeout), read_only_sql_transaction (a standby after a
            // database failover), idle_in_transaction_session_timeout, admin_shutdown,
            // crash_shutdown, cannot_connect_now, idle_session_timeout
            "40001" | "40P01" | "57014" | "55P03" | "25006" | "25P03" | "57P01" | "57P02" | "57P03" | "57P05" => StoreError::retry(e),
            // connection_exception, insufficient_resources (too many connections, disk full)
            _ if code.starts_with("08") || code.starts_with("53") => StoreError::retry(e),
            "23505" => StoreError::Conflict(super::chain(&e)),
            // data_exception, integrity_constraint_violation
            _ if code.starts_with("22") || code.starts_with("23") => StoreError::Invalid { source: e.into() },
            "XX001" | "XX002" => StoreError::corrupt("the database reports damaged data", Some(e.into())),
            _ => StoreError::internal("PostgreSQL", Some(e.into())),
        };
    }
    // Without a SQLSTATE: the connection broke, could not be opened, or a connect timed out
    // (tokio-postgres's error kinds are private: its text tells the timeout and a column that
    // does not decode).
    let io = std::error::Error::source(&e).is_some_and(|s| s.is::<std::io::Error>());
    let text = e.to_string();
    if io || e.is_closed() || text == "timeout waiting for server" {
        StoreError::retry(e)
    } else if text.starts_with("error deserializing column") {
        StoreError::corrupt("a stored value cannot be read", Some(e.into()))
    } else {
        StoreError::internal("PostgreSQL", Some(e.into()))
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How every connection of a store is opened: the URL's settings with the store's timeouts.
fn connector(url: &str, settings: &StoreSettings) -> Result<Open<Client>, StoreError> {
    let mut config: postgres::Config = url.parse().map_err(|e: postgres::Error| StoreError::Invalid { source: e.into() })?;
    let statement_timeout_ms = settings.statement_timeout_ms;
    let timeout = Duration::from_millis(statement_timeout_ms);
    // A server that vanished (no RST) is noticed by keepalives, within about a timeout.
    config
        .connect_timeout(Duration::from_millis(settings.connect_timeout_ms))
        .keepalives(true)
        .keepalives_idle(timeout.max(Duration::from_secs(1)))
        .keepalives_interval(Duration::from_secs(1))
        .keepalives_retries(3)
        .tcp_user_timeout(timeout);
    Ok(Arc::new(move || {
        let mut c = config.connect(NoTls).map_err(classify)?;
        c.batch_execute(&format!(
            "SET statement_timeout = {statement_timeout_ms}; SET idle_in_transaction_session_timeout = {statement_timeout_ms}"
        ))
        .map_err(classify)?;
        Ok(c)
    }))
}

/// Commits `tx` if this replica's lease (if it took one) is still the current one, else fails
/// with [`StoreError::Fenced`] and the transaction rolls back. The share lock on the lease row is
/// held from the check to the commit, so a takeover (which updates the row) is ordered after
/// every commit that passed the check. Checked last, by the database's clock at that moment.
fn commit_fenced(mut tx: Transaction<'_>, fence: &Fence) -> Result<(), StoreError> {
    let current = lock(fence).clone();
    if let Some((holder, epoch)) = current {
        let row = tx
            .query_opt(
                "SELECT 1 FROM controller_lease WHERE id = 1 AND holder = $1 AND epoch = $2 \
                 AND expires_at > clock_timestamp() FOR SHARE",
                &[&holder, &epoch],
            )
            .map_err(classify)?;
        if row.is_none() {
            return Err(StoreError::Fenced(format!("controller lease epoch {epoch} of {holder} is no longer current")));
        }
    }
    tx.commit().map_err(classify)
}

/// Column `i` of a row.
fn col<'a, T: postgres::types::FromSql<'a>>(r: &'a Row, i: usize) -> Result<T, StoreError> {
    r.try_get(i).map_err(classify)
}

/// Makes garbage of those of `keys` that no extent references any more (inside the
/// transaction that removed their extents), as of `now_ms`.
fn release_objects(tx: &mut Transaction<'_>, keys: &[String], now_ms: i64) -> Result<(), StoreError> {
    for key in keys {
        tx.execute(
            "INSERT INTO garbage (key, since_ms) SELECT $1, $2 WHERE EXISTS (SELECT 1 FROM objects WHERE key = $1) \
             AND NOT EXISTS (SELECT 1 FROM extents WHERE object_key = $1) ON CONFLICT DO NOTHING",
            &[key, &now_ms],
        )
        .map_err(classify)?;
    }
    Ok(())
}

/// Every row of `sql` (no parameters), each through `f`.
fn select_all<T>(c: &mut impl postgres::GenericClient, sql: &str, f: impl Fn(&Row) -> Result<T, StoreError>) -> Result<Vec<T>, StoreError> {
    c.query(sql, &[]).map_err(classify)?.iter().map(f).collect()
}

fn uuid_at(r: &Row, i: usize) -> Result<Uuid, StoreError> {
    let b: Vec<u8> = col(r, i)?;
    Uuid::from_slice(&b).map_err(|e| StoreError::corrupt("bad uuid", Some(e.into())))
}

const EXTENT_SELECT: &str = "SELECT e.topic_id, e.partition, e.base_offset, e.end_offset, e.object_key, e.position, \
     e.length, e.batch_count, e.max_timestamp, o.size_bytes FROM extents e JOIN objects o ON o.key = e.object_key";

fn extent_row(r: &Row) -> Result<ExtentRecord, StoreError> {
    let g = |i| r.try_get::<_, i64>(i).map_err(classify);
    Ok(ExtentRecord {
        topic_id: uuid_at(r, 0)?,
        partition: col(r, 1)?,
        base_offset: g(2)?,
        end_offset: g(3)?,
        object_key: Arc::from(r.try_get::<_, String>(4).map_err(classify)?),
        position: g(5)? as u64,
        length: g(6)? as u64,
        batch_count: g(7)? as u32,
        max_timestamp: g(8)?,
        object_size: g(9)? as u64,
    })
}

impl PgStore {
    /// Connects to `url` with the default [`StoreSettings`] and brings the schema to this
    /// binary's version.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        Self::open_with(url, &StoreSettings::default())
    }

    pub fn open_with(url: &str, settings: &StoreSettings) -> Result<Self, StoreError> {
        let open = connector(url, settings)?;
        let writer = Writer::start("pg-writer", Slot::new(open.clone(), Client::is_closed), STORE_WRITE_QUEUE_MAX)?;
        let store = Self {
            writer,
            readers: ReadPool::new(open.clone(), Client::is_closed, settings.read_connections),
            lease: Mutex::new(Slot::new(open, Client::is_closed)),
            fence: Arc::default(),
        };
        store.writer.call(migrate)?;
        Ok(store)
    }

    /// Runs `f` on the writer connection (see [`Writer::call`]), with the fence for
    /// [`commit_fenced`].
    fn write<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Client, &Fence) -> Result<T, StoreError> + Send + 'static,
    ) -> Result<T, StoreError> {
        let fence = self.fence.clone();
        self.writer.call(move |c| f(c, &fence))
    }

    /// Runs `f` on the lease's connection.
    fn with_lease<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, StoreError>) -> Result<T, StoreError> {
        lock(&self.lease).with(f)
    }

    /// Takes the controller lease if it is free, expired, or already ours; returns the new
    /// epoch (every acquisition gets a higher one). `None`: someone else holds a live lease.
    /// From then on, every write of this store checks the lease.
    pub fn acquire_lease(&self, holder: &str, address: &str, ttl_ms: u64) -> Result<Option<i64>, StoreError> {
        let ttl = ttl_ms as f64 / 1000.0;
        let epoch = self.with_lease(|c| {
            let row = c
                .query_opt(
                    "INSERT INTO controller_lease (id, holder, address, epoch, expires_at) \
                     VALUES (1, $1, $2, 1, now() + make_interval(secs => $3)) \
                     ON CONFLICT (id) DO UPDATE SET holder = $1, address = $2, epoch = controller_lease.epoch + 1, \
                     expires_at = now() + make_interval(secs => $3) \
                     WHERE controller_lease.expires_at < now() OR controller_lease.holder = $1 \
                     RETURNING epoch",
                    &[&holder, &address, &ttl],
                )
                .map_err(classify)?;
            row.map(|r| r.try_get::<_, i64>(0).map_err(classify)).transpose()
        })?;
        if let Some(e) = epoch {
            *lock(&self.fence) = Some((holder.to_string(), e));
        }
        Ok(epoch)
    }

    /// Extends our lease; false if it was lost (taken over), in which case this store refuses
    /// every further write. Runs on the lease's own connection: a write in flight (even one
    /// waiting for a lock) does not delay it.
    pub fn renew_lease(&self, ttl_ms: u64) -> Result<bool, StoreError> {
        let Some((holder, epoch)) = lock(&self.fence).clone() else { return Ok(false) };
        let ttl = ttl_ms as f64 / 1000.0;
        let n = self.with_lease(|c| {
            c.execute(
                "UPDATE controller_lease SET expires_at = now() + make_interval(secs => $3) \
                 WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > now()",
                &[&holder, &epoch, &ttl],
            )
            .map_err(classify)
        })?;
        Ok(n == 1)
    }

    /// Gives the lease up (clean shutdown), so a standby takes over at once.
    pub fn release_lease(&self) -> Result<(), StoreError> {
        let Some((holder, epoch)) = lock(&self.fence).take() else { return Ok(()) };
        self.with_lease(|c| {
            c.execute(
                "UPDATE controller_lease SET expires_at = now() - interval '1 second' WHERE id = 1 AND holder = $1 AND epoch = $2",
                &[&holder, &epoch],
            )
            .map_err(classify)
        })?;
        Ok(())
    }

    /// The current lease, if any was ever taken.
    pub fn lease_holder(&self) -> Result<Option<LeaseHolder>, StoreError> {
        self.with_lease(|c| {
            let row = c
                .query_opt("SELECT holder, address, epoch, expires_at > now() FROM controller_lease WHERE id = 1", &[])
                .map_err(classify)?;
            row.map(|r| Ok(LeaseHolder { holder: col(&r, 0)?, address: col(&r, 1)?, epoch: col(&r, 2)?, live: col(&r, 3)? }))
                .transpose()
        })
    }
}

impl Drop for PgStore {
    /// A `postgres::Client` blocks on its own runtime when dropped, which panics on an async
    /// worker thread: the reader and lease connections are closed on a plain thread instead (the
    /// writer's closes on the writer thread, once the queued writes are done).
    fn drop(&mut self) {
        let readers = self.readers.take_idle();
        let lease = self.lease.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if !readers.is_empty() || lease.is_some() {
            let _ = std::thread::Builder::new().name("pg-close".into()).spawn(move || drop((readers, lease)));
        }
    }
}

fn migrate(c: &mut Client) -> Result<(), StoreError> {
    let mut tx = c.transaction().map_err(classify)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY]).map_err(classify)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)").map_err(classify)?;
    let version: i32 = tx
        .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])
        .map_err(classify)?
        .map(|r| r.try_get::<_, String>(0).map_err(classify))
        .transpose()?
        .map(|v| {
            v.parse()
                .map_err(|e: std::num::ParseIntError| StoreError::corrupt(format!("schema_version {v:?}"), Some(e.into())))
        })
        .transpose()?
        .unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(StoreError::corrupt(
            format!("the database has schema version {version}, newer than this binary's {SCHEMA_VERSION}"),
            None,
        ));
    }
    for (to, sql) in MIGRATIONS {
        if version < *to {
            tx.batch_execute(sql).map_err(classify)?;
        }
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', $1) ON CONFLICT (key) DO UPDATE SET value = $1",
        &[&SCHEMA_VERSION.to_string()],
    )
    .map_err(classify)?;
    tx.commit().map_err(classify)
}

impl MetadataStore for PgStore {
    fn load(&self, new_cluster_id: &str) -> Result<Snapshot, StoreError> {
        let new_cluster_id = new_cluster_id.to_string();
        self.write(move |c, _| {
            c.execute("INSERT INTO meta (key, value) VALUES ('cluster_id', $1) ON CONFLICT DO NOTHING", &[&new_cluster_id])
                .map_err(classify)?;
            let cluster_id: String =
                c.query_one("SELECT value FROM meta WHERE key = 'cluster_id'", &[]).and_then(|r| r.try_get(0)).map_err(classify)?;
            let mut configs: BTreeMap<Uuid, BTreeMap<String, String>> = BTreeMap::new();
            for r in c.query("SELECT topic_id, key, value FROM topic_configs", &[]).map_err(classify)? {
                configs.entry(uuid_at(&r, 0)?).or_default().insert(col(&r, 1)?, col(&r, 2)?);
            }
            let mut topics = Vec::new();
            for r in c.query("SELECT id, name, partitions, created_ms FROM topics", &[]).map_err(classify)? {
                let id = uuid_at(&r, 0)?;
                topics.push(TopicRecord {
                    id,
                    name: col(&r, 1)?,
                    partitions: col(&r, 2)?,
                    configs: configs.remove(&id).unwrap_or_default(),
                    created_ms: col(&r, 3)?,
                });
            }
            let partitions = select_all(c, "SELECT topic_id, partition, log_start_offset, next_offset FROM partitions", |r| {
                Ok(PartitionRecord {
                    topic_id: uuid_at(r, 0)?,
                    partition: col(r, 1)?,
                    log_start_offset: col(r, 2)?,
                    next_offset: col(r, 3)?,
                })
            })?;
            let producers =
                select_all(c, "SELECT producer_id, topic_id, partition, epoch, batches, last_seen_ms FROM producer_states", |r| {
                    let batches: String = col(r, 4)?;
                    Ok((
                        (col(r, 0)?, uuid_at(r, 1)?, col(r, 2)?),
                        ProducerState {
                            epoch: col(r, 3)?,
                            batches: decode_batches(&batches).unwrap_or_default(),
                            last_seen_ms: col(r, 5)?,
                        },
                    ))
                })?;
            let transactions = select_all(c, "SELECT transactional_id, body FROM transactions", |r| Ok((col(r, 0)?, col(r, 1)?)))?;
            let open_txns = select_all(c, "SELECT topic_id, partition, producer_id, first_offset FROM open_txns", |r| {
                Ok(OpenTxnRecord { topic_id: uuid_at(r, 0)?, partition: col(r, 1)?, producer_id: col(r, 2)?, first_offset: col(r, 3)? })
            })?;
            Ok(Snapshot { cluster_id, topics, partitions, producers, transactions, open_txns })
        })
    }

    fn create_topic(&self, t: &TopicRecord) -> Result<(), StoreError> {
        let t = t.clone();
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            let id = t.id.as_bytes().as_slice();
            let inserted = tx.execute(
                "INSERT INTO topics (id, name, partitions, created_ms) VALUES ($1, $2, $3, $4)",
                &[&id, &t.name, &t.partitions, &t.created_ms],
            );
            match inserted {
                Ok(_) => {}
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    return Err(StoreError::Conflict(format!("topic {} exists", t.name)));
                }
                Err(e) => return Err(classify(e)),
            }
            for (k, v) in &t.configs {
                tx.execute("INSERT INTO topic_configs (topic_id, key, value) VALUES ($1, $2, $3)", &[&id, k, v])
                    .map_err(classify)?;
            }
            tx.execute(
                "INSERT INTO partitions (topic_id, partition, log_start_offset, next_offset) \
                 SELECT $1, p, 0, 0 FROM generate_series(0, $2 - 1) AS p",
                &[&id, &t.partitions],
            )
            .map_err(classify)?;
            commit_fenced(tx, fence)
        })
    }

    fn add_partitions(&self, topic_id: Uuid, from: i32, to: i32) -> Result<(), StoreError> {
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            let id = topic_id.as_bytes().as_slice();
            let moved = tx
                .execute("UPDATE topics SET partitions = $3 WHERE id = $1 AND partitions = $2", &[&id, &from, &to])
                .map_err(classify)?;
            if moved == 0 {
                return Err(StoreError::Stale(format!("topic {topic_id} does not have {from} partitions")));
            }
            tx.execute(
                "INSERT INTO partitions (topic_id, partition, log_start_offset, next_offset) \
                 SELECT $1, p, 0, 0 FROM generate_series($2::INTEGER, $3 - 1) AS p",
                &[&id, &from, &to],
            )
            .map_err(classify)?;
            commit_fenced(tx, fence)
        })
    }

    fn set_topic_configs(&self, topics: &[(Uuid, BTreeMap<String, String>)]) -> Result<(), StoreError> {
        let topics = topics.to_vec();
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            for (id, configs) in &topics {
                let id = id.as_bytes().as_slice();
                tx.execute("DELETE FROM topic_configs WHERE topic_id = $1", &[&id]).map_err(classify)?;
                for (k, v) in configs {
                    tx.execute(
                        "INSERT INTO topic_configs (topic_id, key, value) SELECT id, $2, $3 FROM topics WHERE id = $1",
                        &[&id, k, v],
                    )
                    .map_err(classify)?;
                }
            }
            commit_fenced(tx, fence)
        })
    }

    fn delete_topic(&self, id: Uuid, name: &str, now_ms: i64) -> Result<(), StoreError> {
        let name = name.to_string();
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            let id = id.as_bytes().as_slice();
            let keys: Vec<String> = tx
                .query("SELECT DISTINCT object_key FROM extents WHERE topic_id = $1", &[&id])
                .map_err(classify)?
                .iter()
                .map(|r| col(r, 0))
                .collect::<Result<_, _>>()?;
            for table in ["topic_configs", "partitions", "extents", "producer_states", "open_txns", "aborted_txns", "share_partitions"] {
                tx.execute(&format!("DELETE FROM {table} WHERE topic_id = $1"), &[&id]).map_err(classify)?;
            }
            tx.execute("DELETE FROM topics WHERE id = $1", &[&id]).map_err(classify)?;
            tx.execute("DELETE FROM group_offsets WHERE topic = $1", &[&name]).map_err(classify)?;
            release_objects(&mut tx, &keys, now_ms)?;
            commit_fenced(tx, fence)
        })
    }

    fn advance_log_starts(&self, moves: &[LogStartMove], now_ms: i64) -> Result<(), StoreError> {
        let moves = moves.to_vec();
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            let mut keys: Vec<String> = Vec::new();
            for m in &moves {
                let id = m.topic_id.as_bytes().as_slice();
                let args: [&(dyn postgres::types::ToSql + Sync); 3] = [&id, &m.partition, &m.log_start_offset];
                let moved = tx
                    .execute(
                        "UPDATE partitions SET log_start_offset = $3 WHERE topic_id = $1 AND partition = $2 AND log_start_offset < $3",
                        &args,
                    )
                    .map_err(classify)?;
                if moved == 0 {
                    continue;
                }
                for r in tx
                    .query("DELETE FROM extents WHERE topic_id = $1 AND partition = $2 AND end_offset <= $3 RETURNING object_key", &args)
                    .map_err(classify)?
                {
                    keys.push(col(&r, 0)?);
                }
                tx.execute("DELETE FROM aborted_txns WHERE topic_id = $1 AND partition = $2 AND last_offset < $3", &args)
                    .map_err(classify)?;
            }
            keys.sort_unstable();
            keys.dedup();
            release_objects(&mut tx, &keys, now_ms)?;
            commit_fenced(tx, fence)
        })
    }

    fn garbage(&self, before_ms: i64, limit: u32) -> Result<Vec<String>, StoreError> {
        self.readers.with(|c| {
            c.query("SELECT key FROM garbage WHERE since_ms <= $1 ORDER BY since_ms, key LIMIT $2", &[&before_ms, &i64::from(limit)])
                .map_err(classify)?
                .iter()
                .map(|r| col(r, 0))
                .collect()
        })
    }

    fn forget_objects(&self, keys: &[(String, bool)], now_ms: i64, marks_before_ms: i64) -> Result<(), StoreError> {
        let keys = keys.to_vec();
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            for (key, keep_mark) in &keys {
                if tx.execute("DELETE FROM garbage WHERE key = $1", &[key]).map_err(classify)? != 1 {
                    continue;
                }
                tx.execute("DELETE FROM objects WHERE key = $1", &[key]).map_err(classify)?;
                if *keep_mark {
                    tx.execute(
                        "INSERT INTO orphans (key, doomed_ms) VALUES ($1, $2) ON CONFLICT (key) DO UPDATE SET doomed_ms = $2",
                        &[key, &now_ms],
                    )
                    .map_err(classify)?;
                }
            }
            tx.execute("DELETE FROM orphans WHERE doomed_ms < $1", &[&marks_before_ms]).map_err(classify)?;
            commit_fenced(tx, fence)
        })
    }

    fn partition_sizes(&self) -> Result<Vec<PartitionSize>, StoreError> {
        self.readers.with(|c| {
            select_all(c, "SELECT topic_id, partition, SUM(length)::BIGINT, COUNT(*) FROM extents GROUP BY topic_id, partition", |r| {
                Ok(PartitionSize {
                    topic_id: uuid_at(r, 0)?,
                    partition: col(r, 1)?,
                    bytes: col::<i64>(r, 2)?.max(0) as u64,
                    extents: col::<i64>(r, 3)?.max(0) as u64,
                })
            })
        })
    }

    fn stored_objects(&self) -> Result<StoredObjects, StoreError> {
        self.readers.with(|c| {
            let r = c
                .query_one(
                    "SELECT COUNT(*), COALESCE(SUM(o.size_bytes), 0)::BIGINT, COUNT(g.key), \
                     COALESCE(SUM(CASE WHEN g.key IS NULL THEN 0 ELSE o.size_bytes END), 0)::BIGINT \
                     FROM objects o LEFT JOIN garbage g ON g.key = o.key",
                    &[],
                )
                .map_err(classify)?;
            let n = |i: usize| col::<i64>(&r, i).map(|v| v.max(0) as u64);
            Ok(StoredObjects { objects: n(0)?, bytes: n(1)?, garbage_objects: n(2)?, garbage_bytes: n(3)? })
        })
    }

    fn committed_extents(&self, object_key: &str) -> Result<Option<Vec<ExtentRecord>>, StoreError> {
        self.readers.with(|c| {
            if c.query_opt("SELECT 1 FROM objects WHERE key = $1", &[&object_key]).map_err(classify)?.is_none() {
                return Ok(None);
            }
            let rows = c
                .query(&format!("{EXTENT_SELECT} WHERE e.object_key = $1 ORDER BY e.position"), &[&object_key])
                .map_err(classify)?;
            Ok(Some(rows.iter().map(extent_row).collect::<Result<_, _>>()?))
        })
    }

    fn commit_object(
        &self,
        o: &ObjectRecord,
        extents: &[ExtentRecord],
        wal: Option<&WalMark>,
        producers: &[(ProducerKey, ProducerState)],
        txn: &TxnEffects,
    ) -> Result<(), StoreError> {
        self.commit_objects(&[(o, extents, wal, producers, txn)])
    }

    fn commit_objects(&self, commits: &[super::ObjectCommit<'_>]) -> Result<(), StoreError> {
        let commits = owned_commits(commits);
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            let statements = Statements::prepare(&mut tx)?;
            for (o, extents, wal, producers, txn) in &commits {
                commit_in(&mut tx, &statements, o, extents, wal.as_ref(), producers, txn)?;
            }
            commit_fenced(tx, fence)
        })
    }

    fn put_transaction(&self, transactional_id: &str, body: &str) -> Result<(), StoreError> {
        let (transactional_id, body) = (transactional_id.to_string(), body.to_string());
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            upsert_transaction(&mut tx, &transactional_id, &body)?;
            commit_fenced(tx, fence)
        })
    }

    fn delete_transactions(&self, transactional_ids: &[String]) -> Result<(), StoreError> {
        let transactional_ids = transactional_ids.to_vec();
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            tx.execute("DELETE FROM transactions WHERE transactional_id = ANY($1)", &[&transactional_ids]).map_err(classify)?;
            commit_fenced(tx, fence)
        })
    }

    fn aborted_txns(
        &self,
        topic_id: Uuid,
        partition: i32,
        from_offset: i64,
        to_offset: i64,
        limit: u32,
    ) -> Result<Vec<(i64, i64)>, StoreError> {
        self.readers.with(|c| {
            let rows = c
                .query(
                    "SELECT producer_id, first_offset FROM aborted_txns WHERE topic_id = $1 AND partition = $2 \
                     AND last_offset >= $3 AND first_offset < $4 ORDER BY first_offset LIMIT $5",
                    &[&topic_id.as_bytes().as_slice(), &partition, &from_offset, &to_offset, &i64::from(limit)],
                )
                .map_err(classify)?;
            rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?))).collect()
        })
    }

    fn doom_uncommitted(&self, keys: &[String], now_ms: i64) -> Result<Vec<bool>, StoreError> {
        let keys = keys.to_vec();
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            let mut doomed = Vec::with_capacity(keys.len());
            for key in &keys {
                // Locks the key against a concurrent commit of it (which inserts into objects
                // after checking orphans): whichever transaction comes second sees the first.
                tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[key]).map_err(classify)?;
                let committed = tx.query_opt("SELECT 1 FROM objects WHERE key = $1", &[key]).map_err(classify)?.is_some();
                if !committed {
                    tx.execute("INSERT INTO orphans (key, doomed_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING", &[key, &now_ms])
                        .map_err(classify)?;
                }
                doomed.push(!committed);
            }
            commit_fenced(tx, fence)?;
            Ok(doomed)
        })
    }

    fn allocate_producer_id(&self) -> Result<i64, StoreError> {
        self.write(move |c, _| {
            let r = c
                .query_one(
                    "INSERT INTO meta (key, value) VALUES ('next_producer_id', '1') ON CONFLICT (key) \
                     DO UPDATE SET value = (meta.value::BIGINT + 1)::TEXT RETURNING value::BIGINT - 1",
                    &[],
                )
                .map_err(classify)?;
            col(&r, 0)
        })
    }

    fn expire_producers(&self, before_ms: i64) -> Result<(), StoreError> {
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            tx.execute(
                "DELETE FROM producer_states p WHERE p.last_seen_ms < $1 AND NOT EXISTS (SELECT 1 FROM open_txns o \
                 WHERE o.topic_id = p.topic_id AND o.partition = p.partition AND o.producer_id = p.producer_id)",
                &[&before_ms],
            )
            .map_err(classify)?;
            commit_fenced(tx, fence)
        })
    }

    fn wal_mark(&self, log_id: &str) -> Result<u64, StoreError> {
        self.readers.with(|c| {
            let mark = c
                .query_opt("SELECT entry_id FROM wal_marks WHERE log_id = $1", &[&log_id])
                .map_err(classify)?
                .map(|r| r.try_get::<_, i64>(0).map_err(classify))
                .transpose()?;
            Ok(mark.unwrap_or(0).max(0) as u64)
        })
    }

    fn register_agent(&self, name: &str) -> Result<u64, StoreError> {
        let name = name.to_string();
        self.write(move |c, _| {
            let r = c
                .query_one(
                    "INSERT INTO agents (name, epoch) VALUES ($1, 1) ON CONFLICT (name) \
                     DO UPDATE SET epoch = agents.epoch + 1 RETURNING epoch",
                    &[&name],
                )
                .map_err(classify)?;
            Ok(r.try_get::<_, i64>(0).map_err(classify)? as u64)
        })
    }

    fn find_extents(&self, topic_id: Uuid, partition: i32, from_offset: i64, limit: u32) -> Result<Vec<ExtentRecord>, StoreError> {
        self.readers.with(|c| {
            let rows = c
                .query(
                    &format!(
                        "{EXTENT_SELECT} WHERE e.topic_id = $1 AND e.partition = $2 AND e.end_offset > $3 \
                         ORDER BY e.base_offset LIMIT $4"
                    ),
                    &[&topic_id.as_bytes().as_slice(), &partition, &from_offset, &i64::from(limit)],
                )
                .map_err(classify)?;
            rows.iter().map(extent_row).collect()
        })
    }

    fn first_extent_at_or_after(&self, topic_id: Uuid, partition: i32, timestamp: i64) -> Result<Option<ExtentRecord>, StoreError> {
        self.readers.with(|c| {
            c.query_opt(
                &format!(
                    "{EXTENT_SELECT} WHERE e.topic_id = $1 AND e.partition = $2 AND e.max_timestamp >= $3 \
                     ORDER BY e.base_offset LIMIT 1"
                ),
                &[&topic_id.as_bytes().as_slice(), &partition, &timestamp],
            )
            .map_err(classify)?
            .as_ref()
            .map(extent_row)
            .transpose()
        })
    }

    fn extent_with_max_timestamp(&self, topic_id: Uuid, partition: i32) -> Result<Option<ExtentRecord>, StoreError> {
        self.readers.with(|c| {
            c.query_opt(
                &format!(
                    "{EXTENT_SELECT} WHERE e.topic_id = $1 AND e.partition = $2 \
                     ORDER BY e.max_timestamp DESC, e.base_offset ASC LIMIT 1"
                ),
                &[&topic_id.as_bytes().as_slice(), &partition],
            )
            .map_err(classify)?
            .as_ref()
            .map(extent_row)
            .transpose()
        })
    }

    fn acls(&self) -> Result<Vec<AclBinding>, StoreError> {
        self.readers.with(|c| {
            select_all(c, "SELECT resource_type, resource_name, pattern_type, principal, host, operation, permission FROM acls", |r| {
                let code = |i| col::<i16>(r, i).map(i64::from);
                super::acl_from_row(code(0)?, col(r, 1)?, code(2)?, col(r, 3)?, col(r, 4)?, code(5)?, code(6)?)
            })
        })
    }

    fn alter_acls(&self, create: &[AclBinding], delete: &[AclBinding]) -> Result<(), StoreError> {
        let (create, delete) = (create.to_vec(), delete.to_vec());
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            let insert = tx
                .prepare(
                    "INSERT INTO acls (resource_type, resource_name, pattern_type, principal, host, operation, permission) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT DO NOTHING",
                )
                .map_err(classify)?;
            for b in &create {
                let (rt, pt, op, perm) = acl_codes(b);
                tx.execute(&insert, &[&rt, &b.resource_name, &pt, &b.principal, &b.host, &op, &perm]).map_err(classify)?;
            }
            let remove = tx
                .prepare(
                    "DELETE FROM acls WHERE resource_type = $1 AND resource_name = $2 AND pattern_type = $3 \
                     AND principal = $4 AND host = $5 AND operation = $6 AND permission = $7",
                )
                .map_err(classify)?;
            for b in &delete {
                let (rt, pt, op, perm) = acl_codes(b);
                tx.execute(&remove, &[&rt, &b.resource_name, &pt, &b.principal, &b.host, &op, &perm]).map_err(classify)?;
            }
            commit_fenced(tx, fence)
        })
    }

    fn scram_credentials(&self, user: Option<&str>) -> Result<Vec<(String, ScramCredential)>, StoreError> {
        let user = user.map(str::to_string);
        self.readers.with(|c| {
            let rows = c
                .query(
                    "SELECT username, mechanism, salt, stored_key, server_key, iterations FROM scram_credentials \
                     WHERE $1::TEXT IS NULL OR username = $1 ORDER BY username, mechanism",
                    &[&user],
                )
                .map_err(classify)?;
            rows.iter()
                .map(|r| {
                    let mechanism: String = col(r, 1)?;
                    let mechanism = ScramMechanism::from_name(&mechanism)
                        .ok_or_else(|| StoreError::corrupt(format!("scram_credentials: mechanism {mechanism:?}"), None))?;
                    let iterations: i32 = col(r, 5)?;
                    Ok((
                        col(r, 0)?,
                        ScramCredential {
                            mechanism,
                            salt: col(r, 2)?,
                            stored_key: col(r, 3)?,
                            server_key: col(r, 4)?,
                            iterations: iterations as u32,
                        },
                    ))
                })
                .collect()
        })
    }

    fn alter_scram_credentials(
        &self,
        upserts: &[(String, ScramCredential)],
        deletes: &[(String, ScramMechanism)],
    ) -> Result<(), StoreError> {
        let (upserts, deletes) = (upserts.to_vec(), deletes.to_vec());
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            for (user, m) in &deletes {
                tx.execute("DELETE FROM scram_credentials WHERE username = $1 AND mechanism = $2", &[user, &m.name()])
                    .map_err(classify)?;
            }
            for (user, c) in &upserts {
                tx.execute(
                    "INSERT INTO scram_credentials (username, mechanism, salt, stored_key, server_key, iterations) \
                     VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (username, mechanism) DO UPDATE SET \
                     salt = EXCLUDED.salt, stored_key = EXCLUDED.stored_key, server_key = EXCLUDED.server_key, \
                     iterations = EXCLUDED.iterations",
                    &[user, &c.mechanism.name(), &c.salt, &c.stored_key, &c.server_key, &(c.iterations as i32)],
                )
                .map_err(classify)?;
            }
            commit_fenced(tx, fence)
        })
    }

    fn client_quotas(&self) -> Result<Vec<(String, String, f64)>, StoreError> {
        self.readers.with(|c| {
            let rows = c.query("SELECT entity, quota_key, value FROM client_quotas ORDER BY entity, quota_key", &[]).map_err(classify)?;
            rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?, col(r, 2)?))).collect()
        })
    }

    fn client_metrics(&self) -> Result<Vec<ClientMetricsResource>, StoreError> {
        let rows: Vec<(String, String)> = self.readers.with(|c| {
            let rows = c.query("SELECT name, configs FROM client_metrics ORDER BY name", &[]).map_err(classify)?;
            rows.iter().map(|r| Ok((col(r, 0)?, col(r, 1)?))).collect::<Result<_, StoreError>>()
        })?;
        rows.into_iter().map(|(name, configs)| super::client_metrics_row(name, &configs)).collect()
    }

    fn set_client_metrics(&self, changes: &[(String, Option<BTreeMap<String, String>>)]) -> Result<(), StoreError> {
        let changes = super::client_metrics_rows(changes)?;
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            for (name, configs) in &changes {
                match configs {
                    Some(json) => tx.execute(
                        "INSERT INTO client_metrics (name, configs) VALUES ($1, $2) \
                         ON CONFLICT (name) DO UPDATE SET configs = EXCLUDED.configs",
                        &[name, json],
                    ),
                    None => tx.execute("DELETE FROM client_metrics WHERE name = $1", &[name]),
                }
                .map_err(classify)?;
            }
            commit_fenced(tx, fence)
        })
    }

    fn alter_client_quotas(&self, changes: &[(String, String, Option<f64>)]) -> Result<(), StoreError> {
        let changes = changes.to_vec();
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            for (entity, key, value) in &changes {
                match value {
                    Some(v) => tx.execute(
                        "INSERT INTO client_quotas (entity, quota_key, value) VALUES ($1, $2, $3) \
                         ON CONFLICT (entity, quota_key) DO UPDATE SET value = EXCLUDED.value",
                        &[entity, key, v],
                    ),
                    None => tx.execute("DELETE FROM client_quotas WHERE entity = $1 AND quota_key = $2", &[entity, key]),
                }
                .map_err(classify)?;
            }
            commit_fenced(tx, fence)
        })
    }

    fn load_share_partitions(&self) -> Result<Vec<SharePartitionRecord>, StoreError> {
        self.readers.with(|c| {
            select_all(c, "SELECT group_id, topic_id, partition, body FROM share_partitions", |r| {
                Ok(SharePartitionRecord { group_id: col(r, 0)?, topic_id: uuid_at(r, 1)?, partition: col(r, 2)?, body: col(r, 3)? })
            })
        })
    }

    fn put_share_partitions(&self, rows: &[SharePartitionRecord]) -> Result<(), StoreError> {
        let rows = rows.to_vec();
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            for r in &rows {
                tx.execute(
                    "INSERT INTO share_partitions (group_id, topic_id, partition, body) VALUES ($1, $2, $3, $4) \
                     ON CONFLICT (group_id, topic_id, partition) DO UPDATE SET body = EXCLUDED.body",
                    &[&r.group_id, &r.topic_id.as_bytes().as_slice(), &r.partition, &r.body],
                )
                .map_err(classify)?;
            }
            commit_fenced(tx, fence)
        })
    }

    fn delete_share_partitions(&self, group_id: &str, partitions: Option<&[(Uuid, i32)]>) -> Result<(), StoreError> {
        let (group_id, partitions) = (group_id.to_string(), partitions.map(<[_]>::to_vec));
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            match partitions {
                None => {
                    tx.execute("DELETE FROM share_partitions WHERE group_id = $1", &[&group_id]).map_err(classify)?;
                }
                Some(ps) => {
                    for (t, p) in &ps {
                        tx.execute(
                            "DELETE FROM share_partitions WHERE group_id = $1 AND topic_id = $2 AND partition = $3",
                            &[&group_id, &t.as_bytes().as_slice(), p],
                        )
                        .map_err(classify)?;
                    }
                }
            }
            commit_fenced(tx, fence)
        })
    }

    fn group_configs(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        self.readers.with(|c| {
            select_all(c, "SELECT group_id, name, value FROM group_configs ORDER BY group_id, name", |r| {
                Ok((col(r, 0)?, col(r, 1)?, col(r, 2)?))
            })
        })
    }

    fn alter_group_configs(&self, group_id: &str, changes: &[(String, Option<String>)]) -> Result<(), StoreError> {
        let (group_id, changes) = (group_id.to_string(), changes.to_vec());
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            for (name, value) in &changes {
                match value {
                    Some(v) => tx.execute(
                        "INSERT INTO group_configs (group_id, name, value) VALUES ($1, $2, $3) \
                         ON CONFLICT (group_id, name) DO UPDATE SET value = EXCLUDED.value",
                        &[&group_id, name, v],
                    ),
                    None => tx.execute("DELETE FROM group_configs WHERE group_id = $1 AND name = $2", &[&group_id, name]),
                }
                .map_err(classify)?;
            }
            commit_fenced(tx, fence)
        })
    }

    fn load_group_offsets(&self) -> Result<Vec<GroupOffsetRecord>, StoreError> {
        self.readers.with(|c| {
            let rows = c
                .query("SELECT group_id, topic, partition, committed_offset, leader_epoch, metadata, commit_ms FROM group_offsets", &[])
                .map_err(classify)?;
            rows.iter()
                .map(|r| {
                    Ok(GroupOffsetRecord {
                        group_id: col(r, 0)?,
                        topic: col(r, 1)?,
                        partition: col(r, 2)?,
                        offset: col(r, 3)?,
                        leader_epoch: col(r, 4)?,
                        metadata: col(r, 5)?,
                        commit_ms: col(r, 6)?,
                    })
                })
                .collect()
        })
    }

    fn commit_group_offsets(&self, offsets: &[GroupOffsetRecord]) -> Result<(), StoreError> {
        let offsets = offsets.to_vec();
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            let upsert = tx.prepare(GROUP_OFFSET_UPSERT).map_err(classify)?;
            for o in &offsets {
                tx.execute(&upsert, &[&o.group_id, &o.topic, &o.partition, &o.offset, &o.leader_epoch, &o.metadata, &o.commit_ms])
                    .map_err(classify)?;
            }
            commit_fenced(tx, fence)
        })
    }

    fn compaction_candidates(&self, req: &crate::api::CandidatesRequest) -> Result<Vec<ExtentRecord>, StoreError> {
        let suffix = format!("%{}", crate::format::object::PARTITION_OBJECT_SUFFIX);
        let sorted = format!("%{}", crate::format::object::SORTED_OBJECT_SUFFIX);
        let small = req.small_bytes.min(i64::MAX as u64) as i64;
        let limit = i64::from(req.limit);
        self.readers.with(|c| {
            let rows = if req.partition_objects {
                let (after_topic, after_partition) = req.after.unwrap_or((Uuid::nil(), -1));
                c.query(
                    &format!(
                        "{EXTENT_SELECT} WHERE ((o.key LIKE $1 AND o.size_bytes < $2) OR o.key LIKE $7) AND o.committed_ms < $3 \
                         AND (e.topic_id, e.partition) > ($4, $5) ORDER BY e.topic_id, e.partition, e.base_offset LIMIT $6"
                    ),
                    &[&suffix, &small, &req.committed_before_ms, &after_topic.as_bytes().as_slice(), &after_partition, &limit, &sorted],
                )
            } else {
                c.query(
                    "SELECT e.topic_id, e.partition, e.base_offset, e.end_offset, e.object_key, e.position, \
                     e.length, e.batch_count, e.max_timestamp, o.size_bytes FROM extents e JOIN (SELECT key, size_bytes, \
                     committed_ms FROM objects WHERE key NOT LIKE $1 AND key NOT LIKE $5 AND size_bytes < $2 \
                     AND committed_ms < $3 AND EXISTS (SELECT 1 FROM extents x WHERE x.object_key = objects.key) \
                     ORDER BY committed_ms, key LIMIT $4) o ON o.key = e.object_key ORDER BY o.committed_ms, o.key, e.position",
                    &[&suffix, &small, &req.committed_before_ms, &limit, &sorted],
                )
            }
            .map_err(classify)?;
            rows.iter().map(extent_row).collect()
        })
    }

    fn replace_extents(&self, object: &ObjectRecord, old: &[ExtentRecord], new: &[ExtentRecord]) -> Result<(), StoreError> {
        let (object, old, new) = (object.clone(), old.to_vec(), new.to_vec());
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            replace_in(&mut tx, &object, &old, &new)?;
            commit_fenced(tx, fence)
        })
    }

    fn delete_group_offsets(&self, group_id: &str, partitions: Option<&[(String, i32)]>) -> Result<(), StoreError> {
        let (group_id, partitions) = (group_id.to_string(), partitions.map(<[_]>::to_vec));
        self.write(move |c, fence| {
            let mut tx = c.transaction().map_err(classify)?;
            match partitions {
                None => {
                    tx.execute("DELETE FROM group_offsets WHERE group_id = $1", &[&group_id]).map_err(classify)?;
                }
                Some(ps) => {
                    for (t, p) in &ps {
                        tx.execute("DELETE FROM group_offsets WHERE group_id = $1 AND topic = $2 AND partition = $3", &[&group_id, t, p])
                            .map_err(classify)?;
                    }
                }
            }
            commit_fenced(tx, fence)
        })
    }
}

/// An ACL binding's codes as stored (SMALLINT): resource type, pattern type, operation,
/// permission.
fn acl_codes(b: &AclBinding) -> (i16, i16, i16, i16) {
    (b.resource_type.code().into(), b.pattern_type.code().into(), b.operation.code().into(), b.permission.code().into())
}

/// Inserts or replaces one group offset: group, topic, partition, offset, leader epoch,
/// metadata, commit time.
const GROUP_OFFSET_UPSERT: &str = "INSERT INTO group_offsets \
     (group_id, topic, partition, committed_offset, leader_epoch, metadata, commit_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (group_id, topic, partition) DO UPDATE SET \
     committed_offset = excluded.committed_offset, leader_epoch = excluded.leader_epoch, \
     metadata = excluded.metadata, commit_ms = excluded.commit_ms";

const EXTENT_INSERT: &str = "INSERT INTO extents (topic_id, partition, base_offset, end_offset, object_key, position, length, \
     batch_count, max_timestamp) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)";

/// One extent row, through the prepared [`EXTENT_INSERT`].
fn insert_extent(tx: &mut Transaction<'_>, insert: &postgres::Statement, e: &ExtentRecord) -> Result<(), StoreError> {
    tx.execute(
        insert,
        &[
            &e.topic_id.as_bytes().as_slice(),
            &e.partition,
            &e.base_offset,
            &e.end_offset,
            &&*e.object_key,
            &(e.position as i64),
            &(e.length as i64),
            &i64::from(e.batch_count),
            &e.max_timestamp,
        ],
    )
    .map_err(classify)?;
    Ok(())
}

/// Records a committed object (a commit's or a swap's), under the key's advisory lock (against
/// a concurrent orphan collection of it): `Conflict` if its key was doomed as an orphan,
/// `Stale` if it is already recorded.
fn record_object(tx: &mut Transaction<'_>, o: &ObjectRecord) -> Result<(), StoreError> {
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&o.key]).map_err(classify)?;
    if tx.query_opt("SELECT 1 FROM orphans WHERE key = $1", &[&o.key]).map_err(classify)?.is_some() {
        return Err(StoreError::Conflict(format!("object {} was collected as an orphan", o.key)));
    }
    let inserted = tx.execute(
        "INSERT INTO objects (key, size_bytes, agent, committed_ms) VALUES ($1, $2, $3, $4)",
        &[&o.key, &(o.size_bytes as i64), &o.agent, &o.committed_ms],
    );
    match inserted {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => Err(StoreError::Stale(format!("object {} is already committed", o.key))),
        Err(e) => Err(classify(e)),
    }
}

/// Compaction's swap inside an open transaction (see [`MetadataStore::replace_extents`]).
fn replace_in(tx: &mut Transaction<'_>, o: &ObjectRecord, old: &[ExtentRecord], new: &[ExtentRecord]) -> Result<(), StoreError> {
    let delete = tx
        .prepare(
            "DELETE FROM extents WHERE topic_id = $1 AND partition = $2 AND base_offset = $3 AND end_offset = $4 \
             AND object_key = $5 AND position = $6 AND length = $7",
        )
        .map_err(classify)?;
    for e in old {
        let deleted = tx
            .execute(
                &delete,
                &[
                    &e.topic_id.as_bytes().as_slice(),
                    &e.partition,
                    &e.base_offset,
                    &e.end_offset,
                    &&*e.object_key,
                    &(e.position as i64),
                    &(e.length as i64),
                ],
            )
            .map_err(classify)?;
        if deleted != 1 {
            return Err(StoreError::Stale(format!(
                "extent {}-{} at {} in {} is gone or changed",
                e.topic_id, e.partition, e.base_offset, e.object_key
            )));
        }
    }
    record_object(tx, o)?;
    let insert = tx.prepare(EXTENT_INSERT).map_err(classify)?;
    for e in new {
        insert_extent(tx, &insert, e)?;
    }
    // The garbage collector's contract: an object no extent references any more is listed in
    // the transaction that made it so.
    let mut keys: Vec<String> = old.iter().map(|e| e.object_key.to_string()).collect();
    keys.sort_unstable();
    keys.dedup();
    release_objects(tx, &keys, o.committed_ms)
}

fn upsert_transaction(tx: &mut Transaction<'_>, transactional_id: &str, body: &str) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO transactions (transactional_id, body) VALUES ($1, $2) \
         ON CONFLICT (transactional_id) DO UPDATE SET body = excluded.body",
        &[&transactional_id, &body],
    )
    .map_err(classify)?;
    Ok(())
}

/// The statements a commit runs per extent, prepared once per transaction (a group commit of
/// many objects pays the round trips once).
struct Statements {
    insert: postgres::Statement,
    advance: postgres::Statement,
}

impl Statements {
    fn prepare(tx: &mut Transaction<'_>) -> Result<Self, StoreError> {
        Ok(Self {
            insert: tx.prepare(EXTENT_INSERT).map_err(classify)?,
            advance: tx
                .prepare("UPDATE partitions SET next_offset = $4 WHERE topic_id = $1 AND partition = $2 AND next_offset = $3")
                .map_err(classify)?,
        })
    }
}

/// One object's commit inside an open transaction (see [`MetadataStore::commit_object`]).
fn commit_in(
    tx: &mut Transaction<'_>,
    statements: &Statements,
    o: &ObjectRecord,
    extents: &[ExtentRecord],
    wal: Option<&WalMark>,
    producers: &[(ProducerKey, ProducerState)],
    txn: &TxnEffects,
) -> Result<(), StoreError> {
    record_object(tx, o)?;
    let Statements { insert, advance } = statements;
    for e in extents {
        let id = e.topic_id.as_bytes().as_slice();
        let moved = tx.execute(advance, &[&id, &e.partition, &e.base_offset, &e.end_offset]).map_err(classify)?;
        if moved != 1 {
            return Err(StoreError::Stale(format!(
                "partition {}-{} is no longer at offset {}: another writer committed",
                e.topic_id, e.partition, e.base_offset
            )));
        }
        insert_extent(tx, insert, e)?;
    }
    for ((pid, topic, partition), state) in producers {
        tx.execute(
            "INSERT INTO producer_states (producer_id, topic_id, partition, epoch, batches, last_seen_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (producer_id, topic_id, partition) DO UPDATE SET \
             epoch = excluded.epoch, batches = excluded.batches, last_seen_ms = excluded.last_seen_ms",
            &[pid, &topic.as_bytes().as_slice(), partition, &state.epoch, &encode_batches(&state.batches), &state.last_seen_ms],
        )
        .map_err(classify)?;
    }
    for o in &txn.opened {
        tx.execute(
            "INSERT INTO open_txns (topic_id, partition, producer_id, first_offset) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            &[&o.topic_id.as_bytes().as_slice(), &o.partition, &o.producer_id, &o.first_offset],
        )
        .map_err(classify)?;
    }
    for o in &txn.closed {
        tx.execute(
            "DELETE FROM open_txns WHERE topic_id = $1 AND partition = $2 AND producer_id = $3",
            &[&o.topic_id.as_bytes().as_slice(), &o.partition, &o.producer_id],
        )
        .map_err(classify)?;
    }
    for a in &txn.aborted {
        tx.execute(
            "INSERT INTO aborted_txns (topic_id, partition, last_offset, producer_id, first_offset) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (topic_id, partition, last_offset) DO UPDATE SET \
             producer_id = excluded.producer_id, first_offset = excluded.first_offset",
            &[&a.topic_id.as_bytes().as_slice(), &a.partition, &a.last_offset, &a.producer_id, &a.first_offset],
        )
        .map_err(classify)?;
    }
    if let Some((id, body)) = &txn.transaction {
        upsert_transaction(tx, id, body)?;
    }
    for o in &txn.group_offsets {
        tx.execute(GROUP_OFFSET_UPSERT, &[&o.group_id, &o.topic, &o.partition, &o.offset, &o.leader_epoch, &o.metadata, &o.commit_ms])
            .map_err(classify)?;
    }
    if let Some(w) = wal {
        tx.execute(
            "INSERT INTO wal_marks (log_id, entry_id) VALUES ($1, $2) \
             ON CONFLICT (log_id) DO UPDATE SET entry_id = greatest(wal_marks.entry_id, excluded.entry_id)",
            &[&w.log_id, &(w.entry_id as i64)],
        )
        .map_err(classify)?;
    }
    Ok(())
}
