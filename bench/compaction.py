"""Object compaction: GETs per GB of a cold catch-up read of one partition, before and after.

For each partition count, on s3s-fs (real S3 requests, counted by the agent's object store
metrics as HTTP requests):

1. `sidestream serve` with compaction off; --gib GiB produced with confluent-kafka (acks=all,
   --value-bytes records) spread evenly over the partitions (or, with --skew S, a fraction S of
   them to partition 0 and the rest evenly: partition 0 then has enough data to measure GETs
   per GB while its objects still hold a little of every partition): 8 MiB objects (default
   `[upload]`).
2. Restart with a cold read cache (its directory removed): partition 0 read from the beginning
   to its end by one consumer; GETs and bytes read from S3 counted.
3. Restart with compaction on (checked every second, no minimum age); wait until a pass finds
   nothing to do (no new object for 10 s); its own GETs and PUTs counted.
4. Restart cold again (compaction off): partition 0 read again, GETs counted.

    SIDESTREAM_BIN=target/release/sidestream S3S_FS_BIN=~/.cargo/bin/s3s-fs \\
        .venv/bin/python bench/compaction.py --partitions 1 100 1000 --gib 1

Prints one JSON line per partition count. Not part of CI (it moves gigabytes); the numbers go
into README's "Compaction" section and bench/results/compaction.md.
"""

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from conftest import SidestreamServer  # noqa: E402
from s3_server import S3Server  # noqa: E402

GIB = 1 << 30
GB = 1e9


def summary(srv):
    """The object store metrics the agent logged at shutdown."""
    line = [ln for ln in srv.log_text().splitlines() if "object store metrics" in ln][-1]
    return {k: float(v) for k, v in re.findall(r"(\w+)=(\d+(?:\.\d+)?)", line)}


def metric(srv, name):
    return sum(v for k, v in srv.metrics().items() if k.split("{")[0] == name)


def produce(bootstrap, topic, partitions, gib, value_bytes, skew):
    from confluent_kafka import Producer

    n = int(gib * GIB) // value_bytes
    value = os.urandom(value_bytes)
    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False,
                         "linger.ms": 50, "batch.size": 1 << 20, "queue.buffering.max.kbytes": 1 << 20,
                         "message.timeout.ms": 300000})
    errors = []

    def cb(err, _msg):
        if err is not None:
            errors.append(err)

    for i in range(n):
        while True:
            try:
                # With --skew S, a fraction S of the records go to partition 0, the others
                # round-robin over all partitions: partition 0 grows large while every
                # uploaded object still holds a little of each partition.
                p = 0 if skew and (i * skew) % 1 + skew >= 1 else i % partitions
                producer.produce(topic, value=value, partition=p, on_delivery=cb)
                break
            except BufferError:
                producer.poll(0.01)
        if i % 1000 == 0:
            producer.poll(0)
    assert producer.flush(600) == 0 and not errors, errors[:3]
    return n


