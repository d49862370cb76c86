"""Transactional producers with a real client (confluent-kafka / librdkafka): commit and abort,
read_committed vs read_uncommitted consumers, the last stable offset, fencing by a second
producer with the same transactional.id, the transaction timeout, consume-transform-produce
with send_offsets_to_transaction across a SIGKILL of the processor, and a server restart in
the middle of a transaction; transactional.id.expiration.ms. Every test runs with the embedded
controller on SQLite and on PostgreSQL (when SIDESTREAM_TEST_POSTGRES_URL is set).
"""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

import kafka_wire
from conftest import STORE_KINDS, SidestreamServer, controller_store_env, poll_until
from readback import create_topic, read_all

HERE = os.path.dirname(os.path.abspath(__file__))


@contextlib.contextmanager
def running_server(base, store_kind, env=None):
    """A server on `store_kind` with `env`, closed (and its database dropped) afterwards."""
    with controller_store_env(store_kind) as store_env:
        srv = SidestreamServer(base / "data", base / "server.log", extra_env=dict(store_env, **(env or {})))
        try:
            srv.start()
            yield srv
        finally:
            srv.close()


@pytest.fixture(scope="module", params=STORE_KINDS)
def server(tmp_path_factory, request):
    """One server per store kind for the module's tests (distinct topic names)."""
    with running_server(tmp_path_factory.mktemp("txn-" + request.param), request.param) as srv:
        yield srv


@pytest.fixture(params=STORE_KINDS)
def fresh_server(tmp_path, request):
    """A server of the test's own (it stops and restarts it)."""
    with running_server(tmp_path, request.param) as srv:
        yield srv


def txn_producer(bootstrap, txn_id, **extra):
    conf = {"bootstrap.servers": bootstrap, "transactional.id": txn_id, "linger.ms": 5}
    conf.update(extra)
    p = Producer(conf)
    p.init_transactions(30)
    return p


def read_topic(bootstrap, topic, partitions, isolation, until_count=0, timeout=60.0):
    """Every record of `topic` as {partition: [(offset, value)]}, read to the end (the LSO for
    read_committed) of every partition, and at least `until_count` of them."""
    got = read_all(bootstrap, topic, partitions, until_count, timeout=timeout, isolation=isolation)
    total = sum(len(v) for v in got.values())
    assert total >= until_count, "read %d records of %s, wanted %d" % (total, topic, until_count)
    return got


def values(got):
    return sorted(v for recs in got.values() for _, v in recs)


def watermarks(bootstrap, topic, partition, isolation):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "wm", "isolation.level": isolation})
    try:
        return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=10, cached=False)
    finally:
        c.close()


def produce_txn(p, topic, partitions, prefix, n):
    p.begin_transaction()
    for i in range(n):
        p.produce(topic, value=b"%s-%03d" % (prefix, i), partition=i % partitions)
    assert p.flush(30) == 0


def test_read_committed_sees_only_committed_records_and_never_a_marker(server):
    topic = "txn-basic"
    create_topic(server.bootstrap, topic, 2)
    p = txn_producer(server.bootstrap, "txn-basic-app")
    produce_txn(p, topic, 2, b"c1", 10)
    p.commit_transaction(30)
    produce_txn(p, topic, 2, b"ab", 10)
    p.abort_transaction(30)
    produce_txn(p, topic, 2, b"c2", 10)
    p.commit_transaction(30)

    committed = values(read_topic(server.bootstrap, topic, 2, "read_committed", until_count=20))
    assert committed == sorted([b"c1-%03d" % i for i in range(10)] + [b"c2-%03d" % i for i in range(10)])
    everything = read_topic(server.bootstrap, topic, 2, "read_uncommitted", until_count=30)
    assert values(everything) == sorted(committed + [b"ab-%03d" % i for i in range(10)])
    for part in range(2):
        # 15 records and 3 markers per partition: the markers hold offsets 5, 11 and 17 and are
        # never delivered as records.
        offsets = [o for o, _ in everything[part]]
        assert offsets == list(range(0, 5)) + list(range(6, 11)) + list(range(12, 17)), offsets
        assert watermarks(server.bootstrap, topic, part, "read_uncommitted") == (0, 18)
        assert watermarks(server.bootstrap, topic, part, "read_committed") == (0, 18)


