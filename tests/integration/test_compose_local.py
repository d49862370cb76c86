"""docker/compose.yaml's topology as processes on loopback (scripts/compose-local), with real
clients: there is no Docker daemon here, so the compose file is read and its services are run as
processes with the environment it gives them (addresses rewritten to 127.0.0.1 and free ports),
s3s-fs in place of MinIO, a database on the test PostgreSQL server in place of the postgres
container.

- The generated environment is the compose file's: every variable `docker-compose config`
  resolves (anchors and merge keys) is there with its value, only addresses rewritten.
- The script refuses a compose file it does not understand: an unknown SIDESTREAM_* variable,
  an unknown service, an address naming a port nothing listens on.
- The topology (needs SIDESTREAM_TEST_POSTGRES_URL): Metadata at every agent lists the three
  agents at their advertised local addresses, with the compose file's node ids and zones; every
  agent's and controller's /metrics and /healthz answer; confluent-kafka producers bootstrapped
  at each agent write one topic and a consumer bootstrapped at another agent reads every record
  once; Prometheus (when its binary is here) scrapes all five targets of prometheus.yml; SIGKILL
  of the active controller: the other replica takes over (failover_ms from the compose file) and
  producers at all three agents keep being acknowledged, nothing lost or duplicated.
- `scripts/compose-local up` as a program: it prints the bootstrap servers, the agents answer
  there, and Ctrl-C stops every process it started and drops its database.
"""

import importlib.machinery
import importlib.util
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest
import yaml
from confluent_kafka import Producer
from confluent_kafka.admin import AdminClient

from conftest import PG_URL, REPO, binary_path, poll_until
from readback import create_topic, read_all

SCRIPT = REPO / "scripts" / "compose-local"
COMPOSE = REPO / "docker" / "compose.yaml"
PARTITIONS = 6


def load_script():
    loader = importlib.machinery.SourceFileLoader("compose_local", str(SCRIPT))
    spec = importlib.util.spec_from_loader("compose_local", loader)
    module = importlib.util.module_from_spec(spec)
    loader.exec_module(module)
    return module


compose_local = load_script()


# ---------------------------------------------------------------- the generator, no process


