"""Real clients end to end: kafka-python and confluent-kafka (librdkafka), every compression codec.

For each (client, compression): create a 3-partition topic through that client's admin API,
produce N keyed records with headers (random binary keys/values of varied sizes, null values
included), and consume everything back with manual partition assignment (no consumer group):
keys, values and headers byte-identical, in production order within each partition, offsets dense
from 0, and each record in the partition the producer's delivery report named. Then the server
is restarted (SIGTERM, exit 0, same data dir and port) and every topic is read again, by both
clients, with the same expectations.

Environment: SIDESTREAM_TEST_RECORDS (default 10000), SIDESTREAM_TEST_SEED (default: a fixed
seed per client and codec, printed on failure).
"""

import logging
import os
import random
import time
import uuid
import zlib

import pytest

from conftest import poll_until

CLIENTS = ["kafka-python", "confluent-kafka"]
COMPRESSIONS = ["none", "gzip", "snappy", "lz4", "zstd"]
PARTITIONS = 3
N_RECORDS = int(os.environ.get("SIDESTREAM_TEST_RECORDS", "10000"))
TIMEOUT = 120.0

logging.getLogger("kafka").setLevel(logging.WARNING)

# topic -> (seed, records, delivery reports); filled by the round trip tests, read after restart.
PRODUCED = {}


def make_records(seed, n):
    """n records (key, value, headers): keys from a pool (so keys repeat), values of varied sizes."""
    rng = random.Random(seed)
    keys = [rng.randbytes(rng.randint(1, 40)) for _ in range(max(1, n // 5))]
    records = []
    for i in range(n):
        r = rng.random()
        if r < 0.01:
            value = None
        elif r < 0.02:
            value = b""
        elif r < 0.70:
            value = rng.randbytes(rng.randint(1, 100))
        elif r < 0.95:
            value = rng.randbytes(rng.randint(100, 2000))
        else:
            value = rng.randbytes(rng.randint(2000, 20000))
        headers = [("h%d-%d" % (j, rng.randint(0, 9)), rng.randbytes(rng.choice([0, 1, 8, 50])))
                   for j in range(rng.choice([0, 0, 1, 2, 3]))]
        records.append((rng.choice(keys), value, headers))
    return records


def seed_for(client, compression):
    if "SIDESTREAM_TEST_SEED" in os.environ:
        return int(os.environ["SIDESTREAM_TEST_SEED"])
    return zlib.crc32(("%s/%s" % (client, compression)).encode())


# --------------------------------------------------------------------------------------------
# kafka-python


class KafkaPython:
    name = "kafka-python"

    def __init__(self, bootstrap):
        self.bootstrap = bootstrap

    def create_topic(self, topic, partitions):
        from kafka.admin import KafkaAdminClient

        admin = KafkaAdminClient(bootstrap_servers=self.bootstrap, client_id="sidestream-tests",
                                 request_timeout_ms=30000)
        try:
            admin.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1}},
                                wait_for_metadata=True)
        finally:
            admin.close()

    def produce(self, topic, records, compression):
        from kafka import KafkaProducer

        producer = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            acks="all",
            # The server has no InitProducerId yet; kafka-python 3.x enables idempotence by default.
            enable_idempotence=False,
            retries=0,  # a retry could reorder records: any error must fail the test instead
            compression_type=None if compression == "none" else compression,
            linger_ms=20,
            batch_size=256 * 1024,
            max_request_size=4 * 1024 * 1024,
            request_timeout_ms=30000,
        )
        try:
            futures = [producer.send(topic, key=k, value=v, headers=h) for k, v, h in records]
            producer.flush(timeout=TIMEOUT)
            out = []
            for i, f in enumerate(futures):
                md = f.get(timeout=0)
                out.append((md.partition, md.offset))
            return out
        finally:
            producer.close(timeout=10)

    def consume(self, topic, partitions, expected_counts):
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=100,
            max_partition_fetch_bytes=1024 * 1024,
            check_crcs=True,
        )
        try:
            tps = [TopicPartition(topic, p) for p in range(partitions)]
            consumer.assign(tps)
            consumer.seek_to_beginning(*tps)
            got = {p: [] for p in range(partitions)}
            deadline = time.monotonic() + TIMEOUT
            while any(len(got[p]) < expected_counts.get(p, 0) for p in got):
                if time.monotonic() > deadline:
                    raise AssertionError("kafka-python: timed out consuming %s: got %r of %r" % (
                        topic, {p: len(v) for p, v in got.items()}, expected_counts))
                for tp, msgs in consumer.poll(timeout_ms=200, max_records=5000).items():
                    got[tp.partition].extend(
                        (m.offset, m.key, m.value, [(hk, hv) for hk, hv in (m.headers or [])]) for m in msgs)
            ends = consumer.end_offsets(tps)
            beginnings = consumer.beginning_offsets(tps)
            watermarks = {tp.partition: (beginnings[tp], ends[tp]) for tp in tps}
            return got, watermarks
        finally:
            consumer.close()