def test_an_open_transaction_holds_back_the_last_stable_offset(server):
    topic = "txn-lso"
    create_topic(server.bootstrap, topic, 1)
    plain = Producer({"bootstrap.servers": server.bootstrap})
    plain.produce(topic, value=b"before", partition=0)
    assert plain.flush(30) == 0
    p = txn_producer(server.bootstrap, "txn-lso-app")
    produce_txn(p, topic, 1, b"open", 3)
    plain.produce(topic, value=b"after", partition=0)
    assert plain.flush(30) == 0
    # HW 5; the open transaction starts at offset 1.
    assert watermarks(server.bootstrap, topic, 0, "read_uncommitted") == (0, 5)
    assert watermarks(server.bootstrap, topic, 0, "read_committed") == (0, 1)
    assert values(read_topic(server.bootstrap, topic, 1, "read_committed")) == [b"before"]
    p.commit_transaction(30)
    assert watermarks(server.bootstrap, topic, 0, "read_committed") == (0, 6)
    assert values(read_topic(server.bootstrap, topic, 1, "read_committed", until_count=5)) == \
        sorted([b"before", b"after", b"open-000", b"open-001", b"open-002"])


def test_a_second_producer_with_the_same_transactional_id_fences_the_first(server):
    topic = "txn-fence"
    create_topic(server.bootstrap, topic, 2)
    first = txn_producer(server.bootstrap, "txn-fence-app")
    produce_txn(first, topic, 2, b"zombie", 6)
    second = txn_producer(server.bootstrap, "txn-fence-app")  # aborts the first one's transaction
    with pytest.raises(KafkaException) as raised:
        first.commit_transaction(30)
    err = raised.value.args[0]
    assert err.fatal(), err
    assert err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH), err
    produce_txn(second, topic, 2, b"live", 4)
    second.commit_transaction(30)
    assert values(read_topic(server.bootstrap, topic, 2, "read_committed", until_count=4)) == \
        sorted(b"live-%03d" % i for i in range(4))
    assert len(values(read_topic(server.bootstrap, topic, 2, "read_uncommitted", until_count=10))) == 10


def test_the_transaction_timeout_aborts_an_abandoned_transaction(server):
    topic = "txn-timeout"
    create_topic(server.bootstrap, topic, 1)
    abandoned = txn_producer(server.bootstrap, "txn-timeout-app", **{"transaction.timeout.ms": 2000,
                                                                      "message.timeout.ms": 2000})
    produce_txn(abandoned, topic, 1, b"abandoned", 3)
    plain = Producer({"bootstrap.servers": server.bootstrap})
    plain.produce(topic, value=b"later", partition=0)
    assert plain.flush(30) == 0
    assert watermarks(server.bootstrap, topic, 0, "read_committed") == (0, 0)
    started = time.monotonic()
    # The coordinator aborts within timeout + check interval; the LSO then passes the marker.
    poll_until(lambda: watermarks(server.bootstrap, topic, 0, "read_committed") == (0, 5), 30,
               interval=0.2, what="the LSO to pass the abort marker")
    assert time.monotonic() - started < 15
    assert values(read_topic(server.bootstrap, topic, 1, "read_committed", until_count=1)) == [b"later"]
    # The producer was fenced by the epoch bump: it cannot commit.
    with pytest.raises(KafkaException):
        abandoned.commit_transaction(10)


def run_processor(bootstrap, topic_in, topic_out, group, txn_id, expected, log):
    return subprocess.Popen([sys.executable, os.path.join(HERE, "txn_processor.py"), bootstrap, topic_in, topic_out,
                             group, txn_id, str(expected)], stdout=log, stderr=subprocess.STDOUT)


