"""Consumer groups with real clients: confluent-kafka (librdkafka) and kafka-python subscribe().

- three confluent-kafka consumers (separate processes) share a 6-partition topic: every partition
  is assigned to exactly one member; one member is SIGKILLed (no LeaveGroup) and its partitions
  move to the others within the session timeout; with a synchronous commit after every record,
  every record is processed exactly once across the rebalances;
- kafka-python: join, consume, commit (with metadata, round-tripped exactly), leave, rejoin and
  resume from the committed offset;
- static membership (`group.instance.id`): a restarted member gets its partitions back without a
  rebalance of the others;
- group administration with kafka-python's admin client: list (with a state filter), describe,
  delete offsets, delete groups;
- committed offsets survive a restart of the server;
- `sidestream group describe GROUP` and the `sidestream_group_lag` Prometheus gauge show the lag.

Rebalance times (join of a new member, loss of a member) are printed and appended to
$SIDESTREAM_REBALANCE_TIMES (when set), so they can be reported.

The server runs with a short initial rebalance delay and minimum session timeout (env below) so
the tests are quick; the consumers use Kafka's minimum default session timeout, 6 s.
"""

import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid

import pytest

import urllib.request

from conftest import SidestreamServer, _LIVE_SERVERS, binary_path, free_port, poll_until

SESSION_TIMEOUT_MS = 6000
TIMEOUT = 60.0
GROUP_ENV = {
    "SIDESTREAM_GROUPS_INITIAL_REBALANCE_DELAY_MS": "300",
    "SIDESTREAM_GROUPS_CONSUMER_HEARTBEAT_INTERVAL_MS": "500",
    "SIDESTREAM_GROUPS_CONSUMER_SESSION_TIMEOUT_MS": "6000",
    "SIDESTREAM_GROUPS_MIN_SESSION_TIMEOUT_MS": "1000",
}

logging.getLogger("kafka").setLevel(logging.WARNING)


def record_time(what, seconds):
    line = "%s: %.2f s" % (what, seconds)
    print(line)
    path = os.environ.get("SIDESTREAM_REBALANCE_TIMES")
    if path:
        with open(path, "a") as f:
            f.write(line + "\n")


def _serving(base):
    """A server with the group settings above and a known metrics port; closed at the end."""
    metrics_port = free_port()
    env = dict(GROUP_ENV, SIDESTREAM_METRICS_LISTEN="127.0.0.1:%d" % metrics_port)
    srv = SidestreamServer(base / "data", base / "server.log", extra_env=env)
    srv.metrics_port = metrics_port
    try:
        srv.start()
        yield srv
    finally:
        srv.close()
        if srv in _LIVE_SERVERS:
            _LIVE_SERVERS.remove(srv)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from _serving(tmp_path_factory.mktemp("groups"))


@pytest.fixture
def own_server(tmp_path):
    yield from _serving(tmp_path)


def create_topic(bootstrap, topic, partitions):
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient({"bootstrap.servers": bootstrap})
    for f in admin.create_topics([NewTopic(topic, partitions, 1)]).values():
        f.result(30)


def produce(bootstrap, topic, partitions, start, n):
    """n records valued start..start+n-1, spread round-robin over the partitions."""
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    for i in range(start, start + n):
        p.produce(topic, value=str(i).encode(), partition=i % partitions)
    assert p.flush(30) == 0


# --------------------------------------------------------------------------------------------
# A confluent-kafka consumer in its own process, so it can be killed like a crashed application.
# It prints JSON lines: assignments, and each record after its offset is committed synchronously
# (a record whose commit fails is read again, by this member or the partition's next owner).
# SIGUSR1 makes it stop polling after the current record (so nothing is processed but
# uncommitted when the test then SIGKILLs it); SIGUSR2 makes it subscribe to the topics of its
# third argument instead.

