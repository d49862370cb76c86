"""Consumer groups and transactions through a remote controller, with real processes on loopback.

One `sidestream controller` (SQLite) and agents in `[controller] mode = "remote"`; the group and
transaction coordinator lives in the controller process, so clients on different agents meet in
one group and one transaction state:

- a consumer group spanning agents: confluent-kafka consumers (separate processes) with the same
  group.id on two agents share the partitions, every record is processed (and committed) exactly
  once across them, the committed offsets are seen through a third agent (kafka-python admin);
  one member leaves (LeaveGroup) and the other takes every partition;
- transactions: a transactional producer on agent A commits one transaction and aborts another; a
  read_committed consumer on agent B sees only the committed records, read_uncommitted both; a
  producer with the same transactional.id on agent C fences the first; a transaction left open by
  an agent that is then SIGKILLed is aborted by the others' timers (its records never become
  visible to read_committed, and the last stable offset moves past them);
- a controller restart (same SQLite file; SIGTERM, and SIGKILL) while a group consumes: the member gets a retriable
  error, rejoins, and continues from its committed offsets: nothing lost, nothing processed twice;
  the same across a failover between two controller replicas on PostgreSQL (when
  SIDESTREAM_TEST_POSTGRES_URL is set).
"""

import signal
import time

from confluent_kafka import KafkaError, KafkaException, Producer
from kafka import KafkaAdminClient
import pytest

from conftest import poll_until
from readback import create_topic, read_all
from test_cluster import PG_URL, ControllerProcess, drop_pg_database, fresh_pg_database, make_agent
from test_groups import CHILD, GROUP_ENV, ChildConsumer, TIMEOUT, record_time, wait_assigned
from test_transactions import produce_txn, txn_producer, values, watermarks

# SIGUSR1 makes this child leave the group cleanly (close(): LeaveGroup), then exit.
LEAVING_CHILD = CHILD.replace('        out(ev="idle")\n        time.sleep(3600)',
                              '        c.close()\n        out(ev="closed")\n        sys.exit(0)')
assert LEAVING_CHILD != CHILD


class LeavingConsumer(ChildConsumer):
    def __init__(self, *args, **kwargs):
        import test_groups
        saved = test_groups.CHILD
        test_groups.CHILD = LEAVING_CHILD
        try:
            super().__init__(*args, **kwargs)
        finally:
            test_groups.CHILD = saved


def start_cluster(tmp_path, n_agents, agent_env=None, store=None):
    store = store or "sqlite://%s" % (tmp_path / "controller.db")
    ctl = ControllerProcess(tmp_path, "controller", store, dict(GROUP_ENV)).start()
    ctl.wait_listening()
    env = dict(GROUP_ENV)
    env.update(agent_env or {})
    agents = [make_agent(tmp_path, i, [ctl.address], tmp_path / "objects", env).start() for i in range(n_agents)]
    return ctl, agents


def stop_cluster(ctl, agents):
    for a in agents:
        a.close()
    ctl.close()


def produce_values(bootstrap, topic, partitions, start, n):
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5, "message.timeout.ms": 60000})
    for i in range(start, start + n):
        p.produce(topic, value=str(i).encode(), partition=i % partitions)
    assert p.flush(60) == 0


def processed(consumers):
    return [int(v) for c in consumers for (_, _, v) in c.records()]


def wait_processed(consumers, n, what):
    poll_until(lambda: len(set(processed(consumers))) >= n, TIMEOUT, interval=0.2, what=what)
    got = sorted(processed(consumers))
    assert got == list(range(n)), "lost or processed twice: %d processed, %d distinct of %d" % (
        len(got), len(set(got)), n)