def test_consume_transform_produce_is_exactly_once_across_a_processor_crash(server, tmp_path):
    topic_in, topic_out, group = "ctp-in", "ctp-out", "ctp-group"
    create_topic(server.bootstrap, topic_in, 3)
    create_topic(server.bootstrap, topic_out, 3)
    n = 600
    plain = Producer({"bootstrap.servers": server.bootstrap, "linger.ms": 5})
    for i in range(n):
        plain.produce(topic_in, key=b"%d" % i, value=b"rec-%04d" % i, partition=i % 3)
    assert plain.flush(30) == 0
    log_path = tmp_path / "processor.log"
    with open(log_path, "ab") as log:
        proc = run_processor(server.bootstrap, topic_in, topic_out, group, "ctp-app", n, log)
        try:
            # Kill it once some transactions are committed, likely in the middle of the next one.
            poll_until(lambda: log_path.read_text().count("committed") >= 5 or proc.poll() is not None, 90,
                       what="the processor to commit some transactions")
            assert proc.poll() is None, "processor finished before it could be killed:\n" + log_path.read_text()
            proc.send_signal(signal.SIGKILL)
            proc.wait(10)
            proc = run_processor(server.bootstrap, topic_in, topic_out, group, "ctp-app", n, log)
            assert proc.wait(150) == 0, log_path.read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
    out = read_topic(server.bootstrap, topic_out, 3, "read_committed", until_count=n)
    assert values(out) == sorted(b"REC-%04d" % i for i in range(n)), "not exactly once"
    # The killed transaction's output is in the log but aborted.
    c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": group})
    try:
        committed = c.committed([TopicPartition(topic_in, p) for p in range(3)], timeout=10)
        assert [tp.offset for tp in committed] == [n // 3] * 3
    finally:
        c.close()


def test_a_transaction_survives_a_server_restart(fresh_server):
    srv = fresh_server
    topic = "txn-restart"
    create_topic(srv.bootstrap, topic, 2)
    p = txn_producer(srv.bootstrap, "txn-restart-app", **{"transaction.timeout.ms": 60000})
    produce_txn(p, topic, 2, b"pre", 4)
    srv.stop()
    srv.start()
    # Still open after the restart: the LSO holds.
    assert watermarks(srv.bootstrap, topic, 0, "read_committed") == (0, 0)
    assert watermarks(srv.bootstrap, topic, 0, "read_uncommitted") == (0, 2)
    # The same producer (it reconnects) commits it.
    p.commit_transaction(60)
    assert values(read_topic(srv.bootstrap, topic, 2, "read_committed", until_count=4)) == \
        sorted(b"pre-%03d" % i for i in range(4))
    # An aborted transaction's index survives a restart too.
    produce_txn(p, topic, 2, b"gone", 4)
    p.abort_transaction(30)
    srv.stop()
    srv.start()
    assert values(read_topic(srv.bootstrap, topic, 2, "read_committed", until_count=4)) == \
        sorted(b"pre-%03d" % i for i in range(4))


@pytest.mark.parametrize("store_kind", STORE_KINDS)
def test_idle_transactional_ids_expire_and_start_afresh_but_not_an_open_transaction(tmp_path, store_kind):
    expiry_ms = 3000
    env = {"SIDESTREAM_CONTROLLER_TRANSACTIONAL_ID_EXPIRATION_MS": str(expiry_ms)}
    with running_server(tmp_path, store_kind, env) as srv:
        topic = "txn-expiry"
        create_topic(srv.bootstrap, topic, 1)
        # An open transaction, started first: it stays unused for longer than the idle one.
        still_open = txn_producer(srv.bootstrap, "expiry-open", **{"transaction.timeout.ms": 120000})
        produce_txn(still_open, topic, 1, b"open", 3)
        done = txn_producer(srv.bootstrap, "expiry-done")
        produce_txn(done, topic, 1, b"done", 2)
        before_commit = time.monotonic()
        done.commit_transaction(30)
        with srv.connect() as c:
            described = kafka_wire.describe_transaction(c, "expiry-done")
            assert (described["error_code"], described["state"]) == (0, "CompleteCommit"), described
            assert set(kafka_wire.list_transactions(c)) == {"expiry-open", "expiry-done"}

        def expired():
            with srv.connect() as c:
                return kafka_wire.describe_transaction(c, "expiry-done")["error_code"] == \
                    kafka_wire.TRANSACTIONAL_ID_NOT_FOUND

        poll_until(expired, 30, interval=0.1, what="expiry-done to expire")
        assert time.monotonic() - before_commit >= expiry_ms / 1000 - 0.1, "expired before its expiration"
        with srv.connect() as c:
            listed = kafka_wire.list_transactions(c)
            assert "expiry-done" not in listed, listed
            assert listed["expiry-open"][1] == "Ongoing", listed
            # A new producer with the expired id starts afresh: a new producer id, epoch 0.
            err, pid, epoch = kafka_wire.init_producer_id(c, "expiry-done")
            assert (err, epoch) == (0, 0)
            assert pid != described["producer_id"]
        # The open transaction was kept and commits.
        still_open.commit_transaction(30)
        assert values(read_topic(srv.bootstrap, topic, 1, "read_committed", until_count=5)) == \
            sorted([b"open-%03d" % i for i in range(3)] + [b"done-%03d" % i for i in range(2)])
