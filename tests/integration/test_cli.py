"""The admin CLI (`sidestream topic|group|produce|consume`), a Kafka client of any cluster.

Every subcommand runs against the `server` fixture (a Sidestream agent, or Apache Kafka 4.4 with
SIDESTREAM_BIN=scripts/kafka-reference-broker), its `--json` parsed and checked against what
confluent-kafka (librdkafka) sees, errors included:

- topic create/list/describe/alter/delete: partitions, leaders and the configs set on a topic as
  the AdminClient reports them; TOPIC_ALREADY_EXISTS and UNKNOWN_TOPIC_OR_PARTITION as errors.
- produce: lines (keyed with --key-separator, placed by Kafka's murmur2 partitioner) read back
  by confluent-kafka, with every compression codec; a progress line on a long run; a failing
  record's Kafka error name and a non-zero exit.
- consume: what confluent-kafka produced (keys, values, headers, timestamps) in JSON;
  --count, --partition, --offset, --exit-at-end, --group (start at and commit offsets);
  OFFSET_OUT_OF_RANGE and unknown partitions as errors.
- group list/describe (classic and KIP-848 groups; lag; a committed offset past the log end is
  negative lag, not 0; a missing group is an error), reset-offsets (dry run, --execute, every
  strategy, refused while members are active), delete.
- acl list/create/delete with kafka-acls.sh's options, as confluent-kafka's describe_acls sees
  them (Sidestream with `[acl] enabled`; the reference broker runs without an authorizer, and
  both answer SECURITY_DISABLED then).
- An unreachable broker: one line "cannot reach HOST:PORT: Connection refused", exit 1.

The CLI is always this repository's target/release/sidestream (SIDESTREAM_CLI overrides it),
whatever SIDESTREAM_BIN serves.
"""

import json
import os
import subprocess
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, ConfigResource
from kafka.partitioner.default import murmur2

from confluent_kafka.admin import AclBindingFilter, AclOperation, AclPermissionType, ResourcePatternType, ResourceType

import test_acls
from conftest import REPO, binary_path, free_port, poll_until

# A server enforcing ACLs, its PLAINTEXT listener an anonymous super user (test_acls's fixture).
acl_server = test_acls.acl_server
# The server is Apache Kafka (scripts/kafka-reference-broker): it runs without an authorizer.
REFERENCE = "kafka-reference-broker" in str(binary_path())
CLI = os.environ.get("SIDESTREAM_CLI", str(REPO / "target" / "release" / "sidestream"))
TIMEOUT = 60


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def cli(bootstrap, *args, input=None, json_out=True, timeout=TIMEOUT):
    """Runs the CLI; returns the CompletedProcess (stdout/stderr as text)."""
    cmd = [CLI, *[str(a) for a in args], "--bootstrap-server", bootstrap] + (["--json"] if json_out else [])
    return subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)


def ok(bootstrap, *args, **kw):
    """Runs the CLI, asserts exit 0, returns its JSON (or text when json_out=False)."""
    r = cli(bootstrap, *args, **kw)
    assert r.returncode == 0, "%s: exit %d\nstdout: %s\nstderr: %s" % (args, r.returncode, r.stdout, r.stderr)
    return json.loads(r.stdout) if kw.get("json_out", True) else r.stdout


def fails(bootstrap, *args, **kw):
    """Runs the CLI, asserts a non-zero exit and one line on stderr; returns that line."""
    r = cli(bootstrap, *args, **kw)
    assert r.returncode != 0, "%s: expected a failure\nstdout: %s\nstderr: %s" % (args, r.stdout, r.stderr)
    lines = r.stderr.strip().splitlines()
    assert lines, r
    return lines[-1]


def admin(bootstrap):
    return AdminClient({"bootstrap.servers": bootstrap})


def create(server, topic, partitions, *extra):
    got = ok(server.bootstrap, "topic", "create", topic, "--partitions", partitions, "--replication-factor", 1, *extra)
    server.wait_topic_ready(topic, partitions)
    return got


def produce_values(bootstrap, topic, values, partition=0, headers=None):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for v in values:
        p.produce(topic, value=v.encode(), partition=partition, headers=headers)
    assert p.flush(30) == 0