CHILD = r"""
import json, signal, sys, time
from confluent_kafka import Consumer, KafkaException, TopicPartition
conf = json.loads(sys.argv[1])
topic = sys.argv[2]
stop = []
resubscribe = []
signal.signal(signal.SIGUSR1, lambda *a: stop.append(1))
signal.signal(signal.SIGUSR2, lambda *a: resubscribe.append(1))
def out(**kw):
    kw["t"] = time.time()
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()
def named(parts):
    return sorted("%s:%d" % (p.topic, p.partition) for p in parts)
def on_assign(c, parts):
    out(ev="assign", parts=sorted(p.partition for p in parts), tps=named(parts))
def on_revoke(c, parts):
    out(ev="revoke", parts=sorted(p.partition for p in parts), tps=named(parts))
c = Consumer(conf)
c.subscribe(topic.split(","), on_assign=on_assign, on_revoke=on_revoke)
while True:
    if stop:
        out(ev="idle")
        time.sleep(3600)
    if resubscribe:
        resubscribe.clear()
        c.subscribe(sys.argv[3].split(","), on_assign=on_assign, on_revoke=on_revoke)
        out(ev="resubscribed")
    m = c.poll(0.2)
    if m is None:
        continue
    if m.error():
        out(ev="error", error=str(m.error()))
        continue
    try:
        c.commit(message=m, asynchronous=False)
    except KafkaException as e:
        # e.g. REBALANCE_IN_PROGRESS: not processed; read it again (or its new owner will).
        out(ev="commit_error", error=str(e))
        try:
            c.seek(TopicPartition(m.topic(), m.partition(), m.offset()))
        except KafkaException:
            pass
        continue
    out(ev="rec", p=m.partition(), o=m.offset(), v=m.value().decode())
"""


class ChildConsumer:
    def __init__(self, name, bootstrap, topic, group, extra=None, resubscribe_to=""):
        self.name = name
        conf = {
            "bootstrap.servers": bootstrap,
            "group.id": group,
            "auto.offset.reset": "earliest",
            "enable.auto.commit": False,
            "session.timeout.ms": SESSION_TIMEOUT_MS,
            "heartbeat.interval.ms": 500,
            "partition.assignment.strategy": "range",
        }
        conf.update(extra or {})
        if conf.get("group.protocol") == "consumer":
            # KIP-848: the broker owns these settings.
            for k in ("session.timeout.ms", "heartbeat.interval.ms", "partition.assignment.strategy"):
                conf.pop(k)
        self.events = []
        self.lock = threading.Lock()
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD, json.dumps(conf), topic, resubscribe_to],
                                     stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            try:
                ev = json.loads(line)
            except ValueError:
                continue
            with self.lock:
                self.events.append(ev)

    def snapshot(self):
        with self.lock:
            return list(self.events)

    def assignment(self):
        """Partitions currently assigned: assign adds, revoke removes (eager protocols revoke
        everything first; cooperative and KIP-848 ones only what moves)."""
        parts = set()
        for ev in self.snapshot():
            if ev["ev"] == "assign":
                parts |= set(ev["parts"])
            elif ev["ev"] == "revoke":
                parts -= set(ev["parts"])
        return parts

    def topic_partitions(self):
        """As assignment(), as "topic:partition" strings (for members of several topics)."""
        tps = set()
        for ev in self.snapshot():
            if ev["ev"] == "assign":
                tps |= set(ev["tps"])
            elif ev["ev"] == "revoke":
                tps -= set(ev["tps"])
        return tps

    def records(self):
        return [(e["p"], e["o"], e["v"]) for e in self.snapshot() if e["ev"] == "rec"]

    def count(self, kind):
        return sum(1 for e in self.snapshot() if e["ev"] == kind)

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


@pytest.fixture
def spawn():
    """Starts ChildConsumers that are killed when the test ends, however it ends."""
    started = []

    def start(*args, **kwargs):
        c = ChildConsumer(*args, **kwargs)
        started.append(c)
        return c
    yield start
    for c in started:
        c.kill()


def assert_each_processed_once(consumers, n):
    """Records valued 0..n-1 were processed (and committed), each exactly once overall."""
    poll_until(lambda: len({(p, o) for c in consumers for (p, o, _) in c.records()}) >= n, TIMEOUT,
               what="all %d records" % n)
    seen = [r for c in consumers for r in c.records()]
    values = sorted(int(v) for (_, _, v) in seen)
    assert values == list(range(n)), "records processed more than once or lost: %d seen" % len(seen)