def test_the_generated_environment_is_the_compose_files(tmp_path):
    """Independent of the script's YAML reading: docker-compose's own rendering of each service's
    environment, plus the image's ENV, is what the plan runs; non-address values unchanged."""
    dc = shutil.which("docker-compose")
    if dc is None:
        pytest.fail("docker-compose not found: scripts/test installs it (Debian package docker-compose)")
    r = subprocess.run([dc, "-f", str(COMPOSE), "config"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    rendered = yaml.safe_load(r.stdout)["services"]
    image_env = dict(re.findall(r"(SIDESTREAM_[A-Z_]+)=(\S+)", (REPO / "docker" / "Dockerfile").read_text()))
    plan = compose_local.Plan(COMPOSE, tmp_path, postgres_url="postgres://postgres@127.0.0.1:5432/postgres",
                              prometheus=False)
    sidestream = {n for n, s in rendered.items() if "build" in s}
    assert sidestream == {s.name for s in plan.agents + plan.controllers} == \
        {"controller-1", "controller-2", "agent-1", "agent-2", "agent-3"}
    addresses = (compose_local.LISTEN | compose_local.ADVERTISED | compose_local.ADDRESS_LISTS
                 | compose_local.URLS | compose_local.DATA_DIRS)
    for name in sorted(sidestream):
        want = dict(image_env, **{k: str(v) for k, v in rendered[name]["environment"].items()})
        got = plan.services[name].env
        assert sorted(got) == sorted(want), name
        for key, value in want.items():
            if key in addresses:
                assert "127.0.0.1:" in got[key] or key in compose_local.DATA_DIRS, (name, key, got[key])
                assert got[key] != value, (name, key)
            else:
                assert got[key] == value, (name, key)
    # Addresses that name the same container port of the same service get the same local port.
    ctl = [s.env["SIDESTREAM_CONTROLLER_LISTEN"] for s in plan.controllers]
    for a in plan.agents:
        assert a.env["SIDESTREAM_CONTROLLER_ADDRESSES"].split(",") == ctl
        assert a.env["SIDESTREAM_AGENT_ADVERTISED"] == a.env["SIDESTREAM_AGENT_LISTEN"]
    for c in plan.controllers:
        assert c.env["SIDESTREAM_CONTROLLER_ADVERTISED"] == c.env["SIDESTREAM_CONTROLLER_LISTEN"]
    assert {s.env["SIDESTREAM_CONTROLLER_STORE"] for s in plan.controllers} == \
        {"postgres://sidestream:sidestream@127.0.0.1:5432/sidestream"}


def local_copy(tmp_path, edit):
    """A copy of compose.yaml in tmp_path, with `edit` applied to its text. The build context and
    the mounted files are relative to the compose file: they are pointed back at the repository."""
    text = COMPOSE.read_text().replace("context: ..", "context: %s" % REPO)
    text = text.replace("./prometheus/", "%s/docker/prometheus/" % REPO)
    text = text.replace("./grafana/", "%s/docker/grafana/" % REPO)
    changed = edit(text)
    assert changed != text or edit is UNCHANGED, "the edit changed nothing"
    path = tmp_path / "compose.yaml"
    path.write_text(changed)
    return path


def UNCHANGED(text):
    return text


EDITS = {
    "unchanged": UNCHANGED,
    "unknown-variable": lambda t: t.replace("  SIDESTREAM_METRICS_LISTEN: 0.0.0.0:9644\n",
                                            "  SIDESTREAM_METRICS_LISTEN: 0.0.0.0:9644\n"
                                            "  SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS: \"100\"\n"),
    "unknown-service": lambda t: t.replace("\nvolumes:\n", "\n  redis:\n    image: redis:7\n\nvolumes:\n"),
    "unknown-service-key": lambda t: t.replace("\n  prometheus:\n", "    env_file: agent.env\n\n  prometheus:\n"),
    "port-nothing-listens-on": lambda t: t.replace("controller-1:9093,controller-2:9093",
                                                   "controller-1:9093,controller-2:9094"),
}
REFUSALS = {
    "unknown-variable": "SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS of service agent-1: no rule for this variable",
    "unknown-service": "service redis (image 'redis:7'): unknown",
    "unknown-service-key": "service agent-3 has key 'env_file'",
    "port-nothing-listens-on": "an address names controller-2:9094, where nothing listens",
}


@pytest.mark.parametrize("edit", sorted(EDITS))
def test_the_script_refuses_what_it_does_not_know(tmp_path, edit):
    path = local_copy(tmp_path, EDITS[edit])
    r = subprocess.run([sys.executable, str(SCRIPT), "plan", "--compose", str(path), "--dir", str(tmp_path / "d"),
                        "--no-prometheus"], capture_output=True, text=True, timeout=60)
    if edit == "unchanged":
        assert r.returncode == 0, r.stderr
        assert "agent-3 (agent):" in r.stdout
        return
    assert r.returncode == 2, (r.returncode, r.stdout, r.stderr)
    assert REFUSALS[edit] in r.stderr, r.stderr


# ---------------------------------------------------------------- the topology


@pytest.fixture(scope="module")
def topology(tmp_path_factory):
    if not PG_URL:
        pytest.skip("needs SIDESTREAM_TEST_POSTGRES_URL (scripts/test starts PostgreSQL)")
    base = tmp_path_factory.mktemp("compose-local")
    database = "sidestream_compose_%s" % uuid.uuid4().hex[:12]
    plan = compose_local.Plan(COMPOSE, base, postgres_url=PG_URL, database=database,
                              prometheus=shutil.which("prometheus") is not None)
    topo = compose_local.Topology(plan)
    started = time.monotonic()
    topo.up()
    print("\nCOMPOSE-LOCAL: %s up in %.1f s (logs in %s): bootstrap %s"
          % (", ".join(plan.order), time.monotonic() - started, base, ",".join(plan.bootstrap_servers())))
    try:
        yield plan
    finally:
        topo.down()
        drop_read_caches(base)


def drop_read_caches(base):
    """Deletes the agents' read-cache files under `base` (the logs stay for a failed run): each
    agent's disk tier takes its full 4 GiB default, and pytest keeps the last three runs."""
    for cache in Path(base).glob("*/cache"):
        shutil.rmtree(cache, ignore_errors=True)


def http_get(addr, path):
    with urllib.request.urlopen("http://%s%s" % (addr, path), timeout=10) as r:
        return r.status, r.read().decode()


def brokers(bootstrap):
    md = AdminClient({"bootstrap.servers": bootstrap}).list_topics(timeout=10)
    return {b.id: "%s:%d" % (b.host, b.port) for b in md.brokers.values()}


def test_metadata_lists_the_three_agents_and_every_endpoint_answers(topology):
    plan = topology
    expected = {int(a.env["SIDESTREAM_AGENT_NODE_ID"]): a.env["SIDESTREAM_AGENT_ADVERTISED"] for a in plan.agents}
    assert sorted(expected) == [1, 2, 3]
    for a in plan.agents:
        addr = a.env["SIDESTREAM_AGENT_ADVERTISED"]
        poll_until(lambda: brokers(addr) == expected, 30, what="%s to list the three agents" % a.name)
    # The zones are the compose file's (DescribeCluster's rack, through kafka-python).
    from kafka import KafkaAdminClient
    kp = KafkaAdminClient(bootstrap_servers=plan.bootstrap_servers()[0], client_id="compose-local")
    try:
        racks = {b["broker_id"]: b["rack"] for b in kp.describe_cluster()["brokers"]}
    finally:
        kp.close()
    assert racks == {int(a.env["SIDESTREAM_AGENT_NODE_ID"]): a.env["SIDESTREAM_AGENT_ZONE"] for a in plan.agents}
    for name, addr in plan.metrics_targets().items():
        status, body = http_get(addr, "/metrics")
        assert status == 200 and "sidestream_" in body, name
        status, _ = http_get(addr, "/healthz")
        assert status == 200, name
    actives = {c.name: metric(c, "sidestream_controller_active") for c in plan.controllers}
    print("COMPOSE-LOCAL: Metadata %r; /metrics and /healthz of %s answer; active controller %r"
          % (expected, ", ".join(plan.metrics_targets()), actives))


def metric(service, name):
    addr = service.env.get("SIDESTREAM_CONTROLLER_METRICS_LISTEN") or service.env["SIDESTREAM_METRICS_LISTEN"]
    _, body = http_get(addr, "/metrics")
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines()
               if line.startswith(name + " ") or line.startswith(name + "{"))


def producer(bootstrap):
    # Retries off and idempotence off: a duplicate would be the server's doing.
    return Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "retries": 0,
                     "enable.idempotence": False, "message.timeout.ms": 120000,
                     "request.timeout.ms": 60000, "socket.timeout.ms": 60000})


