"""TLS between agents and a `sidestream controller`, with real processes on loopback and
certificates made with openssl in the test's tmp dir (a CA, a controller certificate with
subjectAltName IP:127.0.0.1, a client certificate; and a second, unrelated CA).

- TLS with mTLS: an agent with the CA and a client certificate produces and consumes through
  the controller (confluent-kafka), the controller says it serves mutual TLS.
- A wrong CA, or no client certificate for a controller that requires one: the agent does not
  start, and says which handshake failed and why (at once, not after the start-up deadline).
- A plaintext agent (no tls_ca_file) against a TLS controller does not start either.
- A controller listening beyond loopback with neither TLS nor a token refuses to start, naming
  the keys to set.
- Token refusals: counted on the controller's /metrics, logged once per peer address a minute.
"""

import re
import subprocess
import time
import urllib.request

import pytest
from confluent_kafka import Producer

from conftest import ServerStartError, free_port, poll_until
from readback import create_topic, read_all
from test_cluster import ControllerProcess, make_agent

# A failed start-up waits for a controller for max(call_timeout_ms, 3 * failover_ms): short here.
QUICK_START_UP = {"SIDESTREAM_CONTROLLER_CALL_TIMEOUT_MS": "2000", "SIDESTREAM_CONTROLLER_FAILOVER_MS": "500"}


