"""Kafka 4.4's `kafka-broker-api-versions.sh` and `kafka-features.sh` against `sidestream serve`:
the first lists the agent as a broker and every API it advertises with its version range, usable
by the 4.4 client (what it calls UNSUPPORTED is exactly what ApiVersions leaves out); the second
the KIP-584 features, as Kafka 4.4 prints them. And Kafka's internal topics as its tools show them."""

import re

import kafka_wire as kw
from compat import java_cmd, run
from conftest import SidestreamServer, poll_until


def test_broker_api_versions_lists_what_api_versions_advertises(tmp_path):
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log")
    srv.start()
    try:
        host, port = srv.bootstrap.split(":")
        with kw.Conn(host, int(port)) as c:
            err, advertised = kw.api_versions(c, 0)
        assert err == 0
        out, _ = run(java_cmd("org.apache.kafka.tools.BrokerApiVersionsCommand", "--bootstrap-server", srv.bootstrap))
        assert re.search(r"^127\.0\.0\.1:%s \(id: 1 rack: null isFenced: false\) -> \(" % port, out, re.M), out[:300]
        listed = {}
        unsupported = set()
        for name, key, rest in re.findall(r"^\s+(\w+)\((\d+)\): (.*?),?$", out, re.M):
            if rest == "UNSUPPORTED":
                unsupported.add(int(key))
                continue
            m = re.fullmatch(r"(\d+)(?: to (\d+))? \[usable: (\d+)\]", rest)
            assert m, "cannot read %s(%s): %s" % (name, key, rest)
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            # The 4.4 client can use the newest version the agent offers.
            assert int(m.group(3)) == hi, "%s(%s): %s" % (name, key, rest)
            listed[int(key)] = (lo, hi)
        assert listed == advertised
        assert not unsupported & set(advertised)
        # The operators' APIs of issue 21 are among them.
        for key in (37, 33, 44, 35, 43, 45, 46, 61, 23):
            assert key in listed, key
    finally:
        srv.close()


def test_kafka_features_describe(server):
    """group.version 1 (KIP-848 groups are served), share.version 1 (KIP-932 share groups),
    streams.version 1 (KIP-1071 streams groups) and transaction.version 2 (KIP-890 part 2)
    finalized; no KRaft features (there is
    no quorum); `upgrade` refused."""
    out, _ = run(java_cmd("org.apache.kafka.tools.FeatureCommand", "--bootstrap-server", server.bootstrap, "describe"))
    rows = {}
    for line in out.splitlines():
        m = re.fullmatch(r"Feature: (\S+)\s+SupportedMinVersion: (\S+)\s+SupportedMaxVersion: (\S+)\s+"
                         r"FinalizedVersionLevel: (\S+)\s+Epoch: (\S+)", line.strip())
        assert m, "cannot read: %r" % line
        rows[m.group(1)] = m.groups()[1:]
    assert rows == {
        "group.version": ("0", "1", "1", "1"),
        "share.version": ("0", "1", "1", "1"),
        "streams.version": ("0", "1", "1", "1"),
        "transaction.version": ("0", "2", "2", "1"),
    }, out
    # Nothing to upgrade: the tool says the node does not take UpdateFeatures.
    out, err = run(java_cmd("org.apache.kafka.tools.FeatureCommand", "--bootstrap-server", server.bootstrap, "upgrade",
                            "--feature", "transaction.version=2"), check=False)
    assert "Could not upgrade transaction.version to 2. The node does not support UPDATE_FEATURES" in out + err, out + err


def internal_topics(bootstrap):
    """{name: (is_internal, partition count)} of every internal topic an all-topics Metadata lists."""
    host, port = bootstrap.split(":")
    with kw.Conn(host, int(port)) as c:
        topics = kw.metadata(c, None)["topics"]
    return {n: (t["is_internal"], len(t["partitions"])) for n, t in topics.items() if n.startswith("__")}


def first_group_use(bootstrap, topic):
    """A consumer group's first FindCoordinator, as Kafka creates `__consumer_offsets` on it."""
    from confluent_kafka import Consumer
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "first-" + topic, "auto.offset.reset": "earliest"})
    try:
        c.subscribe([topic])
        poll_until(lambda: c.poll(0.2) is not None or c.assignment(), 30, what="the group's assignment")
    finally:
        c.close()


