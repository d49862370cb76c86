"""Moving from Kafka with Kafka's own tool: MirrorMaker 2 (Connect-based, dedicated mode, what
`connect-mirror-maker.sh mm2.properties` runs) from a real Apache Kafka 4.4
(scripts/kafka-reference-broker) into the server under test, with MirrorMaker's default
settings except speed (intervals of seconds instead of minutes) and replication factors of 1
(one-broker clusters).

What must arrive: the topic as `source.orders` (DefaultReplicationPolicy; with
IdentityReplicationPolicy, `orders`) with its partition count and configs (created with them, then kept in sync through IncrementalAlterConfigs, as MM2
does by default), every record with its key, value, headers and timestamp in per-partition order, the
consumer group's committed offsets translated onto that topic (checkpoints with
`sync.group.offsets.enabled`; the group is inactive on the target), records produced later, and a
consumer of the group that switches to the target resumes exactly where it stopped on the source.

MM2 translates a group's offset through the offset syncs it writes while it copies: one every
`offset.lag.max` (100) records of a partition, and one for the last record copied at each of
its worker's offset commits (`offset.flush.interval.ms`, a minute by default). An offset between
two syncs becomes the one just past the lower sync (a switched consumer re-reads a little, never
skips); a group that stopped consuming, as one does to switch over, is translated exactly after
the next commit. The test checks equality.

MirrorMaker is 4.3.1 (connect-mirror 4.4.0 is not on Maven Central: tests/compat/mirror/pom.xml).
SIDESTREAM_BIN=scripts/kafka-reference-broker runs the same test Kafka -> Kafka.
"""

import subprocess
import time

import pytest
from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

import kafka_wire
from compat import java_cmd
from conftest import REPO, SidestreamServer, poll_until

SOURCE_BROKER = REPO / "scripts" / "kafka-reference-broker"
TOPIC = "orders"
# The name of TOPIC on the target under each replication policy (`replication.policy.class`).
POLICIES = {"default": (None, "source." + TOPIC),
            "identity": ("org.apache.kafka.connect.mirror.IdentityReplicationPolicy", TOPIC)}
GROUP = "billing"
PARTITIONS = 3
FIRST = 300   # records before MirrorMaker starts; the group reads them all
LATER = 90    # records produced while it runs
RETENTION_MS = "86400000"
RETENTION_MS_ALTERED = "172800000"
INCREMENTAL_ALTER_CONFIGS = 44
DEADLINE = 90  # seconds for each thing MirrorMaker must do


def mm2_properties(source, target, policy_class):
    return "\n".join([
        "clusters = source, target",
        "source.bootstrap.servers = %s" % source.bootstrap,
        "target.bootstrap.servers = %s" % target.bootstrap,
        "source->target.enabled = true",
        "source->target.topics = %s" % TOPIC,
        # one-broker clusters
        "replication.factor = 1",
        "checkpoints.topic.replication.factor = 1",
        "heartbeats.topic.replication.factor = 1",
        "offset-syncs.topic.replication.factor = 1",
        "offset.storage.replication.factor = 1",
        "status.storage.replication.factor = 1",
        "config.storage.replication.factor = 1",
        # translated group offsets written into the target's (inactive) groups
        "sync.group.offsets.enabled = true",
        # seconds instead of minutes
        "refresh.topics.interval.seconds = 2",
        "refresh.groups.interval.seconds = 2",
        "sync.topic.configs.interval.seconds = 2",
        "emit.checkpoints.interval.seconds = 1",
        "sync.group.offsets.interval.seconds = 1",
        # the target's worker commits (and so syncs the offsets of the last record replicated,
        # see the module doc) every second instead of every minute
        "target.offset.flush.interval.ms = 1000",
    ] + (["replication.policy.class = %s" % policy_class] if policy_class else []) + [""])


def produce(bootstrap, start, count):
    """Keyed records with a header to TOPIC, record i to partition i % 3;
    {partition: [(key, value, headers, timestamp)]}."""
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    sent = {part: [] for part in range(PARTITIONS)}
    errors = []

    def delivered(err, msg, headers):  # a delivery report carries no headers
        if err is not None:
            errors.append(err)
        else:
            sent[msg.partition()].append((msg.offset(), msg.key(), msg.value(), headers, msg.timestamp()[1]))

    for i in range(start, start + count):
        headers = [("seq", b"%d" % i)]
        p.produce(TOPIC, key=b"k%d" % i, value=b"order-%d" % i, headers=headers, partition=i % PARTITIONS,
                  on_delivery=lambda err, msg, headers=headers: delivered(err, msg, headers))
    assert p.flush(30) == 0 and not errors, errors
    return {part: [r[1:] for r in sorted(recs)] for part, recs in sent.items()}


