"""Share groups (KIP-932, "queues for Kafka") with Kafka 4.4's own KafkaShareConsumer
(tests/compat/java/ShareGroups.java) and `kafka-share-groups.sh`.

Several members share one partition and every record is delivered; RELEASE redelivers with a
higher delivery count; REJECT and the delivery count limit archive records; a member killed while
it holds records loses them to the others once their acquisition lock times out; acknowledged
records stay acknowledged across a restart (the state is in the controller's store). Each group
starts at the log's start (`share.auto.offset.reset=earliest`, set with Admin's
IncrementalAlterConfigs on the GROUP resource, as Kafka's own tests do).

Every test also runs against Apache Kafka 4.4 (`SIDESTREAM_BIN=scripts/kafka-reference-broker`),
which is how its expectations were checked."""

import re
import signal
import subprocess
import uuid

import pytest

from compat import java_cmd, run
from conftest import SidestreamServer, binary_path, poll_until

TIMEOUT_MS = 60_000


def deliveries(out):
    """[(member, offset, count, value, action)] in the order printed."""
    return [(m, int(o), int(c), v, a)
            for m, o, c, v, a in re.findall(r"^DELIVERY member=(\S+) offset=(\d+) count=(-?\d+) value=(\S+) action=(\S+)$", out, re.M)]


def topic_and_group(server, records, partitions=1, **configs):
    topic, group = "share-" + uuid.uuid4().hex[:8], "sg-" + uuid.uuid4().hex[:8]
    run(java_cmd("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", server.bootstrap, "--create", "--topic", topic,
                 "--partitions", partitions))
    settings = {"share.auto.offset.reset": "earliest", **configs}
    run(java_cmd("ShareGroups", "configure", server.bootstrap, group, *("%s=%s" % kv for kv in settings.items())))
    if records:
        run(java_cmd("ShareGroups", "produce", server.bootstrap, topic, records))
    return topic, group


def consume(server, topic, group, members, offsets, policy=""):
    out, _ = run(java_cmd("ShareGroups", "consume", server.bootstrap, topic, group, members, offsets, TIMEOUT_MS, policy),
                 timeout=TIMEOUT_MS / 1000 + 60)
    return deliveries(out), out


def test_three_members_share_one_partition_and_every_record_is_delivered(server):
    topic, group = topic_and_group(server, 300)
    got, out = consume(server, topic, group, 3, 300)
    accepted = [o for _, o, _, _, a in got if a == "ACCEPT"]
    assert sorted(accepted) == list(range(300)), out[-2000:]
    assert all(c == 1 for _, _, c, _, _ in got), "no record was delivered twice"
    assert {v for _, o, _, v, _ in got} == {"v%d" % o for o in range(300)}
    # Which member gets which records is the broker's choice (Kafka acquires whole batches: one
    # member may take all 300); that two members get disjoint records is shown with the
    # librdkafka consumer below.


def test_release_redelivers_with_a_higher_delivery_count(server):
    topic, group = topic_and_group(server, 5)
    got, out = consume(server, topic, group, 1, 5, "2:release:3")
    of_2 = [(c, a) for _, o, c, _, a in got if o == 2]
    assert of_2 == [(1, "RELEASE"), (2, "RELEASE"), (3, "ACCEPT")], out[-2000:]
    assert sorted(o for _, o, _, _, a in got if a == "ACCEPT") == [0, 1, 2, 3, 4]


def test_reject_and_the_delivery_limit_archive_records(server):
    """Offset 1 is rejected once and never seen again; offset 3 is released at every delivery and
    archived after `share.delivery.count.limit` (2) deliveries; the rest are accepted."""
    topic, group = topic_and_group(server, 5, **{"share.delivery.count.limit": 2})
    got, out = consume(server, topic, group, 1, 5, "limit=2,1:reject,3:release")
    assert [(c, a) for _, o, c, _, a in got if o == 1] == [(1, "REJECT")], out[-2000:]
    assert [(c, a) for _, o, c, _, a in got if o == 3] == [(1, "RELEASE"), (2, "RELEASE")], out[-2000:]
    # Nothing comes back later: a second consumer of the group finds nothing to do.
    run(java_cmd("ShareGroups", "produce", server.bootstrap, topic, 1))
    later, out = consume(server, topic, group, 1, 1)
    assert [(o, c) for _, o, c, _, _ in later] == [(5, 1)], out[-2000:]


def test_a_killed_member_s_records_are_redelivered_after_the_lock_times_out(server):
    topic, group = topic_and_group(server, 20, **{"share.record.lock.duration.ms": 15_000})
    holder, held = hold_records(server, topic, group)
    holder.send_signal(signal.SIGKILL)
    holder.wait(10)
    got, out = consume(server, topic, group, 1, 20)
    counts = {o: c for _, o, c, _, a in got if a == "ACCEPT"}
    assert sorted(counts) == list(range(20)), out[-2000:]
    assert all(counts[o] == 2 for o in held), "held records come back on their second delivery: %s" % counts


def test_acknowledged_records_stay_acknowledged_across_a_restart(tmp_path):
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log")
    srv.start()
    try:
        topic, group = topic_and_group(srv, 10)
        first, _ = consume(srv, topic, group, 1, 7, "7:release,8:release,9:release")
        assert sorted(o for _, o, _, _, a in first if a == "ACCEPT") == list(range(7))
        srv.restart()
        # Only 7, 8 and 9 are left (their releases were durable), now on their next delivery.
        got, out = consume(srv, topic, group, 1, 3)
        assert sorted((o, a) for _, o, _, _, a in got) == [(7, "ACCEPT"), (8, "ACCEPT"), (9, "ACCEPT")], out[-2000:]
        assert all(c >= 2 for _, _, c, _, _ in got), got
    finally:
        srv.close()


