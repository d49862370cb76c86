//! The PostgreSQL metadata store (`store = "postgres://..."`): the same schema and the same
//! [`MetadataStore`] contract as [`super::sqlite`], for controllers that must survive the loss
//! of a host. PostgreSQL provides the durability and the replication; this module provides
//! the schema (versioned, migrated under an advisory lock so replicas starting together do not
//! race), the transactions, and the controller lease that lets exactly one replica write.
//!
//! Fencing: a store opened by a replica that holds the lease ([`PgStore::acquire_lease`]) checks,
//! inside every writing transaction, that its lease epoch is still the current one (`FOR SHARE`,
//! so a takeover waits for commits in flight and every commit after it fails with
//! [`StoreError::Fenced`]). Independently, a commit advances a partition only from the offset it
//! planned from (`next_offset = base_offset`), so two writers can never assign an offset twice.
//!
//! Blocking: every call runs on the calling thread (the `postgres` crate drives tokio-postgres on
//! its own small runtime); call it off the async runtime's worker threads, like the SQLite store.
//! Must not touch: controller logic (planning, caching); it stores what it is given.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, MutexGuard};

use postgres::error::SqlState;
use postgres::{Client, NoTls, Row, Transaction};
use uuid::Uuid;

use crate::api::{ExtentRecord, WalMark};
use crate::controller::producers::ProducerKey;
use crate::controller::producers::{ProducerState, decode_batches, encode_batches};

use super::{
    GroupOffsetRecord, MetadataStore, ObjectRecord, OpenTxnRecord, PartitionRecord, Snapshot, StoreError, TopicRecord,
    TxnEffects,
};

/// Version 1: topics, partitions, objects, extents, producers, orphans. 2: group offsets.
/// 3: agent epochs and the controller lease. 4: transactions, open transactions per partition,
/// the aborted transaction index (as SQLite's version 4).
const SCHEMA_VERSION: i32 = 4;

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
    url: String,
    writer: Mutex<Option<Client>>,
    reader: Mutex<Option<Client>>,
    /// (holder, epoch) checked by every writing transaction once this replica holds the lease.
    fence: Mutex<Option<(String, i64)>>,
}

fn unavailable(e: postgres::Error) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Column `i` of a row.
fn col<'a, T: postgres::types::FromSql<'a>>(r: &'a Row, i: usize) -> Result<T, StoreError> {
    r.try_get(i).map_err(unavailable)
}

/// Every row of `sql` (no parameters), each through `f`.
fn select_all<T>(
    c: &mut impl postgres::GenericClient,
    sql: &str,
    f: impl Fn(&Row) -> Result<T, StoreError>,
) -> Result<Vec<T>, StoreError> {
    c.query(sql, &[]).map_err(unavailable)?.iter().map(f).collect()
}

fn uuid_at(r: &Row, i: usize) -> Result<Uuid, StoreError> {
    let b: Vec<u8> = col(r, i)?;
    Uuid::from_slice(&b).map_err(|e| StoreError::Corrupt(format!("bad uuid: {e}")))
}

const EXTENT_SELECT: &str = "SELECT e.topic_id, e.partition, e.base_offset, e.end_offset, e.object_key, e.position, \
     e.length, e.batch_count, e.max_timestamp, o.size_bytes FROM extents e JOIN objects o ON o.key = e.object_key";

fn extent_row(r: &Row) -> Result<ExtentRecord, StoreError> {
    let g = |i| r.try_get::<_, i64>(i).map_err(unavailable);
    Ok(ExtentRecord {
        topic_id: uuid_at(r, 0)?,
        partition: col(r, 1)?,
        base_offset: g(2)?,
        end_offset: g(3)?,
        object_key: Arc::from(r.try_get::<_, String>(4).map_err(unavailable)?),
        position: g(5)? as u64,
        length: g(6)? as u64,
        batch_count: g(7)? as u32,
        max_timestamp: g(8)?,
        object_size: g(9)? as u64,
    })
}