def read_partition(bootstrap, topic, end_offset):
    """Partition 0 from its start to `end_offset`: (records, value bytes, seconds)."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-%s" % uuid.uuid4().hex,
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    got = nbytes = 0
    last = -1
    started = time.monotonic()
    while last + 1 < end_offset:
        assert time.monotonic() - started < 900, "read timed out at offset %d of %d" % (last, end_offset)
        for m in consumer.consume(num_messages=10000, timeout=0.5):
            assert not m.error(), m.error()
            assert m.offset() == last + 1, "offset %d after %d" % (m.offset(), last)
            last = m.offset()
            got += 1
            nbytes += len(m.value())
    consumer.close()
    return got, nbytes, time.monotonic() - started


def run(partitions, gib, value_bytes, skew):
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    with tempfile.TemporaryDirectory(prefix="compactbench-") as tmp:
        tmp = Path(tmp)
        s3 = S3Server(tmp / "s3", tmp / "s3s-fs.log").start()
        base = s3.sidestream_env("bench")
        base["SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS"] = "250"
        base["SIDESTREAM_COMPACTION_ENABLED"] = "false"
        data = tmp / "data"
        servers = []

        def start(phase, **env):
            shutil.rmtree(data / "cache", ignore_errors=True)
            srv = SidestreamServer(data, tmp / ("%s.log" % phase), extra_env={**base, **env}).start()
            servers.append(srv)
            return srv

        def cold_read(phase, topic, end):
            srv = start(phase)
            try:
                records, nbytes, seconds = read_partition(srv.bootstrap, topic, end)
            finally:
                srv.stop()
            m = summary(srv)
            return {
                "records": records,
                "mb": round(nbytes / 1e6, 1),
                "seconds": round(seconds, 1),
                "gets": int(m["read_requests"]),
                "gets_per_gb": round(m["read_requests"] / (nbytes / GB), 1),
                "bytes_read_from_s3_per_byte": round(m["bytes_read"] / nbytes, 2),
            }

        def objects():
            keys = s3.objects("bench/")
            sizes = [(s3.bucket_dir / k).stat().st_size for k in keys]
            compacted = [s for k, s in zip(keys, sizes) if k.endswith(".p.sso")]
            sorted_objects = sum(1 for k in keys if k.endswith(".s.sso"))
            return len(sizes), len(compacted), compacted, sorted_objects

        try:
            topic = "bench-%d" % partitions
            srv = start("produce")
            admin = AdminClient({"bootstrap.servers": srv.bootstrap})
            admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(60)
            started = time.monotonic()
            produced = produce(srv.bootstrap, topic, partitions, gib, value_bytes, skew)
            produce_s = time.monotonic() - started
            from confluent_kafka import Consumer
            c = Consumer({"bootstrap.servers": srv.bootstrap, "group.id": "x"})
            _, end = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=30)
            c.close()
            srv.stop()
            uploads = objects()[0]

            before = cold_read("before", topic, end)

            srv = start("compact", SIDESTREAM_COMPACTION_ENABLED="true", SIDESTREAM_COMPACTION_CHECK_INTERVAL_MS="1000",
                        SIDESTREAM_COMPACTION_MIN_AGE_MS="0", SIDESTREAM_COMPACTION_MAX_REQUESTS_PER_S="2000")
            started = time.monotonic()
            last, quiet_since = -1, time.monotonic()
            while time.monotonic() - quiet_since < 10:
                assert time.monotonic() - started < 3600, "compaction did not settle within an hour"
                written = metric(srv, "sidestream_compaction_objects_total")
                if written != last:
                    last, quiet_since = written, time.monotonic()
                time.sleep(1)
            compact_s = time.monotonic() - started - 10
            lost = metric(srv, "sidestream_compaction_lost_races_total")
            srv.stop()
            cm = summary(srv)
            total, compacted, sizes, sorted_objects = objects()

            after = cold_read("after", topic, end)
            return {
                "partitions": partitions,
                "skew": skew,
                "produced_gib": round(produced * value_bytes / GIB, 3),
                "produce_s": round(produce_s, 1),
                "uploaded_objects": uploads,
                "partition0_records": end,
                "before": before,
                "compaction": {
                    "seconds": round(compact_s, 1),
                    "objects_written": int(last),
                    "gets": int(cm["read_requests"]),
                    "puts": int(cm["write_requests"]),
                    "lost_races": int(lost),
                    "per_partition_objects_in_bucket": compacted,
                    "sorted_objects_in_bucket": sorted_objects,
                    "objects_in_bucket": total,
                    "per_partition_object_mib_median": round(statistics.median(sizes) / (1 << 20), 2) if sizes else 0,
                    "per_partition_object_mib_max": round(max(sizes) / (1 << 20), 2) if sizes else 0,
                },
                "after": after,
            }
        finally:
            for srv in servers:
                srv.close()
            s3.kill()
            if os.environ.get("COMPACTION_BENCH_LOGS"):
                for log in tmp.glob("*.log"):
                    shutil.copy(log, Path(os.environ["COMPACTION_BENCH_LOGS"]) / ("%d-%s" % (partitions, log.name)))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--value-bytes", type=int, default=4096)
    ap.add_argument("--skew", type=float, default=0.0, help="fraction of the records written to partition 0")
    args = ap.parse_args()
    for p in args.partitions:
        print(json.dumps(run(p, args.gib, args.value_bytes, args.skew)), flush=True)


if __name__ == "__main__":
    main()