def wait_assigned(consumers, partitions, timeout=TIMEOUT, what="assignment"):
    """Until the consumers' assignments are disjoint and cover every partition."""
    def ok():
        sets = [c.assignment() for c in consumers]
        union = set().union(*sets)
        return all(sets) and sum(len(s) for s in sets) == len(union) == partitions and sets
    return poll_until(ok, timeout, what=what)


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_confluent_three_members_share_partitions_and_survive_a_crash(server, spawn, strategy):
    topic, group, partitions = "grp-six-" + strategy, "grp-six-group-" + strategy, 6
    create_topic(server.bootstrap, topic, partitions)
    produce(server.bootstrap, topic, partitions, 0, 600)
    conf = {"partition.assignment.strategy": strategy}
    consumers = [spawn("a", server.bootstrap, topic, group, conf),
                 spawn("b", server.bootstrap, topic, group, conf)]
    wait_assigned(consumers, partitions, what="two members own every partition")

    # A third member joins a stable group.
    t0 = time.monotonic()
    consumers.append(spawn("c", server.bootstrap, topic, group, conf))
    sets = wait_assigned(consumers, partitions, what="three members own every partition")
    record_time("confluent-kafka %s: a third member joins (process start to new assignment)" % strategy,
                time.monotonic() - t0)
    assert sorted(len(s) for s in sets) == [2, 2, 2], sets

    poll_until(lambda: len({(p, o) for c in consumers for (p, o, _) in c.records()}) == 600, TIMEOUT,
               what="the first 600 records")

    # Member c stops after a committed record, then dies without leaving the group.
    victim = consumers[2]
    victim.proc.send_signal(signal.SIGUSR1)
    poll_until(lambda: victim.count("idle"), 10, what="victim idle")
    lost = victim.assignment()
    t0 = time.monotonic()
    victim.kill()
    survivors = consumers[:2]
    wait_assigned(survivors, partitions, timeout=SESSION_TIMEOUT_MS / 1000 + 20,
                  what="survivors own every partition")
    moved = time.monotonic() - t0
    record_time("confluent-kafka %s: partitions of a killed member move (session.timeout.ms=%d, "
                "heartbeat.interval.ms=500)" % (strategy, SESSION_TIMEOUT_MS), moved)
    assert moved < SESSION_TIMEOUT_MS / 1000 + 10, moved
    assert lost <= set().union(*[c.assignment() for c in survivors])

    produce(server.bootstrap, topic, partitions, 600, 600)
    assert_each_processed_once(consumers, 1200)


def test_kafka_python_commit_leave_rejoin_resumes(server):
    from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition

    topic, group = "grp-kp", "grp-kp-group"
    create_topic(server.bootstrap, topic, 2)
    produce(server.bootstrap, topic, 2, 0, 100)

    def consumer():
        return KafkaConsumer(topic, bootstrap_servers=server.bootstrap, group_id=group,
                             auto_offset_reset="earliest", enable_auto_commit=False,
                             session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=500,
                             request_timeout_ms=30000)

    c = consumer()
    got = []
    deadline = time.monotonic() + TIMEOUT
    while len(got) < 60 and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=500, max_records=60 - len(got)).values():
            got.extend(recs)
    assert len(got) == 60
    assert c.assignment() == {TopicPartition(topic, 0), TopicPartition(topic, 1)}
    last = {}
    for r in got:
        last[r.partition] = r.offset
    metadata = "meta: é ✓ {\"k\": 1}"
    c.commit({TopicPartition(topic, p): OffsetAndMetadata(o + 1, metadata, -1) for p, o in last.items()})
    for p, o in last.items():
        committed = c.committed(TopicPartition(topic, p), metadata=True)
        assert committed.offset == o + 1
        assert committed.metadata == metadata
    c.close()  # sends LeaveGroup

    c = consumer()
    rest = []
    deadline = time.monotonic() + TIMEOUT
    while len(rest) < 40 and time.monotonic() < deadline:
        for recs in c.poll(timeout_ms=500).values():
            rest.extend(recs)
    c.close()
    assert sorted(int(r.value) for r in got + rest) == list(range(100)), "rejoin did not resume at the commit"


