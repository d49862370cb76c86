"""The deployment files under docker/ are valid, and every metric they use is real.

- both compose files pass Debian's `docker-compose config -q` (Compose-spec validation; there
  is no Docker daemon here, so no image is built or run);
- both systemd units pass `systemd-analyze verify` with no warning (ExecStart pointed at the
  binary under test, which must exist for verify to pass);
- `promtool check rules` accepts docker/prometheus/alerts.yaml and `promtool check config` the
  Prometheus configuration of the compose topology;
- every SIDESTREAM_* variable the Dockerfile and compose files set names a key of proxy.toml,
  and the binary under test starts with the Dockerfile's environment;
- every `sidestream_*` metric an alert rule or a dashboard panel names is in a live /metrics:
  an embedded agent that took produce, fetches, group commits and a refused CreateTopics, and a
  `sidestream controller` (with `metrics_listen`) serving a remote agent, whose group's lag it
  exports; `promtool check metrics` accepts both scrapes.

The tools come from Debian's `prometheus`, `docker-compose` and `systemd` packages
(scripts/test installs the missing ones); this file installs nothing.
"""

import json
import re
import shutil
import subprocess
import time
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer

import kafka_wire
from conftest import REPO, SidestreamServer, binary_path, free_port, poll_until
from test_cluster import ControllerProcess, make_agent

DOCKER = REPO / "docker"
COMPOSE_FILES = [DOCKER / "compose.yaml", DOCKER / "compose.sidecar.yaml"]
UNITS = [DOCKER / "systemd" / "sidestream-agent.service", DOCKER / "systemd" / "sidestream-controller.service"]
ALERTS = DOCKER / "prometheus" / "alerts.yaml"
DASHBOARD = DOCKER / "grafana" / "sidestream.json"


def need(tool):
    path = shutil.which(tool)
    if path is None:
        pytest.fail("%s not found: scripts/test installs it (Debian packages prometheus, docker-compose, systemd)" % tool)
    return path


def run(cmd, **kw):
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, **kw)


@pytest.mark.parametrize("path", COMPOSE_FILES, ids=lambda p: p.name)
def test_compose_file_is_valid(path):
    r = run([need("docker-compose"), "-f", str(path), "config", "-q"])
    assert r.returncode == 0, r.stdout + r.stderr


def test_compose_topology_is_the_seed_one():
    """compose.yaml holds the topology the README promises (docker-compose's own rendering)."""
    r = run([need("docker-compose"), "-f", str(COMPOSE_FILES[0]), "config", "--services"])
    assert r.returncode == 0, r.stderr
    services = set(r.stdout.split())
    assert services == {"minio", "minio-init", "postgres", "controller-1", "controller-2", "agent-1", "agent-2",
                        "agent-3", "prometheus", "grafana"}, services
    text = COMPOSE_FILES[0].read_text()
    for n, port in [(1, 19092), (2, 19093), (3, 19094)]:
        assert "SIDESTREAM_AGENT_ADVERTISED: localhost:%d" % port in text
        assert '"%d:%d"' % (port, port) in text
    targets = (DOCKER / "prometheus" / "prometheus.yml").read_text()
    for t in ["agent-1:9644", "agent-2:9644", "agent-3:9644", "controller-1:9645", "controller-2:9645"]:
        assert t in targets


@pytest.mark.parametrize("unit", UNITS, ids=lambda p: p.name)
def test_systemd_unit_verifies(unit, tmp_path):
    text = unit.read_text()
    assert "Type=notify" in text and "ExecReload=/bin/kill -HUP $MAINPID" in text
    for hardening in ["NoNewPrivileges=yes", "PrivateTmp=yes", "ProtectSystem=strict", "DynamicUser=yes",
                      "StateDirectory=", "ReadWritePaths=", "LimitNOFILE=", "Restart=on-failure"]:
        assert hardening in text, hardening
    local = tmp_path / unit.name
    local.write_text(text.replace("/usr/local/bin/sidestream", str(binary_path())))
    r = run([need("systemd-analyze"), "verify", str(local)], cwd=str(tmp_path))
    out = r.stdout + r.stderr
    assert r.returncode == 0 and unit.name not in out, out


def test_alert_rules_and_prometheus_config_are_valid():
    promtool = need("promtool")
    r = run([promtool, "check", "rules", str(ALERTS)])
    assert r.returncode == 0, r.stdout + r.stderr
    r = run([promtool, "check", "config", str(DOCKER / "prometheus" / "prometheus.yml")])
    assert r.returncode == 0, r.stdout + r.stderr
    json.loads(DASHBOARD.read_text())


def config_keys():
    """Every `section.key` of proxy.toml (commented-out optional keys included)."""
    keys, section = set(), None
    for line in (REPO / "proxy.toml").read_text().splitlines():
        m = re.match(r"^\[([a-z_]+)\]", line)
        if m:
            section = m.group(1)
            continue
        m = re.match(r"^#? ?([a-z_]+) = ", line)
        if m and section:
            keys.add("%s_%s" % (section, m.group(1)))
    return keys


def env_vars_in(path):
    return set(re.findall(r"\b(SIDESTREAM_[A-Z0-9_]+)\b", path.read_text()))


def test_every_variable_the_deployment_files_set_is_a_config_key():
    keys = {k.upper() for k in config_keys()}
    assert "METRICS_HEALTH_PROBE_INTERVAL_MS" in keys and "CONTROLLER_METRICS_LISTEN" in keys
    for path in [DOCKER / "Dockerfile", *COMPOSE_FILES, *UNITS]:
        for var in env_vars_in(path):
            assert var[len("SIDESTREAM_"):] in keys, "%s in %s is not a proxy.toml key" % (var, path.name)


