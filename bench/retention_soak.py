"""Retention soak: the controller store and the bucket stay flat while data keeps flowing.

Starts `sidestream serve` (SQLite store, file:// objects in its data dir) with a short retention
(topics' retention.ms --retention-s), jobs every second, objects deleted 2 s after their last
reference and deleted keys remembered for a minute (`object_commit_window_ms`); produces --rate-mib MiB/s to --partitions partitions for --minutes with
confluent-kafka (acks=1), while consumer groups come and go (one new group every 20 s commits
its offsets and leaves; offsets expire after --offsets-retention-s). Every --sample-s seconds it
prints the store file's size (with its WAL), its row counts and the bucket's objects and bytes.

    SIDESTREAM_BIN=target/release/sidestream .venv/bin/python bench/retention_soak.py --minutes 10

Not part of CI (it runs for minutes); the numbers go into the README and the closing note.
"""

import argparse
import os
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from conftest import SidestreamServer  # noqa: E402

TABLES = ["extents", "objects", "garbage", "orphans", "group_offsets", "producer_states", "aborted_txns"]


def store_sample(db):
    size = sum(p.stat().st_size for p in db.parent.glob(db.name + "*") if p.exists())
    with sqlite3.connect("file:%s?mode=ro" % db, uri=True, timeout=10) as c:
        rows = {t: c.execute("SELECT COUNT(*) FROM %s" % t).fetchone()[0] for t in TABLES}
    return size, rows


def bucket_sample(objects_dir):
    files = [p for p in objects_dir.rglob("*.sso")]
    return len(files), sum(p.stat().st_size for p in files if p.exists())


def producer_loop(bootstrap, topic, partitions, rate_bytes, stop, stats):
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "1", "linger.ms": 20, "enable.idempotence": False})
    value = os.urandom(1000)
    start = time.monotonic()
    sent = 0
    i = 0
    while not stop.is_set():
        # Paced: never ahead of rate_bytes per second.
        ahead = sent / rate_bytes - (time.monotonic() - start)
        if ahead > 0:
            time.sleep(min(ahead, 0.05))
            continue
        try:
            p.produce(topic, key=b"k%d" % (i % 1000), value=value, partition=i % partitions)
            sent += len(value)
            i += 1
        except BufferError:
            p.poll(0.05)
        p.poll(0)
    p.flush(60)
    stats["bytes"] = sent


def groups_loop(bootstrap, topic, stop, stats):
    """A new consumer group every 20 s: reads a little, commits, leaves (its offsets then expire)."""
    from confluent_kafka import Consumer

    while not stop.wait(20):
        c = Consumer({"bootstrap.servers": bootstrap, "group.id": "soak-%s" % uuid.uuid4().hex[:8],
                      "auto.offset.reset": "latest", "enable.auto.commit": False})
        c.subscribe([topic])
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not c.assignment():
            c.poll(0.2)
        for _ in range(10):
            c.poll(0.2)
        try:
            c.commit(asynchronous=False)
        except Exception:  # noqa: BLE001 - nothing consumed yet: nothing to commit
            pass
        c.close()
        stats["groups"] = stats.get("groups", 0) + 1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--rate-mib", type=float, default=2)
    ap.add_argument("--partitions", type=int, default=16)
    ap.add_argument("--retention-s", type=int, default=30)
    ap.add_argument("--offsets-retention-s", type=int, default=60)
    ap.add_argument("--sample-s", type=float, default=30)
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="sidestream-soak-"))
    env = {
        "SIDESTREAM_TOPICS_RETENTION_MS": str(args.retention_s * 1000),
        "SIDESTREAM_RETENTION_CHECK_INTERVAL_MS": "1000",
        "SIDESTREAM_RETENTION_OBJECT_GC_INTERVAL_MS": "1000",
        "SIDESTREAM_RETENTION_OBJECT_DELETE_DELAY_MS": "2000",
        "SIDESTREAM_GROUPS_OFFSETS_RETENTION_MS": str(args.offsets_retention_s * 1000),
        # Deleted keys are remembered this long (the smallest window allowed; a day by default).
        "SIDESTREAM_CONTROLLER_OBJECT_COMMIT_WINDOW_MS": "60000",
        "SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS": "250",
    }
    srv = SidestreamServer(base / "data", base / "server.log", extra_env=env)
    srv.start()
    db, objects_dir = base / "data" / "controller.db", base / "data" / "objects"
    topic = "soak"
    from confluent_kafka.admin import AdminClient, NewTopic
    admin = AdminClient({"bootstrap.servers": srv.bootstrap})
    admin.create_topics([NewTopic(topic, num_partitions=args.partitions, replication_factor=1)])[topic].result(30)
    stop, stats = threading.Event(), {}
    threads = [threading.Thread(target=producer_loop, args=(srv.bootstrap, topic, args.partitions,
                                                             args.rate_mib * (1 << 20), stop, stats)),
               threading.Thread(target=groups_loop, args=(srv.bootstrap, topic, stop, stats))]
    for t in threads:
        t.start()
    print("retention %ds, offsets retention %ds, %.1f MiB/s to %d partitions, %.0f minutes"
          % (args.retention_s, args.offsets_retention_s, args.rate_mib, args.partitions, args.minutes))
    print("%6s %10s %12s %s" % ("t_s", "store_kib", "bucket", " ".join("%s" % t for t in TABLES)))
    start = time.monotonic()
    try:
        while time.monotonic() - start < args.minutes * 60:
            time.sleep(args.sample_s)
            size, rows = store_sample(db)
            n, b = bucket_sample(objects_dir)
            print("%6.0f %10.0f %5d/%5.0fMiB %s" % (time.monotonic() - start, size / 1024, n, b / (1 << 20),
                                                   " ".join("%d" % rows[t] for t in TABLES)), flush=True)
    finally:
        stop.set()
        for t in threads:
            t.join(120)
        m = srv.metrics()
        srv.close()
    print("produced %.0f MiB, %d groups came and went; objects deleted %d"
          % (stats.get("bytes", 0) / (1 << 20), stats.get("groups", 0), m.get("sidestream_objects_deleted_total", 0)))


if __name__ == "__main__":
    main()
