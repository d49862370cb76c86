//! The embedded metadata store: one SQLite file, WAL journal, `synchronous=FULL` (a commit that
//! returned is on disk). Every write goes through the writer thread and its connection
//! ([`super::conn::Writer`], a bounded queue); index lookups go through a small pool of reader
//! connections, so they do not wait behind a commit's fsync (WAL readers see the last commit).
//! A connection waits for a lock up to `busy_timeout` (the store's statement timeout), then the
//! call fails as retriable.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use rusqlite::{Connection, OptionalExtension, params};
use uuid::Uuid;

use crate::api::acl::AclBinding;
use crate::api::client_metrics::ClientMetricsResource;
use crate::api::scram::{ScramCredential, ScramMechanism};
use crate::api::{ExtentRecord, WalMark};
use crate::controller::producers::ProducerKey;
use crate::controller::producers::{ProducerState, decode_batches, encode_batches};

use super::conn::{Open, ReadPool, STORE_WRITE_QUEUE_MAX, Slot, Writer};
use super::{
    GroupOffsetRecord, LogStartMove, MetadataStore, ObjectCommit, ObjectRecord, OpenTxnRecord, PartitionRecord, PartitionSize,
    SharePartitionRecord, Snapshot, StoreError, StoreSettings, StoredObjects, TopicRecord, TxnEffects, owned_commits,
};