impl PgStore {
    /// Connects to `url` and brings the schema to this binary's version.
    pub fn open(url: &str) -> Result<Self, StoreError> {
        let store = Self { url: url.to_string(), writer: Mutex::new(None), reader: Mutex::new(None), fence: Mutex::new(None) };
        store.with_writer(migrate)?;
        Ok(store)
    }

    fn connect(&self) -> Result<Client, StoreError> {
        Client::connect(&self.url, NoTls).map_err(unavailable)
    }

    fn with<T>(
        &self,
        slot: &Mutex<Option<Client>>,
        f: impl FnOnce(&mut Client) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let mut guard = lock(slot);
        if guard.as_ref().is_none_or(|c| c.is_closed()) {
            *guard = Some(self.connect()?);
        }
        let Some(client) = guard.as_mut() else { return Err(StoreError::Unavailable("no connection".into())) };
        let out = f(client);
        if out.is_err() && client.is_closed() {
            *guard = None;
        }
        out
    }

    fn with_writer<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.with(&self.writer, f)
    }

    fn with_reader<T>(&self, f: impl FnOnce(&mut Client) -> Result<T, StoreError>) -> Result<T, StoreError> {
        self.with(&self.reader, f)
    }

    /// Fails with [`StoreError::Fenced`] unless this replica's lease is still the current one.
    /// Holds a share lock on the lease row until the transaction ends, so a takeover (which
    /// updates the row) is ordered after every commit that passed this check.
    fn check_fence(&self, tx: &mut Transaction<'_>) -> Result<(), StoreError> {
        let fence = lock(&self.fence).clone();
        let Some((holder, epoch)) = fence else { return Ok(()) };
        let row = tx
            .query_opt(
                "SELECT 1 FROM controller_lease WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > now() FOR SHARE",
                &[&holder, &epoch],
            )
            .map_err(unavailable)?;
        match row {
            Some(_) => Ok(()),
            None => Err(StoreError::Fenced(format!("controller lease epoch {epoch} of {holder} is no longer current"))),
        }
    }

    /// Takes the controller lease if it is free, expired, or already ours; returns the new
    /// epoch (every acquisition gets a higher one). `None`: someone else holds a live lease.
    /// From then on, every write of this store checks the lease.
    pub fn acquire_lease(&self, holder: &str, address: &str, ttl_ms: u64) -> Result<Option<i64>, StoreError> {
        let ttl = ttl_ms as f64 / 1000.0;
        let epoch = self.with_writer(|c| {
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
                .map_err(unavailable)?;
            row.map(|r| r.try_get::<_, i64>(0).map_err(unavailable)).transpose()
        })?;
        if let Some(e) = epoch {
            *lock(&self.fence) = Some((holder.to_string(), e));
        }
        Ok(epoch)
    }

    /// Extends our lease; false if it was lost (taken over), in which case this store refuses
    /// every further write.
    pub fn renew_lease(&self, ttl_ms: u64) -> Result<bool, StoreError> {
        let Some((holder, epoch)) = lock(&self.fence).clone() else { return Ok(false) };
        let ttl = ttl_ms as f64 / 1000.0;
        let n = self.with_writer(|c| {
            c.execute(
                "UPDATE controller_lease SET expires_at = now() + make_interval(secs => $3) \
                 WHERE id = 1 AND holder = $1 AND epoch = $2 AND expires_at > now()",
                &[&holder, &epoch, &ttl],
            )
            .map_err(unavailable)
        })?;
        Ok(n == 1)
    }

    /// Gives the lease up (clean shutdown), so a standby takes over at once.
    pub fn release_lease(&self) -> Result<(), StoreError> {
        let Some((holder, epoch)) = lock(&self.fence).take() else { return Ok(()) };
        self.with_writer(|c| {
            c.execute(
                "UPDATE controller_lease SET expires_at = now() - interval '1 second' WHERE id = 1 AND holder = $1 AND epoch = $2",
                &[&holder, &epoch],
            )
            .map_err(unavailable)
        })?;
        Ok(())
    }

    /// The current lease, if any was ever taken.
    pub fn lease_holder(&self) -> Result<Option<LeaseHolder>, StoreError> {
        self.with_reader(|c| {
            let row = c
                .query_opt("SELECT holder, address, epoch, expires_at > now() FROM controller_lease WHERE id = 1", &[])
                .map_err(unavailable)?;
            row.map(|r| {
                Ok(LeaseHolder {
                    holder: col(&r, 0)?,
                    address: col(&r, 1)?,
                    epoch: col(&r, 2)?,
                    live: col(&r, 3)?,
                })
            })
            .transpose()
        })
    }
}

