"""Idempotent producers with real clients: kafka-python's default producer (idempotence on in
3.x) and confluent-kafka with enable.idempotence=true while 30% of object store requests fail
(`[object_store] fault_error_rate`): every record exactly once, in order per partition.
"""

import os

from confluent_kafka import Producer
from kafka import KafkaProducer

from conftest import SidestreamServer
from readback import create_topic, read_all

SEED = int(os.environ.get("SIDESTREAM_TEST_SEED", "848"))


def injected_errors(srv):
    """Failed object store attempts, from the server's /metrics (retries hide them from the log)."""
    return sum(v for k, v in srv.metrics().items() if k.startswith("sidestream_object_store_errors_total"))


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


def test_confluent_idempotent_producer_under_object_store_faults(tmp_path):
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log",
                           extra_env={"SIDESTREAM_OBJECT_STORE_FAULT_ERROR_RATE": "0.3",
                                      "SIDESTREAM_OBJECT_STORE_FAULT_SEED": str(SEED)})
    srv.start()
    topic = "idem-confluent"
    try:
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
        assert not errors, "seed %d: delivery errors %r" % (SEED, errors[:3])
        assert injected_errors(srv) > 0, "no fault was injected: the test proves nothing"
        # Read back from a restarted server without faults: also proves persistence.
        srv.stop()
        srv.extra_env = {}
        srv.start()
        check_exactly_once_in_order(read_all(srv.bootstrap, topic, 3, n), sent)
    finally:
        srv.close()