def test_static_member_restart_keeps_partitions_without_rebalance(server, spawn):
    topic, group, partitions = "grp-static", "grp-static-group", 4
    create_topic(server.bootstrap, topic, partitions)
    produce(server.bootstrap, topic, partitions, 0, 40)
    a = spawn("a", server.bootstrap, topic, group, {"group.instance.id": "static-a"})
    b = spawn("b", server.bootstrap, topic, group, {"group.instance.id": "static-b"})
    wait_assigned([a, b], partitions, what="two static members own every partition")
    before = a.assignment()
    b_assigns = b.count("assign")
    a.kill()  # a static member's crash: no LeaveGroup, its place is kept for the session timeout
    t0 = time.monotonic()
    a2 = spawn("a2", server.bootstrap, topic, group, {"group.instance.id": "static-a"})
    poll_until(lambda: a2.assignment(), TIMEOUT, what="restarted static member assigned")
    record_time("confluent-kafka: a static member restarts and gets its partitions back", time.monotonic() - t0)
    assert a2.assignment() == before
    # b was never revoked nor reassigned (a rebalance would have revoked b before a2 got
    # an assignment: eager protocol).
    assert b.count("revoke") == 0 and b.count("assign") == b_assigns


def test_static_members_with_a_changed_subscription_rebalance_as_kafkas_coordinator_does(server, spawn):
    """Kafka's coordinator (checked against Kafka 4.4 with this test): a static member that
    restarts subscribed to one more topic takes its old place without a rebalance (the selected
    protocol is unchanged), so it keeps its old partitions only; a running member that changes
    its subscription rejoins with new metadata, which rebalances, and the new topic is spread."""
    a_topic, b_topic, group = "grp-static-sub-a", "grp-static-sub-b", "grp-static-sub-group"
    create_topic(server.bootstrap, a_topic, 2)
    create_topic(server.bootstrap, b_topic, 2)
    both = a_topic + "," + b_topic
    a = spawn("a", server.bootstrap, a_topic, group, {"group.instance.id": "static-a"})
    b = spawn("b", server.bootstrap, a_topic, group, {"group.instance.id": "static-b"}, resubscribe_to=both)
    wait_assigned([a, b], 2, what="two static members own the first topic")
    before, b_assigns = a.topic_partitions(), b.count("assign")
    a.kill()
    a2 = spawn("a2", server.bootstrap, both, group, {"group.instance.id": "static-a"})
    poll_until(lambda: a2.topic_partitions(), TIMEOUT, what="restarted static member assigned")
    assert a2.topic_partitions() == before
    assert b.count("revoke") == 0 and b.count("assign") == b_assigns

    b.proc.send_signal(signal.SIGUSR2)
    every = {"%s:%d" % (t, p) for t in (a_topic, b_topic) for p in range(2)}

    def spread():
        sets = [a2.topic_partitions(), b.topic_partitions()]
        return sets if set().union(*sets) == every and not sets[0] & sets[1] and all(sets) else None
    poll_until(spread, TIMEOUT, what="after the subscription change, both topics spread over both members")
    assert b.count("resubscribed") == 1


def test_kip848_consumer_protocol_group_of_two(server, spawn):
    from confluent_kafka.admin import AdminClient

    topic, group, partitions = "grp-848", "grp-848-group", 4
    create_topic(server.bootstrap, topic, partitions)
    produce(server.bootstrap, topic, partitions, 0, 200)
    a = spawn("a", server.bootstrap, topic, group, {"group.protocol": "consumer"})
    poll_until(lambda: a.assignment() == set(range(partitions)), TIMEOUT, what="first member owns everything")
    t0 = time.monotonic()
    consumers = [a, spawn("b", server.bootstrap, topic, group, {"group.protocol": "consumer"})]
    sets = wait_assigned(consumers, partitions, what="two KIP-848 members share the partitions")
    record_time("confluent-kafka group.protocol=consumer: a second member joins (process start to "
                "new assignment, heartbeat interval 500 ms)", time.monotonic() - t0)
    assert sorted(len(x) for x in sets) == [2, 2], sets
    produce(server.bootstrap, topic, partitions, 200, 200)
    assert_each_processed_once(consumers, 400)

    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    desc = admin.describe_consumer_groups([group])[group].result(30)
    assert str(desc.state).endswith("STABLE"), desc.state
    assert len(desc.members) == 2
    owned = sorted(tp.partition for m in desc.members for tp in m.assignment.topic_partitions)
    assert owned == list(range(partitions)), desc