impl Drop for PgStore {
    /// A `postgres::Client` blocks on its own runtime when dropped, which panics on an async
    /// worker thread: the connections are closed on a plain thread instead.
    fn drop(&mut self) {
        let writer = self.writer.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        let reader = self.reader.get_mut().unwrap_or_else(|p| p.into_inner()).take();
        if writer.is_some() || reader.is_some() {
            let _ = std::thread::Builder::new().name("pg-close".into()).spawn(move || drop((writer, reader)));
        }
    }
}

fn migrate(c: &mut Client) -> Result<(), StoreError> {
    let mut tx = c.transaction().map_err(unavailable)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK_KEY]).map_err(unavailable)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
        .map_err(unavailable)?;
    let version: i32 = tx
        .query_opt("SELECT value FROM meta WHERE key = 'schema_version'", &[])
        .map_err(unavailable)?
        .map(|r| r.try_get::<_, String>(0).map_err(unavailable))
        .transpose()?
        .map(|v| v.parse().map_err(|_| StoreError::Corrupt(format!("schema_version {v:?} is not a number"))))
        .transpose()?
        .unwrap_or(0);
    if version > SCHEMA_VERSION {
        return Err(StoreError::Corrupt(format!(
            "the database has schema version {version}, newer than this binary's {SCHEMA_VERSION}"
        )));
    }
    for (to, sql) in MIGRATIONS {
        if version < *to {
            tx.batch_execute(sql).map_err(unavailable)?;
        }
    }
    tx.execute(
        "INSERT INTO meta (key, value) VALUES ('schema_version', $1) ON CONFLICT (key) DO UPDATE SET value = $1",
        &[&SCHEMA_VERSION.to_string()],
    )
    .map_err(unavailable)?;
    tx.commit().map_err(unavailable)
}

