"""The controller as a shared service, with real processes on loopback.

- One `sidestream controller` (SQLite, and PostgreSQL when SIDESTREAM_TEST_POSTGRES_URL is set)
  and three agents in remote mode sharing one object store: confluent-kafka producers on all
  three agents write the same topic at once; a consumer on another agent sees every
  acknowledged record exactly once, and each partition's offsets are dense from 0.
- Failover (PostgreSQL): two controller replicas; SIGKILL the active one under load; the standby
  takes over, producers continue, no acknowledged record is lost, none is duplicated, offsets
  stay dense. The measured takeover time is printed.
- Fencing: an agent paused (SIGSTOP) past its lease cannot commit with its old epoch; after
  SIGCONT it registers again and commits its pending data under the new epoch; nothing lost.

Producers run with retries off and idempotence off, so any duplicate is the server's doing.
"""

import os
import re
import signal
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Producer

from conftest import SidestreamServer, binary_path, free_port, poll_until
from readback import create_topic, read_all

PG_URL = os.environ.get("SIDESTREAM_TEST_POSTGRES_URL", "")
PARTITIONS = 4
TOKEN = "cluster-test-token"


class ControllerProcess:
    """`sidestream controller` on a free port, log captured, killed at the end. `extra_env`
    overrides the environment; a value None removes the variable (e.g. the token)."""

    def __init__(self, tmp_path, name, store, extra_env=None):
        self.name = name
        self.port = free_port()
        self.data_dir = tmp_path / name
        self.log_path = tmp_path / ("%s.log" % name)
        self.store = store
        self.extra_env = dict(extra_env or {})
        self.proc = None

    @property
    def address(self):
        return "127.0.0.1:%d" % self.port

    def start(self):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update({
            "SIDESTREAM_CONTROLLER_LISTEN": self.address,
            "SIDESTREAM_CONTROLLER_STORE": self.store,
            "SIDESTREAM_CONTROLLER_TOKEN": TOKEN,
            "SIDESTREAM_AGENT_DATA_DIR": str(self.data_dir),
            "RUST_BACKTRACE": "1",
        })
        for k, v in self.extra_env.items():
            if v is None:
                env.pop(k, None)
            else:
                env[k] = v
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(binary_path()), "controller"], env=env, stdin=subprocess.DEVNULL,
                                     stdout=log, stderr=subprocess.STDOUT, cwd=str(self.data_dir))
        log.close()
        return self

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_listening(self, timeout=30):
        poll_until(lambda: "controller service listening" in self.log() or self._died(), timeout,
                   what="%s listening" % self.name)
        assert self.proc.poll() is None, "%s exited:\n%s" % (self.name, self.log()[-3000:])

    def is_active(self):
        return "this replica is active" in self.log()

    def _died(self):
        return self.proc.poll() is not None

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def make_agent(tmp_path, node_id, addresses, objects, extra_env=None):
    env = {
        "SIDESTREAM_CONTROLLER_MODE": "remote",
        "SIDESTREAM_CONTROLLER_ADDRESSES": ",".join(addresses),
        "SIDESTREAM_CONTROLLER_TOKEN": TOKEN,
        "SIDESTREAM_AGENT_NODE_ID": str(node_id),
        "SIDESTREAM_OBJECT_STORE_URL": "file://%s" % objects,
    }
    env.update(extra_env or {})
    return SidestreamServer(tmp_path / ("agent%d" % node_id), tmp_path / ("agent%d.log" % node_id), env)


def remote_agent_on_s3(tmp_path, prefix, settings):
    """A real S3 server (s3s-fs), a `sidestream controller` on SQLite, and one agent (not started)
    in remote mode on both, with `settings` ({SIDESTREAM_*: value}) on top. Returns (s3,
    controller, agent); the caller closes all three."""
    from s3_server import S3Server
    s3 = S3Server(tmp_path / "s3", tmp_path / "s3.log").start()
    controller = ControllerProcess(tmp_path, "controller", "sqlite://%s" % (tmp_path / "controller.db"))
    controller.start().wait_listening()
    env = s3.sidestream_env(prefix)
    env.update(settings)
    return s3, controller, make_agent(tmp_path, 1, [controller.address], tmp_path / "unused", env)


