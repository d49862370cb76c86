"""/readyz of an idle agent follows the controller and the object store, and the log says so once.

Real processes on loopback: a `sidestream controller` (SQLite), a real S3 server (s3s-fs), one
agent in remote mode with a 200 ms health probe and short retry deadlines. No produce traffic:
only the probe (a HEAD of a fixed key, a read of the agent's WAL mark) can notice. The
controller is killed and restarted on the same port and store, then the object store is; each
time /readyz must turn 503 naming the check, then 200 again, and the log must carry exactly one
"not ready" and one "ready again" line for that check, however many probes failed meanwhile.
"""

import signal

from conftest import poll_until
from test_cluster import remote_agent_on_s3


def not_ready_for(agent, check):
    status, body = agent.readyz()
    return status == 503 and not body["checks"].get(check, {"ok": True})["ok"] and body


def log_lines(agent, since, check, what):
    """Log lines about `check` containing `what`, written after offset `since` of the log."""
    return [l for l in agent.log_text()[since:].splitlines() if what in l and 'check="%s"' % check in l]


def test_readyz_follows_the_controller_and_the_object_store_of_an_idle_agent(tmp_path):
    s3, controller, agent = remote_agent_on_s3(tmp_path, "readyz", {
        "SIDESTREAM_METRICS_HEALTH_PROBE_INTERVAL_MS": "200",
        "SIDESTREAM_OBJECT_STORE_REQUEST_TIMEOUT_MS": "1000",
        "SIDESTREAM_OBJECT_STORE_RETRY_DEADLINE_MS": "1000",
        "SIDESTREAM_CONTROLLER_CALL_TIMEOUT_MS": "1000",
    })
    try:
        agent.start()
        poll_until(lambda: "metrics_addr=" in agent.log_text() and agent.readyz()[0] == 200, 30, what="/readyz 200 at start")
        body = agent.readyz()[1]
        assert body["checks"]["controller_reachable"]["ok"] and body["checks"]["object_store_reachable"]["ok"], body

        since = len(agent.log_text())
        controller.proc.send_signal(signal.SIGKILL)
        controller.proc.wait(10)
        body = poll_until(lambda: not_ready_for(agent, "controller_reachable"), 30,
                          what="/readyz to name the controller")
        print("controller down:", body)
        # Several failed probes later, still one warning.
        n = agent.metrics().get("sidestream_health_check{check=\"controller_reachable\"}")
        assert n == 0.0, n
        controller.start().wait_listening()
        poll_until(lambda: agent.readyz()[0] == 200, 60, what="/readyz 200 after the controller returned")
        assert len(log_lines(agent, since, "controller_reachable", "not ready")) == 1, agent.log_tail(80)
        assert len(log_lines(agent, since, "controller_reachable", "ready again")) == 1, agent.log_tail(80)

        since = len(agent.log_text())
        s3.stop()
        body = poll_until(lambda: not_ready_for(agent, "object_store_reachable"), 30,
                          what="/readyz to name the object store")
        print("object store down:", body)
        s3.start()
        poll_until(lambda: agent.readyz()[0] == 200, 60, what="/readyz 200 after the object store returned")
        assert len(log_lines(agent, since, "object_store_reachable", "not ready")) == 1, agent.log_tail(80)
        assert len(log_lines(agent, since, "object_store_reachable", "ready again")) == 1, agent.log_tail(80)
        agent.stop()
    finally:
        agent.close()
        controller.close()
        s3.kill()