def test_binary_starts_with_the_dockerfile_environment(tmp_path):
    """The image's ENV (listeners on 0.0.0.0, data dir) and its CMD's proxy.toml are accepted;
    ports and the data dir are moved to free ones / a temp dir (the container's are not ours)."""
    env = dict(re.findall(r"(SIDESTREAM_[A-Z_]+)=(\S+)", (DOCKER / "Dockerfile").read_text()))
    assert env["SIDESTREAM_AGENT_LISTEN"].startswith("0.0.0.0:")
    env.update({"SIDESTREAM_AGENT_DATA_DIR": str(tmp_path / "data"),
                "SIDESTREAM_METRICS_LISTEN": "127.0.0.1:0",
                "SIDESTREAM_AGENT_ADVERTISED": "127.0.0.1:%d"})
    server = SidestreamServer(tmp_path / "data", tmp_path / "agent.log", env)
    server.port = free_port()
    server.extra_env["SIDESTREAM_AGENT_ADVERTISED"] %= server.port
    server.extra_env["SIDESTREAM_AGENT_LISTEN"] = "0.0.0.0:%d" % server.port
    try:
        server.start()
        poll_until(lambda: "metrics_addr=" in server.log_text() and server.readyz()[0] == 200, 30,
                   what="/readyz 200")
    finally:
        server.close()


def used_metrics():
    names = set()
    for path in [ALERTS, DASHBOARD]:
        names |= set(re.findall(r"\bsidestream_[a-z0-9_]+", path.read_text()))
    assert len(names) >= 15, names
    return names


def scrape(addr):
    return urllib.request.urlopen("http://%s/metrics" % addr, timeout=10).read().decode()


def exposed(text):
    return {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and not line.startswith("#")}


def check_metrics(text):
    r = run([need("promtool"), "check", "metrics"], input=text)
    assert r.returncode == 0, r.stdout + r.stderr


def produce_and_consume(bootstrap, topic, n=50):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    for i in range(n):
        p.produce(topic, b"r%d" % i)
    assert p.flush(60) == 0
    p2 = Producer({"bootstrap.servers": bootstrap, "acks": 1, "linger.ms": 5})
    for i in range(n):
        p2.produce(topic, b"s%d" % i)
    assert p2.flush(60) == 0
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "deploy-metrics", "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    c.subscribe([topic])
    got = 0
    deadline = time.monotonic() + 60
    while got < n and time.monotonic() < deadline:
        m = c.poll(0.5)
        if m is not None and m.error() is None:
            got += 1
    assert got >= n
    c.commit(asynchronous=False)
    c.close()


def test_every_metric_a_panel_or_rule_uses_is_served(tmp_path):
    used = used_metrics()
    # An embedded agent: the data path, its readiness and its consumer lag.
    agent = SidestreamServer(tmp_path / "embedded", tmp_path / "embedded.log",
                             {"SIDESTREAM_METRICS_HEALTH_PROBE_INTERVAL_MS": "200"})
    controller = ControllerProcess(tmp_path, "controller", "sqlite://%s" % (tmp_path / "controller.db"),
                                   {"SIDESTREAM_CONTROLLER_METRICS_LISTEN": "127.0.0.1:0"})
    remote = make_agent(tmp_path, 2, [], tmp_path / "objects")
    try:
        agent.start()
        produce_and_consume(agent.bootstrap, "deploy-metrics")
        # An answer with an error code, for the errors-by-code panel (TOPIC_ALREADY_EXISTS).
        with agent.connect() as c:
            assert kafka_wire.create_topics(c, [("deploy-metrics", 1, 1)])["deploy-metrics"][0] == 36
        poll_until(lambda: "metrics_addr=" in agent.log_text()
                   and "object_store_reachable" in agent.readyz()[1]["checks"], 30, what="the first probe")
        agent_text = scrape(re.search(r"metrics_addr=([0-9.:]+)", agent.log_text()).group(1))
        check_metrics(agent_text)

        # A controller service with an agent in remote mode: commits and lag at the controller.
        controller.start().wait_listening()
        remote.extra_env["SIDESTREAM_CONTROLLER_ADDRESSES"] = controller.address
        remote.start()
        produce_and_consume(remote.bootstrap, "deploy-metrics-remote")
        addr = poll_until(lambda: re.search(r"controller metrics listening.*metrics_addr=([0-9.:]+)", controller.log()),
                          30, what="the controller's metrics address").group(1)
        # The remote agent's group, at the controller (an agent with a remote controller exports
        # no lag: the controller does, for every group).
        remote_lag = 'sidestream_group_lag{group="deploy-metrics",topic="deploy-metrics-remote",partition="0"}'
        controller_text = poll_until(lambda: (lambda t: remote_lag in t and t)(scrape(addr)), 30,
                                     what="consumer lag of the remote agent's group at the controller")
        check_metrics(controller_text)
        assert "sidestream_controller_active 1" in controller_text
        assert "sidestream_controller_commits_total" in controller_text
        missing = used - exposed(agent_text) - exposed(controller_text)
        assert not missing, "used by alerts.yaml or sidestream.json but never served: %s" % sorted(missing)
    finally:
        remote.close()
        controller.close()
        agent.close()