def test_kip848_regex_subscription_picks_up_a_topic_created_after_joining(server):
    """librdkafka subscribes by a regular expression with group.protocol=consumer: the
    coordinator matches it (KIP-848's SubscribedTopicRegex; whole names), assigns the matching
    topic, and a matching topic created afterwards within a second plus a heartbeat."""
    from confluent_kafka import Consumer

    prefix = "rx-%s-" % uuid.uuid4().hex[:8]
    create_topic(server.bootstrap, prefix + "a", 2)
    create_topic(server.bootstrap, "x" + prefix + "a", 1)  # does not match: whole names only
    produce(server.bootstrap, prefix + "a", 2, 0, 10)
    produce(server.bootstrap, "x" + prefix + "a", 1, 100, 10)
    c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": prefix + "group",
                  "group.protocol": "consumer", "auto.offset.reset": "earliest"})
    seen = {}

    def poll_records(want_topics):
        m = c.poll(0.2)
        if m is not None and m.error() is None:
            seen.setdefault(m.topic(), set()).add(int(m.value()))
        return all(len(seen.get(t, ())) == 10 for t in want_topics) or None

    try:
        c.subscribe(["^" + prefix + ".*"])
        poll_until(lambda: poll_records([prefix + "a"]), TIMEOUT, what="the regex's first topic consumed")
        t0 = time.monotonic()
        create_topic(server.bootstrap, prefix + "b", 3)
        produce(server.bootstrap, prefix + "b", 3, 200, 10)
        poll_until(lambda: poll_records([prefix + "a", prefix + "b"]), TIMEOUT,
                   what="a topic created after the member joined, matching its regex, consumed")
        record_time("confluent-kafka group.protocol=consumer, regex subscription: a new matching topic "
                    "created to its records consumed", time.monotonic() - t0)
        assert {tp.topic for tp in c.assignment()} == {prefix + "a", prefix + "b"}, c.assignment()
        assert set(seen) == {prefix + "a", prefix + "b"}, seen.keys()
    finally:
        c.close()


def test_admin_list_describe_delete(server):
    from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition
    from kafka.admin import KafkaAdminClient

    topic, group = "grp-admin", "grp-admin-group"
    create_topic(server.bootstrap, topic, 2)
    produce(server.bootstrap, topic, 2, 0, 10)
    admin = KafkaAdminClient(bootstrap_servers=server.bootstrap)
    c = KafkaConsumer(topic, bootstrap_servers=server.bootstrap, group_id=group, client_id="admin-test-client",
                      auto_offset_reset="earliest", enable_auto_commit=False,
                      session_timeout_ms=SESSION_TIMEOUT_MS, heartbeat_interval_ms=500)
    try:
        poll_until(lambda: c.poll(timeout_ms=200) is not None and c.assignment(), TIMEOUT, what="assignment")
        c.commit({TopicPartition(topic, 0): OffsetAndMetadata(3, "x", -1),
                  TopicPartition(topic, 1): OffsetAndMetadata(4, "", -1)})

        def stable():
            d = admin.describe_groups([group])[group]
            return d if d["group_state"] == "Stable" else None
        d = poll_until(stable, TIMEOUT, what="stable group")
        assert d["protocol_type"] == "consumer" and d["protocol_data"] == "range", d
        assert len(d["members"]) == 1 and d["members"][0]["client_id"] == "admin-test-client", d
        listed = {g["group_id"]: g for g in admin.list_groups()}
        assert listed[group]["group_state"] == "Stable" and listed[group]["protocol_type"] == "consumer"

        # A group with members is not deleted; its subscribed topic's offsets neither.
        assert admin.delete_groups([group])[group] == "NonEmptyGroupError"
        deleted = admin.delete_group_offsets(group, [TopicPartition(topic, 0)])
        assert deleted[TopicPartition(topic, 0)].__name__ == "GroupSubscribedToTopicError", deleted
    finally:
        c.close()
    poll_until(lambda: admin.describe_groups([group])[group]["group_state"] == "Empty", TIMEOUT, what="empty group")
    assert [g["group_id"] for g in admin.list_groups() if g["group_state"] == "Empty" and g["group_id"] == group]
    offsets = admin.list_group_offsets(group)[group]
    assert {tp.partition: (o.offset, o.metadata) for tp, o in offsets.items()} == {0: (3, "x"), 1: (4, "")}
    assert admin.delete_group_offsets(group, [TopicPartition(topic, 0)])[TopicPartition(topic, 0)].__name__ == "NoError"
    assert list(admin.list_group_offsets(group)[group]) == [TopicPartition(topic, 1)]
    assert admin.delete_groups([group, "grp-never-existed"]) == {group: "OK",
                                                                  "grp-never-existed": "GroupIdNotFoundError"}
    assert group not in [g["group_id"] for g in admin.list_groups()]
    admin.close()