def make_pki(d, ca_name):
    """In `d`: ca.pem, server.pem/.key (IP:127.0.0.1) and client.pem/.key, signed by a CA
    named `ca_name`. Returns `d`."""
    d.mkdir(parents=True)
    (d / "ext.cnf").write_text("[srv]\nsubjectAltName=IP:127.0.0.1\n[cli]\nextendedKeyUsage=clientAuth\n")
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    steps = [
        ["req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=%s" % ca_name],
        ["req", *ec, "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=controller"],
        ["x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "server.pem", "-days", "2", "-extfile", "ext.cnf", "-extensions", "srv"],
        ["req", *ec, "-keyout", "client.key", "-out", "client.csr", "-subj", "/CN=agent"],
        ["x509", "-req", "-in", "client.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
         "-out", "client.pem", "-days", "2", "-extfile", "ext.cnf", "-extensions", "cli"],
    ]
    for args in steps:
        subprocess.run(["openssl", *args], cwd=str(d), check=True, capture_output=True)
    return d


@pytest.fixture
def pki(tmp_path):
    return make_pki(tmp_path / "pki", "sidestream-test-ca"), make_pki(tmp_path / "other-pki", "another-ca")


def tls_controller(tmp_path, pki_dir, mutual=True):
    env = {"SIDESTREAM_CONTROLLER_TLS_CERT_FILE": str(pki_dir / "server.pem"),
           "SIDESTREAM_CONTROLLER_TLS_KEY_FILE": str(pki_dir / "server.key")}
    if mutual:
        env["SIDESTREAM_CONTROLLER_TLS_CA_FILE"] = str(pki_dir / "ca.pem")
    ctl = ControllerProcess(tmp_path, "controller", "sqlite://%s" % (tmp_path / "controller.db"), env)
    ctl.start().wait_listening()
    return ctl


def agent_env(ca_dir, client_dir):
    env = {"SIDESTREAM_CONTROLLER_TLS_CA_FILE": str(ca_dir / "ca.pem")} if ca_dir else {}
    if client_dir:
        env.update({"SIDESTREAM_CONTROLLER_TLS_CERT_FILE": str(client_dir / "client.pem"),
                    "SIDESTREAM_CONTROLLER_TLS_KEY_FILE": str(client_dir / "client.key")})
    return env


def failed_start(agent):
    """Starts `agent`, expecting it to exit during start-up; returns (seconds taken, its log)."""
    started = time.monotonic()
    with pytest.raises(ServerStartError):
        agent.start(timeout=60)
    return time.monotonic() - started, agent.log_text()


def test_an_agent_over_mutual_tls_produces_and_consumes(tmp_path, pki):
    ours, _ = pki
    ctl = tls_controller(tmp_path, ours)
    agent = None
    try:
        assert re.search(r'controller service listening.*tls="?mutual', ctl.log()), ctl.log()[-2000:]
        agent = make_agent(tmp_path, 1, [ctl.address], tmp_path / "objects", agent_env(ours, ours)).start()
        assert "(mTLS)" in agent.log_text(), "the banner names the link"
        topic = "over-tls"
        create_topic(agent.bootstrap, topic, 2)
        p = Producer({"bootstrap.servers": agent.bootstrap, "acks": "all", "linger.ms": 5})
        acked = []
        for i in range(200):
            p.produce(topic, value=b"v%03d" % i, on_delivery=lambda err, msg: err or acked.append(msg.value()))
        assert p.flush(60) == 0
        assert len(acked) == 200
        got = read_all(agent.bootstrap, topic, 2, expected_min=200, timeout=60)
        assert sorted(v for records in got.values() for _, v in records) == sorted(acked)
    finally:
        if agent:
            agent.close()
        ctl.close()


@pytest.mark.parametrize("case", ["another CA", "no client certificate"])
def test_an_agent_that_fails_the_handshake_does_not_start(tmp_path, pki, case):
    ours, theirs = pki
    ctl = tls_controller(tmp_path, ours)
    env = agent_env(theirs, theirs) if case == "another CA" else agent_env(ours, None)
    env.update(QUICK_START_UP)
    env["SIDESTREAM_CONTROLLER_CALL_TIMEOUT_MS"] = "30000"  # a handshake failure is not waited out
    agent = make_agent(tmp_path, 1, [ctl.address], tmp_path / "objects", env)
    try:
        took, log = failed_start(agent)
        want = ("TLS handshake with the controller at %s failed: %s" %
                (ctl.address, "invalid peer certificate" if case == "another CA" else
                 "received fatal alert: CertificateRequired"))
        assert want in log, log[-3000:]
        assert took < 20, "a refused handshake is not retried until the start-up deadline (%.1f s)" % took
    finally:
        agent.close()
        ctl.close()


def test_a_plaintext_agent_gets_no_answer_from_a_tls_controller(tmp_path, pki):
    ours, _ = pki
    ctl = tls_controller(tmp_path, ours, mutual=False)
    env = dict(QUICK_START_UP)
    agent = make_agent(tmp_path, 1, [ctl.address], tmp_path / "objects", env)
    try:
        _, log = failed_start(agent)
        assert "no controller answered at %s within" % ctl.address in log, log[-3000:]
        assert "registered with the controller" not in log
    finally:
        agent.close()
        ctl.close()


def test_a_controller_beyond_loopback_without_tls_or_token_refuses_to_start(tmp_path):
    port = free_port()
    env = {"SIDESTREAM_CONTROLLER_LISTEN": "0.0.0.0:%d" % port, "SIDESTREAM_CONTROLLER_TOKEN": None}
    ctl = ControllerProcess(tmp_path, "controller", "sqlite://%s" % (tmp_path / "controller.db"), env).start()
    try:
        assert ctl.proc.wait(30) == 2
        log = ctl.log()
        assert "key `controller.listen`: 0.0.0.0:%d is not a loopback address" % port in log, log
        assert "set [controller] tls_cert_file and tls_key_file (TLS), or token" in log, log
        assert "controller service listening" not in log
    finally:
        ctl.close()


def test_token_refusals_are_counted_and_logged_once_per_peer(tmp_path):
    env = {"SIDESTREAM_CONTROLLER_METRICS_LISTEN": "127.0.0.1:0"}
    ctl = ControllerProcess(tmp_path, "controller", "sqlite://%s" % (tmp_path / "controller.db"), env)
    ctl.start().wait_listening()
    wrong = dict(QUICK_START_UP, SIDESTREAM_CONTROLLER_TOKEN="not-the-token")
    agent = make_agent(tmp_path, 1, [ctl.address], tmp_path / "objects", wrong)
    try:
        _, log = failed_start(agent)
        assert "missing or wrong controller token" in log, log[-3000:]
        addr = poll_until(lambda: re.search(r"controller metrics listening.*metrics_addr=([0-9.:]+)", ctl.log()),
                          30, what="the controller's metrics address").group(1)
        text = urllib.request.urlopen("http://%s/metrics" % addr, timeout=10).read().decode()
        m = re.search(r"^sidestream_controller_auth_failures_total (\d+)", text, re.M)
        assert m and int(m.group(1)) >= 2, text
        lines = [line for line in ctl.log().splitlines() if "missing or wrong controller token" in line]
        assert len(lines) == 1, "one line per peer a minute, not one per call: %r" % lines
        assert "127.0.0.1" in lines[0] and "not-the-token" not in ctl.log()
    finally:
        agent.close()
        ctl.close()
