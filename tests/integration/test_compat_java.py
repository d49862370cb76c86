"""Apache Kafka 4.4.0's own Java client and CLI tools, unchanged, against the server.

The Java scenarios live in tests/compat/java/Compat.java; the tools are the classes the shell
scripts of Kafka's bin/ run (kafka-topics.sh -> org.apache.kafka.tools.TopicCommand, ...), with
the same arguments. Scenarios that need consumer groups skip, naming the missing API, until the
server advertises it (issue 8); tests/compat/FINDINGS.md lists them.
"""

import re
import uuid

import pytest

import kafka_wire
from compat import java_cmd, observations, record, run

TOOLS = "org.apache.kafka.tools."
FIND_COORDINATOR = 10
JOIN_GROUP = 11
CONSUMER_GROUP_HEARTBEAT = 68


def topic_name(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def compat(*args):
    return java_cmd("Compat", *args)


def tool(name, *args):
    return java_cmd(TOOLS + name, *args)


def require_apis(server, *keys):
    """Skips unless the server advertises every API key (groups are issue 8)."""
    with server.connect() as c:
        _, apis = kafka_wire.api_versions(c, 0)
    missing = [k for k in keys if k not in apis]
    if missing:
        pytest.skip("needs API key(s) %s (consumer groups, issue 8): not advertised by this server" % missing)


# ------------------------------------------------------------------------- the Java client

def test_producer_defaults_then_assign_consumer(server, request):
    """Producer with every default (acks=all, idempotence on); consumers with assign(), one
    without and one with a group.id (assign() and no commits need no coordinator)."""
    topic = topic_name("java-pc")
    n = 3000
    produced = observations(run(compat("produce", server.bootstrap, topic, n, 3))[0])
    assert produced["produced.total"] == str(n)
    assert produced["producer.acks"] == "all (default)"
    consumed = observations(run(compat("consume-assign", server.bootstrap, topic, n))[0])
    assert consumed["consumer.partitions"] == "3"
    assert consumed["consumed.total"] == str(n)
    for p in range(3):
        assert consumed["consumed.partition.%d" % p] == produced["produced.partition.%d" % p]
    with_group = observations(run(compat("consume-assign", server.bootstrap, topic, n, "g-" + topic))[0])
    assert with_group == consumed
    record(request, {**produced, **consumed})


def test_admin_client(server, request):
    """createTopics, listTopics, describeTopics, describeConfigs, describeCluster, listOffsets
    (earliest, latest, max timestamp, by timestamp), deleteTopics."""
    obs = observations(run(compat("admin", server.bootstrap, topic_name("java-admin")))[0])
    assert obs == {
        "create": "ok",
        "create.again": "TopicExistsException",
        "list.contains": "true",
        "describe.partitions": "3",
        "describe.internal": "false",
        "describe.missing": "UnknownTopicOrPartitionException",
        "configs.retention.ms": "3600000 DYNAMIC_TOPIC_CONFIG",
        "configs.cleanup.policy": "delete DEFAULT_CONFIG",
        "cluster.nodes": "1",
        "offsets.empty.latest": "0",
        "offsets.earliest": "0",
        "offsets.latest": "5",
        "offsets.maxTimestamp": "4 ts+4000",
        "offsets.forTimestamp.after": "-1",
        "delete": "ok",
        "list.after.delete.contains": "false",
    }
    record(request, obs)


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_group_consumer_subscribe(server, request, protocol):
    """A consumer with group.id and subscribe(), both group protocols, commits what it read."""
    require_apis(server, FIND_COORDINATOR, *([JOIN_GROUP] if protocol == "classic" else [CONSUMER_GROUP_HEARTBEAT]))
    topic = topic_name("java-group-" + protocol)
    run(compat("produce", server.bootstrap, topic, 1000, 3))
    obs = observations(run(compat("consume-group", server.bootstrap, topic, 1000, protocol, "g-" + topic))[0])
    assert obs == {"group.assigned": "3", "group.consumed": "1000"}
    record(request, obs)


# ------------------------------------------------------------------------- the CLI tools

def test_topic_command(server, request):
    """kafka-topics.sh: --create (with a config), --list, --describe, --delete."""
    topic = topic_name("cli-topics")
    bs = ["--bootstrap-server", server.bootstrap]
    out, _ = run(tool("TopicCommand", *bs, "--create", "--topic", topic, "--partitions", 2,
                      "--replication-factor", 1, "--config", "retention.ms=1000000"))
    assert out.strip() == "Created topic %s." % topic
    out, _ = run(tool("TopicCommand", *bs, "--list"))
    assert topic in out.split()
    out, _ = run(tool("TopicCommand", *bs, "--describe", "--topic", topic))
    lines = out.strip().splitlines()
    assert re.match(r"Topic: %s\tTopicId: \S+\tPartitionCount: 2\tReplicationFactor: 1\tConfigs: retention.ms=1000000$"
                    % topic, lines[0]), out
    assert [re.sub(r"\s+", " ", ln.strip()) for ln in lines[1:]] == [
        "Topic: %s Partition: %d Leader: 1 Replicas: 1 Isr: 1 Elr: N/A LastKnownElr: N/A" % (topic, p) for p in (0, 1)]
    out, _ = run(tool("TopicCommand", *bs, "--create", "--topic", topic, "--partitions", 1), check=False)
    assert "Topic '%s' already exists." % topic in out, out
    run(tool("TopicCommand", *bs, "--delete", "--topic", topic))
    out, _ = run(tool("TopicCommand", *bs, "--list"))
    assert topic not in out.split()
    record(request, {"describe": re.sub(r"TopicId: \S+", "TopicId: *", lines[0].replace(topic, "T"))})


def test_console_producer_and_consumer(server, request):
    """kafka-console-producer.sh with keys, then kafka-console-consumer.sh on a partition from
    the earliest offset (no group), printing keys and offsets."""
    topic = topic_name("cli-console")
    bs = ["--bootstrap-server", server.bootstrap]
    run(tool("TopicCommand", *bs, "--create", "--topic", topic, "--partitions", 1))
    lines = ["k%d:value %d" % (i, i) for i in range(50)]
    run(tool("ConsoleProducer", *bs, "--topic", topic, "--reader-property", "parse.key=true",
             "--reader-property", "key.separator=:"), stdin="\n".join(lines) + "\n")
    out, err = run(tool("consumer.ConsoleConsumer", *bs, "--topic", topic, "--partition", 0, "--offset", "earliest",
                        "--max-messages", len(lines), "--timeout-ms", 60000,
                        "--formatter-property", "print.key=true", "--formatter-property", "print.offset=true",
                        "--formatter-property", "key.separator=:"))
    assert out.strip().splitlines() == ["Offset:%d:%s" % (i, ln) for i, ln in enumerate(lines)]
    assert "Processed a total of %d messages" % len(lines) in err
    record(request, {"consumed": len(out.strip().splitlines())})


def test_get_offset_shell_and_producer_performance(server, request):
    """kafka-producer-perf-test.sh (defaults: acks=all, idempotent) writes N records; then
    kafka-get-offsets.sh reports latest (-1), earliest (-2) and max-timestamp (-3) offsets."""
    topic = topic_name("cli-perf")
    bs = ["--bootstrap-server", server.bootstrap]
    n = 20000
    run(tool("TopicCommand", *bs, "--create", "--topic", topic, "--partitions", 3))
    out, _ = run(tool("ProducerPerformance", "--topic", topic, "--num-records", n, "--record-size", 100,
                      "--throughput", -1, "--command-property", "bootstrap.servers=" + server.bootstrap))
    assert re.search(r"^%d records sent" % n, out, re.M), out

    def offsets(time_spec):
        out, _ = run(tool("GetOffsetShell", *bs, "--topic", topic, "--time", time_spec))
        got = {}
        for line in out.strip().splitlines():
            t, p, o = line.rsplit(":", 2)
            assert t == topic, line
            got[int(p)] = int(o)
        return got

    latest = offsets(-1)
    assert sorted(latest) == [0, 1, 2] and sum(latest.values()) == n, latest
    assert offsets(-2) == {0: 0, 1: 0, 2: 0}
    max_ts = offsets(-3)
    assert all(0 <= max_ts[p] < latest[p] or latest[p] == 0 for p in latest), (max_ts, latest)
    record(request, {"partitions": len(latest), "total": sum(latest.values())})


def test_consumer_group_command_and_consumer_performance(server, request):
    """kafka-consumer-perf-test.sh reads with a group; kafka-consumer-groups.sh --list,
    --describe, --reset-offsets --to-earliest --execute."""
    require_apis(server, FIND_COORDINATOR, JOIN_GROUP)
    topic = topic_name("cli-groups")
    group = "g-" + topic
    bs = ["--bootstrap-server", server.bootstrap]
    run(compat("produce", server.bootstrap, topic, 1000, 2))
    out, _ = run(tool("ConsumerPerformance", *bs, "--topic", topic, "--messages", 1000, "--group", group,
                      "--timeout", 60000))
    out, _ = run(tool("consumer.group.ConsumerGroupCommand", *bs, "--list"))
    assert group in out.split()
    out, _ = run(tool("consumer.group.ConsumerGroupCommand", *bs, "--describe", "--group", group))
    rows = [ln.split() for ln in out.strip().splitlines() if ln.startswith(group)]
    assert sorted((r[1], r[2], r[3], r[4]) for r in rows) == sorted(
        (topic, str(p), r[4], r[4]) for p, r in enumerate(sorted(rows, key=lambda r: int(r[2])))), out
    assert sum(int(r[3]) for r in rows) == 1000, out
    out, _ = run(tool("consumer.group.ConsumerGroupCommand", *bs, "--reset-offsets", "--group", group,
                      "--topic", topic, "--to-earliest", "--execute"))
    rows = [ln.split() for ln in out.strip().splitlines() if ln.startswith(group)]
    assert sorted((r[1], r[2], r[3]) for r in rows) == [(topic, "0", "0"), (topic, "1", "0")], out
    record(request, {"reset": len(rows)})