def fresh_pg_database():
    """A database of its own on the test server (dropped by the caller)."""
    name = "sidestream_it_%s" % uuid.uuid4().hex[:12]
    subprocess.run(["psql", PG_URL, "-qc", "CREATE DATABASE %s" % name], check=True)
    return name, PG_URL.rsplit("/", 1)[0] + "/" + name


def drop_pg_database(name):
    subprocess.run(["psql", PG_URL, "-qc", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name], check=False)


def producer(bootstrap):
    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "retries": 0,
                     "enable.idempotence": False, "message.timeout.ms": 120000,
                     "request.timeout.ms": 60000, "socket.timeout.ms": 60000})


def check_readback(bootstrap, topic, acked):
    got = read_all(bootstrap, topic, PARTITIONS, expected_min=len(acked), timeout=120)
    counts = {}
    for records in got.values():
        for _, value in records:
            counts[value] = counts.get(value, 0) + 1
    missing = [v for v in acked if counts.get(v, 0) == 0]
    dups = [v for v, n in counts.items() if n > 1]
    assert not missing, "%d acknowledged records missing, e.g. %r" % (len(missing), missing[:5])
    assert not dups, "%d records read more than once, e.g. %r" % (len(dups), dups[:5])
    for p, records in got.items():
        offsets = [o for o, _ in records]
        assert offsets == list(range(len(offsets))), "partition %d offsets are not dense from 0: %r" % (
            p, offsets[:20])
    return got


def store_params():
    params = ["sqlite"]
    if PG_URL:
        params.append("postgres")
    return params


@pytest.mark.parametrize("store_kind", store_params())
def test_three_agents_one_controller_every_ack_once_offsets_dense(tmp_path, store_kind):
    db = None
    if store_kind == "postgres":
        db, store = fresh_pg_database()
    else:
        store = "sqlite://%s" % (tmp_path / "controller.db")
    ctl = ControllerProcess(tmp_path, "controller", store).start()
    agents = []
    try:
        ctl.wait_listening()
        objects = tmp_path / "objects"
        agents = [make_agent(tmp_path, i, [ctl.address], objects).start() for i in range(3)]
        topic = "cluster-%s" % store_kind
        create_topic(agents[0].bootstrap, topic, PARTITIONS)
        producers = [producer(a.bootstrap) for a in agents]
        acked, failed = [], []

        def report(err, msg):
            (failed if err else acked).append(msg.value())

        n = 3000
        for i in range(n):
            producers[i % 3].produce(topic, value=b"a%d-%06d" % (i % 3, i), key=b"k%d" % (i % 11),
                                     on_delivery=report)
            producers[i % 3].poll(0)
        for p in producers:
            assert p.flush(120) == 0
        assert not failed, "deliveries failed: %r" % failed[:5]
        assert len(acked) == n
        got = check_readback(agents[1].bootstrap, topic, acked)
        assert sum(len(v) for v in got.values()) == n
        # Every agent sees the same log (read from the third one too).
        got2 = read_all(agents[2].bootstrap, topic, PARTITIONS, expected_min=n, timeout=60)
        assert got2 == got
    finally:
        for a in agents:
            a.close()
        ctl.close()
        if db:
            drop_pg_database(db)