def confluent_read(bootstrap, topic, partitions, n):
    """[(partition, offset, key, value, timestamp, headers)] of the first n records, by confluent-kafka."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique("read"), "enable.auto.commit": False})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = []
    try:
        deadline = time.monotonic() + TIMEOUT
        while len(got) < n and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            assert not m.error(), m.error()
            got.append((m.partition(), m.offset(), m.key(), m.value(), m.timestamp()[1], m.headers()))
    finally:
        c.close()
    assert len(got) == n, got
    return sorted(got)


def committed(bootstrap, group, topic, partitions):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        return {tp.partition: tp.offset for tp in c.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)}
    finally:
        c.close()


def commit(bootstrap, group, topic, offsets):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
    try:
        c.commit(offsets=[TopicPartition(topic, p, o) for p, o in offsets.items()], asynchronous=False)
    finally:
        c.close()


# ------------------------------------------------------------------------------------ errors


def test_unreachable_broker_is_one_clear_line_and_exit_1():
    bootstrap = "127.0.0.1:%d" % free_port()
    for args in (["topic", "list"], ["topic", "describe", "t"], ["group", "list"], ["group", "describe", "g"],
                 ["consume", "t", "--exit-at-end"]):
        line = fails(bootstrap, *args)
        assert line == "sidestream %s: cannot reach %s: Connection refused" % (args[0], bootstrap), line
    line = fails(bootstrap, "produce", "t", input="x\n")
    assert line == "sidestream produce: cannot reach %s: Connection refused" % bootstrap


# ------------------------------------------------------------------------------------ topics


def test_topic_create_list_describe_alter_delete(server):
    topic = unique("cli-topic")
    made = create(server, topic, 3, "--config", "retention.ms=123456")
    assert (made["name"], made["partitions"], made["replication_factor"]) == (topic, 3, 1), made

    md = admin(server.bootstrap).list_topics(timeout=10)
    listed = ok(server.bootstrap, "topic", "list")["topics"]
    assert {t["name"]: t["partitions"] for t in listed if not t["internal"]} == \
        {name: len(t.partitions) for name, t in md.topics.items() if not name.startswith("__")}
    assert all(not t["internal"] for t in ok(server.bootstrap, "topic", "list", "--exclude-internal")["topics"])
    assert topic in ok(server.bootstrap, "topic", "list", json_out=False).split()

    [d] = ok(server.bootstrap, "topic", "describe", topic)["topics"]
    want = md.topics[topic]
    assert d["name"] == topic and d["replication_factor"] == 1 and not d["internal"]
    assert [(p["partition"], p["leader"], p["replicas"], p["isr"]) for p in d["partitions"]] == \
        [(p, want.partitions[p].leader, want.partitions[p].replicas, want.partitions[p].isrs) for p in range(3)]
    assert d["configs"] == {"retention.ms": "123456"}, d
    assert "Configs: retention.ms=123456" in ok(server.bootstrap, "topic", "describe", topic, json_out=False)

    altered = ok(server.bootstrap, "topic", "alter", topic, "--partitions", 5, "--config", "cleanup.policy=compact",
                 "--delete-config", "retention.ms")
    assert altered == {"name": topic, "partitions": 5, "set_configs": {"cleanup.policy": "compact"},
                       "deleted_configs": ["retention.ms"]}
    poll_until(lambda: len(admin(server.bootstrap).list_topics(topic, timeout=10).topics[topic].partitions) == 5,
               TIMEOUT, what="5 partitions")
    res = ConfigResource("topic", topic)
    a = admin(server.bootstrap)  # kept until the answer: a destroyed client fails its futures
    entries = a.describe_configs([res])[res].result(30)
    assert entries["cleanup.policy"].value == "compact" and entries["retention.ms"].is_default
    [d] = ok(server.bootstrap, "topic", "describe", topic)["topics"]
    assert len(d["partitions"]) == 5 and d["configs"] == {"cleanup.policy": "compact"}, d

    line = fails(server.bootstrap, "topic", "create", topic, "--partitions", 1)
    assert "TOPIC_ALREADY_EXISTS" in line and topic in line, line
    line = fails(server.bootstrap, "topic", "alter", topic, "--partitions", 2)
    assert "INVALID_PARTITIONS" in line, line

    assert ok(server.bootstrap, "topic", "delete", topic) == {"deleted": [topic]}
    poll_until(lambda: topic not in admin(server.bootstrap).list_topics(timeout=10).topics, TIMEOUT, what="deletion")
    for args in (["topic", "describe", topic], ["topic", "delete", topic]):
        line = fails(server.bootstrap, *args)
        assert "UNKNOWN_TOPIC_OR_PARTITION" in line and topic in line, line


# --------------------------------------------------------------------------- produce, consume


def test_produce_keyed_lines_land_where_kafkas_partitioner_puts_them(server):
    topic = unique("cli-produce")
    create(server, topic, 3)
    lines = "".join("key-%d:value-%d\n" % (i, i) for i in range(30))
    report = ok(server.bootstrap, "produce", topic, "--key-separator", ":", input=lines)
    assert (report["records"], report["failed"], report["error"]) == (30, 0, None), report
    got = confluent_read(server.bootstrap, topic, 3, 30)
    for partition, _, key, value, _, _ in got:
        assert value == key.replace(b"key", b"value")
        assert (murmur2(key) & 0x7FFFFFFF) % 3 == partition, (key, partition)
    # Per partition, offsets dense from 0, in the order of the lines.
    for p in range(3):
        mine = [(o, k) for q, o, k, _, _, _ in got if q == p]
        assert [o for o, _ in mine] == list(range(len(mine)))
        assert [int(k.split(b"-")[1]) for _, k in mine] == sorted(int(k.split(b"-")[1]) for _, k in mine)

    # consume --json shows what confluent-kafka read.
    out = ok(server.bootstrap, "consume", topic, "--exit-at-end", json_out=False, input="")
    assert sorted(out.split()) == sorted("value-%d" % i for i in range(30))
    r = cli(server.bootstrap, "consume", topic, "--exit-at-end")
    assert r.returncode == 0, r.stderr
    records = [json.loads(line) for line in r.stdout.splitlines()]
    assert sorted((j["partition"], j["offset"], j["key"].encode(), j["value"].encode(), j["timestamp"], j["topic"])
                  for j in records) == [(p, o, k, v, ts, topic) for p, o, k, v, ts, _ in got]

    # A line without the separator is an error of that line, after the lines before it.
    line = fails(server.bootstrap, "produce", topic, "--key-separator", ":", input="a:1\nno separator\n")
    assert "no key separator" in line, line


@pytest.mark.parametrize("codec", ["none", "gzip", "snappy", "lz4", "zstd"])
def test_produce_compressed_batches_read_back_by_confluent_and_by_consume(server, codec):
    topic = unique("cli-" + codec)
    create(server, topic, 1)
    values = ["%s-%d-%s" % (codec, i, "x" * (i % 50)) for i in range(200)]
    report = ok(server.bootstrap, "produce", topic, "--compression", codec, "--acks", "1", input="\n".join(values) + "\n")
    assert report["records"] == 200, report
    assert [v.decode() for _, _, _, v, _, _ in confluent_read(server.bootstrap, topic, 1, 200)] == values
    out = ok(server.bootstrap, "consume", topic, "--exit-at-end", json_out=False)
    assert out.splitlines() == values


def test_produce_prints_progress_on_a_long_run(server):
    topic = unique("cli-progress")
    create(server, topic, 1)
    proc = subprocess.Popen([CLI, "produce", topic, "--bootstrap-server", server.bootstrap], stdin=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    stderr_lines = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr), daemon=True)
    reader.start()
    written = 0
    try:
        deadline = time.monotonic() + TIMEOUT
        # Keep the run going until it reports its progress.
        while not any("MB/s" in line and "records," in line for line in stderr_lines):
            assert time.monotonic() < deadline, stderr_lines
            proc.stdin.write("".join("line-%d\n" % (written + i) for i in range(100)))
            proc.stdin.flush()
            written += 100
            time.sleep(0.01)  # a steady trickle of input, not a wait for a condition
        proc.stdin.close()
        assert proc.wait(TIMEOUT) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    reader.join(10)
    assert stderr_lines[-1].startswith("%d records" % written), stderr_lines
    assert len(confluent_read(server.bootstrap, topic, 1, written)) == written


def test_produce_failure_names_the_kafka_error(server):
    topic = unique("cli-toolarge")
    create(server, topic, 1, "--config", "max.message.bytes=2000")
    r = cli(server.bootstrap, "produce", topic, input="small\n" + "y" * 5000 + "\n")
    assert r.returncode == 1, r
    assert "MESSAGE_TOO_LARGE" in r.stderr.strip().splitlines()[-1], r.stderr
    report = json.loads(r.stdout)
    assert report["failed"] >= 1 and report["error"].startswith("%s-0: MESSAGE_TOO_LARGE" % topic), report
    line = fails(server.bootstrap, "produce", unique("cli-nosuch"), input="x\n")
    assert "UNKNOWN_TOPIC_OR_PARTITION" in line, line


def test_consume_options_headers_and_errors(server):
    topic = unique("cli-consume")
    create(server, topic, 2)
    produce_values(server.bootstrap, topic, ["a%d" % i for i in range(10)], partition=0,
                   headers=[("h1", b"v1"), ("h2", None)])
    produce_values(server.bootstrap, topic, ["b%d" % i for i in range(10)], partition=1)

    first = json.loads(ok(server.bootstrap, "consume", topic, "--partition", 0, "--count", 1, "--json", json_out=False))
    assert (first["partition"], first["offset"], first["key"], first["value"]) == (0, 0, None, "a0")
    assert first["headers"] == [{"key": "h1", "value": "v1"}, {"key": "h2", "value": None}]
    assert ok(server.bootstrap, "consume", topic, "--partition", 1, "--offset", 7, "--exit-at-end",
              json_out=False).split() == ["b7", "b8", "b9"]
    assert ok(server.bootstrap, "consume", topic, "--partition", 1, "--offset", "end", "--exit-at-end",
              json_out=False) == ""
    assert len(ok(server.bootstrap, "consume", topic, "--count", 15, json_out=False).split()) == 15

    line = fails(server.bootstrap, "consume", topic, "--partition", 0, "--offset", 1000, "--exit-at-end")
    assert "OFFSET_OUT_OF_RANGE" in line and "%s-0" % topic in line, line
    line = fails(server.bootstrap, "consume", topic, "--partition", 5, "--exit-at-end")
    assert "UNKNOWN_TOPIC_OR_PARTITION" in line and "%s-5" % topic in line, line
    line = fails(server.bootstrap, "consume", unique("cli-nosuch"), "--exit-at-end")
    assert "UNKNOWN_TOPIC_OR_PARTITION" in line, line

    # --group: starts where the group is, commits where it stopped.
    group = unique("cli-consume-group")
    commit(server.bootstrap, group, topic, {0: 4, 1: 8})
    assert sorted(ok(server.bootstrap, "consume", topic, "--group", group, "--exit-at-end", json_out=False).split()) == \
        sorted(["a%d" % i for i in range(4, 10)] + ["b8", "b9"])
    assert committed(server.bootstrap, group, topic, 2) == {0: 10, 1: 10}
    assert ok(server.bootstrap, "consume", topic, "--group", group, "--exit-at-end", json_out=False) == ""


# ------------------------------------------------------------------------------------ groups


def wait_group(bootstrap, group, state):
    return poll_until(lambda: (lambda d: d if d["state"] == state else None)(ok(bootstrap, "group", "describe", group)),
                      TIMEOUT, what="group %s %s" % (group, state))


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_group_list_describe_and_reset_refused_while_active(server, protocol):
    topic, group = unique("cli-grp"), unique("cli-grp-" + protocol)
    create(server, topic, 2)
    produce_values(server.bootstrap, topic, ["x"] * 6, partition=0)
    produce_values(server.bootstrap, topic, ["y"] * 4, partition=1)
    conf = {"bootstrap.servers": server.bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest"}
    if protocol == "consumer":
        conf["group.protocol"] = "consumer"
    else:
        conf.update({"session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    c = Consumer(conf)
    try:
        c.subscribe([topic])
        seen = 0
        deadline = time.monotonic() + TIMEOUT
        while seen < 10 and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and not m.error():
                seen += 1
        assert seen == 10
        c.commit(asynchronous=False)
        d = wait_group(server.bootstrap, group, "Stable")
        assert (d["group"], d["type"], d["members"]) == (group, protocol, 1), d
        rows = [(r["topic"], r["partition"], r["committed_offset"], r["log_end_offset"], r["lag"], r["past_log_end"])
                for r in d["partitions"]]
        assert rows == [(topic, 0, 6, 6, 0, False), (topic, 1, 4, 4, 0, False)], d
        assert {r["member_id"] for r in d["partitions"]} == {c.memberid()}, d
        listed = {g["group"]: g for g in ok(server.bootstrap, "group", "list")["groups"]}
        assert (listed[group]["state"], listed[group]["type"]) == ("Stable", protocol), listed[group]
        assert group in ok(server.bootstrap, "group", "list", json_out=False)

        line = fails(server.bootstrap, "group", "reset-offsets", group, "--topic", topic, "--to-earliest", "--execute")
        assert line == ("sidestream group: Assignments can only be reset if the group '%s' is inactive, but the current "
                        "state is Stable." % group), line
        r = cli(server.bootstrap, "group", "delete", group)
        assert r.returncode == 1 and json.loads(r.stdout) == {"groups": [{"group": group, "error": "NON_EMPTY_GROUP"}]}, r
    finally:
        c.close()
    d = wait_group(server.bootstrap, group, "Empty")
    assert d["members"] == 0 and [r["committed_offset"] for r in d["partitions"]] == [6, 4]


def test_group_describe_lag_past_log_end_and_missing_group(server):
    topic, group = unique("cli-lag"), unique("cli-lag-group")
    create(server, topic, 2)
    produce_values(server.bootstrap, topic, ["v"] * 10, partition=0)
    produce_values(server.bootstrap, topic, ["v"] * 5, partition=1)
    commit(server.bootstrap, group, topic, {0: 3, 1: 20})
    d = ok(server.bootstrap, "group", "describe", group)
    assert (d["state"], d["members"]) == ("Empty", 0), d
    assert [(r["partition"], r["committed_offset"], r["log_end_offset"], r["lag"], r["past_log_end"])
            for r in d["partitions"]] == [(0, 3, 10, 7, False), (1, 20, 5, -15, True)], d
    text = ok(server.bootstrap, "group", "describe", group, json_out=False)
    assert "Note: %s-1: committed offset 20 is past the log end offset 5" % topic in text, text
    assert [line.split()[:5] for line in text.splitlines() if line.startswith(topic)] == \
        [[topic, "0", "3", "10", "7"], [topic, "1", "20", "5", "-15"]], text

    missing = unique("cli-no-group")
    assert fails(server.bootstrap, "group", "describe", missing) == \
        "sidestream group: Consumer group '%s' does not exist." % missing


def test_group_reset_offsets_every_strategy_and_delete(server):
    topic, group = unique("cli-reset"), unique("cli-reset-group")
    create(server, topic, 2)
    produce_values(server.bootstrap, topic, ["v"] * 10, partition=0)
    produce_values(server.bootstrap, topic, ["v"] * 10, partition=1)
    commit(server.bootstrap, group, topic, {0: 5, 1: 5})

    def reset(*args):
        return ok(server.bootstrap, "group", "reset-offsets", group, *args)

    dry = reset("--topic", topic, "--to-earliest")
    assert dry == {"group": group, "executed": False, "partitions": [
        {"topic": topic, "partition": 0, "previous_offset": 5, "new_offset": 0},
        {"topic": topic, "partition": 1, "previous_offset": 5, "new_offset": 0}]}, dry
    assert committed(server.bootstrap, group, topic, 2) == {0: 5, 1: 5}
    assert "dry run" in ok(server.bootstrap, "group", "reset-offsets", group, "--topic", topic, "--to-latest",
                           json_out=False)

    plans = [
        (["--topic", topic, "--to-earliest", "--execute"], {0: 0, 1: 0}),
        (["--topic", topic, "--to-latest", "--execute"], {0: 10, 1: 10}),
        (["--topic", "%s:0" % topic, "--to-offset", "3", "--execute"], {0: 3, 1: 10}),
        (["--topic", "%s:1" % topic, "--to-offset", "99", "--execute"], {0: 3, 1: 10}),  # kept within the log
        (["--all-topics", "--shift-by", "2", "--execute"], {0: 5, 1: 10}),
        (["--topic", topic, "--shift-by", "-4", "--execute"], {0: 1, 1: 6}),
        (["--topic", topic, "--to-datetime", "2000-01-01T00:00:00.000", "--execute"], {0: 0, 1: 0}),
        (["--topic", topic, "--to-datetime", "2999-01-01T00:00:00Z", "--execute"], {0: 10, 1: 10}),
    ]
    for args, want in plans:
        got = reset(*args)
        assert got["executed"] is True
        assert committed(server.bootstrap, group, topic, 2) == want, (args, got)

    line = fails(server.bootstrap, "group", "reset-offsets", group, "--topic", topic)
    assert "--to-earliest" in line, line

    assert ok(server.bootstrap, "group", "delete", group) == {"groups": [{"group": group, "error": None}]}
    assert fails(server.bootstrap, "group", "describe", group) == \
        "sidestream group: Consumer group '%s' does not exist." % group
    r = cli(server.bootstrap, "group", "delete", group)
    assert r.returncode == 1 and json.loads(r.stdout) == {"groups": [{"group": group, "error": "GROUP_ID_NOT_FOUND"}]}, r


# -------------------------------------------------------------------------------------- acls


def test_acl_without_an_authorizer_is_security_disabled(server):
    for args in (["acl", "list"], ["acl", "create", "--allow-principal", "User:x", "--operation", "Read", "--topic", "t"],
                 ["acl", "delete", "--topic", "t"]):
        line = fails(server.bootstrap, *args)
        assert line.startswith("sidestream acl: SECURITY_DISABLED"), line


@pytest.mark.skipif(REFERENCE, reason="the reference broker runs without an authorizer (SECURITY_DISABLED, tested above)")
def test_acl_create_list_delete(acl_server):
    topic, group, user = unique("cli-acl"), unique("cli-acl-group"), "User:" + unique("alice")
    assert ok(acl_server.bootstrap, "acl", "create", "--allow-principal", user, "--operation", "Read",
              "--operation", "Describe", "--topic", topic, "--group", group) == {"created": 4}
    assert ok(acl_server.bootstrap, "acl", "create", "--deny-principal", user, "--deny-host", "10.0.0.1",
              "--operation", "Write", "--topic", topic, "--resource-pattern-type", "prefixed") == {"created": 1}

    def mine(*args):
        return sorted((a["resource_type"], a["resource_name"], a["pattern_type"], a["operation"], a["permission"], a["host"])
                      for a in ok(acl_server.bootstrap, "acl", "list", *args)["acls"] if a["principal"] == user)

    assert mine("--topic", topic) == [("TOPIC", topic, "LITERAL", "DESCRIBE", "ALLOW", "*"),
                                      ("TOPIC", topic, "LITERAL", "READ", "ALLOW", "*"),
                                      ("TOPIC", topic, "PREFIXED", "WRITE", "DENY", "10.0.0.1")]
    assert len(mine("--principal", user)) == 5
    assert mine("--group", group) == [("GROUP", group, "LITERAL", "DESCRIBE", "ALLOW", "*"),
                                      ("GROUP", group, "LITERAL", "READ", "ALLOW", "*")]
    a = admin(acl_server.bootstrap)  # kept until the answer
    seen = a.describe_acls(AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, user, None,
                                            AclOperation.ANY, AclPermissionType.ANY)).result(30)
    assert sorted((b.restype.name, b.name, b.resource_pattern_type.name, b.operation.name, b.permission_type.name, b.host)
                  for b in seen) == sorted(mine("--principal", user))
    assert "READ" in ok(acl_server.bootstrap, "acl", "list", "--topic", topic, json_out=False)

    deleted = ok(acl_server.bootstrap, "acl", "delete", "--topic", topic, "--operation", "Read")["deleted"]
    assert [(d["resource_name"], d["operation"], d["principal"]) for d in deleted] == [(topic, "READ", user)]
    deleted = ok(acl_server.bootstrap, "acl", "delete", "--topic", topic, "--group", group,
                 "--resource-pattern-type", "any")["deleted"]
    assert len(deleted) == 4, deleted
    assert mine("--principal", user) == []

    line = fails(acl_server.bootstrap, "acl", "create", "--allow-principal", user, "--operation", "Fly", "--topic", topic)
    assert "--operation 'Fly'" in line, line
