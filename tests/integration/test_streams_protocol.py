"""Kafka Streams 4.4 on the KIP-1071 streams rebalance protocol (`group.protocol=streams`): the
broker configures the topology, creates its internal topics and assigns the tasks.

One word count application (tests/compat/java/StreamsProtocol.java) with exactly_once_v2, so
final counts are exact: alone, then two instances (two JVMs) sharing the tasks, one killed and
the other taking all of them over. `kafka-streams-groups.sh` (StreamsGroupCommand) lists and
describes the group. The server's streams session timeout is short (6 s) so that a killed
instance's tasks move within seconds.

Also passes against Apache Kafka 4.4 (SIDESTREAM_BIN=scripts/kafka-reference-broker), where the
session timeout is Kafka's default 45 s.
"""

import re
import subprocess
import threading
import time
from collections import Counter

import pytest

from compat import java_cmd, run
from conftest import SidestreamServer, binary_path, poll_until

SESSION_ENV = {
    "SIDESTREAM_GROUPS_CONSUMER_SESSION_TIMEOUT_MS": "6000",
    "SIDESTREAM_GROUPS_CONSUMER_HEARTBEAT_INTERVAL_MS": "1000",
}
START_TIMEOUT = 120


@pytest.fixture(scope="module")
def streams_server(tmp_path_factory):
    base = tmp_path_factory.mktemp("streams")
    srv = SidestreamServer(base / "data", base / "server.log", extra_env=SESSION_ENV)
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


def scenario(*args):
    return java_cmd("StreamsProtocol", *args)


def counts_spec(lines):
    c = Counter(w for line in lines for w in line.lower().split())
    return ",".join("%s=%d" % kv for kv in sorted(c.items()))


class App:
    """One Kafka Streams instance (a JVM) running until stopped or killed; its `TASKS` lines
    (the active tasks it runs) are collected as they come."""

    def __init__(self, bootstrap, app_id, topic_in, topic_out, state_dir):
        self.lines = []
        self.proc = subprocess.Popen(scenario("app", bootstrap, app_id, topic_in, topic_out, state_dir, "exactly_once_v2"),
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err = []
        threading.Thread(target=self._read, args=(self.proc.stdout, self.lines), daemon=True).start()
        threading.Thread(target=self._read, args=(self.proc.stderr, self.err), daemon=True).start()

    @staticmethod
    def _read(stream, into):
        for line in stream:
            into.append(line.rstrip("\n"))

    def tasks(self):
        """The last reported active tasks, as a set."""
        last = [ln[6:] for ln in self.lines if ln.startswith("TASKS ")]
        return set(filter(None, last[-1].split(","))) if last else set()

    def state(self):
        states = [ln[6:] for ln in self.lines if ln.startswith("STATE ")]
        return states[-1] if states else None

    def errors(self):
        return [ln for ln in self.lines if ln.startswith("ERROR ")]

    def stop(self, timeout=60):
        if self.proc.poll() is None:
            self.proc.stdin.close()
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self):
        self.proc.kill()
        self.proc.wait()

    def report(self):
        return "stdout:\n%s\nstderr (tail):\n%s" % ("\n".join(self.lines[-40:]), "\n".join(self.err[-40:]))


def streams_groups(bootstrap, *args):
    out, _ = run(java_cmd("org.apache.kafka.tools.streams.StreamsGroupCommand", "--bootstrap-server", bootstrap, *args))
    return out


def describe_members(bootstrap, group):
    """The member rows of `--describe --members` (each starts with the group id)."""
    out = streams_groups(bootstrap, "--describe", "--members", "--group", group)
    return [line for line in out.splitlines() if line.split()[:1] == [group]]


def all_tasks(partitions):
    # Word count has two subtopologies: 0 reads the input, 1 the repartition topic.
    return {"%d_%d" % (s, p) for s in (0, 1) for p in range(partitions)}


def requests_by_api(server):
    """{(api, version): requests read} from /metrics; None for a server without it (the Kafka
    reference broker, scripts/kafka-reference-broker)."""
    if "metrics_addr=" not in server.log_text():
        return None
    from test_compat_java import requests_by_api as from_metrics
    return from_metrics(server)