def read(bootstrap, topic, counts, group=None, timeout=30):
    """counts[p] records of each partition: from offset 0, or from the group's committed offsets
    (group set: subscribe(), as a switched consumer does). {partition: [(key, value, headers, timestamp)]}."""
    conf = {"bootstrap.servers": bootstrap, "enable.auto.commit": False,
            "group.id": group or "mm2-test-reader", "auto.offset.reset": "earliest"}
    c = Consumer(conf)
    got = {p: [] for p in range(PARTITIONS)}
    try:
        if group:
            c.subscribe([topic])
        else:
            c.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        deadline = time.monotonic() + timeout
        while any(len(got[p]) < counts[p] for p in got):
            assert time.monotonic() < deadline, "read %s of %s from %s" % (
                {p: len(v) for p, v in got.items()}, counts, topic)
            m = c.poll(0.5)
            if m is None:
                continue
            assert m.error() is None, m.error()
            got[m.partition()].append((m.key(), m.value(), m.headers(), m.timestamp()[1]))
        # nothing beyond the expected records
        extra = c.poll(1.0)
        assert extra is None or extra.error() is not None, "unexpected record at %s/%d@%d" % (
            extra.topic(), extra.partition(), extra.offset())
    finally:
        c.close()
    return got


def end_offsets(server, topic):
    with server.connect() as c:
        return [kafka_wire.list_offsets(c, topic, p, kafka_wire.LATEST)["offset"] for p in range(PARTITIONS)]


def topic_configs(admin, topic):
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    return {k: v.value for k, v in admin.describe_configs([res])[res].result(10).items()}


def committed(admin, group, topic):
    req = ConsumerGroupTopicPartitions(group, [TopicPartition(topic, p) for p in range(PARTITIONS)])
    res = admin.list_consumer_group_offsets([req])[group].result(10)
    return [tp.offset for tp in sorted(res.topic_partitions, key=lambda tp: tp.partition)]