@pytest.mark.skipif(not PG_URL, reason="needs SIDESTREAM_TEST_POSTGRES_URL (scripts/test starts PostgreSQL)")
def test_failover_to_the_standby_loses_and_duplicates_nothing(tmp_path):
    db, store = fresh_pg_database()
    failover_ms = 5000  # the default
    env = {"SIDESTREAM_CONTROLLER_FAILOVER_MS": str(failover_ms)}
    a = ControllerProcess(tmp_path, "ctl-a", store, env).start()
    b = None
    agents = []
    try:
        a.wait_listening()
        poll_until(a.is_active, 30, what="ctl-a active")
        b = ControllerProcess(tmp_path, "ctl-b", store, env).start()
        b.wait_listening()
        objects = tmp_path / "objects"
        agents = [make_agent(tmp_path, i, [a.address, b.address], objects).start() for i in range(2)]
        topic = "failover"
        create_topic(agents[0].bootstrap, topic, PARTITIONS)
        producers = [producer(x.bootstrap) for x in agents]
        acked, failed, ack_times = [], [], []

        def report(err, msg):
            if err:
                failed.append(msg.value())
            else:
                acked.append(msg.value())
                ack_times.append(time.monotonic())

        seq = 0

        def produce_for(seconds):
            nonlocal seq
            end = time.monotonic() + seconds
            while time.monotonic() < end:
                producers[seq % 2].produce(topic, value=b"f%07d" % seq, on_delivery=report)
                producers[seq % 2].poll(0)
                seq += 1
                if seq % 20 == 0:
                    time.sleep(0.005)

        produce_for(1.5)
        assert not b.is_active()
        killed_at = time.monotonic()
        a.proc.kill()  # SIGKILL the active controller under load
        a.proc.wait(10)

        def standby_took_over():
            return b.is_active()

        # Keep producing while the standby takes over.
        while not standby_took_over():
            assert time.monotonic() - killed_at < failover_ms / 1000 + 10, "standby never took over"
            produce_for(0.05)
        takeover_s = time.monotonic() - killed_at
        produce_for(2.0)
        for p in producers:
            assert p.flush(120) == 0
        first_ack_after = min((t for t in ack_times if t > killed_at + takeover_s), default=None)
        print("\nFAILOVER: standby active %.2f s after SIGKILL of the active controller (failover_ms=%d); "
              "%d records acknowledged" % (takeover_s, failover_ms, len(acked)))
        if first_ack_after is not None:
            print("FAILOVER: first acknowledgement after takeover at +%.2f s" % (first_ack_after - killed_at))
        assert takeover_s < failover_ms / 1000 + 2.0, "takeover took %.2f s" % takeover_s
        assert not failed, "%d deliveries failed, e.g. %r" % (len(failed), failed[:3])
        check_readback(agents[1].bootstrap, topic, acked)
    finally:
        for x in agents:
            x.close()
        for c in (a, b):
            if c:
                c.close()
        drop_pg_database(db)


def test_a_paused_agent_is_fenced_and_commits_under_a_new_epoch(tmp_path):
    store = "sqlite://%s" % (tmp_path / "controller.db")
    ctl = ControllerProcess(tmp_path, "controller", store, {"SIDESTREAM_CONTROLLER_AGENT_LEASE_MS": "600"}).start()
    agent = None
    try:
        ctl.wait_listening()
        # A long flush interval and no early flushes, so data is waiting in the upload buffer
        # when the agent stops.
        agent = make_agent(tmp_path, 1, [ctl.address], tmp_path / "objects",
                           {"SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS": "1500", "SIDESTREAM_UPLOAD_PUTS_PER_S": "0"}).start()
        topic = "fencing"
        create_topic(agent.bootstrap, topic, PARTITIONS)
        p = producer(agent.bootstrap)
        acked, failed = [], []

        def report(err, msg):
            (failed if err else acked).append(msg.value())

        for i in range(200):
            p.produce(topic, value=b"before-%04d" % i, on_delivery=report)
        p.poll(0.2)  # sent, not yet committed (flush interval 1.5 s)
        agent.proc.send_signal(signal.SIGSTOP)
        # Wait (with a deadline) until the controller has seen the lease run out: well past it.
        time.sleep(2.0)
        agent.proc.send_signal(signal.SIGCONT)
        for i in range(200):
            p.produce(topic, value=b"after-%04d" % i, on_delivery=report)
        assert p.flush(120) == 0
        assert not failed, failed[:5]
        log = agent.log_path.read_text(errors="replace")
        assert "fenced by the controller" in log, "the paused agent was never fenced"
        epochs = [int(e) for e in re.findall(r"registered with the controller.*?epoch=(\d+)", log)] or \
            [int(e) for e in re.findall(r"epoch=(\d+).*?registered with the controller", log)]
        assert max(epochs) >= 2, "no re-registration for a new epoch: %r" % epochs
        check_readback(agent.bootstrap, topic, acked)
        assert len(acked) == 400
    finally:
        if agent:
            if agent.proc and agent.proc.poll() is None:
                agent.proc.send_signal(signal.SIGCONT)
            agent.close()
        ctl.close()
