"""CreatePartitions (API 37): topics grow, as Apache Kafka 4.4 grows them, proven with real clients.

- Kafka 4.4's `kafka-topics.sh --alter --partitions` (org.apache.kafka.tools.TopicCommand) grows a
  topic and `--describe` shows the new partitions; a smaller or equal count is refused with
  Kafka's words.
- The raw wire: Kafka 4.4's answers (codes and messages, checked against a real broker) to
  duplicates, unknown topics, validate_only, manual assignments and too many partitions.
- A confluent-kafka producer writes to the new partitions after its periodic metadata refresh,
  and consumers of three groups keep consuming and read them: classic cooperative-sticky,
  classic eager (range), and KIP-848 (`group.protocol=consumer`, assigned by the server).
- Through a remote controller: the other agent learns of the growth; with ACLs, ALTER on the
  topic is needed; with client quotas, `controller_mutation_rate` refuses v3 and throttles v1.
"""

import re
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AclBinding, AclOperation, AclPermissionType, NewPartitions, ResourcePatternType, ResourceType

import kafka_wire as kw
from compat import java_cmd, run
from conftest import poll_until
from readback import create_topic, read_all
import test_acls
from test_acls import admin, create_user, user_config
from test_cluster import ControllerProcess, make_agent
from test_cluster_mode import CLUSTER_ENV
from test_groups import ChildConsumer
from test_quotas import set_quota

TIMEOUT = 30
# A server enforcing ACLs (test_acls's fixture, used here too).
acl_server = test_acls.acl_server


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def topics_cmd(server, *args, check=True):
    return run(java_cmd("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", server.bootstrap, *args), check=check)


def partition_count(bootstrap, topic):
    md = admin(bootstrap).list_topics(topic, timeout=10)
    t = md.topics[topic]
    return None if t.error else len(t.partitions)


def grow(bootstrap, topic, count):
    a = admin(bootstrap)  # kept until the answer: a destroyed client fails its futures
    for f in a.create_partitions([NewPartitions(topic, count)]).values():
        f.result(TIMEOUT)


def test_kafka_topics_alter_grows_a_topic_and_refuses_to_shrink_it(server):
    topic = unique("cp-cli")
    topics_cmd(server, "--create", "--topic", topic, "--partitions", 3)
    topics_cmd(server, "--alter", "--topic", topic, "--partitions", 6)
    out, _ = topics_cmd(server, "--describe", "--topic", topic)
    assert re.search(r"PartitionCount: 6\s", out), out
    assert sorted(int(p) for p in re.findall(r"Partition: (\d+)\s", out)) == list(range(6)), out
    # Kafka's own words (as a Kafka 4.4 broker answers them), printed by the tool.
    out, err = topics_cmd(server, "--alter", "--topic", topic, "--partitions", 2, check=False)
    assert "The topic %s currently has 6 partition(s); 2 would not be an increase." % topic in out + err, out + err
    out, err = topics_cmd(server, "--alter", "--topic", topic, "--partitions", 6, check=False)
    assert "Topic already has 6 partition(s)." in out + err, out + err
    assert partition_count(server.bootstrap, topic) == 6


def test_wire_answers_are_kafkas(server):
    """Each answer here is what a Kafka 4.4 single-node broker sent to the same request."""
    topic = unique("cp-wire")
    create_topic(server.bootstrap, topic, 3)
    with server.connect() as c:
        node = kw.metadata(c, [])["brokers"][0]["node_id"]
        for version in (1, 3):
            _, answer = kw.create_partitions(c, [(topic, 5, None), ("cp-missing", 2, None), (topic, 6, None)], version=version)
            assert answer == [(topic, kw.INVALID_REQUEST, "Duplicate topic name."),
                              ("cp-missing", kw.UNKNOWN_TOPIC_OR_PARTITION, None)], answer
        cases = [
            ((topic, 3, None), (kw.INVALID_PARTITIONS, "Topic already has 3 partition(s).")),
            ((topic, 0, None), (kw.INVALID_PARTITIONS, "The topic %s currently has 3 partition(s); 0 would not be an increase." % topic)),
            ((topic, 10_004, None), (kw.POLICY_VIOLATION, "Excessively large number of additional partitions per request.")),
            ((topic, 5, [[node]]),
             (kw.INVALID_REPLICA_ASSIGNMENT, "Attempted to add 2 additional partition(s), but only 1 assignment(s) were specified.")),
            ((topic, 5, [[node], [node + 1]]),
             (kw.INVALID_REPLICA_ASSIGNMENT,
              "The manual partition assignment includes broker %d, but no such broker is registered." % (node + 1))),
            ((topic, 5, [[node], [node, node]]),
             (kw.INVALID_REPLICA_ASSIGNMENT, "The manual partition assignment includes the broker %d more than once." % node)),
            ((topic, 5, [[node], []]), (kw.INVALID_REPLICA_ASSIGNMENT, "The manual partition assignment includes an empty replica list.")),
            ((topic, 5, [[node], [node]]), (kw.NONE, None)),
            ((topic, 5, None), (kw.NONE, None)),
        ]
        for request, want in cases:
            _, answer = kw.create_partitions(c, [request], validate_only=True, version=3)
            assert answer == [(topic, *want)], (request, answer)
        assert len(kw.metadata(c, [topic])["topics"][topic]["partitions"]) == 3, "validate_only changes nothing"
        # For real, with a manual assignment on the one broker.
        _, answer = kw.create_partitions(c, [(topic, 5, [[node], [node]])], version=1)
        assert answer == [(topic, kw.NONE, None)]
        parts = kw.metadata(c, [topic])["topics"][topic]["partitions"]
        assert sorted(p["partition_index"] for p in parts) == list(range(5))
        assert all(p["leader_id"] == node for p in parts)