@pytest.mark.parametrize("policy", list(POLICIES))
def test_mirror_maker_2_from_kafka(tmp_path, policy):
    """MM2's default settings; the topic as `source.orders` (DefaultReplicationPolicy) or, with
    IdentityReplicationPolicy, under its own name."""
    policy_class, mirrored = POLICIES[policy]
    t0 = time.monotonic()
    props = tmp_path / "mm2.properties"
    # MirrorMaker 2, dedicated mode, running the flows into `target` only (skips without Java)
    mm2_cmd = java_cmd("org.apache.kafka.connect.mirror.MirrorMaker", props, "--clusters", "target",
                       classpath="mirror")
    source = SidestreamServer(tmp_path / "source", tmp_path / "source.log", binary=SOURCE_BROKER)
    target = SidestreamServer(tmp_path / "target", tmp_path / "target.log")
    mm2 = None
    try:
        target.start()
        with target.connect() as c:
            _, apis = kafka_wire.api_versions(c, 0)
        assert INCREMENTAL_ALTER_CONFIGS in apis, (
            "the target does not advertise IncrementalAlterConfigs (API key 44): MM2 4.x syncs topic "
            "configs with it, and its MirrorSourceConnector fails without it, copying nothing")
        source.start(timeout=120)
        print("source (Kafka 4.4) %s, target %s" % (source.bootstrap, target.bootstrap))
        src_admin = AdminClient({"bootstrap.servers": source.bootstrap})
        tgt_admin = AdminClient({"bootstrap.servers": target.bootstrap})

        # The source: a topic with configs of its own, records, a group that read them all.
        src_admin.create_topics([NewTopic(TOPIC, PARTITIONS, 1, config={
            "retention.ms": RETENTION_MS, "cleanup.policy": "delete"})])[TOPIC].result(30)
        source.wait_topic_ready(TOPIC, PARTITIONS)
        records = produce(source.bootstrap, 0, FIRST)
        consumer = Consumer({"bootstrap.servers": source.bootstrap, "group.id": GROUP,
                             "enable.auto.commit": False, "auto.offset.reset": "earliest"})
        consumer.assign([TopicPartition(TOPIC, p, 0) for p in range(PARTITIONS)])
        seen, deadline = 0, time.monotonic() + 30
        while seen < FIRST:
            assert time.monotonic() < deadline, "the group read %d of %d records" % (seen, FIRST)
            m = consumer.poll(1.0)
            if m is not None and m.error() is None:
                seen += 1
        consumer.commit(asynchronous=False)
        consumer.close()
        group_offsets = committed(src_admin, GROUP, TOPIC)
        assert group_offsets == [len(records[p]) for p in range(PARTITIONS)], group_offsets

        props.write_text(mm2_properties(source, target, policy_class))
        mm2_log_path = tmp_path / "mm2.log"
        with open(mm2_log_path, "wb") as log:
            mm2 = subprocess.Popen(mm2_cmd, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        t_mm2 = time.monotonic()

        def wait(predicate, what):
            def check():
                assert mm2.poll() is None, "MirrorMaker exited with %s" % mm2.returncode
                return predicate()
            try:
                return poll_until(check, DEADLINE, interval=0.5, what=what)
            except AssertionError as e:
                tail = "\n".join(mm2_log_path.read_text(errors="replace").splitlines()[-60:])
                raise AssertionError("%s\nMirrorMaker log (%s) tail:\n%s" % (e, mm2_log_path, tail)) from None

        # The topic, its partitions and every record.
        wait(lambda: len(getattr(tgt_admin.list_topics(timeout=5).topics.get(mirrored), "partitions", ())) == PARTITIONS,
             "%s with %d partitions" % (mirrored, PARTITIONS))
        wait(lambda: sum(end_offsets(target, mirrored)) == FIRST, "%d records in %s" % (FIRST, mirrored))
        copied = read(target.bootstrap, mirrored, {p: len(records[p]) for p in records})
        assert copied == records
        t_data = time.monotonic() - t_mm2

        # Its configs: given at creation, then synced (IncrementalAlterConfigs) when changed.
        configs = topic_configs(tgt_admin, mirrored)
        assert (configs["retention.ms"], configs["cleanup.policy"]) == (RETENTION_MS, "delete"), configs
        res = ConfigResource(ConfigResource.Type.TOPIC, TOPIC, incremental_configs=[
            ConfigEntry("retention.ms", RETENTION_MS_ALTERED, incremental_operation=AlterConfigOpType.SET)])
        src_admin.incremental_alter_configs([res])[res].result(10)
        wait(lambda: topic_configs(tgt_admin, mirrored)["retention.ms"] == RETENTION_MS_ALTERED,
             "retention.ms=%s synced to %s" % (RETENTION_MS_ALTERED, mirrored))

        # The group's offsets, translated and committed on the target while it has no member.
        wait(lambda: committed(tgt_admin, GROUP, mirrored) == group_offsets,
             "group %s's offsets %s on %s" % (GROUP, group_offsets, mirrored))
        desc = tgt_admin.describe_consumer_groups([GROUP])[GROUP].result(10)
        assert not desc.members and desc.state.name in ("EMPTY", "DEAD"), desc
        t_group = time.monotonic() - t_mm2

        # Later records follow; the group's consumer, switched over, reads exactly those.
        later = produce(source.bootstrap, FIRST, LATER)
        wait(lambda: sum(end_offsets(target, mirrored)) == FIRST + LATER,
             "%d records in %s" % (FIRST + LATER, mirrored))
        everything = {p: records[p] + later[p] for p in records}
        assert read(target.bootstrap, mirrored, {p: len(everything[p]) for p in everything}) == everything
        assert read(target.bootstrap, mirrored, {p: len(later[p]) for p in later}, group=GROUP) == later
        print("topics on the target: %s" % sorted(tgt_admin.list_topics(timeout=5).topics))
        print("MirrorMaker: %d records copied in %.1fs after its start, group offsets in %.1fs; "
              "%d more followed; test %.1fs" % (FIRST, t_data, t_group, LATER, time.monotonic() - t0))
    finally:
        if mm2 is not None and mm2.poll() is None:
            mm2.terminate()
            try:
                mm2.wait(10)
            except subprocess.TimeoutExpired:
                mm2.kill()
                mm2.wait(10)
        source.close()
        target.close()
