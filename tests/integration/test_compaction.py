"""Object compaction with a real client: a consumer reading the whole topic over and over while
the compaction job rewrites its objects sees every record exactly once, at its offset, with
the bytes it was produced with; afterwards the data lives in per-partition objects (a few
partitions, each a large share of every upload) or in partition-sorted ones (many partitions,
each too small a share for objects of its own)."""

import threading
import time

from confluent_kafka import Producer

from conftest import SidestreamServer, poll_until
from readback import create_topic, read_all

PARTITIONS = 4
ROUNDS = 20
PER_ROUND = 400


def compaction_env(max_requests_per_s):
    return {
        "SIDESTREAM_COMPACTION_CHECK_INTERVAL_MS": "100",
        "SIDESTREAM_COMPACTION_MIN_AGE_MS": "0",
        "SIDESTREAM_COMPACTION_TARGET_BYTES": str(1 << 20),
        "SIDESTREAM_COMPACTION_MAX_REQUESTS_PER_S": str(max_requests_per_s),
    }


def written(srv):
    return sum(v for k, v in srv.metrics().items() if k.split("{")[0] == "sidestream_compaction_objects_total")


def check(got, sent):
    for p in sorted(sent):
        offsets = [o for o, _ in got[p]]
        assert offsets == list(range(len(sent[p]))), "partition %d: offsets not 0..%d (gap or duplicate)" % (p, len(sent[p]))
        assert [v for _, v in got[p]] == sent[p], "partition %d: records changed" % p


def test_a_consumer_reading_while_compaction_runs_sees_every_record_once_unchanged(tmp_path):
    # 4 partitions: about 1.4 MiB each, a quarter of any split window (an eighth of the 1 MiB
    # target is enough for objects of their own).
    objects = compact_while_reading(tmp_path, PARTITIONS)
    assert len(list(objects.rglob("*.p.sso"))) >= PARTITIONS, list(objects.rglob("*.sso"))


def test_many_small_partitions_share_partition_sorted_objects(tmp_path):
    # 60 partitions: about 97 KiB each, under an eighth of the 1 MiB target in any split window
    # (and in all): every record ends in partition-sorted objects, fewer than the partitions.
    objects = compact_while_reading(tmp_path, 60)
    assert not list(objects.rglob("*.p.sso")), list(objects.rglob("*.p.sso"))
    assert 1 <= len(list(objects.rglob("*.s.sso"))) < 60, list(objects.rglob("*.sso"))


def compact_while_reading(tmp_path, partitions):
    """Produces ROUNDS x PER_ROUND records over `partitions`, then reads the topic over and over
    while compaction runs, until it settles; checks every record, also after a restart (cold
    cache). Returns the objects directory."""
    # A slow request budget stretches the job over many reads.
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log", extra_env=compaction_env(15)).start()
    try:
        topic = "compacting"
        create_topic(srv.bootstrap, topic, partitions)
        producer = Producer({"bootstrap.servers": srv.bootstrap, "acks": "all", "linger.ms": 5})
        sent = {p: [] for p in range(partitions)}
        for r in range(ROUNDS):
            for i in range(PER_ROUND):
                p = i % partitions
                value = b"%d-%03d-%04d-" % (p, r, i) + bytes([(r * 7 + i) % 251]) * 700
                sent[p].append(value)
                producer.produce(topic, value=value, partition=p)
            assert producer.flush(30) == 0  # one round: a few uploaded objects of every partition
        total = ROUNDS * PER_ROUND

        reads, overlapping = [0], [0]
        failures = []
        stop = threading.Event()

        def reader():
            try:
                while not stop.is_set():
                    before = written(srv)
                    check(read_all(srv.bootstrap, topic, partitions, total), sent)
                    reads[0] += 1
                    if written(srv) != before:
                        overlapping[0] += 1
            except Exception as e:  # noqa: BLE001 (reported by the main thread)
                failures.append(e)

        t = threading.Thread(target=reader)
        t.start()
        try:
            # Until the job settles: objects written, then none for two seconds.
            last = [-1, time.monotonic()]

            def settled():
                n = written(srv)
                if n != last[0]:
                    last[0], last[1] = n, time.monotonic()
                return n > 0 and time.monotonic() - last[1] > 2 and not failures

            poll_until(lambda: settled() or failures, 180, interval=0.2, what="compaction to settle")
        finally:
            stop.set()
            t.join(120)
        assert not failures, failures[0]
        assert overlapping[0] >= 1, "no read overlapped the compaction (%d reads)" % reads[0]
        # The topic's PUTs on /metrics: its uploads and the job's objects (one topic: all of them).
        m = srv.metrics()
        puts = m['sidestream_object_store_topic_requests_total{request="put",topic="%s"}' % topic]
        assert puts == m["sidestream_objects_uploaded_total"] + written(srv), (puts, written(srv))
        assert m['sidestream_object_store_topic_requests_total{request="get",topic="%s"}' % topic] > 0
        check(read_all(srv.bootstrap, topic, partitions, total), sent)

        # The data now lives in compaction's objects; a restarted agent (cold cache) reads it.
        srv.stop()
        srv.start()
        check(read_all(srv.bootstrap, topic, partitions, total), sent)
        return tmp_path / "data" / "objects"
    finally:
        srv.close()