def hold_records(server, topic, group):
    """A Java member that acquires records and holds them without acknowledging: (process, offsets)."""
    holder = subprocess.Popen(java_cmd("ShareGroups", "hold", server.bootstrap, topic, group), stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
    lines = []

    def holding():
        line = holder.stdout.readline()
        lines.append(line)
        return line.startswith("OBS holding=") or holder.poll() is not None
    poll_until(holding, 60, what="the holder to get records")
    held = [o for _, o, _, _, _ in deliveries("".join(lines))]
    assert held, "".join(lines) + holder.stderr.read()[-3000:]
    return holder, held


def test_confluent_kafka_share_consumer_shares_a_group_with_the_java_client(server):
    """librdkafka's share consumer (confluent-kafka 2.16) in a group where a Java member holds
    records: it gets every other record, never the held ones while their lock lasts, and those
    too once the Java member is killed and the lock times out. Each record once."""
    import time
    from confluent_kafka import ShareConsumer
    topic, group = topic_and_group(server, 200, **{"share.record.lock.duration.ms": 15_000})
    holder, held = hold_records(server, topic, group)
    c = ShareConsumer({"bootstrap.servers": server.bootstrap, "group.id": group, "client.id": "librdkafka-share"})
    got = []
    try:
        c.subscribe([topic])

        def poll_some():
            for m in c.poll(0.5):
                assert m.error() is None, m.error()
                got.append((m.offset(), m.value().decode()))
            return len(got) >= 200 - len(held)
        poll_until(poll_some, 90, interval=0, what="the librdkafka share consumer to get the records not held")
        assert not set(held) & {o for o, _ in got}, "records held under a lock are not handed to another member"
        killed_at = time.monotonic()
        holder.send_signal(signal.SIGKILL)
        holder.wait(10)
        poll_until(lambda: poll_some() and len(got) >= 200, 90, interval=0, what="the held records to come back")
        c.commit_sync()
        print("held records redelivered %.1f s after the holder was killed" % (time.monotonic() - killed_at))
    finally:
        if holder.poll() is None:
            holder.kill()
        c.close()
    assert sorted(got) == [(o, "v%d" % o) for o in range(200)], "each record once: %s" % sorted(got)[:20]


@pytest.mark.skipif("kafka-reference-broker" in str(binary_path()), reason="a Sidestream cluster: agents and a controller")
def test_members_on_two_agents_share_through_a_remote_controller_across_its_restart(tmp_path):
    """Two agents of one remote controller (SQLite): a member on each, a controller restart in the
    middle; every record is accepted exactly once over both phases."""
    from test_cluster import ControllerProcess, make_agent
    controller = ControllerProcess(tmp_path, "controller", "sqlite://%s" % (tmp_path / "controller.db"))
    controller.start().wait_listening()
    agents = [make_agent(tmp_path, n, [controller.address], tmp_path / "objects") for n in (1, 2)]
    try:
        for a in agents:
            a.start()
        topic, group = topic_and_group(agents[0], 300)
        first, _ = consume(agents[0], topic, group, 1, 100)
        accepted = [o for _, o, _, _, a in first if a == "ACCEPT"]
        assert len(accepted) >= 100
        controller.close()
        controller.start().wait_listening()
        procs = [subprocess.Popen(java_cmd("ShareGroups", "consume", a.bootstrap, topic, group, 1, 300, TIMEOUT_MS, "idle=4000"),
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for a in agents]
        per_agent = []
        for p in procs:
            out, err = p.communicate(timeout=TIMEOUT_MS / 1000 + 60)
            assert p.returncode == 0, err[-3000:]
            per_agent.append([o for _, o, _, _, a in deliveries(out) if a == "ACCEPT"])
        assert all(per_agent), "members on both agents got records: %s" % [len(x) for x in per_agent]
        everything = sorted(accepted + per_agent[0] + per_agent[1])
        assert everything == list(range(300)), "each record accepted once: %d accepted" % len(everything)
    finally:
        for a in agents:
            a.close()
        controller.close()


def share_groups_tool(server, *args, check=True):
    out, err = run(java_cmd("org.apache.kafka.tools.consumer.group.ShareGroupCommand", "--bootstrap-server", server.bootstrap,
                            *args), check=check)
    return out + err


def test_kafka_share_groups_tool_lists_describes_resets_and_deletes(server):
    topic, group = topic_and_group(server, 10)
    consume(server, topic, group, 1, 10)
    assert group in share_groups_tool(server, "--list").split()
    out = share_groups_tool(server, "--describe", "--group", group)
    # GROUP TOPIC PARTITION START-OFFSET LAG: everything was accepted. Sidestream's start offset
    # is 10 (its lag is not reported, "-"); Kafka 4.4 persists the start offset lazily (it may
    # still say 0) and reports lag 0.
    m = re.search(r"^%s\s+%s\s+0\s+(\d+)\s+(\S+)" % (group, topic), out, re.M)
    assert m and (m.group(1) == "10" or m.group(2) == "0"), out
    out = share_groups_tool(server, "--describe", "--group", group, "--state")
    assert re.search(r"\bEmpty\b", out), out
    out = share_groups_tool(server, "--reset-offsets", "--group", group, "--topic", topic, "--to-earliest", "--execute")
    assert re.search(r"\b%s\s+0\s+0\b" % topic, out), out
    got, _ = consume(server, topic, group, 1, 10)
    assert sorted(o for _, o, _, _, a in got if a == "ACCEPT") == list(range(10)), "a reset delivers everything again"
    out = share_groups_tool(server, "--delete", "--group", group)
    assert "was successful" in out, out
    assert group not in share_groups_tool(server, "--list").split()
