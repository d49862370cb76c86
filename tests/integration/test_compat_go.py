"""franz-go (kgo, kadm), every client option at its default, against the server.

The scenarios live in tests/compat/go/main.go: the default producer (idempotent, acks=all),
direct partition consumption, and kadm topic administration. The default producer runs again
while 30% of the server's object store requests fail.
"""

import uuid

from compat import go_cmd, observations, record, run


def test_franz_go_produce_consume(server, request):
    topic = "go-pc-%s" % uuid.uuid4().hex[:8]
    n = 3000
    produced = record(request, observations(run(go_cmd("produce", server.bootstrap, topic, n))[0]))
    assert produced["produced.total"] == str(n)
    consumed = record(request, observations(run(go_cmd("consume", server.bootstrap, topic, n))[0]))
    assert consumed["consumer.partitions"] == "3"
    assert consumed["consumed.total"] == str(n)
    for p in range(3):
        assert consumed["consumed.partition.%d" % p] == produced["produced.partition.%d" % p]


def test_franz_go_default_producer_under_object_store_faults(faulty_server):
    """Every record exactly once and in send order per partition (checked by the scenarios:
    offsets dense from 0 in send order, each key consumed once) although PUTs fail and are
    retried; read back after a restart without faults. franz-go sends everything at once (few
    objects, so few PUTs for the faults to hit): topics are produced until faults were injected."""
    srv = faulty_server
    n = 2000
    produced = {}
    while srv.object_store_errors() == 0:
        assert len(produced) < 10, "no fault was injected in 10 runs: the test proves nothing"
        topic = "go-faults-%s" % uuid.uuid4().hex[:8]
        produced[topic] = observations(run(go_cmd("produce", srv.bootstrap, topic, n))[0])
        assert produced[topic]["produced.total"] == str(n)
    srv.stop()
    srv.extra_env = {}
    srv.start()
    for topic, obs in produced.items():
        consumed = observations(run(go_cmd("consume", srv.bootstrap, topic, n))[0])
        assert consumed["consumed.total"] == str(n)
        for p in range(3):
            assert consumed["consumed.partition.%d" % p] == obs["produced.partition.%d" % p]


def test_kadm_topic_admin(server, request):
    obs = record(request, observations(run(go_cmd("admin", server.bootstrap, "go-admin-%s" % uuid.uuid4().hex[:8]))[0]))
    assert obs == {
        "create": "ok",
        "create.again": "TOPIC_ALREADY_EXISTS: Topic with this name already exists.",
        "list.partitions": "3",
        "configs.cleanup.policy": "delete DEFAULT_CONFIG",
        "configs.retention.ms": "3600000 DYNAMIC_TOPIC_CONFIG",
        "cluster.brokers": "1",
        "offsets.p0": "0-5",
        "offsets.p1.end": "0",
        "delete": "ok",
        "list.after.delete.contains": "false",
    }
