"""Data that ages (issue 18), on a real S3-compatible server (s3s-fs over HTTP):

- retention.ms: records older than it go, by whole extents: the earliest offset moves, a fetch
  below it gets OFFSET_OUT_OF_RANGE, a consumer with auto.offset.reset=earliest starts at the new
  start, the objects that held only expired records are deleted from the bucket after
  object_delete_delay_ms, and the controller store's rows for them are gone. Objects still
  referenced stay, and their records read back byte for byte.
- retention.bytes: a partition keeps at least that many bytes, no more than one extent beyond.
- DeleteRecords with confluent-kafka's AdminClient (inside a batch too, -1 for the high
  watermark, beyond it OFFSET_OUT_OF_RANGE).
- Deleting a topic deletes its objects from the bucket.
- /metrics shows what the store holds, and the object store requests and bytes by topic.

The Java AdminClient's deleteRecords and kafka-delete-records.sh are in test_compat_java.py.
"""

import os
import sqlite3
import time
import uuid

import pytest

import kafka_wire
from conftest import SidestreamServer, poll_until
from s3_server import s3s_fs_binary

TIMEOUT = 120.0
PREFIX = "cluster-r"
OFFSET_OUT_OF_RANGE = 1

pytestmark = pytest.mark.skipif(
    s3s_fs_binary() is None and not os.environ.get("CI"),
    reason="s3s-fs is not installed (scripts/test installs it)")

# Jobs every 200 ms, objects deleted 1 s after their last reference went.
FAST_JOBS = {
    "SIDESTREAM_RETENTION_CHECK_INTERVAL_MS": "200",
    "SIDESTREAM_RETENTION_OBJECT_GC_INTERVAL_MS": "200",
    "SIDESTREAM_RETENTION_OBJECT_DELETE_DELAY_MS": "1000",
    "SIDESTREAM_CONTROLLER_JOB_LEASE_MS": "2000",
}


@pytest.fixture
def agent(tmp_path, s3):
    env = s3.sidestream_env(PREFIX)
    env["SIDESTREAM_CONTROLLER_STORE"] = "sqlite://%s" % (tmp_path / "controller.db")
    env.update(FAST_JOBS)
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log", extra_env=env)
    srv.db = tmp_path / "controller.db"
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


def create_topic(bootstrap, topic, partitions, **configs):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    nt = NewTopic(topic, num_partitions=partitions, replication_factor=1, config={k: str(v) for k, v in configs.items()})
    admin.create_topics([nt], operation_timeout=30)[topic].result(timeout=TIMEOUT)