/// Version 1: topics, partitions, objects, extents. Version 2: group offsets. Version 3: agent
/// epochs. Version 4: transactions, open transactions per partition, the aborted transaction
/// index. Version 5: garbage objects (no extent references them), orphan marks by time. Version 6: SCRAM
/// credentials, ACLs, client quotas (the security tables).
const SCHEMA_VERSION: i32 = 8;

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS topics (
    id BLOB PRIMARY KEY, name TEXT NOT NULL UNIQUE, partitions INTEGER NOT NULL,
    created_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS topic_configs (
    topic_id BLOB NOT NULL, key TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (topic_id, key));
CREATE TABLE IF NOT EXISTS partitions (
    topic_id BLOB NOT NULL, partition INTEGER NOT NULL, log_start_offset INTEGER NOT NULL,
    next_offset INTEGER NOT NULL, PRIMARY KEY (topic_id, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    key TEXT PRIMARY KEY, size_bytes INTEGER NOT NULL, agent TEXT NOT NULL,
    committed_ms INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS extents (
    topic_id BLOB NOT NULL, partition INTEGER NOT NULL, base_offset INTEGER NOT NULL,
    end_offset INTEGER NOT NULL, object_key TEXT NOT NULL, position INTEGER NOT NULL,
    length INTEGER NOT NULL, batch_count INTEGER NOT NULL, max_timestamp INTEGER NOT NULL,
    PRIMARY KEY (topic_id, partition, base_offset)) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS extents_by_object ON extents (object_key);
CREATE TABLE IF NOT EXISTS wal_marks (log_id TEXT PRIMARY KEY, entry_id INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS producer_states (
    producer_id INTEGER NOT NULL, topic_id BLOB NOT NULL, partition INTEGER NOT NULL,
    epoch INTEGER NOT NULL, batches TEXT NOT NULL, last_seen_ms INTEGER NOT NULL,
    PRIMARY KEY (producer_id, topic_id, partition)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS orphans (key TEXT PRIMARY KEY, doomed_ms INTEGER NOT NULL);
";

/// Migrations from version N-1 to N, applied in order to older files (`user_version`). Each is
/// idempotent and only adds, so data written by older versions stays readable.
const MIGRATIONS: &[(i32, &str)] = &[
    (
        2,
        "CREATE TABLE IF NOT EXISTS group_offsets (
            group_id TEXT NOT NULL, topic TEXT NOT NULL, partition INTEGER NOT NULL,
            committed_offset INTEGER NOT NULL, leader_epoch INTEGER NOT NULL, metadata TEXT NOT NULL,
            commit_ms INTEGER NOT NULL, PRIMARY KEY (group_id, topic, partition)) WITHOUT ROWID;",
    ),
    (3, "CREATE TABLE IF NOT EXISTS agents (name TEXT PRIMARY KEY, epoch INTEGER NOT NULL);"),
    (
        4,
        "CREATE TABLE IF NOT EXISTS transactions (transactional_id TEXT PRIMARY KEY, body TEXT NOT NULL);
        CREATE TABLE IF NOT EXISTS open_txns (
            topic_id BLOB NOT NULL, partition INTEGER NOT NULL, producer_id INTEGER NOT NULL,
            first_offset INTEGER NOT NULL, PRIMARY KEY (topic_id, partition, producer_id)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS aborted_txns (
            topic_id BLOB NOT NULL, partition INTEGER NOT NULL, last_offset INTEGER NOT NULL,
            producer_id INTEGER NOT NULL, first_offset INTEGER NOT NULL,
            PRIMARY KEY (topic_id, partition, last_offset)) WITHOUT ROWID;",
    ),
    (
        5,
        "CREATE TABLE IF NOT EXISTS garbage (key TEXT PRIMARY KEY, since_ms INTEGER NOT NULL);
        CREATE INDEX IF NOT EXISTS garbage_by_time ON garbage (since_ms);
        CREATE INDEX IF NOT EXISTS orphans_by_time ON orphans (doomed_ms);",
    ),
    (
        6,
        "CREATE TABLE IF NOT EXISTS scram_credentials (
            username TEXT NOT NULL, mechanism TEXT NOT NULL, salt BLOB NOT NULL, stored_key BLOB NOT NULL,
            server_key BLOB NOT NULL, iterations INTEGER NOT NULL, PRIMARY KEY (username, mechanism)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS acls (
            resource_type INTEGER NOT NULL, resource_name TEXT NOT NULL, pattern_type INTEGER NOT NULL,
            principal TEXT NOT NULL, host TEXT NOT NULL, operation INTEGER NOT NULL, permission INTEGER NOT NULL,
            PRIMARY KEY (resource_type, resource_name, pattern_type, principal, host, operation, permission)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS client_quotas (
            entity TEXT NOT NULL, quota_key TEXT NOT NULL, value REAL NOT NULL,
            PRIMARY KEY (entity, quota_key)) WITHOUT ROWID;",
    ),
    (
        7,
        "CREATE TABLE IF NOT EXISTS share_partitions (
            group_id TEXT NOT NULL, topic_id BLOB NOT NULL, partition INTEGER NOT NULL, body TEXT NOT NULL,
            PRIMARY KEY (group_id, topic_id, partition)) WITHOUT ROWID;
        CREATE TABLE IF NOT EXISTS group_configs (
            group_id TEXT NOT NULL, name TEXT NOT NULL, value TEXT NOT NULL, PRIMARY KEY (group_id, name)) WITHOUT ROWID;",
    ),
    (8, "CREATE TABLE IF NOT EXISTS client_metrics (name TEXT PRIMARY KEY, configs TEXT NOT NULL);"),
];

pub struct SqliteStore {
    writer: Writer<Connection>,
    readers: ReadPool<Connection>,
}

/// Sorts an SQLite error by what the caller must do (see [`StoreError`]).
fn classify(e: rusqlite::Error) -> StoreError {
    use rusqlite::Error as E;
    use rusqlite::ErrorCode as Code;
    match &e {
        E::SqliteFailure(f, _) => match f.code {
            Code::DatabaseBusy
            | Code::DatabaseLocked
            | Code::SystemIoFailure
            | Code::DiskFull
            | Code::CannotOpen
            | Code::OutOfMemory
            | Code::FileLockingProtocolFailed
            | Code::SchemaChanged => StoreError::retry(e),
            Code::ConstraintViolation
                if matches!(f.extended_code, rusqlite::ffi::SQLITE_CONSTRAINT_UNIQUE | rusqlite::ffi::SQLITE_CONSTRAINT_PRIMARYKEY) =>
            {
                StoreError::Conflict(super::chain(&e))
            }
            Code::ConstraintViolation | Code::TooBig | Code::ParameterOutOfRange => StoreError::Invalid { source: e.into() },
            Code::DatabaseCorrupt | Code::NotADatabase => StoreError::corrupt("the SQLite file is damaged", Some(e.into())),
            _ => StoreError::internal("SQLite", Some(e.into())),
        },
        E::FromSqlConversionFailure(..) | E::IntegralValueOutOfRange(..) | E::InvalidColumnType(..) | E::Utf8Error(..) => {
            StoreError::corrupt("a stored value cannot be read", Some(e.into()))
        }
        _ => StoreError::internal("SQLite", Some(e.into())),
    }
}

/// Every row of `sql` (no parameters), mapped by `row`.
fn select_all<T>(
    c: &Connection,
    sql: &str,
    row: impl FnMut(&rusqlite::Row<'_>) -> Result<T, rusqlite::Error>,
) -> Result<Vec<T>, StoreError> {
    let mut stmt = c.prepare(sql).map_err(classify)?;
    let rows = stmt.query_map([], row).map_err(classify)?;
    rows.collect::<Result<Vec<_>, _>>().map_err(classify)
}

fn uuid_from(blob: Vec<u8>) -> Result<Uuid, rusqlite::Error> {
    Uuid::from_slice(&blob).map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, Box::new(e)))
}

impl SqliteStore {
    /// Opens (creating or migrating) the file with the default [`StoreSettings`].
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        Self::open_with(path, &StoreSettings::default())
    }

    pub fn open_with(path: &Path, settings: &StoreSettings) -> Result<Self, StoreError> {
        let file = path.to_path_buf();
        let busy = Duration::from_millis(settings.statement_timeout_ms);
        let open: Open<Connection> = Arc::new(move || connect(&file, busy).map_err(classify));
        let writer = Writer::start("sqlite-writer", Slot::new(open.clone(), |_| false), STORE_WRITE_QUEUE_MAX)?;
        let file = path.to_path_buf();
        writer.call(move |c| migrate(c, &file))?;
        Ok(Self { writer, readers: ReadPool::new(open, |_| false, settings.read_connections) })
    }
}

fn connect(path: &Path, busy: Duration) -> rusqlite::Result<Connection> {
    let c = Connection::open(path)?;
    c.busy_timeout(busy)?;
    c.pragma_update(None, "journal_mode", "WAL")?;
    c.pragma_update(None, "synchronous", "FULL")?;
    Ok(c)
}

/// Brings the file's schema to this binary's version (`user_version`).
fn migrate(c: &mut Connection, path: &Path) -> Result<(), StoreError> {
    let version: i32 = c.pragma_query_value(None, "user_version", |r| r.get(0)).map_err(classify)?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::corrupt(
            format!("{} has schema version {version}, newer than this binary's {SCHEMA_VERSION}", path.display()),
            None,
        ));
    }
    c.execute_batch(SCHEMA).map_err(classify)?;
    for (to, sql) in MIGRATIONS {
        if version < *to {
            c.execute_batch(sql).map_err(classify)?;
        }
    }
    c.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(classify)
}

const EXTENT_COLUMNS: &str = "topic_id, partition, base_offset, end_offset, object_key, position, length, batch_count, max_timestamp";
/// Extents with their object's size.
const EXTENT_SELECT: &str = "SELECT extents.topic_id, extents.partition, extents.base_offset, extents.end_offset, \
     extents.object_key, extents.position, extents.length, extents.batch_count, extents.max_timestamp, \
     objects.size_bytes FROM extents JOIN objects ON objects.key = extents.object_key";

fn extent_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ExtentRecord> {
    Ok(ExtentRecord {
        topic_id: uuid_from(r.get(0)?)?,
        partition: r.get(1)?,
        base_offset: r.get(2)?,
        end_offset: r.get(3)?,
        object_key: Arc::from(r.get::<_, String>(4)?),
        position: r.get::<_, i64>(5)? as u64,
        length: r.get::<_, i64>(6)? as u64,
        batch_count: r.get::<_, i64>(7)? as u32,
        max_timestamp: r.get(8)?,
        object_size: r.get::<_, i64>(9)? as u64,
    })
}

impl MetadataStore for SqliteStore {
    fn load(&self, new_cluster_id: &str) -> Result<Snapshot, StoreError> {
        let new_cluster_id = new_cluster_id.to_string();
        self.writer.call(move |c| {
            c.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('cluster_id', ?1)", [&new_cluster_id])
                .map_err(classify)?;
            let cluster_id: String = c.query_row("SELECT value FROM meta WHERE key = 'cluster_id'", [], |r| r.get(0)).map_err(classify)?;
            let mut configs: BTreeMap<Uuid, BTreeMap<String, String>> = BTreeMap::new();
            let mut stmt = c.prepare("SELECT topic_id, key, value FROM topic_configs").map_err(classify)?;
            let rows = stmt
                .query_map([], |r| Ok((uuid_from(r.get(0)?)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))
                .map_err(classify)?;
            for row in rows {
                let (id, k, v) = row.map_err(classify)?;
                configs.entry(id).or_default().insert(k, v);
            }
            let mut stmt = c.prepare("SELECT id, name, partitions, created_ms FROM topics").map_err(classify)?;
            let topics = stmt
                .query_map([], |r| {
                    Ok(TopicRecord {
                        id: uuid_from(r.get(0)?)?,
                        name: r.get(1)?,
                        partitions: r.get(2)?,
                        configs: BTreeMap::new(),
                        created_ms: r.get(3)?,
                    })
                })
                .map_err(classify)?
                .map(|t| {
                    t.map(|mut t| {
                        t.configs = configs.remove(&t.id).unwrap_or_default();
                        t
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map_err(classify)?;
            let partitions = select_all(c, "SELECT topic_id, partition, log_start_offset, next_offset FROM partitions", |r| {
                Ok(PartitionRecord {
                    topic_id: uuid_from(r.get(0)?)?,
                    partition: r.get(1)?,
                    log_start_offset: r.get(2)?,
                    next_offset: r.get(3)?,
                })
            })?;
            let producers =
                select_all(c, "SELECT producer_id, topic_id, partition, epoch, batches, last_seen_ms FROM producer_states", |r| {
                    let batches: String = r.get(4)?;
                    Ok((
                        (r.get::<_, i64>(0)?, uuid_from(r.get(1)?)?, r.get::<_, i32>(2)?),
                        ProducerState { epoch: r.get(3)?, batches: decode_batches(&batches).unwrap_or_default(), last_seen_ms: r.get(5)? },
                    ))
                })?;
            let transactions =
                select_all(c, "SELECT transactional_id, body FROM transactions", |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
            let open_txns = select_all(c, "SELECT topic_id, partition, producer_id, first_offset FROM open_txns", |r| {
                Ok(OpenTxnRecord { topic_id: uuid_from(r.get(0)?)?, partition: r.get(1)?, producer_id: r.get(2)?, first_offset: r.get(3)? })
            })?;
            Ok(Snapshot { cluster_id, topics, partitions, producers, transactions, open_txns })
        })
    }

    fn create_topic(&self, t: &TopicRecord) -> Result<(), StoreError> {
        let t = t.clone();
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            let inserted = tx.execute(
                "INSERT INTO topics (id, name, partitions, created_ms) VALUES (?1, ?2, ?3, ?4)",
                params![t.id.as_bytes().as_slice(), t.name, t.partitions, t.created_ms],
            );
            match inserted {
                Ok(_) => {}
                Err(rusqlite::Error::SqliteFailure(e, msg)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
                    return Err(StoreError::Conflict(msg.unwrap_or_else(|| format!("topic {} exists", t.name))));
                }
                Err(e) => return Err(classify(e)),
            }
            for (k, v) in &t.configs {
                tx.execute(
                    "INSERT INTO topic_configs (topic_id, key, value) VALUES (?1, ?2, ?3)",
                    params![t.id.as_bytes().as_slice(), k, v],
                )
                .map_err(classify)?;
            }
            for p in 0..t.partitions {
                tx.execute(
                    "INSERT INTO partitions (topic_id, partition, log_start_offset, next_offset) VALUES (?1, ?2, 0, 0)",
                    params![t.id.as_bytes().as_slice(), p],
                )
                .map_err(classify)?;
            }
            tx.commit().map_err(classify)
        })
    }

    fn add_partitions(&self, topic_id: Uuid, from: i32, to: i32) -> Result<(), StoreError> {
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            let id = topic_id.as_bytes().as_slice();
            let moved = tx
                .execute("UPDATE topics SET partitions = ?3 WHERE id = ?1 AND partitions = ?2", params![id, from, to])
                .map_err(classify)?;
            if moved == 0 {
                return Err(StoreError::Stale(format!("topic {topic_id} does not have {from} partitions")));
            }
            {
                let mut insert = tx
                    .prepare_cached("INSERT INTO partitions (topic_id, partition, log_start_offset, next_offset) VALUES (?1, ?2, 0, 0)")
                    .map_err(classify)?;
                for p in from..to {
                    insert.execute(params![id, p]).map_err(classify)?;
                }
            }
            tx.commit().map_err(classify)
        })
    }

    fn set_topic_configs(&self, topics: &[(Uuid, BTreeMap<String, String>)]) -> Result<(), StoreError> {
        let topics = topics.to_vec();
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            for (id, configs) in &topics {
                let id = id.as_bytes().as_slice();
                tx.execute("DELETE FROM topic_configs WHERE topic_id = ?1", [id]).map_err(classify)?;
                for (k, v) in configs {
                    tx.execute(
                        "INSERT INTO topic_configs (topic_id, key, value) SELECT id, ?2, ?3 FROM topics WHERE id = ?1",
                        params![id, k, v],
                    )
                    .map_err(classify)?;
                }
            }
            tx.commit().map_err(classify)
        })
    }

    fn delete_topic(&self, id: Uuid, name: &str, now_ms: i64) -> Result<(), StoreError> {
        let name = name.to_string();
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            let id = id.as_bytes().as_slice();
            let keys = {
                let mut stmt = tx.prepare("SELECT DISTINCT object_key FROM extents WHERE topic_id = ?1").map_err(classify)?;
                let rows = stmt.query_map([id], |r| r.get::<_, String>(0)).map_err(classify)?;
                rows.collect::<Result<Vec<_>, _>>().map_err(classify)?
            };
            for table in ["topic_configs", "partitions", "extents", "producer_states", "open_txns", "aborted_txns", "share_partitions"] {
                tx.execute(&format!("DELETE FROM {table} WHERE topic_id = ?1"), [id]).map_err(classify)?;
            }
            tx.execute("DELETE FROM topics WHERE id = ?1", [id]).map_err(classify)?;
            tx.execute("DELETE FROM group_offsets WHERE topic = ?1", [&name]).map_err(classify)?;
            release_objects(&tx, &keys, now_ms)?;
            tx.commit().map_err(classify)
        })
    }

    fn advance_log_starts(&self, moves: &[LogStartMove], now_ms: i64) -> Result<(), StoreError> {
        let moves = moves.to_vec();
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            let mut keys = Vec::new();
            {
                let mut advance = tx
                    .prepare_cached(
                        "UPDATE partitions SET log_start_offset = ?3 WHERE topic_id = ?1 AND partition = ?2 AND log_start_offset < ?3",
                    )
                    .map_err(classify)?;
                let mut drop_extents = tx
                    .prepare_cached("DELETE FROM extents WHERE topic_id = ?1 AND partition = ?2 AND end_offset <= ?3 RETURNING object_key")
                    .map_err(classify)?;
                let mut drop_aborted = tx
                    .prepare_cached("DELETE FROM aborted_txns WHERE topic_id = ?1 AND partition = ?2 AND last_offset < ?3")
                    .map_err(classify)?;
                for m in &moves {
                    let args = params![m.topic_id.as_bytes().as_slice(), m.partition, m.log_start_offset];
                    if advance.execute(args).map_err(classify)? == 0 {
                        continue;
                    }
                    let rows = drop_extents.query_map(args, |r| r.get::<_, String>(0)).map_err(classify)?;
                    for k in rows {
                        keys.push(k.map_err(classify)?);
                    }
                    drop_aborted.execute(args).map_err(classify)?;
                }
            }
            keys.sort_unstable();
            keys.dedup();
            release_objects(&tx, &keys, now_ms)?;
            tx.commit().map_err(classify)
        })
    }

    fn garbage(&self, before_ms: i64, limit: u32) -> Result<Vec<String>, StoreError> {
        self.readers.with(|c| {
            let mut stmt = c
                .prepare_cached("SELECT key FROM garbage WHERE since_ms <= ?1 ORDER BY since_ms, key LIMIT ?2")
                .map_err(classify)?;
            let rows = stmt.query_map(params![before_ms, i64::from(limit)], |r| r.get::<_, String>(0)).map_err(classify)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(classify)
        })
    }

    fn forget_objects(&self, keys: &[(String, bool)], now_ms: i64, marks_before_ms: i64) -> Result<(), StoreError> {
        let keys = keys.to_vec();
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            {
                let mut unmark = tx.prepare_cached("DELETE FROM garbage WHERE key = ?1").map_err(classify)?;
                let mut forget = tx.prepare_cached("DELETE FROM objects WHERE key = ?1").map_err(classify)?;
                let mut mark = tx
                    .prepare_cached("INSERT INTO orphans (key, doomed_ms) VALUES (?1, ?2) ON CONFLICT (key) DO UPDATE SET doomed_ms = ?2")
                    .map_err(classify)?;
                for (key, keep_mark) in &keys {
                    if unmark.execute([key]).map_err(classify)? == 1 {
                        forget.execute([key]).map_err(classify)?;
                        if *keep_mark {
                            mark.execute(params![key, now_ms]).map_err(classify)?;
                        }
                    }
                }
            }
            tx.execute("DELETE FROM orphans WHERE doomed_ms < ?1", [marks_before_ms]).map_err(classify)?;
            tx.commit().map_err(classify)
        })
    }

    fn partition_sizes(&self) -> Result<Vec<PartitionSize>, StoreError> {
        self.readers.with(|c| {
            select_all(c, "SELECT topic_id, partition, SUM(length), COUNT(*) FROM extents GROUP BY topic_id, partition", |r| {
                Ok(PartitionSize {
                    topic_id: uuid_from(r.get(0)?)?,
                    partition: r.get(1)?,
                    bytes: r.get::<_, i64>(2)?.max(0) as u64,
                    extents: r.get::<_, i64>(3)?.max(0) as u64,
                })
            })
        })
    }

    fn stored_objects(&self) -> Result<StoredObjects, StoreError> {
        self.readers.with(|c| {
            c.query_row(
                "SELECT COUNT(*), COALESCE(SUM(size_bytes), 0), COUNT(garbage.key), \
                 COALESCE(SUM(CASE WHEN garbage.key IS NULL THEN 0 ELSE size_bytes END), 0) \
                 FROM objects LEFT JOIN garbage ON garbage.key = objects.key",
                [],
                |r| {
                    let n = |i: usize| r.get::<_, i64>(i).map(|v| v.max(0) as u64);
                    Ok(StoredObjects { objects: n(0)?, bytes: n(1)?, garbage_objects: n(2)?, garbage_bytes: n(3)? })
                },
            )
            .map_err(classify)
        })
    }

    fn committed_extents(&self, object_key: &str) -> Result<Option<Vec<ExtentRecord>>, StoreError> {
        self.readers.with(|c| {
            let exists: Option<i64> =
                c.query_row("SELECT 1 FROM objects WHERE key = ?1", [object_key], |r| r.get(0)).optional().map_err(classify)?;
            if exists.is_none() {
                return Ok(None);
            }
            let mut stmt = c
                .prepare_cached(&format!("{EXTENT_SELECT} WHERE extents.object_key = ?1 ORDER BY extents.position"))
                .map_err(classify)?;
            let rows = stmt.query_map([object_key], extent_row).map_err(classify)?;
            Ok(Some(rows.collect::<Result<Vec<_>, _>>().map_err(classify)?))
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

    fn commit_objects(&self, commits: &[ObjectCommit<'_>]) -> Result<(), StoreError> {
        let commits = owned_commits(commits);
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            for (o, extents, wal, producers, txn) in &commits {
                commit_in(&tx, o, extents, wal.as_ref(), producers, txn)?;
            }
            tx.commit().map_err(classify)
        })
    }

    fn register_agent(&self, name: &str) -> Result<u64, StoreError> {
        let name = name.to_string();
        self.writer.call(move |c| {
            let epoch: i64 = c
                .query_row(
                    "INSERT INTO agents (name, epoch) VALUES (?1, 1) \
                     ON CONFLICT (name) DO UPDATE SET epoch = epoch + 1 RETURNING epoch",
                    [&name],
                    |r| r.get(0),
                )
                .map_err(classify)?;
            Ok(epoch as u64)
        })
    }

    fn put_transaction(&self, transactional_id: &str, body: &str) -> Result<(), StoreError> {
        let (transactional_id, body) = (transactional_id.to_string(), body.to_string());
        self.writer.call(move |c| {
            c.execute("INSERT OR REPLACE INTO transactions (transactional_id, body) VALUES (?1, ?2)", params![transactional_id, body])
                .map_err(classify)?;
            Ok(())
        })
    }

    fn delete_transactions(&self, transactional_ids: &[String]) -> Result<(), StoreError> {
        let transactional_ids = transactional_ids.to_vec();
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            {
                let mut delete = tx.prepare_cached("DELETE FROM transactions WHERE transactional_id = ?1").map_err(classify)?;
                for id in &transactional_ids {
                    delete.execute([id]).map_err(classify)?;
                }
            }
            tx.commit().map_err(classify)
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
            let mut stmt = c
                .prepare_cached(
                    "SELECT producer_id, first_offset FROM aborted_txns WHERE topic_id = ?1 AND partition = ?2 \
                     AND last_offset >= ?3 AND first_offset < ?4 ORDER BY first_offset LIMIT ?5",
                )
                .map_err(classify)?;
            let rows = stmt
                .query_map(params![topic_id.as_bytes().as_slice(), partition, from_offset, to_offset, limit], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .map_err(classify)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(classify)
        })
    }

    fn doom_uncommitted(&self, keys: &[String], now_ms: i64) -> Result<Vec<bool>, StoreError> {
        let keys = keys.to_vec();
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            let mut doomed = Vec::with_capacity(keys.len());
            {
                let mut committed = tx.prepare_cached("SELECT 1 FROM objects WHERE key = ?1").map_err(classify)?;
                let mut doom = tx.prepare_cached("INSERT OR IGNORE INTO orphans (key, doomed_ms) VALUES (?1, ?2)").map_err(classify)?;
                for key in &keys {
                    let is_committed = committed.exists([key]).map_err(classify)?;
                    if !is_committed {
                        doom.execute(params![key, now_ms]).map_err(classify)?;
                    }
                    doomed.push(!is_committed);
                }
            }
            tx.commit().map_err(classify)?;
            Ok(doomed)
        })
    }

    fn allocate_producer_id(&self) -> Result<i64, StoreError> {
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            tx.execute("INSERT OR IGNORE INTO meta (key, value) VALUES ('next_producer_id', '0')", []).map_err(classify)?;
            let id: i64 = tx
                .query_row("SELECT CAST(value AS INTEGER) FROM meta WHERE key = 'next_producer_id'", [], |r| r.get(0))
                .map_err(classify)?;
            tx.execute("UPDATE meta SET value = CAST(?1 AS TEXT) WHERE key = 'next_producer_id'", [id + 1]).map_err(classify)?;
            tx.commit().map_err(classify)?;
            Ok(id)
        })
    }

    fn expire_producers(&self, before_ms: i64) -> Result<(), StoreError> {
        self.writer.call(move |c| {
            c.execute(
                "DELETE FROM producer_states WHERE last_seen_ms < ?1 AND NOT EXISTS (SELECT 1 FROM open_txns o \
                 WHERE o.topic_id = producer_states.topic_id AND o.partition = producer_states.partition \
                 AND o.producer_id = producer_states.producer_id)",
                [before_ms],
            )
            .map_err(classify)?;
            Ok(())
        })
    }

    fn wal_mark(&self, log_id: &str) -> Result<u64, StoreError> {
        self.readers.with(|c| {
            let mark: Option<i64> = c
                .query_row("SELECT entry_id FROM wal_marks WHERE log_id = ?1", [log_id], |r| r.get(0))
                .optional()
                .map_err(classify)?;
            Ok(mark.unwrap_or(0).max(0) as u64)
        })
    }

    fn find_extents(&self, topic_id: Uuid, partition: i32, from_offset: i64, limit: u32) -> Result<Vec<ExtentRecord>, StoreError> {
        self.readers.with(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "{EXTENT_SELECT} WHERE extents.topic_id = ?1 AND extents.partition = ?2 AND extents.end_offset > ?3 \
                     ORDER BY extents.base_offset LIMIT ?4"
                ))
                .map_err(classify)?;
            let rows = stmt
                .query_map(params![topic_id.as_bytes().as_slice(), partition, from_offset, limit], extent_row)
                .map_err(classify)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(classify)
        })
    }

    fn first_extent_at_or_after(&self, topic_id: Uuid, partition: i32, timestamp: i64) -> Result<Option<ExtentRecord>, StoreError> {
        self.readers.with(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "{EXTENT_SELECT} WHERE extents.topic_id = ?1 AND extents.partition = ?2 \
                     AND extents.max_timestamp >= ?3 ORDER BY extents.base_offset LIMIT 1"
                ))
                .map_err(classify)?;
            stmt.query_row(params![topic_id.as_bytes().as_slice(), partition, timestamp], extent_row)
                .optional()
                .map_err(classify)
        })
    }

    fn extent_with_max_timestamp(&self, topic_id: Uuid, partition: i32) -> Result<Option<ExtentRecord>, StoreError> {
        self.readers.with(|c| {
            let mut stmt = c
                .prepare_cached(&format!(
                    "{EXTENT_SELECT} WHERE extents.topic_id = ?1 AND extents.partition = ?2 \
                     ORDER BY extents.max_timestamp DESC, extents.base_offset ASC LIMIT 1"
                ))
                .map_err(classify)?;
            stmt.query_row(params![topic_id.as_bytes().as_slice(), partition], extent_row).optional().map_err(classify)
        })
    }

    fn acls(&self) -> Result<Vec<AclBinding>, StoreError> {
        self.readers.with(|c| {
            let mut stmt = c
                .prepare("SELECT resource_type, resource_name, pattern_type, principal, host, operation, permission FROM acls")
                .map_err(classify)?;
            let rows = stmt
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?, r.get(6)?)))
                .map_err(classify)?;
            rows.map(|r| {
                let (rt, name, pt, principal, host, op, perm) = r.map_err(classify)?;
                super::acl_from_row(rt, name, pt, principal, host, op, perm)
            })
            .collect()
        })
    }

    fn alter_acls(&self, create: &[AclBinding], delete: &[AclBinding]) -> Result<(), StoreError> {
        let (create, delete) = (create.to_vec(), delete.to_vec());
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            {
                let mut insert = tx
                    .prepare_cached(
                        "INSERT OR IGNORE INTO acls \
                         (resource_type, resource_name, pattern_type, principal, host, operation, permission) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .map_err(classify)?;
                for b in &create {
                    let (rt, pt, op, perm) = acl_codes(b);
                    insert.execute(params![rt, b.resource_name, pt, b.principal, b.host, op, perm]).map_err(classify)?;
                }
                let mut remove = tx
                    .prepare_cached(
                        "DELETE FROM acls WHERE resource_type = ?1 AND resource_name = ?2 AND pattern_type = ?3 \
                         AND principal = ?4 AND host = ?5 AND operation = ?6 AND permission = ?7",
                    )
                    .map_err(classify)?;
                for b in &delete {
                    let (rt, pt, op, perm) = acl_codes(b);
                    remove.execute(params![rt, b.resource_name, pt, b.principal, b.host, op, perm]).map_err(classify)?;
                }
            }
            tx.commit().map_err(classify)
        })
    }

    fn scram_credentials(&self, user: Option<&str>) -> Result<Vec<(String, ScramCredential)>, StoreError> {
        let user = user.map(str::to_string);
        self.readers.with(|c| {
            let mut stmt = c
                .prepare_cached(
                    "SELECT username, mechanism, salt, stored_key, server_key, iterations FROM scram_credentials \
                     WHERE ?1 IS NULL OR username = ?1 ORDER BY username, mechanism",
                )
                .map_err(classify)?;
            let rows = stmt
                .query_map([&user], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get::<_, i64>(5)?))
                })
                .map_err(classify)?;
            let mut out = Vec::new();
            for row in rows {
                let (user, mechanism, salt, stored_key, server_key, iterations) = row.map_err(classify)?;
                let mechanism = ScramMechanism::from_name(&mechanism)
                    .ok_or_else(|| StoreError::corrupt(format!("scram_credentials: mechanism {mechanism:?}"), None))?;
                out.push((user, ScramCredential { mechanism, salt, stored_key, server_key, iterations: iterations as u32 }));
            }
            Ok(out)
        })
    }

    fn alter_scram_credentials(
        &self,
        upserts: &[(String, ScramCredential)],
        deletes: &[(String, ScramMechanism)],
    ) -> Result<(), StoreError> {
        let (upserts, deletes) = (upserts.to_vec(), deletes.to_vec());
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            {
                let mut delete =
                    tx.prepare_cached("DELETE FROM scram_credentials WHERE username = ?1 AND mechanism = ?2").map_err(classify)?;
                for (user, m) in &deletes {
                    delete.execute(params![user, m.name()]).map_err(classify)?;
                }
                let mut upsert = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO scram_credentials (username, mechanism, salt, stored_key, server_key, iterations) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    )
                    .map_err(classify)?;
                for (user, c) in &upserts {
                    upsert
                        .execute(params![user, c.mechanism.name(), c.salt, c.stored_key, c.server_key, i64::from(c.iterations)])
                        .map_err(classify)?;
                }
            }
            tx.commit().map_err(classify)
        })
    }

    fn client_quotas(&self) -> Result<Vec<(String, String, f64)>, StoreError> {
        self.readers.with(|c| {
            let mut stmt = c
                .prepare_cached("SELECT entity, quota_key, value FROM client_quotas ORDER BY entity, quota_key")
                .map_err(classify)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(classify)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(classify)
        })
    }

    fn client_metrics(&self) -> Result<Vec<ClientMetricsResource>, StoreError> {
        let rows: Vec<(String, String)> = self
            .readers
            .with(|c| select_all(c, "SELECT name, configs FROM client_metrics ORDER BY name", |r| Ok((r.get(0)?, r.get(1)?))))?;
        rows.into_iter().map(|(name, configs)| super::client_metrics_row(name, &configs)).collect()
    }

    fn set_client_metrics(&self, changes: &[(String, Option<BTreeMap<String, String>>)]) -> Result<(), StoreError> {
        let changes = super::client_metrics_rows(changes)?;
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            for (name, configs) in &changes {
                match configs {
                    Some(json) => tx.execute("INSERT OR REPLACE INTO client_metrics (name, configs) VALUES (?1, ?2)", params![name, json]),
                    None => tx.execute("DELETE FROM client_metrics WHERE name = ?1", params![name]),
                }
                .map_err(classify)?;
            }
            tx.commit().map_err(classify)
        })
    }

    fn alter_client_quotas(&self, changes: &[(String, String, Option<f64>)]) -> Result<(), StoreError> {
        let changes = changes.to_vec();
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            {
                let mut set = tx
                    .prepare_cached("INSERT OR REPLACE INTO client_quotas (entity, quota_key, value) VALUES (?1, ?2, ?3)")
                    .map_err(classify)?;
                let mut remove = tx.prepare_cached("DELETE FROM client_quotas WHERE entity = ?1 AND quota_key = ?2").map_err(classify)?;
                for (entity, key, value) in &changes {
                    match value {
                        Some(v) => set.execute(params![entity, key, v]).map_err(classify)?,
                        None => remove.execute(params![entity, key]).map_err(classify)?,
                    };
                }
            }
            tx.commit().map_err(classify)
        })
    }

    fn load_share_partitions(&self) -> Result<Vec<SharePartitionRecord>, StoreError> {
        self.readers.with(|c| {
            let mut stmt = c.prepare("SELECT group_id, topic_id, partition, body FROM share_partitions").map_err(classify)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(SharePartitionRecord { group_id: r.get(0)?, topic_id: uuid_from(r.get(1)?)?, partition: r.get(2)?, body: r.get(3)? })
                })
                .map_err(classify)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(classify)
        })
    }

    fn put_share_partitions(&self, rows: &[SharePartitionRecord]) -> Result<(), StoreError> {
        let rows = rows.to_vec();
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            {
                let mut put = tx
                    .prepare_cached("INSERT OR REPLACE INTO share_partitions (group_id, topic_id, partition, body) VALUES (?1, ?2, ?3, ?4)")
                    .map_err(classify)?;
                for r in &rows {
                    put.execute(params![r.group_id, r.topic_id.as_bytes().as_slice(), r.partition, r.body]).map_err(classify)?;
                }
            }
            tx.commit().map_err(classify)
        })
    }

    fn delete_share_partitions(&self, group_id: &str, partitions: Option<&[(Uuid, i32)]>) -> Result<(), StoreError> {
        let (group_id, partitions) = (group_id.to_string(), partitions.map(<[_]>::to_vec));
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            match partitions {
                None => {
                    tx.execute("DELETE FROM share_partitions WHERE group_id = ?1", [&group_id]).map_err(classify)?;
                }
                Some(ps) => {
                    let mut delete = tx
                        .prepare_cached("DELETE FROM share_partitions WHERE group_id = ?1 AND topic_id = ?2 AND partition = ?3")
                        .map_err(classify)?;
                    for (t, p) in &ps {
                        delete.execute(params![group_id, t.as_bytes().as_slice(), p]).map_err(classify)?;
                    }
                }
            }
            tx.commit().map_err(classify)
        })
    }

    fn group_configs(&self) -> Result<Vec<(String, String, String)>, StoreError> {
        self.readers.with(|c| {
            let mut stmt = c.prepare("SELECT group_id, name, value FROM group_configs ORDER BY group_id, name").map_err(classify)?;
            let rows = stmt.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?))).map_err(classify)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(classify)
        })
    }

    fn alter_group_configs(&self, group_id: &str, changes: &[(String, Option<String>)]) -> Result<(), StoreError> {
        let (group_id, changes) = (group_id.to_string(), changes.to_vec());
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            {
                let mut set = tx
                    .prepare_cached("INSERT OR REPLACE INTO group_configs (group_id, name, value) VALUES (?1, ?2, ?3)")
                    .map_err(classify)?;
                let mut remove = tx.prepare_cached("DELETE FROM group_configs WHERE group_id = ?1 AND name = ?2").map_err(classify)?;
                for (name, value) in &changes {
                    match value {
                        Some(v) => set.execute(params![group_id, name, v]).map_err(classify)?,
                        None => remove.execute(params![group_id, name]).map_err(classify)?,
                    };
                }
            }
            tx.commit().map_err(classify)
        })
    }

    fn load_group_offsets(&self) -> Result<Vec<GroupOffsetRecord>, StoreError> {
        self.readers.with(|c| {
            let mut stmt = c
                .prepare("SELECT group_id, topic, partition, committed_offset, leader_epoch, metadata, commit_ms FROM group_offsets")
                .map_err(classify)?;
            let rows = stmt
                .query_map([], |r| {
                    Ok(GroupOffsetRecord {
                        group_id: r.get(0)?,
                        topic: r.get(1)?,
                        partition: r.get(2)?,
                        offset: r.get(3)?,
                        leader_epoch: r.get(4)?,
                        metadata: r.get(5)?,
                        commit_ms: r.get(6)?,
                    })
                })
                .map_err(classify)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(classify)
        })
    }

    fn commit_group_offsets(&self, offsets: &[GroupOffsetRecord]) -> Result<(), StoreError> {
        let offsets = offsets.to_vec();
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            {
                let mut upsert = tx
                    .prepare_cached(
                        "INSERT OR REPLACE INTO group_offsets \
                         (group_id, topic, partition, committed_offset, leader_epoch, metadata, commit_ms) \
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    )
                    .map_err(classify)?;
                for o in &offsets {
                    upsert
                        .execute(params![o.group_id, o.topic, o.partition, o.offset, o.leader_epoch, o.metadata, o.commit_ms])
                        .map_err(classify)?;
                }
            }
            tx.commit().map_err(classify)
        })
    }

    fn compaction_candidates(&self, req: &crate::api::CandidatesRequest) -> Result<Vec<ExtentRecord>, StoreError> {
        let suffix = format!("%{}", crate::format::object::PARTITION_OBJECT_SUFFIX);
        let sorted = format!("%{}", crate::format::object::SORTED_OBJECT_SUFFIX);
        self.readers.with(|c| {
            if req.partition_objects {
                let (after_topic, after_partition) = req.after.unwrap_or((Uuid::nil(), -1));
                let mut stmt = c
                    .prepare_cached(&format!(
                        "{EXTENT_SELECT} WHERE ((objects.key LIKE ?1 AND objects.size_bytes < ?2) OR objects.key LIKE ?7) \
                         AND objects.committed_ms < ?3 AND (extents.topic_id, extents.partition) > (?4, ?5) \
                         ORDER BY extents.topic_id, extents.partition, extents.base_offset LIMIT ?6"
                    ))
                    .map_err(classify)?;
                let rows = stmt
                    .query_map(
                        params![
                            suffix,
                            req.small_bytes.min(i64::MAX as u64) as i64,
                            req.committed_before_ms,
                            after_topic.as_bytes().as_slice(),
                            after_partition,
                            req.limit,
                            sorted
                        ],
                        extent_row,
                    )
                    .map_err(classify)?;
                return rows.collect::<Result<Vec<_>, _>>().map_err(classify);
            }
            let mut stmt = c
                .prepare_cached(
                    "SELECT extents.topic_id, extents.partition, extents.base_offset, extents.end_offset, \
                     extents.object_key, extents.position, extents.length, extents.batch_count, extents.max_timestamp, \
                     o.size_bytes FROM extents JOIN (SELECT key, size_bytes, committed_ms FROM objects \
                     WHERE key NOT LIKE ?1 AND key NOT LIKE ?5 AND size_bytes < ?2 AND committed_ms < ?3 \
                     AND EXISTS (SELECT 1 FROM extents e WHERE e.object_key = objects.key) \
                     ORDER BY committed_ms, key LIMIT ?4) o ON o.key = extents.object_key \
                     ORDER BY o.committed_ms, o.key, extents.position",
                )
                .map_err(classify)?;
            let rows = stmt
                .query_map(
                    params![suffix, req.small_bytes.min(i64::MAX as u64) as i64, req.committed_before_ms, req.limit, sorted],
                    extent_row,
                )
                .map_err(classify)?;
            rows.collect::<Result<Vec<_>, _>>().map_err(classify)
        })
    }

    fn replace_extents(&self, object: &ObjectRecord, old: &[ExtentRecord], new: &[ExtentRecord]) -> Result<(), StoreError> {
        let (object, old, new) = (object.clone(), old.to_vec(), new.to_vec());
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            replace_in(&tx, &object, &old, &new)?;
            tx.commit().map_err(classify)
        })
    }

    fn delete_group_offsets(&self, group_id: &str, partitions: Option<&[(String, i32)]>) -> Result<(), StoreError> {
        let (group_id, partitions) = (group_id.to_string(), partitions.map(<[_]>::to_vec));
        self.writer.call(move |c| {
            let tx = c.transaction().map_err(classify)?;
            match partitions {
                None => {
                    tx.execute("DELETE FROM group_offsets WHERE group_id = ?1", [&group_id]).map_err(classify)?;
                }
                Some(ps) => {
                    let mut delete = tx
                        .prepare_cached("DELETE FROM group_offsets WHERE group_id = ?1 AND topic = ?2 AND partition = ?3")
                        .map_err(classify)?;
                    for (t, p) in &ps {
                        delete.execute(params![group_id, t, p]).map_err(classify)?;
                    }
                }
            }
            tx.commit().map_err(classify)
        })
    }
}