def test_committed_offsets_survive_restart(own_server):
    from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition

    topic, group = "grp-restart", "grp-restart-group"
    create_topic(own_server.bootstrap, topic, 3)
    c = KafkaConsumer(bootstrap_servers=own_server.bootstrap, group_id=group, enable_auto_commit=False)
    offsets = {TopicPartition(topic, p): OffsetAndMetadata(10 * p + 1, "m%d" % p, -1) for p in range(3)}
    c.commit(offsets)
    c.close()
    own_server.restart()
    c = KafkaConsumer(bootstrap_servers=own_server.bootstrap, group_id=group, enable_auto_commit=False)
    for tp, om in offsets.items():
        got = c.committed(tp, metadata=True)
        assert (got.offset, got.metadata) == (om.offset, om.metadata)
    c.close()


def test_cli_and_metrics_show_lag(server):
    from kafka import KafkaConsumer, OffsetAndMetadata, TopicPartition

    topic, group = "grp-lag", "grp-lag-group"
    create_topic(server.bootstrap, topic, 2)
    produce(server.bootstrap, topic, 2, 0, 30)  # 15 records per partition
    c = KafkaConsumer(bootstrap_servers=server.bootstrap, group_id=group, enable_auto_commit=False)
    c.commit({TopicPartition(topic, 0): OffsetAndMetadata(10, "", -1),
              TopicPartition(topic, 1): OffsetAndMetadata(5, "", -1)})
    c.close()

    out = subprocess.run([str(binary_path()), "group", "describe", group, "--bootstrap-server", server.bootstrap],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if line.startswith(topic)]
    assert [r[:5] for r in rows] == [[topic, "0", "10", "15", "5"], [topic, "1", "5", "15", "10"]], out.stdout
    assert "Empty, 0 member(s)" in out.stdout, out.stdout

    text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % server.metrics_port, timeout=10).read().decode()
    assert "# TYPE sidestream_group_lag gauge" in text
    assert 'sidestream_group_lag{group="%s",topic="%s",partition="0"} 5' % (group, topic) in text, text
    assert 'sidestream_group_lag{group="%s",topic="%s",partition="1"} 10' % (group, topic) in text, text


def test_kcat_balanced_consumer_commits(server):
    """kcat -G: librdkafka 2.0 (Debian's), an older client generation, as a group member."""
    topic, group = "grp-kcat", "grp-kcat-group"
    create_topic(server.bootstrap, topic, 2)
    produce(server.bootstrap, topic, 2, 0, 20)
    out = subprocess.run(["kcat", "-b", server.bootstrap, "-G", group, topic, "-e", "-o", "beginning", "-q",
                          "-X", "session.timeout.ms=6000"],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert sorted(int(v) for v in out.stdout.split()) == list(range(20))
    report = subprocess.run([str(binary_path()), "group", "describe", group, "--bootstrap-server", server.bootstrap],
                            capture_output=True, text=True, timeout=30)
    rows = [line.split() for line in report.stdout.splitlines() if line.startswith(topic)]
    assert [r[:5] for r in rows] == [[topic, "0", "10", "10", "0"], [topic, "1", "10", "10", "0"]], report.stdout