# --------------------------------------------------------------------------------------------
# confluent-kafka (librdkafka)


class Confluent:
    name = "confluent-kafka"

    def __init__(self, bootstrap):
        self.bootstrap = bootstrap

    def create_topic(self, topic, partitions):
        from confluent_kafka.admin import AdminClient, NewTopic

        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        futures = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)],
                                      operation_timeout=30, request_timeout=30)
        futures[topic].result(timeout=TIMEOUT)

    def produce(self, topic, records, compression):
        from confluent_kafka import Producer

        producer = Producer({
            "bootstrap.servers": self.bootstrap,
            "acks": "all",
            "enable.idempotence": False,
            "retries": 0,
            "compression.type": compression,
            "linger.ms": 20,
            "batch.size": 1024 * 1024,
            "message.max.bytes": 4 * 1024 * 1024,
        })
        # Let the producer learn the partitions first, so no record waits in librdkafka's queue of
        # not-yet-partitioned messages.
        def known():
            t = producer.list_topics(topic, timeout=10).topics.get(topic)
            return t is not None and t.error is None and len(t.partitions) > 0 and all(
                p.leader >= 0 for p in t.partitions.values())

        poll_until(known, TIMEOUT, what="confluent-kafka producer metadata for %s" % topic)
        out = [None] * len(records)
        errors = []

        def report(i):
            def cb(err, msg):
                if err is not None:
                    errors.append((i, err))
                else:
                    out[i] = (msg.partition(), msg.offset())
            return cb

        for i, (k, v, h) in enumerate(records):
            while True:
                try:
                    producer.produce(topic, key=k, value=v, headers=h, on_delivery=report(i))
                    break
                except BufferError:
                    producer.poll(0.05)
            producer.poll(0)
        left = producer.flush(TIMEOUT)
        assert left == 0, "confluent-kafka: %d messages still undelivered after %.0fs" % (left, TIMEOUT)
        assert not errors, "confluent-kafka delivery errors (first 5): %r" % errors[:5]
        return out

    def consume(self, topic, partitions, expected_counts):
        from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

        consumer = Consumer({
            "bootstrap.servers": self.bootstrap,
            # A group.id with assign() only: no coordinator is needed (and the server has none).
            "group.id": "sidestream-tests-%s" % uuid.uuid4().hex,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": 100,
            "check.crcs": True,
        })
        try:
            consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
            got = {p: [] for p in range(partitions)}
            deadline = time.monotonic() + TIMEOUT
            while any(len(got[p]) < expected_counts.get(p, 0) for p in got):
                if time.monotonic() > deadline:
                    raise AssertionError("confluent-kafka: timed out consuming %s: got %r of %r" % (
                        topic, {p: len(v) for p, v in got.items()}, expected_counts))
                for m in consumer.consume(num_messages=5000, timeout=0.2):
                    if m.error():
                        raise AssertionError("confluent-kafka consume error: %s" % m.error())
                    got[m.partition()].append((m.offset(), m.key(), m.value(), list(m.headers() or [])))
            watermarks = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)
                          for p in range(partitions)}
            return got, watermarks
        finally:
            consumer.close()


CLIENT_CLASSES = {c.name: c for c in (KafkaPython, Confluent)}


# --------------------------------------------------------------------------------------------
# Checks


def expected_by_partition(records, delivered, seed, label):
    """From the delivery reports: per partition, the records in offset order, offsets dense from 0."""
    assert all(d is not None for d in delivered), "%s (seed %d): records without a delivery report" % (label, seed)
    by_part = {}
    key_part = {}
    for i, ((k, v, h), (p, o)) in enumerate(zip(records, delivered)):
        by_part.setdefault(p, []).append((o, i))
        if key_part.setdefault(k, p) != p:
            raise AssertionError("%s (seed %d): key %r went to partitions %d and %d"
                                 % (label, seed, k, key_part[k], p))
    assert set(by_part) <= set(range(PARTITIONS)), by_part.keys()
    out = {}
    for p, lst in sorted(by_part.items()):
        lst.sort()
        offsets = [o for o, _ in lst]
        assert offsets == list(range(len(lst))), (
            "%s (seed %d): delivered offsets of partition %d are not dense from 0: %r..."
            % (label, seed, p, [o for o in offsets if o not in range(len(lst))][:20]))
        out[p] = [(o, records[i][0], records[i][1], records[i][2]) for o, i in lst]
    if len(records) >= 100:
        assert len(out) == PARTITIONS, "%s (seed %d): keyed records used only partitions %r" % (
            label, seed, sorted(out))
    return out