def test_kafkas_internal_topics_exist_as_on_kafka_empty_and_read_only(tmp_path):
    """Kafka creates `__consumer_offsets` on a group's first FindCoordinator (and
    `__transaction_state` on a transactional id's): 50 partitions, compacted, listed as internal
    (which regex subscriptions and `--exclude-internal` skip). Here the controller keeps offsets
    and transactions, so they stay empty: readable (offsets 0), never writable (Produce and
    DeleteRecords get INVALID_TOPIC_EXCEPTION, as on Kafka), however they were created."""
    from confluent_kafka import KafkaError, Producer
    from confluent_kafka.admin import AdminClient, NewTopic
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log")
    srv.start()
    try:
        b = srv.bootstrap
        host, port = b.split(":")
        admin = AdminClient({"bootstrap.servers": b})
        assert internal_topics(b) == {}, "none before a client needs one"
        assert admin.create_topics([NewTopic("ordinary", 1, 1)])["ordinary"].exception(30) is None
        # As on Kafka, a client may create one (with the layout it asks for): internal all the same.
        assert admin.create_topics([NewTopic("__share_group_state", 1, 1)])["__share_group_state"].exception(30) is None
        with kw.Conn(host, int(port)) as c:
            topic = kw.metadata(c, ["__share_group_state"])["topics"]["__share_group_state"]
        assert (topic["error_code"], topic["is_internal"], len(topic["partitions"])) == (0, True, 1)

        first_group_use(b, "ordinary")
        poll_until(lambda: internal_topics(b) == {"__consumer_offsets": (True, 50), "__share_group_state": (True, 1)}, 30,
                   what="__consumer_offsets listed as internal")

        def transaction_state():  # Metadata v1 may auto-create: created as Kafka lays it out (Kafka: on a later request)
            with kw.Conn(host, int(port)) as c:
                t = kw.metadata(c, ["__transaction_state"])["topics"]["__transaction_state"]
            return t["error_code"] == 0 and t["is_internal"] and len(t["partitions"]) == 50
        poll_until(transaction_state, 30, what="__transaction_state")
        err = admin.create_topics([NewTopic("__consumer_offsets", 1, 1)])["__consumer_offsets"].exception(30)
        assert err is not None and err.args[0].code() == KafkaError.TOPIC_ALREADY_EXISTS, err

        tool = lambda *args, check=True: run(java_cmd("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", b, *args), check=check)[0]
        assert {"__consumer_offsets", "__transaction_state", "ordinary"} <= set(tool("--list").split())
        assert "__consumer_offsets" not in tool("--list", "--exclude-internal").split()
        out = tool("--describe", "--topic", "__consumer_offsets")
        m = re.match(r"Topic: __consumer_offsets\tTopicId: \S+\tPartitionCount: 50\tReplicationFactor: 1\tConfigs: (\S+)", out)
        assert m and "cleanup.policy=compact" in m.group(1).split(","), out

        # Empty and readable: every partition's end offset is 0.
        out, _ = run(java_cmd("org.apache.kafka.tools.GetOffsetShell", "--bootstrap-server", b, "--topic", "__consumer_offsets"))
        assert sorted(out.split()) == sorted("__consumer_offsets:%d:0" % p for p in range(50)), out
        with kw.Conn(host, int(port)) as c:
            end = kw.list_offsets(c, "__consumer_offsets", 7, -1)
        assert (end["error_code"], end["offset"]) == (0, 0), end
        # Never writable.
        p = Producer({"bootstrap.servers": b, "message.timeout.ms": 20000})
        errors = []
        for topic in ("__consumer_offsets", "__share_group_state"):
            p.produce(topic, b"x", partition=0, on_delivery=lambda e, m: errors.append(e))
        p.flush(30)
        assert len(errors) == 2 and all(e is not None and e.code() == KafkaError.TOPIC_EXCEPTION for e in errors), errors
        plan = tmp_path / "delete.json"
        plan.write_text('{"partitions": [{"topic": "__consumer_offsets", "partition": 0, "offset": 0}], "version": 1}')
        out, _ = run(java_cmd("org.apache.kafka.tools.DeleteRecordsCommand", "--bootstrap-server", b, "--offset-json-file", plan))
        assert "partition: __consumer_offsets-0\terror: org.apache.kafka.common.errors.InvalidTopicException" in out, out
    finally:
        srv.close()


def test_an_internal_topic_made_at_one_agent_is_listed_at_the_others(tmp_path):
    """Through `sidestream controller`: the first FindCoordinator at agent 1 creates
    `__consumer_offsets` (the controller's CreateInternalTopic call); agent 2 lists it as internal
    after the controller's Watch event, and refuses writes to it too."""
    from confluent_kafka import KafkaError, Producer
    from test_cluster import ControllerProcess, make_agent
    ctl = ControllerProcess(tmp_path, "controller", "sqlite://%s" % (tmp_path / "controller.db")).start()
    agents = []
    try:
        ctl.wait_listening()
        agents = [make_agent(tmp_path, i, [ctl.address], tmp_path / "objects").start() for i in (1, 2)]
        one, two = agents
        assert internal_topics(two.bootstrap) == {}
        first_group_use(one.bootstrap, "ordinary")
        poll_until(lambda: internal_topics(two.bootstrap) == {"__consumer_offsets": (True, 50)}, 30, what="the internal topic at agent 2")
        errors = []
        p = Producer({"bootstrap.servers": two.bootstrap, "message.timeout.ms": 20000})
        p.produce("__consumer_offsets", b"x", partition=3, on_delivery=lambda e, m: errors.append(e))
        p.flush(30)
        assert len(errors) == 1 and errors[0] is not None and errors[0].code() == KafkaError.TOPIC_EXCEPTION, errors
    finally:
        for a in agents:
            a.close()
        ctl.close()