def produce(bootstrap, topic, records, partition=0, timestamp_ms=None):
    """Produces (key, value) records with acks=all and waits for every delivery; returns offsets."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    offsets, errors = [], []

    def report(err, msg):
        if err is not None:
            errors.append(str(err))
        else:
            offsets.append(msg.offset())

    for k, v in records:
        kwargs = {"timestamp": timestamp_ms} if timestamp_ms is not None else {}
        p.produce(topic, key=k, value=v, partition=partition, on_delivery=report, **kwargs)
    assert p.flush(TIMEOUT) == 0
    assert not errors, errors[:5]
    return sorted(offsets)


def watermarks(bootstrap, topic, partition=0):
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm-" + uuid.uuid4().hex})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    finally:
        c.close()


def consume_from_beginning(bootstrap, topic, expected, partition=0):
    """{offset: (key, value)} of a consumer with auto.offset.reset=earliest and no committed offset."""
    from confluent_kafka import Consumer

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "ret-" + uuid.uuid4().hex,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    got = {}
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + TIMEOUT
        while len(got) < expected:
            assert time.monotonic() < deadline, "consumed %d of %d" % (len(got), expected)
            for m in c.consume(num_messages=1000, timeout=0.2):
                assert not m.error(), m.error()
                assert m.partition() == partition
                got[m.offset()] = (m.key(), m.value())
    finally:
        c.close()
    return got


def fetch_error(srv, topic, offset, partition=0):
    with srv.connect() as c:
        body = kafka_wire.fetch_v4_body([(topic, [(partition, offset, 1 << 20)])], max_wait_ms=0, min_bytes=0)
        r = c.request(kafka_wire.FETCH, 4, body)
        return kafka_wire.parse_fetch_v4(r)[(topic, partition)]["error_code"]


def store_rows(db, sql, *args):
    with sqlite3.connect(db) as c:
        return c.execute(sql, args).fetchall()


def records(n, tag, repeat=20):
    """n (key, value) records, values of about 10 * `repeat` bytes."""
    return [(("k%d" % i).encode(), ("%s-%06d-" % (tag, i)).encode() * repeat) for i in range(n)]


def test_retention_ms_moves_the_log_start_and_deletes_the_expired_objects(agent, s3):
    topic = "ret-time"
    create_topic(agent.bootstrap, topic, 1, **{"retention.ms": 600_000})
    hour_ago = int(time.time() * 1000) - 3_600_000
    old = produce(agent.bootstrap, topic, records(300, "old"), timestamp_ms=hour_ago)
    old_objects = set(s3.objects(PREFIX + "/"))
    assert old == list(range(300)) and old_objects
    new_records = records(200, "new")
    new = produce(agent.bootstrap, topic, new_records)
    new_objects = set(s3.objects(PREFIX + "/")) - old_objects
    assert new == list(range(300, 500)) and new_objects

    poll_until(lambda: watermarks(agent.bootstrap, topic) == (300, 500), 30, what="the earliest offset to reach 300")
    assert fetch_error(agent, topic, 0) == OFFSET_OUT_OF_RANGE
    assert fetch_error(agent, topic, 299) == OFFSET_OUT_OF_RANGE
    assert fetch_error(agent, topic, 300) == 0
    # The index rows of the expired records are gone at once; their objects after the delay.
    assert store_rows(agent.db, "SELECT COUNT(*) FROM extents WHERE end_offset <= 300") == [(0,)]
    poll_until(lambda: not (old_objects & set(s3.objects(PREFIX + "/"))), 30, what="the expired objects to be deleted")
    assert new_objects <= set(s3.objects(PREFIX + "/")), "an object still referenced was deleted"
    stored = {k for (k,) in store_rows(agent.db, "SELECT key FROM objects")}
    assert not {k for k in stored if any(o.endswith(k) for o in old_objects)}, "deleted objects still in the store"
    assert store_rows(agent.db, "SELECT COUNT(*) FROM garbage") == [(0,)]
    # auto.offset.reset=earliest starts at the new log start; the kept records are intact.
    got = consume_from_beginning(agent.bootstrap, topic, 200)
    assert sorted(got) == list(range(300, 500))
    assert [got[o] for o in range(300, 500)] == new_records
    metrics = agent.metrics()
    assert 'sidestream_stored_topic_bytes{topic="ret-time"}' in metrics, metrics[-2000:]
    assert "sidestream_objects_deleted_total" in metrics


def topic_cost(srv, topic):
    """{(request, 'requests'|'bytes'): n} of a topic, from /metrics."""
    m = srv.metrics()
    return {(r, kind): int(m.get('sidestream_object_store_topic_%s_total{request="%s",topic="%s"}' % (kind, r, topic), 0))
            for r in ("put", "get") for kind in ("requests", "bytes")}


def test_metrics_count_object_store_requests_and_bytes_by_topic(agent, s3):
    busy, quiet = "cost-busy", "cost-quiet"
    for t in (busy, quiet):
        create_topic(agent.bootstrap, t, 1)
    busy_records = records(2000, "busy", repeat=50)  # about 1 MB
    produce(agent.bootstrap, busy, busy_records)
    produce(agent.bootstrap, quiet, records(10, "quiet"))
    busy_bytes = sum(len(k) + len(v) for k, v in busy_records)
    cost = topic_cost(agent, busy)
    # Every PUT that held the topic's data, and its bytes: the records and their batch framing.
    assert cost[("put", "requests")] >= 1, cost
    assert busy_bytes <= cost[("put", "bytes")] <= 2 * busy_bytes, (cost, busy_bytes)
    assert topic_cost(agent, quiet)[("put", "requests")] >= 1
    assert cost[("put", "bytes")] <= agent.metrics()["sidestream_object_upload_bytes_total"]

    # A cold read (the read cache emptied by a restart) of one topic makes GETs for it alone.
    agent.stop()
    import shutil
    shutil.rmtree(agent.data_dir / "cache", ignore_errors=True)
    agent.start()
    got = consume_from_beginning(agent.bootstrap, busy, len(busy_records))
    assert [got[o] for o in range(len(busy_records))] == busy_records
    cost = topic_cost(agent, busy)
    assert cost[("get", "requests")] >= 1, cost
    assert cost[("get", "bytes")] >= busy_bytes, (cost, busy_bytes)
    assert topic_cost(agent, quiet)[("get", "requests")] == 0
    cache_gets = agent.metrics()["sidestream_cache_block_gets_total"]
    assert cost[("get", "requests")] == cache_gets, (cost, cache_gets)


def test_a_consumer_below_the_log_start_resets_as_its_auto_offset_reset_says(agent, s3):
    """A group whose committed offset fell below the log start gets OFFSET_OUT_OF_RANGE and
    resets as on Kafka: earliest to the new start, latest to the end, error to an error."""
    from confluent_kafka import Consumer, KafkaError, TopicPartition
    from confluent_kafka.admin import AdminClient

    topic = "ret-reset"
    create_topic(agent.bootstrap, topic, 1)
    produce(agent.bootstrap, topic, records(200, "r"))
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    for f in admin.delete_records([TopicPartition(topic, 0, 120)]).values():
        f.result(TIMEOUT)

    fetching_at = {}  # the next offset librdkafka fetches, from its statistics

    def stats(text):
        import json
        p = json.loads(text).get("topics", {}).get(topic, {}).get("partitions", {}).get("0", {})
        if p.get("fetch_state") == "active":
            fetching_at["offset"] = p.get("next_offset")

    def consumer(reset):
        c = Consumer({"bootstrap.servers": agent.bootstrap, "group.id": "reset-" + reset, "auto.offset.reset": reset,
                      "enable.auto.commit": False, "fetch.wait.max.ms": 100,
                      "statistics.interval.ms": 100, "stats_cb": stats})
        # The group's position is below the log start (committed before the records went).
        c.commit(offsets=[TopicPartition(topic, 0, 10)], asynchronous=False)
        c.subscribe([topic])
        return c

    def first_event(c):
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            m = c.poll(0.2)
            if m is not None:
                return m
        raise AssertionError("no record and no error within 30 s")

    c = consumer("earliest")
    try:
        m = first_event(c)
        assert m.error() is None and m.offset() == 120, (m.error(), m.offset())
    finally:
        c.close()
    c = consumer("error")
    try:
        m = first_event(c)
        assert m.error() is not None and m.error().code() == KafkaError._AUTO_OFFSET_RESET, m.error()
    finally:
        c.close()
    fetching_at.clear()
    c = consumer("latest")
    try:
        poll_until(lambda: c.poll(0.1) is None and fetching_at.get("offset") == 200, 30,
                   what="the latest consumer to fetch from the end")
        produce(agent.bootstrap, topic, [(b"k", b"after the reset")])
        m = first_event(c)
        assert m.error() is None and (m.offset(), m.value()) == (200, b"after the reset"), (m.error(), m.offset())
    finally:
        c.close()


def test_retention_bytes_keeps_at_least_that_many_bytes(agent, s3):
    topic = "ret-bytes"
    create_topic(agent.bootstrap, topic, 1, **{"retention.bytes": 100_000})
    # Ten separate objects of about 50 kB each (each produce call waits for its commit).
    for i in range(10):
        produce(agent.bootstrap, topic, records(50, "b%d" % i, repeat=100))

    def extent_bytes():
        return [r[0] for r in store_rows(agent.db, "SELECT length FROM extents e JOIN topics t ON t.id = e.topic_id "
                                                   "WHERE t.name = ? ORDER BY base_offset", topic)]

    def stored_bytes():
        return sum(extent_bytes())

    def done():
        # Kafka's rule: the oldest segment goes while what remains without it is retention.bytes
        # or more. Done when it cannot go (passes may stop at a page, so wait for exactly this).
        sizes = extent_bytes()
        return watermarks(agent.bootstrap, topic)[0] > 0 and sum(sizes) - sizes[0] < 100_000

    poll_until(done, 30, what="retention.bytes to move the log start as far as it goes")
    low, high = watermarks(agent.bootstrap, topic)
    assert high == 500 and low % 50 == 0, (low, high)
    assert 100_000 <= stored_bytes() < 160_000, stored_bytes()
    got = consume_from_beginning(agent.bootstrap, topic, high - low)
    assert sorted(got) == list(range(low, high))


def test_delete_records_with_the_admin_client(agent, s3):
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import AdminClient

    topic = "ret-delete-records"
    create_topic(agent.bootstrap, topic, 2)
    batch = records(100, "d")
    produce(agent.bootstrap, topic, batch, partition=0)
    produce(agent.bootstrap, topic, batch, partition=1)
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})

    def delete(*tps):
        futures = admin.delete_records([TopicPartition(topic, p, o) for p, o in tps], request_timeout=30)
        return {tp.partition: f for tp, f in futures.items()}

    # Inside the one batch that holds offsets 0..99; and partition 1 up to its high watermark.
    done = delete((0, 42), (1, -1))
    assert done[0].result(timeout=30).low_watermark == 42
    assert done[1].result(timeout=30).low_watermark == 100
    assert watermarks(agent.bootstrap, topic, 0) == (42, 100)
    assert watermarks(agent.bootstrap, topic, 1) == (100, 100)
    assert fetch_error(agent, topic, 41) == OFFSET_OUT_OF_RANGE
    # The client skips the records below the start in the batch it gets.
    got = consume_from_beginning(agent.bootstrap, topic, 58)
    assert sorted(got) == list(range(42, 100)) and got[42] == batch[42]
    # Below the log start changes nothing; beyond the high watermark is refused.
    assert delete((0, 10))[0].result(timeout=30).low_watermark == 42
    with pytest.raises(Exception, match="OFFSET_OUT_OF_RANGE|out of range"):
        delete((0, 101))[0].result(timeout=30)
    # Restarted, the log starts hold (they are in the store).
    agent.restart()
    assert watermarks(agent.bootstrap, topic, 0) == (42, 100)


def test_deleting_a_topic_deletes_its_objects(agent, s3):
    from confluent_kafka.admin import AdminClient

    keep, doomed = "ret-keep", "ret-doomed"
    create_topic(agent.bootstrap, keep, 1)
    create_topic(agent.bootstrap, doomed, 1)
    before = set(s3.objects(PREFIX + "/"))
    produce(agent.bootstrap, doomed, records(100, "x"))
    doomed_objects = set(s3.objects(PREFIX + "/")) - before
    produce(agent.bootstrap, keep, records(100, "y"))
    kept_objects = set(s3.objects(PREFIX + "/")) - before - doomed_objects
    admin = AdminClient({"bootstrap.servers": agent.bootstrap})
    admin.delete_topics([doomed], operation_timeout=30)[doomed].result(timeout=TIMEOUT)
    poll_until(lambda: not (doomed_objects & set(s3.objects(PREFIX + "/"))), 30, what="the deleted topic's objects to go")
    assert kept_objects <= set(s3.objects(PREFIX + "/"))
    assert len(consume_from_beginning(agent.bootstrap, keep, 100)) == 100


def job_runs(srv, job):
    return int(srv.metrics().get('sidestream_job_runs_total{job="%s"}' % job, 0))


def test_two_agents_with_a_remote_controller_never_run_the_same_job_at_once(tmp_path):
    """Two agents offer every job every 200 ms to one `sidestream controller`: only the lease
    holder runs them (the other's pass count stays 0) and the log start it moves reaches the
    other agent; SIGKILL the holder, and the other takes the jobs over once the lease ran out."""
    from test_cluster import ControllerProcess, make_agent

    ctl = ControllerProcess(tmp_path, "controller", "sqlite://%s" % (tmp_path / "controller.db"),
                            {"SIDESTREAM_CONTROLLER_JOB_LEASE_MS": "1500"}).start()
    agents = []
    try:
        ctl.wait_listening()
        objects = tmp_path / "objects"
        agents = [make_agent(tmp_path, i, [ctl.address], objects, dict(FAST_JOBS)).start() for i in range(2)]
        topic = "ret-leased"
        create_topic(agents[0].bootstrap, topic, 1, **{"retention.ms": 600_000})
        produce(agents[0].bootstrap, topic, records(100, "old"), timestamp_ms=int(time.time() * 1000) - 3_600_000)
        old_objects = {p for p in objects.rglob("*.sso")}
        produce(agents[0].bootstrap, topic, records(100, "new"))
        poll_until(lambda: watermarks(agents[1].bootstrap, topic) == (100, 200), 30,
                   what="the log start to move, as the other agent sees it")
        poll_until(lambda: not any(p.exists() for p in old_objects), 30, what="the expired objects to be deleted")
        runs = [job_runs(a, "retention") for a in agents]
        assert sorted(runs)[0] == 0 and sorted(runs)[1] > 0, runs
        gc_runs = [job_runs(a, "object-gc") for a in agents]
        assert sorted(gc_runs)[0] == 0 and sorted(gc_runs)[1] > 0, gc_runs
        holder = 0 if runs[0] else 1
        other = agents[1 - holder]
        # Still only the holder, a while later.
        time.sleep(1.0)
        assert job_runs(other, "retention") == 0
        agents[holder].kill()
        poll_until(lambda: job_runs(other, "retention") > 0, 30, what="the other agent to take the job over")
    finally:
        for a in agents:
            a.close()
        ctl.close()