def test_producer_and_consumers_of_every_group_protocol_pick_up_new_partitions(server):
    """Records keyed over the partitions: after the growth the producer's periodic metadata
    refresh spreads them over 5 partitions, and each group reads every acknowledged record,
    from the new partitions too, without being restarted."""
    topic = unique("cp-clients")
    create_topic(server.bootstrap, topic, 2)
    refresh = {"topic.metadata.refresh.interval.ms": 1000}
    consumers = [
        ChildConsumer("coop", server.bootstrap, topic, unique("g-coop"),
                      dict(refresh, **{"partition.assignment.strategy": "cooperative-sticky"})),
        ChildConsumer("eager", server.bootstrap, topic, unique("g-eager"), dict(refresh)),
        ChildConsumer("kip848", server.bootstrap, topic, unique("g-848"), dict(refresh, **{"group.protocol": "consumer"})),
    ]
    delivered = {}

    def report(err, msg):
        assert err is None, err
        delivered[msg.value().decode()] = msg.partition()

    p = Producer({"bootstrap.servers": server.bootstrap, "linger.ms": 5, **refresh})
    sent = [0]

    def produce(n):
        for _ in range(n):
            i = sent[0]
            sent[0] += 1
            p.produce(topic, key=b"k%d" % i, value=b"v%d" % i, on_delivery=report)
        p.flush(TIMEOUT)

    def read_everything():
        want = set(delivered)
        missing = {c.name: len(want - {v for _, _, v in c.records()}) for c in consumers}
        assert all(c.proc.poll() is None for c in consumers), missing
        if any(missing.values()):
            raise AssertionError("records not read yet: %r of %d; events %r"
                                 % (missing, len(want), {c.name: c.snapshot()[-3:] for c in consumers}))
        return True

    try:
        produce(20)
        poll_until(read_everything, 60, interval=0.5, what="every group reading the 2-partition topic")
        grow(server.bootstrap, topic, 5)

        def on_new_partitions():
            produce(5)
            return set(delivered.values()) == set(range(5))

        poll_until(on_new_partitions, 60, interval=0.2, what="the producer writing to the new partitions")
        poll_until(read_everything, 90, interval=0.5, what="every group reading the new partitions too")
        for c in consumers:
            assert {part for part, _, _ in c.records()} == set(range(5)), c.name
    finally:
        for c in consumers:
            c.kill()
    # ListOffsets of the new partitions: they started empty, at offset 0.
    reader = Consumer({"bootstrap.servers": server.bootstrap, "group.id": unique("g-offsets")})
    try:
        for part in range(2, 5):
            low, high = reader.get_watermark_offsets(TopicPartition(topic, part), timeout=10)
            assert low == 0 and high == sum(1 for v in delivered.values() if v == part), (part, low, high)
    finally:
        reader.close()