class Load:
    """One producer bootstrapped at each agent, writing distinct values; collects acks."""

    def __init__(self, plan, topic):
        self.topic = topic
        self.producers = [producer(addr) for addr in plan.bootstrap_servers()]
        self.acked, self.failed, self.ack_times = [], [], []
        self.seq = 0

    def _report(self, err, msg):
        if err:
            self.failed.append((msg.value(), err))
        else:
            self.acked.append(msg.value())
            self.ack_times.append(time.monotonic())

    def produce(self, n, prefix):
        for _ in range(n):
            i = self.seq % len(self.producers)
            self.producers[i].produce(self.topic, value=b"%s-agent%d-%07d" % (prefix, i + 1, self.seq),
                                      partition=self.seq % PARTITIONS, on_delivery=self._report)
            self.producers[i].poll(0)
            self.seq += 1

    def flush(self):
        for p in self.producers:
            assert p.flush(120) == 0
        assert not self.failed, "%d deliveries failed, e.g. %r" % (len(self.failed), self.failed[:3])


def read_back(bootstrap, topic, acked):
    got = read_all(bootstrap, topic, PARTITIONS, expected_min=len(acked), timeout=60)
    values = [v for records in got.values() for _, v in records]
    assert len(values) == len(set(values)), "a record read twice"
    missing = set(acked) - set(values)
    assert not missing, "%d acknowledged records missing, e.g. %r" % (len(missing), sorted(missing)[:3])
    for p, records in got.items():
        assert [o for o, _ in records] == list(range(len(records))), "partition %d offsets not dense" % p
    return values


def test_producers_at_each_agent_and_a_reader_at_another_see_every_record(topology):
    plan = topology
    bootstraps = plan.bootstrap_servers()
    topic = "compose-each-agent"
    create_topic(bootstraps[0], topic, PARTITIONS)
    before = {a.name: metric(a, "sidestream_produce_seconds_count") for a in plan.agents}
    load = Load(plan, topic)
    load.produce(1500, b"each")
    load.flush()
    # Each producer sends a partition's batches to its leader, whichever agent bootstrapped it:
    # the agents together took them all (which ones lead is cluster mode's choice).
    after = {a.name: metric(a, "sidestream_produce_seconds_count") for a in plan.agents}
    assert sum(after.values()) > sum(before.values()), (before, after)
    # Read back through each agent in turn (bootstrapped there only).
    for addr in bootstraps[1:] + bootstraps[:1]:
        values = read_back(addr, topic, load.acked)
        assert len(values) == 1500
    print("COMPOSE-LOCAL: 1500 records produced through %s, read back once each through every agent"
          % ", ".join(a.name for a in plan.agents))


def test_prometheus_scrapes_every_target_of_the_compose_config(topology):
    plan = topology
    proms = plan.of_kind("prometheus")
    if not proms:
        pytest.skip("no prometheus binary here (Debian package prometheus; scripts/test installs it)")
    api = "127.0.0.1:%d" % proms[0].port(9090)
    want = {("sidestream-agent" if s.kind == "agent" else "sidestream-controller", addr)
            for s in plan.agents + plan.controllers
            for addr in [plan.metrics_targets()[s.name]]}

    def all_up():
        _, body = http_get(api, "/api/v1/targets")
        targets = json.loads(body)["data"]["activeTargets"]
        got = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in targets}
        assert set(got) == want, got
        return all(h == "up" for h in got.values())

    # scrape_interval is the compose file's 15 s: the first scrape of each target is within it.
    poll_until(all_up, 40, interval=0.5, what="Prometheus to scrape all five targets")
    _, body = http_get(api, "/api/v1/rules")
    groups = json.loads(body)["data"]["groups"]
    assert sum(len(g["rules"]) for g in groups) > 0, "no alert rule loaded"
    print("COMPOSE-LOCAL: Prometheus scrapes %d targets, %d alert rules loaded"
          % (len(want), sum(len(g["rules"]) for g in groups)))