def test_a_consumer_group_spans_agents_and_rebalances_when_a_member_leaves(tmp_path):
    ctl, agents = start_cluster(tmp_path, 3)
    members = []
    try:
        topic, group, partitions = "span", "span-group", 6
        create_topic(agents[0].bootstrap, topic, partitions)
        produce_values(agents[0].bootstrap, topic, partitions, 0, 300)
        a = LeavingConsumer("a", agents[0].bootstrap, topic, group)
        b = ChildConsumer("b", agents[1].bootstrap, topic, group)
        members = [a, b]
        # Both members, on different agents, hold some partitions, none twice.
        sets = wait_assigned(members, partitions, what="the two members to share the partitions")
        assert all(sets), sets
        wait_processed(members, 300, "300 records processed across the two agents")

        # The offsets committed through agents 0 and 1, read through agent 2.
        admin = KafkaAdminClient(bootstrap_servers=agents[2].bootstrap, request_timeout_ms=30000)
        try:
            def committed():
                offs = admin.list_group_offsets(group)[group]
                return {tp.partition: m.offset for tp, m in offs.items() if tp.topic == topic}
            poll_until(lambda: committed() == {p: 300 // partitions for p in range(partitions)}, 30,
                       what="the committed offsets seen through the third agent")
            described = admin.describe_groups([group])[group]
            assert described["group_state"] == "Stable", described
            assert len(described["members"]) == 2, described
            assert group in [g["group_id"] for g in admin.list_groups()]
        finally:
            admin.close()

        # One member leaves (LeaveGroup): the other takes every partition and the new records.
        left = time.monotonic()
        a.proc.send_signal(signal.SIGUSR1)  # close() and exit
        poll_until(lambda: a.count("closed") == 1, 30, what="member a to leave")
        poll_until(lambda: b.assignment() == set(range(partitions)), TIMEOUT,
                   what="the remaining member to take every partition")
        record_time("remote controller: a member leaves, the member on another agent holds every partition",
                    time.monotonic() - left)
        produce_values(agents[2].bootstrap, topic, partitions, 300, 120)
        wait_processed(members, 420, "the new records processed by the remaining member")
        assert {int(v) for (_, _, v) in b.records()} >= set(range(300, 420))
    finally:
        for c in members:
            c.kill()
        stop_cluster(ctl, agents)


@pytest.mark.parametrize("store_kind", ["sqlite", "postgres"])
def test_transactions_commit_abort_fence_and_time_out_through_the_remote_controller(tmp_path, store_kind):
    db, store = None, None
    if store_kind == "postgres":
        if not PG_URL:
            pytest.skip("needs SIDESTREAM_TEST_POSTGRES_URL (scripts/test starts PostgreSQL)")
        db, store = fresh_pg_database()
    ctl, agents = start_cluster(tmp_path, 3, {"SIDESTREAM_CONTROLLER_TRANSACTION_CHECK_INTERVAL_MS": "200"}, store)
    try:
        a, b, c = (x.bootstrap for x in agents)
        topic = "rtxn"
        create_topic(a, topic, 2)
        p = txn_producer(a, "rtxn-app")
        produce_txn(p, topic, 2, b"c1", 10)
        p.commit_transaction(30)
        produce_txn(p, topic, 2, b"ab", 10)
        p.abort_transaction(30)

        # On agent B: read_committed sees the committed transaction only, read_uncommitted both.
        poll_until(lambda: sum(watermarks(b, topic, x, "read_committed")[1] for x in range(2)) == 24, 30,
                   what="the last stable offsets past both markers on agent B")
        committed = values(read_all(b, topic, 2, 10, timeout=60, isolation="read_committed"))
        assert committed == sorted(b"c1-%03d" % i for i in range(10))
        everything = values(read_all(b, topic, 2, 20, timeout=60, isolation="read_uncommitted"))
        assert everything == sorted([b"c1-%03d" % i for i in range(10)] + [b"ab-%03d" % i for i in range(10)])

        # On agent C: a producer with the same transactional.id fences the one on agent A.
        produce_txn(p, topic, 2, b"zombie", 4)
        second = txn_producer(c, "rtxn-app")
        with pytest.raises(KafkaException) as raised:
            p.commit_transaction(30)
        err = raised.value.args[0]
        assert err.code() in (KafkaError._FENCED, KafkaError.PRODUCER_FENCED, KafkaError.INVALID_PRODUCER_EPOCH), err
        produce_txn(second, topic, 2, b"c2", 4)
        second.commit_transaction(30)
        want = sorted([b"c1-%03d" % i for i in range(10)] + [b"c2-%03d" % i for i in range(4)])
        poll_until(lambda: values(read_all(b, topic, 2, 14, timeout=10, isolation="read_committed")) == want, 60,
                   what="read_committed on agent B to show the fencing producer's transaction")

        # A transaction left open on agent C, whose agent then dies: the others abort it.
        gone = txn_producer(c, "rtxn-gone", **{"transaction.timeout.ms": 2000, "message.timeout.ms": 2000})
        produce_txn(gone, topic, 2, b"gone", 4)
        # 12 + 3 (zombie, abort marker) + 3 (c2, commit marker) + 2 open records per partition.
        hw = [20, 20]
        poll_until(lambda: [watermarks(b, topic, x, "read_uncommitted")[1] for x in range(2)] == hw, 30,
                   what="agent B to see the open transaction's records")
        assert [watermarks(b, topic, x, "read_committed")[1] for x in range(2)] == [18, 18], \
            "the open transaction holds back the last stable offset"
        agents[2].kill()
        # Timeout 2 s + the check interval; the abort markers then move each LSO past the records.
        poll_until(lambda: [watermarks(b, topic, x, "read_committed")[1] for x in range(2)] == [h + 1 for h in hw],
                   30, interval=0.2, what="the abandoned transaction to be aborted by the other agents")
        assert values(read_all(b, topic, 2, 14, timeout=30, isolation="read_committed")) == want
        assert ctl.log().count("transaction timed out") == 1, "the controller aborts it once"
    finally:
        stop_cluster(ctl, agents)
        if db:
            drop_pg_database(db)


def keep_consuming_across(agents, topic, n, interrupt, what):
    """A member on agents[1] processes n records, `interrupt()` happens, then n more: every record
    processed once, and the member rejoined the coordinator (a new generation)."""
    partitions = 3
    create_topic(agents[0].bootstrap, topic, partitions)
    produce_values(agents[0].bootstrap, topic, partitions, 0, n)
    member = ChildConsumer("m", agents[1].bootstrap, topic, topic + "-group")
    try:
        wait_processed([member], n, "the first %d records" % n)
        started = time.time()
        interrupt()
        produce_values(agents[0].bootstrap, topic, partitions, n, n)
        wait_processed([member], 2 * n, "all %d records after %s" % (2 * n, what))
        poll_until(lambda: member.count("assign") >= 2, TIMEOUT, what="the member to rejoin after " + what)
        rejoined = [e["t"] for e in member.snapshot() if e["ev"] == "assign"][1]
        record_time("remote controller: member assigned again after %s began" % what, rejoined - started)
    finally:
        member.kill()


@pytest.mark.parametrize("stop", ["sigterm", "sigkill"])
def test_a_controller_restart_during_a_group_loses_nothing(tmp_path, stop):
    ctl, agents = start_cluster(tmp_path, 2)

    def restart():
        if stop == "sigterm":
            # Waiting group calls are answered NOT_COORDINATOR and open streams cut after a
            # short grace: the process exits cleanly, at once.
            ctl.proc.send_signal(signal.SIGTERM)
            assert ctl.proc.wait(10) == 0, ctl.log()[-2000:]
        else:
            ctl.proc.kill()
            ctl.proc.wait(10)
        listening = ctl.log().count("controller service listening")
        ctl.start()
        poll_until(lambda: ctl.log().count("controller service listening") > listening, 30,
                   what="the controller to listen again")

    try:
        keep_consuming_across(agents, "restart-" + stop, 90, restart, "the controller restart")
    finally:
        stop_cluster(ctl, agents)


@pytest.mark.skipif(not PG_URL, reason="needs SIDESTREAM_TEST_POSTGRES_URL (scripts/test starts PostgreSQL)")
def test_a_group_survives_a_controller_failover(tmp_path):
    db, store = fresh_pg_database()
    env = dict(GROUP_ENV, SIDESTREAM_CONTROLLER_FAILOVER_MS="3000")
    a = ControllerProcess(tmp_path, "ctl-a", store, env).start()
    b = ControllerProcess(tmp_path, "ctl-b", store, env)
    agents = []

    def fail_over():
        a.proc.kill()  # SIGKILL the active controller: the standby takes over
        a.proc.wait(10)
        poll_until(b.is_active, 30, what="the standby to take over")

    try:
        a.wait_listening()
        poll_until(a.is_active, 30, what="ctl-a active")
        b.start().wait_listening()
        agents = [make_agent(tmp_path, i, [a.address, b.address], tmp_path / "objects", GROUP_ENV).start()
                  for i in range(2)]
        keep_consuming_across(agents, "failover", 60, fail_over, "the failover")
    finally:
        stop_cluster(b, agents)
        a.close()
        drop_pg_database(db)