impl MetadataStore for PgStore {
    fn load(&self, new_cluster_id: &str) -> Result<Snapshot, StoreError> {
        self.with_writer(|c| {
            c.execute("INSERT INTO meta (key, value) VALUES ('cluster_id', $1) ON CONFLICT DO NOTHING", &[&new_cluster_id])
                .map_err(unavailable)?;
            let cluster_id: String = c
                .query_one("SELECT value FROM meta WHERE key = 'cluster_id'", &[])
                .and_then(|r| r.try_get(0))
                .map_err(unavailable)?;
            let mut configs: BTreeMap<Uuid, BTreeMap<String, String>> = BTreeMap::new();
            for r in c.query("SELECT topic_id, key, value FROM topic_configs", &[]).map_err(unavailable)? {
                configs
                    .entry(uuid_at(&r, 0)?)
                    .or_default()
                    .insert(col(&r, 1)?, col(&r, 2)?);
            }
            let mut topics = Vec::new();
            for r in c.query("SELECT id, name, partitions, created_ms FROM topics", &[]).map_err(unavailable)? {
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
            let producers = select_all(
                c,
                "SELECT producer_id, topic_id, partition, epoch, batches, last_seen_ms FROM producer_states",
                |r| {
                    let batches: String = col(r, 4)?;
                    Ok((
                        (col(r, 0)?, uuid_at(r, 1)?, col(r, 2)?),
                        ProducerState {
                            epoch: col(r, 3)?,
                            batches: decode_batches(&batches).unwrap_or_default(),
                            last_seen_ms: col(r, 5)?,
                        },
                    ))
                },
            )?;
            let transactions =
                select_all(c, "SELECT transactional_id, body FROM transactions", |r| Ok((col(r, 0)?, col(r, 1)?)))?;
            let open_txns = select_all(c, "SELECT topic_id, partition, producer_id, first_offset FROM open_txns", |r| {
                Ok(OpenTxnRecord {
                    topic_id: uuid_at(r, 0)?,
                    partition: col(r, 1)?,
                    producer_id: col(r, 2)?,
                    first_offset: col(r, 3)?,
                })
            })?;
            Ok(Snapshot { cluster_id, topics, partitions, producers, transactions, open_txns })
        })
    }

    fn create_topic(&self, t: &TopicRecord) -> Result<(), StoreError> {
        self.with_writer(|c| {
            let mut tx = c.transaction().map_err(unavailable)?;
            self.check_fence(&mut tx)?;
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
                Err(e) => return Err(unavailable(e)),
            }
            for (k, v) in &t.configs {
                tx.execute("INSERT INTO topic_configs (topic_id, key, value) VALUES ($1, $2, $3)", &[&id, k, v])
                    .map_err(unavailable)?;
            }
            tx.execute(
                "INSERT INTO partitions (topic_id, partition, log_start_offset, next_offset) \
                 SELECT $1, p, 0, 0 FROM generate_series(0, $2 - 1) AS p",
                &[&id, &t.partitions],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
    }

    fn delete_topic(&self, id: Uuid) -> Result<(), StoreError> {
        self.with_writer(|c| {
            let mut tx = c.transaction().map_err(unavailable)?;
            self.check_fence(&mut tx)?;
            let id = id.as_bytes().as_slice();
            for table in ["topic_configs", "partitions", "extents", "producer_states", "open_txns", "aborted_txns"] {
                tx.execute(&format!("DELETE FROM {table} WHERE topic_id = $1"), &[&id]).map_err(unavailable)?;
            }
            tx.execute("DELETE FROM topics WHERE id = $1", &[&id]).map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
    }

    fn committed_extents(&self, object_key: &str) -> Result<Option<Vec<ExtentRecord>>, StoreError> {
        self.with_reader(|c| {
            if c.query_opt("SELECT 1 FROM objects WHERE key = $1", &[&object_key]).map_err(unavailable)?.is_none() {
                return Ok(None);
            }
            let rows = c
                .query(&format!("{EXTENT_SELECT} WHERE e.object_key = $1 ORDER BY e.position"), &[&object_key])
                .map_err(unavailable)?;
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
        self.with_writer(|c| {
            let mut tx = c.transaction().map_err(unavailable)?;
            self.check_fence(&mut tx)?;
            let statements = Statements::prepare(&mut tx)?;
            for (o, extents, wal, producers, txn) in commits {
                commit_in(&mut tx, &statements, o, extents, *wal, producers, txn)?;
            }
            tx.commit().map_err(unavailable)
        })
    }

    fn put_transaction(&self, transactional_id: &str, body: &str) -> Result<(), StoreError> {
        self.with_writer(|c| {
            let mut tx = c.transaction().map_err(unavailable)?;
            self.check_fence(&mut tx)?;
            upsert_transaction(&mut tx, transactional_id, body)?;
            tx.commit().map_err(unavailable)
        })
    }

    fn delete_transactions(&self, transactional_ids: &[String]) -> Result<(), StoreError> {
        self.with_writer(|c| {
            let mut tx = c.transaction().map_err(unavailable)?;
            self.check_fence(&mut tx)?;
            tx.execute("DELETE FROM transactions WHERE transactional_id = ANY($1)", &[&transactional_ids])
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)
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
        self.with_reader(|c| {
            let rows = c
                .query(
                    "SELECT producer_id, first_offset FROM aborted_txns WHERE topic_id = $1 AND partition = $2 \
                     AND last_offset >= $3 AND first_offset < $4 ORDER BY first_offset LIMIT $5",
                    &[&topic_id.as_bytes().as_slice(), &partition, &from_offset, &to_offset, &i64::from(limit)],
                )
                .map_err(unavailable)?;
            rows.iter()
                .map(|r| Ok((col(r, 0)?, col(r, 1)?)))
                .collect()
        })
    }

    fn doom_uncommitted(&self, keys: &[String], now_ms: i64) -> Result<Vec<bool>, StoreError> {
        self.with_writer(|c| {
            let mut tx = c.transaction().map_err(unavailable)?;
            self.check_fence(&mut tx)?;
            let mut doomed = Vec::with_capacity(keys.len());
            for key in keys {
                // Locks the key against a concurrent commit of it (which inserts into objects
                // after checking orphans): whichever transaction comes second sees the first.
                tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[key]).map_err(unavailable)?;
                let committed = tx.query_opt("SELECT 1 FROM objects WHERE key = $1", &[key]).map_err(unavailable)?.is_some();
                if !committed {
                    tx.execute(
                        "INSERT INTO orphans (key, doomed_ms) VALUES ($1, $2) ON CONFLICT DO NOTHING",
                        &[key, &now_ms],
                    )
                    .map_err(unavailable)?;
                }
                doomed.push(!committed);
            }
            tx.commit().map_err(unavailable)?;
            Ok(doomed)
        })
    }

    fn allocate_producer_id(&self) -> Result<i64, StoreError> {
        self.with_writer(|c| {
            let r = c
                .query_one(
                    "INSERT INTO meta (key, value) VALUES ('next_producer_id', '1') ON CONFLICT (key) \
                     DO UPDATE SET value = (meta.value::BIGINT + 1)::TEXT RETURNING value::BIGINT - 1",
                    &[],
                )
                .map_err(unavailable)?;
            col(&r, 0)
        })
    }

    fn expire_producers(&self, before_ms: i64) -> Result<(), StoreError> {
        self.with_writer(|c| {
            let mut tx = c.transaction().map_err(unavailable)?;
            self.check_fence(&mut tx)?;
            tx.execute(
                "DELETE FROM producer_states p WHERE p.last_seen_ms < $1 AND NOT EXISTS (SELECT 1 FROM open_txns o \
                 WHERE o.topic_id = p.topic_id AND o.partition = p.partition AND o.producer_id = p.producer_id)",
                &[&before_ms],
            )
            .map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
    }

    fn wal_mark(&self, log_id: &str) -> Result<u64, StoreError> {
        self.with_reader(|c| {
            let mark = c
                .query_opt("SELECT entry_id FROM wal_marks WHERE log_id = $1", &[&log_id])
                .map_err(unavailable)?
                .map(|r| r.try_get::<_, i64>(0).map_err(unavailable))
                .transpose()?;
            Ok(mark.unwrap_or(0).max(0) as u64)
        })
    }

    fn register_agent(&self, name: &str) -> Result<u64, StoreError> {
        self.with_writer(|c| {
            let r = c
                .query_one(
                    "INSERT INTO agents (name, epoch) VALUES ($1, 1) ON CONFLICT (name) \
                     DO UPDATE SET epoch = agents.epoch + 1 RETURNING epoch",
                    &[&name],
                )
                .map_err(unavailable)?;
            Ok(r.try_get::<_, i64>(0).map_err(unavailable)? as u64)
        })
    }

    fn find_extents(&self, topic_id: Uuid, partition: i32, from_offset: i64, limit: u32) -> Result<Vec<ExtentRecord>, StoreError> {
        self.with_reader(|c| {
            let rows = c
                .query(
                    &format!(
                        "{EXTENT_SELECT} WHERE e.topic_id = $1 AND e.partition = $2 AND e.end_offset > $3 \
                         ORDER BY e.base_offset LIMIT $4"
                    ),
                    &[&topic_id.as_bytes().as_slice(), &partition, &from_offset, &i64::from(limit)],
                )
                .map_err(unavailable)?;
            rows.iter().map(extent_row).collect()
        })
    }

    fn first_extent_at_or_after(&self, topic_id: Uuid, partition: i32, timestamp: i64) -> Result<Option<ExtentRecord>, StoreError> {
        self.with_reader(|c| {
            c.query_opt(
                &format!(
                    "{EXTENT_SELECT} WHERE e.topic_id = $1 AND e.partition = $2 AND e.max_timestamp >= $3 \
                     ORDER BY e.base_offset LIMIT 1"
                ),
                &[&topic_id.as_bytes().as_slice(), &partition, &timestamp],
            )
            .map_err(unavailable)?
            .as_ref()
            .map(extent_row)
            .transpose()
        })
    }

    fn extent_with_max_timestamp(&self, topic_id: Uuid, partition: i32) -> Result<Option<ExtentRecord>, StoreError> {
        self.with_reader(|c| {
            c.query_opt(
                &format!(
                    "{EXTENT_SELECT} WHERE e.topic_id = $1 AND e.partition = $2 \
                     ORDER BY e.max_timestamp DESC, e.base_offset ASC LIMIT 1"
                ),
                &[&topic_id.as_bytes().as_slice(), &partition],
            )
            .map_err(unavailable)?
            .as_ref()
            .map(extent_row)
            .transpose()
        })
    }

    fn load_group_offsets(&self) -> Result<Vec<GroupOffsetRecord>, StoreError> {
        self.with_reader(|c| {
            let rows = c
                .query(
                    "SELECT group_id, topic, partition, committed_offset, leader_epoch, metadata, commit_ms FROM group_offsets",
                    &[],
                )
                .map_err(unavailable)?;
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
        self.with_writer(|c| {
            let mut tx = c.transaction().map_err(unavailable)?;
            self.check_fence(&mut tx)?;
            let upsert = tx.prepare(GROUP_OFFSET_UPSERT).map_err(unavailable)?;
            for o in offsets {
                tx.execute(&upsert, &[&o.group_id, &o.topic, &o.partition, &o.offset, &o.leader_epoch, &o.metadata, &o.commit_ms])
                    .map_err(unavailable)?;
            }
            tx.commit().map_err(unavailable)
        })
    }

    fn delete_group_offsets(&self, group_id: &str, partitions: Option<&[(String, i32)]>) -> Result<(), StoreError> {
        self.with_writer(|c| {
            let mut tx = c.transaction().map_err(unavailable)?;
            self.check_fence(&mut tx)?;
            match partitions {
                None => {
                    tx.execute("DELETE FROM group_offsets WHERE group_id = $1", &[&group_id]).map_err(unavailable)?;
                }
                Some(ps) => {
                    for (t, p) in ps {
                        tx.execute(
                            "DELETE FROM group_offsets WHERE group_id = $1 AND topic = $2 AND partition = $3",
                            &[&group_id, t, p],
                        )
                        .map_err(unavailable)?;
                    }
                }
            }
            tx.commit().map_err(unavailable)
        })
    }
}

/// Inserts or replaces one group offset: group, topic, partition, offset, leader epoch,
/// metadata, commit time.
const GROUP_OFFSET_UPSERT: &str = "INSERT INTO group_offsets \
     (group_id, topic, partition, committed_offset, leader_epoch, metadata, commit_ms) \
     VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (group_id, topic, partition) DO UPDATE SET \
     committed_offset = excluded.committed_offset, leader_epoch = excluded.leader_epoch, \
     metadata = excluded.metadata, commit_ms = excluded.commit_ms";

fn upsert_transaction(tx: &mut Transaction<'_>, transactional_id: &str, body: &str) -> Result<(), StoreError> {
    tx.execute(
        "INSERT INTO transactions (transactional_id, body) VALUES ($1, $2) \
         ON CONFLICT (transactional_id) DO UPDATE SET body = excluded.body",
        &[&transactional_id, &body],
    )
    .map_err(unavailable)?;
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
            insert: tx
                .prepare(
                    "INSERT INTO extents (topic_id, partition, base_offset, end_offset, object_key, position, length, \
                     batch_count, max_timestamp) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
                )
                .map_err(unavailable)?,
            advance: tx
                .prepare("UPDATE partitions SET next_offset = $4 WHERE topic_id = $1 AND partition = $2 AND next_offset = $3")
                .map_err(unavailable)?,
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
    tx.execute("SELECT pg_advisory_xact_lock(hashtext($1))", &[&o.key]).map_err(unavailable)?;
    if tx.query_opt("SELECT 1 FROM orphans WHERE key = $1", &[&o.key]).map_err(unavailable)?.is_some() {
        return Err(StoreError::Conflict(format!("object {} was collected as an orphan", o.key)));
    }
    let inserted = tx.execute(
        "INSERT INTO objects (key, size_bytes, agent, committed_ms) VALUES ($1, $2, $3, $4)",
        &[&o.key, &(o.size_bytes as i64), &o.agent, &o.committed_ms],
    );
    match inserted {
        Ok(_) => {}
        Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
            return Err(StoreError::Stale(format!("object {} is already committed", o.key)));
        }
        Err(e) => return Err(unavailable(e)),
    }
    let Statements { insert, advance } = statements;
    for e in extents {
        let id = e.topic_id.as_bytes().as_slice();
        let moved = tx.execute(advance, &[&id, &e.partition, &e.base_offset, &e.end_offset]).map_err(unavailable)?;
        if moved != 1 {
            return Err(StoreError::Stale(format!(
                "partition {}-{} is no longer at offset {}: another writer committed",
                e.topic_id, e.partition, e.base_offset
            )));
        }
        tx.execute(
            insert,
            &[
                &id,
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
        .map_err(unavailable)?;
    }
    for ((pid, topic, partition), state) in producers {
        tx.execute(
            "INSERT INTO producer_states (producer_id, topic_id, partition, epoch, batches, last_seen_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (producer_id, topic_id, partition) DO UPDATE SET \
             epoch = excluded.epoch, batches = excluded.batches, last_seen_ms = excluded.last_seen_ms",
            &[pid, &topic.as_bytes().as_slice(), partition, &state.epoch, &encode_batches(&state.batches), &state.last_seen_ms],
        )
        .map_err(unavailable)?;
    }
    for o in &txn.opened {
        tx.execute(
            "INSERT INTO open_txns (topic_id, partition, producer_id, first_offset) VALUES ($1, $2, $3, $4) \
             ON CONFLICT DO NOTHING",
            &[&o.topic_id.as_bytes().as_slice(), &o.partition, &o.producer_id, &o.first_offset],
        )
        .map_err(unavailable)?;
    }
    for o in &txn.closed {
        tx.execute(
            "DELETE FROM open_txns WHERE topic_id = $1 AND partition = $2 AND producer_id = $3",
            &[&o.topic_id.as_bytes().as_slice(), &o.partition, &o.producer_id],
        )
        .map_err(unavailable)?;
    }
    for a in &txn.aborted {
        tx.execute(
            "INSERT INTO aborted_txns (topic_id, partition, last_offset, producer_id, first_offset) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (topic_id, partition, last_offset) DO UPDATE SET \
             producer_id = excluded.producer_id, first_offset = excluded.first_offset",
            &[&a.topic_id.as_bytes().as_slice(), &a.partition, &a.last_offset, &a.producer_id, &a.first_offset],
        )
        .map_err(unavailable)?;
    }
    if let Some((id, body)) = &txn.transaction {
        upsert_transaction(tx, id, body)?;
    }
    for o in &txn.group_offsets {
        tx.execute(
            GROUP_OFFSET_UPSERT,
            &[&o.group_id, &o.topic, &o.partition, &o.offset, &o.leader_epoch, &o.metadata, &o.commit_ms],
        )
        .map_err(unavailable)?;
    }
    if let Some(w) = wal {
        tx.execute(
            "INSERT INTO wal_marks (log_id, entry_id) VALUES ($1, $2) \
             ON CONFLICT (log_id) DO UPDATE SET entry_id = greatest(wal_marks.entry_id, excluded.entry_id)",
            &[&w.log_id, &(w.entry_id as i64)],
        )
        .map_err(unavailable)?;
    }
    Ok(())
}