def read_compacted(bootstrap, topic, timeout=60):
    """Every record of partition 0 of a compacted topic: [(offset, key, value)] (gaps allowed)."""
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "compacted", "enable.auto.commit": False,
                  "enable.partition.eof": True})
    c.assign([TopicPartition(topic, 0, 0)])
    out = []
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == -191:  # end of partition
                    return out
                raise AssertionError("consumer error: %s" % m.error())
            out.append((m.offset(), m.key(), m.value()))
    finally:
        c.close()
    raise AssertionError("no end of partition within %ss" % timeout)


def test_log_compaction_keeps_the_latest_value_per_key_and_drops_old_tombstones(tmp_path):
    from confluent_kafka.admin import AdminClient, NewTopic

    env = dict(compaction_env(10_000), SIDESTREAM_COMPACTION_CHECK_INTERVAL_MS="200")
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log", extra_env=env).start()
    try:
        topic = "changelog"
        admin = AdminClient({"bootstrap.servers": srv.bootstrap})
        configs = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01", "delete.retention.ms": "3000"}
        admin.create_topics([NewTopic(topic, num_partitions=1, replication_factor=1, config=configs)])[topic].result(30)
        producer = Producer({"bootstrap.servers": srv.bootstrap, "acks": "all", "linger.ms": 5})
        # A record without a key is refused on a compacted topic, as Kafka does.
        errors = []
        producer.produce(topic, value=b"no key", on_delivery=lambda err, _m: errors.append(err))
        producer.flush(30)
        assert errors and errors[0] is not None and errors[0].name() == "INVALID_RECORD", errors
        latest = {}
        for i in range(10_000):
            key = b"key-%03d" % (i % 100)
            producer.produce(topic, key=key, value=b"value-%05d" % i)
            latest[key] = b"value-%05d" % i
            if i % 1000 == 999:
                producer.flush(30)
        deleted = [b"key-%03d" % k for k in range(10)]
        for key in deleted:
            producer.produce(topic, key=key, value=None)
        assert producer.flush(30) == 0
        end = 10_000 + len(deleted)

        def expected(with_tombstones):
            want = {k: v for k, v in latest.items() if k not in deleted}
            if with_tombstones:
                want.update({k: None for k in deleted})
            return want

        def state():
            records = read_compacted(srv.bootstrap, topic)
            offsets = [o for o, _, _ in records]
            assert offsets == sorted(set(offsets)), "offsets out of order or repeated"
            return records

        # Cleaned: one record per key, the latest (tombstones still there)...
        poll_until(lambda: {k: v for _, k, v in state()} == expected(True) and len(state()) == 100, 60, interval=0.5,
                   what="the latest value per key")
        records = state()
        assert len(records) == 100, len(records)
        assert records[-1][0] == end - 1, "the last record keeps its offset"
        # ...and after delete.retention.ms the tombstones are gone too.
        poll_until(lambda: len(state()) == 90, 60, interval=0.5, what="tombstones to expire")
        assert {k: v for _, k, v in state()} == expected(False)
        # Offsets never moved: each kept record is at the offset it was written at, and the log
        # still ends where it did.
        for offset, key, value in state():
            assert value == b"value-%05d" % offset, (offset, key, value)
        from confluent_kafka import Consumer, TopicPartition
        c = Consumer({"bootstrap.servers": srv.bootstrap, "group.id": "w"})
        assert c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10) == (0, end)
        c.close()
    finally:
        srv.close()


def race_value(p, i):
    """The record at offset `i` of partition `p` (one producer per partition: offset = sequence)."""
    return b"%d-%07d-" % (p, i) + bytes([(p * 31 + i) % 251]) * 400


def read_pass(bootstrap, topic, p):
    """Reads partition `p` from its log start to the high watermark seen first: the number of
    records checked, or None when the start moved past the reader (retention won the race)."""
    from confluent_kafka import Consumer, TopicPartition, OFFSET_BEGINNING

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "race", "enable.auto.commit": False,
                  "auto.offset.reset": "error", "fetch.wait.max.ms": 50,
                  # Small fetches: a pass spans many of them, and the jobs' swaps and deletions.
                  "max.partition.fetch.bytes": 16384})
    try:
        _, end = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING)])
        expect, seen = None, 0
        deadline = time.monotonic() + 60
        while expect is None or expect < end:
            assert time.monotonic() < deadline, "partition %d: read stuck at %s of %d" % (p, expect, end)
            m = c.poll(0.2)
            if m is None:
                continue
            if m.error():
                # The log start moved past the reader's position: Kafka's answer, start again.
                if m.error().code() in (1, -140):  # OFFSET_OUT_OF_RANGE, _AUTO_OFFSET_RESET
                    return None
                raise AssertionError("partition %d: consumer error %s" % (p, m.error()))
            o = m.offset()
            assert expect is None or o == expect, "partition %d: offset %d after %d (gap or duplicate)" % (p, o, expect - 1)
            assert m.value() == race_value(p, o), "partition %d offset %d: bytes changed" % (p, o)
            expect, seen = o + 1, seen + 1
        return seen
    finally:
        c.close()