def test_sigkill_of_the_active_controller_the_other_takes_over_and_producing_goes_on(topology):
    plan = topology
    failover_ms = int(plan.controllers[0].env["SIDESTREAM_CONTROLLER_FAILOVER_MS"])
    actives = poll_until(lambda: [c for c in plan.controllers if metric(c, "sidestream_controller_active") == 1]
                         or None, 30, what="an active controller")
    assert len(actives) == 1, [c.name for c in actives]
    active = actives[0]
    standby = [c for c in plan.controllers if c is not active][0]
    topic = "compose-failover"
    create_topic(plan.bootstrap_servers()[0], topic, PARTITIONS)
    load = Load(plan, topic)
    load.produce(300, b"before")
    load.flush()

    killed_at = time.monotonic()
    active.proc.kill()
    active.proc.wait(10)

    def standby_active():
        load.produce(30, b"during")
        for p in load.producers:
            p.poll(0.05)
        return metric(standby, "sidestream_controller_active") == 1

    poll_until(standby_active, failover_ms / 1000 + 15, interval=0, what="%s to take over" % standby.name)
    takeover_s = time.monotonic() - killed_at
    acked_at_takeover = len(load.acked)
    load.produce(300, b"after")
    load.flush()
    after = [v for v in load.acked if v.startswith(b"after-")]
    assert len(after) == 300
    for i in range(1, 4):
        assert any(v.startswith(b"after-agent%d-" % i) for v in after), "nothing acknowledged at agent-%d" % i
    first_after = min(t for t in load.ack_times if t > killed_at + takeover_s)
    print("COMPOSE-LOCAL: SIGKILL of %s; %s active %.2f s later (failover_ms=%d); %d acks by then, %d in all; "
          "first ack after takeover +%.2f s"
          % (active.name, standby.name, takeover_s, failover_ms, acked_at_takeover, len(load.acked),
             first_after - killed_at))
    assert takeover_s < failover_ms / 1000 + 10, "takeover took %.2f s" % takeover_s
    values = read_back(plan.bootstrap_servers()[2], topic, load.acked)
    assert len(values) == len(load.acked)
    status, _ = http_get(plan.metrics_targets()[standby.name], "/healthz")
    assert status == 200
    for a in plan.agents:
        assert a.proc.poll() is None, "%s exited" % a.name


def test_up_prints_the_bootstrap_servers_and_ctrl_c_stops_everything(tmp_path):
    if not PG_URL:
        pytest.skip("needs SIDESTREAM_TEST_POSTGRES_URL (scripts/test starts PostgreSQL)")
    database = "sidestream_compose_%s" % uuid.uuid4().hex[:12]
    env = dict(os.environ, SIDESTREAM_BIN=str(binary_path()))
    proc = subprocess.Popen([sys.executable, str(SCRIPT), "up", "--dir", str(tmp_path / "d"), "--postgres-url", PG_URL,
                             "--database", database, "--no-prometheus"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    out = []
    try:
        for line in proc.stdout:  # ends at EOF if it exits; each service has a start deadline
            out.append(line)
            if line.startswith("Ctrl-C stops everything"):
                break
        text = "".join(out)
        m = re.search(r"^bootstrap servers: (\S+)$", text, re.M)
        assert m, text
        bootstraps = m.group(1).split(",")
        targets = re.findall(r"http://(127\.0\.0\.1:\d+)/metrics", text)
        assert len(bootstraps) == 3 and len(targets) == 5, text
        poll_until(lambda: sorted(brokers(bootstraps[1]).values()) == sorted(bootstraps), 30,
                   what="the three agents listed")
        proc.send_signal(signal.SIGINT)
        rc = proc.wait(60)
        rest = proc.stdout.read()
        assert rc == 0, text + rest
        assert "compose-local: stopping" in rest
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        proc.stdout.close()
        drop_read_caches(tmp_path / "d")
    for addr in bootstraps + targets:
        host, port = addr.split(":")
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((host, int(port)), timeout=2).close()
    left = subprocess.run(["psql", PG_URL, "-XAtc", "SELECT count(*) FROM pg_database WHERE datname = '%s'" % database],
                          capture_output=True, text=True, check=True).stdout.strip()
    assert left == "0", "the database %s was not dropped" % database