def check_production_order(records, delivered, seed, label):
    """Within each partition, offsets increase in the order the application produced the records."""
    last = {}
    for i, (p, o) in enumerate(delivered):
        if p in last and o < last[p][1]:
            j, prev = last[p]
            raise AssertionError(
                "%s (seed %d): partition %d is not in production order: record #%d got offset %d, but the "
                "earlier record #%d got offset %d (a later batch was committed first).\n"
                "Runs of consecutive offsets in production order (offsets, records):\n  %s"
                % (label, seed, p, i, o, j, prev, "\n  ".join(offset_runs(delivered, p)[:30])))
        last[p] = (i, o)


def offset_runs(delivered, partition):
    runs = []
    for i, (p, o) in enumerate(delivered):
        if p != partition:
            continue
        if runs and o == runs[-1][3] + 1:
            runs[-1][2:] = [i, o]
        else:
            runs.append([i, o, i, o])
    return ["%d..%d: #%d..#%d" % (o0, o1, i0, i1) for i0, o0, i1, o1 in runs]


def describe(rec):
    o, k, v, h = rec
    return "offset %d key %r value %s headers %r" % (
        o, k[:16], None if v is None else "%d bytes %r..." % (len(v), v[:16]), h)


def check_consumed(expected, got, watermarks, seed, label):
    for p in range(PARTITIONS):
        exp = expected.get(p, [])
        g = got.get(p, [])
        for j, (a, b) in enumerate(zip(exp, g)):
            if a != b:
                raise AssertionError("%s (seed %d): partition %d, record #%d differs:\n expected %s\n got      %s"
                                     % (label, seed, p, j, describe(a), describe(b)))
        assert len(g) == len(exp), "%s (seed %d): partition %d: consumed %d records, expected %d" % (
            label, seed, p, len(g), len(exp))
        assert tuple(watermarks[p]) == (0, len(exp)), (
            "%s (seed %d): partition %d watermarks %r, expected (0, %d)" % (label, seed, p, watermarks[p], len(exp)))


# --------------------------------------------------------------------------------------------
# Tests


@pytest.mark.parametrize("compression", COMPRESSIONS)
@pytest.mark.parametrize("client", CLIENTS)
def test_roundtrip(server, client, compression):
    seed = seed_for(client, compression)
    label = "%s/%s" % (client, compression)
    print("%s: seed %d (rerun with SIDESTREAM_TEST_SEED=%d)" % (label, seed, seed))
    topic = "rt-%s-%s" % (client, compression)
    records = make_records(seed, N_RECORDS)
    c = CLIENT_CLASSES[client](server.bootstrap)

    t0 = time.monotonic()
    c.create_topic(topic, PARTITIONS)
    server.wait_topic_ready(topic, PARTITIONS)
    delivered = c.produce(topic, records, compression)
    t1 = time.monotonic()
    expected = expected_by_partition(records, delivered, seed, label)
    counts = {p: len(v) for p, v in expected.items()}
    got, watermarks = c.consume(topic, PARTITIONS, counts)
    t2 = time.monotonic()
    print("%s: produced %d records in %.1fs, consumed in %.1fs, per partition %r"
          % (label, len(records), t1 - t0, t2 - t1, counts))
    check_consumed(expected, got, watermarks, seed, label)
    PRODUCED[topic] = (seed, records, delivered)
    check_production_order(records, delivered, seed, label)


def test_restart_then_read_everything_again(server):
    if not PRODUCED:
        pytest.skip("no round trip test succeeded: nothing to read back")
    server.restart()
    for topic, (seed, records, delivered) in sorted(PRODUCED.items()):
        expected = expected_by_partition(records, delivered, seed, topic)
        counts = {p: len(v) for p, v in expected.items()}
        for client in CLIENTS:
            label = "%s read by %s after restart" % (topic, client)
            got, watermarks = CLIENT_CLASSES[client](server.bootstrap).consume(topic, PARTITIONS, counts)
            check_consumed(expected, got, watermarks, seed, label)