/// An ACL binding's codes as stored: resource type, pattern type, operation, permission.
fn acl_codes(b: &AclBinding) -> (i8, i8, i8, i8) {
    (b.resource_type.code(), b.pattern_type.code(), b.operation.code(), b.permission.code())
}

/// Records a committed object (a commit's or a swap's): `Conflict` if its key was doomed as an
/// orphan, `Stale` if it is already recorded.
fn record_object(tx: &rusqlite::Transaction<'_>, o: &ObjectRecord) -> Result<(), StoreError> {
    let doomed: Option<i64> = tx.query_row("SELECT 1 FROM orphans WHERE key = ?1", [&o.key], |r| r.get(0)).optional().map_err(classify)?;
    if doomed.is_some() {
        return Err(StoreError::Conflict(format!("object {} was collected as an orphan", o.key)));
    }
    match tx.execute(
        "INSERT INTO objects (key, size_bytes, agent, committed_ms) VALUES (?1, ?2, ?3, ?4)",
        params![o.key, o.size_bytes as i64, o.agent, o.committed_ms],
    ) {
        Ok(_) => Ok(()),
        Err(rusqlite::Error::SqliteFailure(e, _)) if e.code == rusqlite::ErrorCode::ConstraintViolation => {
            Err(StoreError::Stale(format!("object {} is already committed", o.key)))
        }
        Err(e) => Err(classify(e)),
    }
}

