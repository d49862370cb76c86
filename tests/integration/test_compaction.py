"""Object compaction with a real client: a consumer reading the whole topic over and over while
the compaction job rewrites its objects sees every record exactly once, at its offset, with
the bytes it was produced with; afterwards the data lives in per-partition objects."""

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
    for p in range(PARTITIONS):
        offsets = [o for o, _ in got[p]]
        assert offsets == list(range(len(sent[p]))), "partition %d: offsets not 0..%d (gap or duplicate)" % (p, len(sent[p]))
        assert [v for _, v in got[p]] == sent[p], "partition %d: records changed" % p


def test_a_consumer_reading_while_compaction_runs_sees_every_record_once_unchanged(tmp_path):
    # A slow request budget stretches the job over many reads.
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log", extra_env=compaction_env(15)).start()
    try:
        topic = "compacting"
        create_topic(srv.bootstrap, topic, PARTITIONS)
        producer = Producer({"bootstrap.servers": srv.bootstrap, "acks": "all", "linger.ms": 5})
        sent = {p: [] for p in range(PARTITIONS)}
        for r in range(ROUNDS):
            for i in range(PER_ROUND):
                p = i % PARTITIONS
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
                    check(read_all(srv.bootstrap, topic, PARTITIONS, total), sent)
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
        check(read_all(srv.bootstrap, topic, PARTITIONS, total), sent)

        # The data now lives in per-partition objects; a restarted agent (cold cache) reads it.
        objects = list((tmp_path / "data" / "objects").rglob("*.p.sso"))
        assert len(objects) >= PARTITIONS, objects
        srv.stop()
        srv.start()
        check(read_all(srv.bootstrap, topic, PARTITIONS, total), sent)
    finally:
        srv.close()