def test_retention_compaction_and_readers_race_and_no_referenced_object_is_deleted(tmp_path, s3):
    """Retention (retention.bytes) cuts the log start, object compaction rewrites what is left,
    the collector deletes what neither references, and readers read all of it all the time: every
    read is byte for byte what was produced, with no gap and no duplicate, none fails for a
    missing object, and at the end every object the store references is in the bucket. (With the
    store's "no extent references it" check removed from release_objects, it fails.)"""
    import sqlite3

    prefix, partitions, rounds, per_round = "race", 3, 30, 200
    env = s3.sidestream_env(prefix)
    env.update(compaction_env(400))
    # Uploaded objects live a second before compaction splits them, so retention also cuts
    # objects other partitions still read from (partition 0 gets three times the records).
    env["SIDESTREAM_COMPACTION_MIN_AGE_MS"] = "1000"
    env.update({
        "SIDESTREAM_CONTROLLER_STORE": "sqlite://%s" % (tmp_path / "controller.db"),
        "SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS": "50",
        "SIDESTREAM_RETENTION_CHECK_INTERVAL_MS": "100",
        "SIDESTREAM_RETENTION_OBJECT_GC_INTERVAL_MS": "100",
        "SIDESTREAM_RETENTION_OBJECT_DELETE_DELAY_MS": "500",
    })
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log", extra_env=env).start()

    def metric(name):
        return sum(v for k, v in srv.metrics().items() if k.split("{")[0] == name)

    try:
        from confluent_kafka.admin import AdminClient, NewTopic

        topic = "racing"
        admin = AdminClient({"bootstrap.servers": srv.bootstrap})
        admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1,
                                      config={"retention.bytes": "300000"})])[topic].result(30)
        failures, stop = [], threading.Event()
        passes, cut = [0], [0]

        def reader():
            try:
                while not stop.is_set():
                    for p in range(partitions):
                        n = read_pass(srv.bootstrap, topic, p)
                        passes[0] += n is not None
                        cut[0] += n is None
            except Exception as e:  # noqa: BLE001 (reported by the main thread)
                failures.append(e)

        readers = [threading.Thread(target=reader) for _ in range(2)]
        for t in readers:
            t.start()
        deleted_before, compacted_before = metric("sidestream_objects_deleted_total"), written(srv)
        try:
            producer = Producer({"bootstrap.servers": srv.bootstrap, "acks": "all", "linger.ms": 5,
                                 "enable.idempotence": True})
            sent = [0] * partitions
            for _ in range(rounds):
                for _ in range(per_round):
                    for p in range(partitions):
                        for _ in range(3 if p == 0 else 1):
                            producer.produce(topic, value=race_value(p, sent[p]), partition=p)
                            sent[p] += 1
                assert producer.flush(30) == 0
                assert not failures, failures[0]
            # Both jobs ran while the readers read.
            poll_until(lambda: failures or (metric("sidestream_objects_deleted_total") > deleted_before
                                            and written(srv) > compacted_before and passes[0] >= 2 * partitions),
                       60, interval=0.2, what="retention, compaction and reads to overlap")
        finally:
            stop.set()
            for t in readers:
                t.join(120)
        assert not failures, failures[0]
        print("read passes: %d whole, %d cut short by retention; objects deleted %d, compacted %d"
              % (passes[0], cut[0], metric("sidestream_objects_deleted_total") - deleted_before,
                 written(srv) - compacted_before))

        # Every object the store references is in the bucket (the collector deleted only garbage).
        def referenced():
            with sqlite3.connect(tmp_path / "controller.db") as c:
                return {k for (k,) in c.execute("SELECT DISTINCT object_key FROM extents")}

        in_bucket = set(s3.objects(prefix + "/"))
        missing = {k for k in referenced() if not any(o.endswith(k) for o in in_bucket)}
        assert not missing, "referenced objects deleted: %s" % sorted(missing)[:5]

        # A restarted agent (cold cache) reads every partition from its log start to the end.
        srv.stop()
        srv.start()
        from confluent_kafka import Consumer, TopicPartition
        c = Consumer({"bootstrap.servers": srv.bootstrap, "group.id": "w"})
        for p in range(partitions):
            start, high = c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)
            assert high == sent[p] and 0 < start < high, (p, start, high)
            assert read_pass(srv.bootstrap, topic, p) == high - start
        c.close()
    finally:
        srv.close()