def test_through_a_remote_controller_every_agent_learns_of_the_growth(tmp_path):
    ctl = ControllerProcess(tmp_path, "controller", "sqlite://%s" % (tmp_path / "controller.db")).start()
    agents = []
    try:
        ctl.wait_listening()
        objects = tmp_path / "objects"
        agents = [make_agent(tmp_path, i, [ctl.address], objects, dict(CLUSTER_ENV)).start() for i in (1, 2)]
        poll_until(lambda: all(len(admin(a.bootstrap).list_topics(timeout=10).brokers) == 2 for a in agents), 30,
                   what="both agents listed as brokers")
        topic = unique("cp-remote")
        create_topic(agents[0].bootstrap, topic, 2)
        # A manual assignment may name either agent; a third broker id is unknown.
        with agents[0].connect() as c:
            _, answer = kw.create_partitions(c, [(topic, 4, [[1], [3]])], validate_only=True)
            assert answer == [(topic, kw.INVALID_REPLICA_ASSIGNMENT,
                               "The manual partition assignment includes broker 3, but no such broker is registered.")]
            _, answer = kw.create_partitions(c, [(topic, 4, [[2], [1]])])
            assert answer == [(topic, kw.NONE, None)]
        poll_until(lambda: partition_count(agents[1].bootstrap, topic) == 4, 30, what="the other agent seeing 4 partitions")
        # Produced through the other agent to the new partitions, read back through the first one.
        p = Producer({"bootstrap.servers": agents[1].bootstrap})
        for part in (2, 3):
            for i in range(10):
                p.produce(topic, value=b"p%d-%d" % (part, i), partition=part)
        assert p.flush(TIMEOUT) == 0
        got = read_all(agents[0].bootstrap, topic, 4, expected_min=20)
        assert [len(got[part]) for part in range(4)] == [0, 0, 10, 10]
        with pytest.raises(KafkaException) as e:
            grow(agents[1].bootstrap, topic, 3)
        assert "The topic %s currently has 4 partition(s); 3 would not be an increase." % topic in str(e.value)
        # A restarted agent loads the grown topic from the controller.
        agents[1].restart()
        assert partition_count(agents[1].bootstrap, topic) == 4
    finally:
        for a in agents:
            a.close()
        ctl.close()


def test_growing_a_topic_needs_alter_on_it(acl_server):
    topic, other = unique("cp-acl"), unique("cp-acl-other")
    for t in (topic, other):
        create_topic(acl_server.bootstrap, t, 1)
    user = unique("grower")
    create_user(acl_server, user, "secret")
    binding = AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "User:%s" % user, "*",
                         AclOperation.ALTER, AclPermissionType.ALLOW)
    conf = user_config(acl_server, user, "secret")
    mine = admin(conf["bootstrap.servers"], **{k: v for k, v in conf.items() if k != "bootstrap.servers"})
    futures = mine.create_partitions([NewPartitions(topic, 2)])
    with pytest.raises(KafkaException) as e:
        futures[topic].result(TIMEOUT)
    assert e.value.args[0].name() == "TOPIC_AUTHORIZATION_FAILED"
    root = admin(acl_server.bootstrap)
    for f in root.create_acls([binding]).values():
        f.result(TIMEOUT)

    def allowed():
        try:
            mine.create_partitions([NewPartitions(topic, 2)])[topic].result(TIMEOUT)
            return True
        except KafkaException as e:
            assert e.args[0].name() == "TOPIC_AUTHORIZATION_FAILED", e
            return False

    poll_until(allowed, 30, what="ALTER granted")
    assert partition_count(acl_server.bootstrap, topic) == 2
    # ALTER on one topic is not ALTER on another.
    with pytest.raises(KafkaException) as e:
        mine.create_partitions([NewPartitions(other, 2)])[other].result(TIMEOUT)
    assert e.value.args[0].name() == "TOPIC_AUTHORIZATION_FAILED"
    assert partition_count(acl_server.bootstrap, other) == 1


def test_controller_mutation_rate_refuses_v3_and_throttles_v1(fresh_server):
    srv = fresh_server
    set_quota(srv, [("client-id", "grower")], {"controller_mutation_rate": 1})
    topic = unique("cp-quota")
    create_topic(srv.bootstrap, topic, 1)

    def grow_as_grower(count, version):
        with kw.Conn("127.0.0.1", srv.port, client_id="grower") as c:
            throttle, answer = kw.create_partitions(c, [(topic, count, None)], version=version)
        return throttle, answer[0][1]

    # A burst of a whole window (11 partitions at 1/s) is allowed, and one request may go past it.
    assert grow_as_grower(21, 3) == (0, kw.NONE)
    throttle, code = grow_as_grower(22, 3)
    assert code == kw.THROTTLING_QUOTA_EXCEEDED and 7000 < throttle <= 9000, (code, throttle)
    assert partition_count(srv.bootstrap, topic) == 21, "a refused request adds nothing"
    # Before v3, a request over the quota is answered, then throttled.
    throttle, code = grow_as_grower(22, 1)
    assert code == kw.NONE and throttle > 0, (code, throttle)
    assert partition_count(srv.bootstrap, topic) == 22