/// One extent row, through the prepared `INSERT INTO extents ({EXTENT_COLUMNS})`.
fn insert_extent(insert: &mut rusqlite::CachedStatement<'_>, e: &ExtentRecord) -> Result<(), StoreError> {
    insert
        .execute(params![
            e.topic_id.as_bytes().as_slice(),
            e.partition,
            e.base_offset,
            e.end_offset,
            &*e.object_key,
            e.position as i64,
            e.length as i64,
            i64::from(e.batch_count),
            e.max_timestamp
        ])
        .map_err(classify)?;
    Ok(())
}

/// Compaction's swap inside an open transaction (see [`MetadataStore::replace_extents`]).
fn replace_in(tx: &rusqlite::Transaction<'_>, o: &ObjectRecord, old: &[ExtentRecord], new: &[ExtentRecord]) -> Result<(), StoreError> {
    {
        let mut delete = tx
            .prepare_cached(
                "DELETE FROM extents WHERE topic_id = ?1 AND partition = ?2 AND base_offset = ?3 AND end_offset = ?4 \
                 AND object_key = ?5 AND position = ?6 AND length = ?7",
            )
            .map_err(classify)?;
        for e in old {
            let deleted = delete
                .execute(params![
                    e.topic_id.as_bytes().as_slice(),
                    e.partition,
                    e.base_offset,
                    e.end_offset,
                    &*e.object_key,
                    e.position as i64,
                    e.length as i64
                ])
                .map_err(classify)?;
            if deleted != 1 {
                return Err(StoreError::Stale(format!(
                    "extent {}-{} at {} in {} is gone or changed",
                    e.topic_id, e.partition, e.base_offset, e.object_key
                )));
            }
        }
    }
    record_object(tx, o)?;
    {
        let mut insert = tx
            .prepare_cached(&format!("INSERT INTO extents ({EXTENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"))
            .map_err(classify)?;
        for e in new {
            insert_extent(&mut insert, e)?;
        }
    }
    // The garbage collector's contract: an object no extent references any more is listed in
    // the transaction that made it so.
    let mut keys: Vec<String> = old.iter().map(|e| e.object_key.to_string()).collect();
    keys.sort_unstable();
    keys.dedup();
    release_objects(tx, &keys, o.committed_ms)
}