def test_word_count_on_the_streams_protocol(streams_server, tmp_path):
    """One instance: the broker creates the repartition and changelog topics, assigns every
    task to it, and the counts are exact; the group is listed and described as a streams group."""
    bootstrap = streams_server.bootstrap
    topic_in, topic_out, app_id = "sp1-in", "sp1-out", "sp1-app"
    run(scenario("topics", bootstrap, topic_in, topic_out, 2))
    lines = ["all streams lead to kafka", "hello kafka streams", "join kafka summit"]
    run(scenario("produce", bootstrap, topic_in, *lines))
    app = App(bootstrap, app_id, topic_in, topic_out, tmp_path / "state")
    try:
        poll_until(lambda: app.tasks() == all_tasks(2) or app.proc.poll() is not None, START_TIMEOUT,
                   interval=0.2, what="the instance to run every task")
        assert app.tasks() == all_tasks(2), app.report()
        out, _ = run(scenario("expect", bootstrap, topic_out, counts_spec(lines)))
        assert "OBS counts=" in out
        listed = streams_groups(bootstrap, "--list")
        assert app_id in listed.split(), listed
        described = poll_until(lambda: (lambda o: o if "Stable" in o else None)(
            streams_groups(bootstrap, "--describe", "--state", "--group", app_id)), 30, interval=0.5, what="a Stable group")
        assert app_id in described, described
        members = describe_members(bootstrap, app_id)
        assert len(members) == 1 and "ACTIVE: 0:[0,1]; 1:[0,1]" in members[0], members
        # The broker created the internal topics with the partitions of the input topic.
        topics_out, _ = run(java_cmd("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", bootstrap, "--describe",
                                     "--topic", app_id + "-.*"))
        for suffix in ("-KSTREAM-AGGREGATE-STATE-STORE-0000000003-repartition", "-KSTREAM-AGGREGATE-STATE-STORE-0000000003-changelog"):
            assert re.search(r"Topic: %s\s.*PartitionCount: 2" % re.escape(app_id + suffix), topics_out), topics_out
        assert not app.errors(), app.report()
    finally:
        app.stop()
    by_api = requests_by_api(streams_server)
    if by_api is not None:
        used = {k for k, v in by_api.items() if v and k[0].startswith("StreamsGroup")}
        print("Kafka Streams 4.4 streams group API versions used:", sorted(used))
        assert ("StreamsGroupHeartbeat", 1) in used, used
    # After a clean close the member left: the group is empty (its offsets stay).
    poll_until(lambda: "Empty" in streams_groups(bootstrap, "--describe", "--state", "--group", app_id), 30, interval=0.5,
               what="the group to be Empty after the instance closed")


def share_then_take_over(bootstrap_a, bootstrap_b, prefix, tmp_path):
    """Two instances (on agents `bootstrap_a`, `bootstrap_b`) share every task evenly with exact
    counts; b is killed, a takes every task over and the counts stay exact. Returns the seconds
    from the kill until a runs every task."""
    partitions = 4
    topic_in, topic_out, app_id = prefix + "-in", prefix + "-out", prefix + "-app"
    run(scenario("topics", bootstrap_a, topic_in, topic_out, partitions))
    a = App(bootstrap_a, app_id, topic_in, topic_out, tmp_path / "state-a")
    b = App(bootstrap_b, app_id, topic_in, topic_out, tmp_path / "state-b")
    try:
        def shared():
            ta, tb = a.tasks(), b.tasks()
            return ta and tb and not (ta & tb) and (ta | tb) == all_tasks(partitions)

        poll_until(shared, START_TIMEOUT, interval=0.2, what="two instances sharing every task")
        ta, tb = a.tasks(), b.tasks()
        assert abs(len(ta) - len(tb)) <= 1, (ta, tb)
        first = ["the quick brown fox", "jumps over the lazy dog", "the dog sleeps", "a fox runs"] * 5
        run(scenario("produce", bootstrap_a, topic_in, *first))
        run(scenario("expect", bootstrap_a, topic_out, counts_spec(first)))
        members = describe_members(bootstrap_a, app_id)
        assert len(members) == 2, members

        killed_at = time.monotonic()
        b.kill()
        poll_until(lambda: a.tasks() == all_tasks(partitions), 60, interval=0.1,
                   what="the surviving instance to take every task over")
        takeover_s = time.monotonic() - killed_at
        print("tasks of the killed instance moved after %.1f s" % takeover_s)
        second = ["the fox and the dog", "kafka streams counts words", "the end"] * 3
        run(scenario("produce", bootstrap_a, topic_in, *second))
        run(scenario("expect", bootstrap_a, topic_out, counts_spec(first + second)))
        members = describe_members(bootstrap_a, app_id)
        assert len(members) == 1, members
        assert not a.errors(), a.report()
        return takeover_s
    except AssertionError as e:
        raise AssertionError("%s\ninstance a: %s\ninstance b: %s" % (e, a.report(), b.report())) from None
    finally:
        a.stop()
        b.stop()


def test_two_instances_share_the_tasks_and_one_takes_over_when_the_other_is_killed(streams_server, tmp_path):
    share_then_take_over(streams_server.bootstrap, streams_server.bootstrap, "sp2", tmp_path)


@pytest.mark.skipif("kafka-reference-broker" in str(binary_path()), reason="a Sidestream cluster: agents and a controller")
def test_instances_on_two_agents_of_one_remote_controller(tmp_path):
    """The same through `sidestream controller` and two agents in remote mode, one instance on
    each: heartbeats from both agents reach one coordinator over the controller's RPC."""
    from test_cluster import ControllerProcess, make_agent
    ctl = ControllerProcess(tmp_path, "controller", "sqlite://%s" % (tmp_path / "controller.db"), SESSION_ENV).start()
    agents = []
    try:
        ctl.wait_listening()
        agents = [make_agent(tmp_path, i, [ctl.address], tmp_path / "objects").start() for i in (1, 2)]
        share_then_take_over(agents[0].bootstrap, agents[1].bootstrap, "sp3", tmp_path)
    finally:
        for a in agents:
            a.close()
        ctl.close()
