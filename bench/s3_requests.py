"""Object store requests per GiB: produce then consume through one agent on s3s-fs.

For each partition count, starts s3s-fs and `sidestream serve` (default upload settings: 8 MiB
objects, 250 ms flush interval), produces --gib GiB with confluent-kafka (acks=all), consumes it
all back, stops the agent and reads the object store metrics it logs at shutdown: PUTs per GiB
written, GETs per GiB read from S3 and per GiB delivered to consumers, and the object sizes in
the bucket.

    SIDESTREAM_BIN=target/release/sidestream .venv/bin/python bench/s3_requests.py \
        --partitions 1 100 1000 --gib 1

Not part of CI (it moves gigabytes); the numbers go into the README.
"""

import argparse
import os
import re
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


def run(partitions, gib, value_bytes):
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition
    from confluent_kafka.admin import AdminClient, NewTopic

    with tempfile.TemporaryDirectory(prefix="s3bench-") as tmp:
        tmp = Path(tmp)
        s3 = S3Server(tmp / "s3", tmp / "s3s-fs.log").start()
        env = s3.sidestream_env("bench")
        env["SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS"] = "250"
        srv = SidestreamServer(tmp / "data", tmp / "server.log", extra_env=env).start()
        try:
            topic = "bench-%d" % partitions
            admin = AdminClient({"bootstrap.servers": srv.bootstrap})
            admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])[topic].result(60)
            n = int(gib * GIB) // value_bytes
            value = os.urandom(value_bytes)
            producer = Producer({"bootstrap.servers": srv.bootstrap, "acks": "all", "enable.idempotence": False,
                                 "linger.ms": 50, "batch.size": 1 << 20, "queue.buffering.max.kbytes": 1 << 20,
                                 "message.timeout.ms": 300000})
            errors = []

            def cb(err, _msg):
                if err is not None:
                    errors.append(err)

            started = time.monotonic()
            for i in range(n):
                while True:
                    try:
                        producer.produce(topic, value=value, partition=i % partitions, on_delivery=cb)
                        break
                    except BufferError:
                        producer.poll(0.01)
                if i % 1000 == 0:
                    producer.poll(0)
            assert producer.flush(600) == 0 and not errors, errors[:3]
            produce_s = time.monotonic() - started

            consumer = Consumer({"bootstrap.servers": srv.bootstrap, "group.id": "bench-%s" % uuid.uuid4().hex,
                                 "enable.auto.commit": False, "fetch.wait.max.ms": 100})
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
            got = consumed_bytes = 0
            started = time.monotonic()
            while got < n:
                assert time.monotonic() - started < 900, "consume timed out at %d of %d" % (got, n)
                for m in consumer.consume(num_messages=10000, timeout=0.5):
                    assert not m.error(), m.error()
                    got += 1
                    consumed_bytes += len(m.value())
            consume_s = time.monotonic() - started
            consumer.close()
            srv.stop()
            line = [ln for ln in srv.log_text().splitlines() if "object store metrics" in ln][-1]
            m = dict(re.findall(r"(\w+)=(\d+(?:\.\d+)?)", line))
            sizes = [(s3.bucket_dir / k).stat().st_size for k in s3.objects("bench/")]
            return {
                "partitions": partitions,
                "produced_gib": round(n * value_bytes / GIB, 3),
                "produce_s": round(produce_s, 1),
                "consume_s": round(consume_s, 1),
                "objects": len(sizes),
                "object_mib_median": round(statistics.median(sizes) / (1 << 20), 2),
                "object_mib_min": round(min(sizes) / (1 << 20), 2),
                "put_requests": int(m["write_requests"]),
                "puts_per_gib_written": float(m["puts_per_gib"]),
                "get_requests": int(m["read_requests"]),
                "gets_per_gib_read_from_s3": float(m["gets_per_gib"]),
                "gets_per_gib_consumed": round(int(m["read_requests"]) * GIB / consumed_bytes, 1),
                "s3_read_amplification": round(int(m["bytes_read"]) / consumed_bytes, 2),
            }
        finally:
            srv.close()
            s3.kill()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, nargs="+", default=[1, 100, 1000])
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--value-bytes", type=int, default=4096)
    args = ap.parse_args()
    for p in args.partitions:
        print(run(p, args.gib, args.value_bytes), flush=True)


if __name__ == "__main__":
    main()