/// Makes garbage of those of `keys` that no extent references any more (inside the
/// transaction that removed their extents), as of `now_ms`.
fn release_objects(tx: &rusqlite::Transaction<'_>, keys: &[String], now_ms: i64) -> Result<(), StoreError> {
    let mut release = tx
        .prepare_cached(
            "INSERT OR IGNORE INTO garbage (key, since_ms) SELECT ?1, ?2 \
             WHERE EXISTS (SELECT 1 FROM objects WHERE key = ?1) AND NOT EXISTS (SELECT 1 FROM extents WHERE object_key = ?1)",
        )
        .map_err(classify)?;
    for key in keys {
        release.execute(params![key, now_ms]).map_err(classify)?;
    }
    Ok(())
}

/// One object's commit inside an open transaction (see [`MetadataStore::commit_object`]).
fn commit_in(
    tx: &rusqlite::Transaction<'_>,
    o: &ObjectRecord,
    extents: &[ExtentRecord],
    wal: Option<&WalMark>,
    producers: &[(ProducerKey, ProducerState)],
    txn: &TxnEffects,
) -> Result<(), StoreError> {
    record_object(tx, o)?;
    {
        let mut insert = tx
            .prepare_cached(&format!("INSERT INTO extents ({EXTENT_COLUMNS}) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)"))
            .map_err(classify)?;
        let mut advance = tx
            .prepare_cached("UPDATE partitions SET next_offset = ?4 WHERE topic_id = ?1 AND partition = ?2 AND next_offset = ?3")
            .map_err(classify)?;
        for e in extents {
            let id = e.topic_id.as_bytes().as_slice();
            let moved = advance.execute(params![id, e.partition, e.base_offset, e.end_offset]).map_err(classify)?;
            if moved != 1 {
                return Err(StoreError::Stale(format!(
                    "partition {}-{} is no longer at offset {}: another writer committed",
                    e.topic_id, e.partition, e.base_offset
                )));
            }
            insert_extent(&mut insert, e)?;
        }
    }
    for ((pid, topic, partition), state) in producers {
        tx.execute(
            "INSERT INTO producer_states (producer_id, topic_id, partition, epoch, batches, last_seen_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6) ON CONFLICT (producer_id, topic_id, partition) DO UPDATE SET \
             epoch = excluded.epoch, batches = excluded.batches, last_seen_ms = excluded.last_seen_ms",
            params![pid, topic.as_bytes().as_slice(), partition, state.epoch, encode_batches(&state.batches), state.last_seen_ms],
        )
        .map_err(classify)?;
    }
    for o in &txn.opened {
        tx.execute(
            "INSERT OR IGNORE INTO open_txns (topic_id, partition, producer_id, first_offset) VALUES (?1, ?2, ?3, ?4)",
            params![o.topic_id.as_bytes().as_slice(), o.partition, o.producer_id, o.first_offset],
        )
        .map_err(classify)?;
    }
    for o in &txn.closed {
        tx.execute(
            "DELETE FROM open_txns WHERE topic_id = ?1 AND partition = ?2 AND producer_id = ?3",
            params![o.topic_id.as_bytes().as_slice(), o.partition, o.producer_id],
        )
        .map_err(classify)?;
    }
    for a in &txn.aborted {
        tx.execute(
            "INSERT OR REPLACE INTO aborted_txns (topic_id, partition, last_offset, producer_id, first_offset) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![a.topic_id.as_bytes().as_slice(), a.partition, a.last_offset, a.producer_id, a.first_offset],
        )
        .map_err(classify)?;
    }
    if let Some((id, body)) = &txn.transaction {
        tx.execute("INSERT OR REPLACE INTO transactions (transactional_id, body) VALUES (?1, ?2)", params![id, body])
            .map_err(classify)?;
    }
    for o in &txn.group_offsets {
        tx.execute(
            "INSERT OR REPLACE INTO group_offsets \
             (group_id, topic, partition, committed_offset, leader_epoch, metadata, commit_ms) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            params![o.group_id, o.topic, o.partition, o.offset, o.leader_epoch, o.metadata, o.commit_ms],
        )
        .map_err(classify)?;
    }
    if let Some(w) = wal {
        tx.execute(
            "INSERT INTO wal_marks (log_id, entry_id) VALUES (?1, ?2) \
             ON CONFLICT (log_id) DO UPDATE SET entry_id = max(entry_id, excluded.entry_id)",
            params![w.log_id, w.entry_id as i64],
        )
        .map_err(classify)?;
    }
    Ok(())
}
