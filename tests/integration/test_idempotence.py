"""Idempotent producers with real clients: kafka-python's default producer (idempotence on in
3.x) and confluent-kafka with enable.idempotence=true while 30% of object store requests fail
(`[object_store] fault_error_rate`): every record exactly once, in order per partition. And
producer.id.expiration.ms over the raw protocol: a retried batch is a duplicate until its
producer's state expires, except while the producer has a transaction open in the partition.
"""

import time

import pytest
from confluent_kafka import Producer
from kafka import KafkaProducer

import kafka_wire
from conftest import FAULT_SEED, STORE_KINDS, SidestreamServer, controller_store_env, poll_until
from readback import create_topic, read_all


def check_exactly_once_in_order(got, sent_per_partition):
    for p, records in got.items():
        offsets = [o for o, _ in records]
        assert offsets == list(range(len(offsets))), "partition %d offsets not dense" % p
        values = [v for _, v in records]
        assert values == sent_per_partition.get(p, []), \
            "partition %d: %d records, expected %d in production order" % (p, len(values), len(sent_per_partition.get(p, [])))


def test_kafka_python_default_producer_is_idempotent(server):
    topic = "idem-kafka-python"
    create_topic(server.bootstrap, topic, 3)
    p = KafkaProducer(bootstrap_servers=server.bootstrap, linger_ms=5)  # idempotence is its default
    sent = {}
    futures = []
    for i in range(3000):
        part = i % 3
        value = b"kp-%06d" % i
        sent.setdefault(part, []).append(value)
        futures.append(p.send(topic, value=value, partition=part))
    p.flush(60)
    for f in futures:
        f.get(30)
    p.close()
    check_exactly_once_in_order(read_all(server.bootstrap, topic, 3, 3000), sent)


def test_confluent_idempotent_producer_under_object_store_faults(faulty_server):
    srv = faulty_server
    topic = "idem-confluent"
    create_topic(srv.bootstrap, topic, 3)
    p = Producer({"bootstrap.servers": srv.bootstrap, "enable.idempotence": True, "linger.ms": 5,
                  "message.timeout.ms": 120000})
    sent, errors = {}, []

    def report(err, msg):
        if err:
            errors.append(err)

    n = 20000
    for i in range(n):
        part = i % 3
        value = b"cf-%06d" % i
        sent.setdefault(part, []).append(value)
        while True:
            try:
                p.produce(topic, value=value, partition=part, on_delivery=report)
                break
            except BufferError:
                p.poll(0.05)
        p.poll(0)
        if i % 500 == 499:
            assert p.flush(120) == 0  # many small objects: many PUTs for the faults to hit
    assert p.flush(120) == 0
    assert not errors, "seed %d: delivery errors %r" % (FAULT_SEED, errors[:3])
    assert srv.object_store_errors() > 0, "no fault was injected: the test proves nothing"
    # Read back from a restarted server without faults: also proves persistence.
    srv.stop()
    srv.extra_env = {}
    srv.start()
    check_exactly_once_in_order(read_all(srv.bootstrap, topic, 3, n), sent)


@pytest.mark.parametrize("store_kind", STORE_KINDS)
def test_idle_producer_state_expires_but_not_with_an_open_transaction(tmp_path, store_kind):
    expiry_ms = 3000
    with controller_store_env(store_kind) as env:
        env["SIDESTREAM_CONTROLLER_PRODUCER_ID_EXPIRATION_MS"] = str(expiry_ms)
        srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log", extra_env=env)
        try:
            srv.start()
            run_producer_expiry(srv, expiry_ms)
        finally:
            srv.close()


def run_producer_expiry(srv, expiry_ms):
    topic = "producer-expiry"
    create_topic(srv.bootstrap, topic, 1)
    with srv.connect() as c:
        def send(batch, transactional_id=None):
            body = kafka_wire.produce_body(3, [(topic, [(0, batch)])], transactional_id=transactional_id)
            got = kafka_wire.parse_produce_response(c.request(kafka_wire.PRODUCE, 3, body), 3)[(topic, 0)]
            assert got["error_code"] == 0, got
            return got["base_offset"]

        # A transactional producer with its transaction open in the partition, written first:
        # its state is the older one.
        err, txn_pid, txn_epoch = kafka_wire.init_producer_id(c, "expiry-txn", 120000)
        assert err == 0
        assert kafka_wire.add_partitions_to_txn(c, "expiry-txn", txn_pid, txn_epoch, topic, [0]) == {0: 0}
        txn_batch = kafka_wire.record_batch([(b"t", b"txn")], attributes=kafka_wire.TRANSACTIONAL,
                                            producer_id=txn_pid, producer_epoch=txn_epoch, base_sequence=0)
        assert send(txn_batch, "expiry-txn") == 0
        # An idempotent producer: its retried batch is a duplicate (acknowledged with the
        # original offset, not stored again) for as long as its state is kept.
        err, pid, epoch = kafka_wire.init_producer_id(c)
        assert err == 0
        batch = kafka_wire.record_batch([(b"k", b"idem")], producer_id=pid, producer_epoch=epoch, base_sequence=0)
        sent = time.monotonic()
        assert send(batch) == 1
        assert send(batch) == 1

        # Once its state expired, the same batch is new data (unknown producers are accepted).
        retried = poll_until(lambda: send(batch) != 1 and time.monotonic(), 30, interval=0.2,
                             what="the idempotent producer's state to expire")
        assert retried - sent >= expiry_ms / 1000 - 0.1, "expired before producer.id.expiration.ms"
        # The transactional producer was idle for longer, but its transaction is open: still
        # known, its retry is still a duplicate.
        assert send(txn_batch, "expiry-txn") == 0
        assert kafka_wire.end_txn(c, "expiry-txn", txn_pid, txn_epoch, True) == 0
