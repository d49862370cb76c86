"""systemd's notify protocol, with a fake NOTIFY_SOCKET: a Unix datagram socket this test reads.

The agent must send READY=1 only once it serves (the Kafka listener answers ApiVersions and
/readyz says the WAL is replayed), WATCHDOG=1 when WATCHDOG_USEC asks for it, and STOPPING=1
when SIGTERM arrives, before it exits 0. The controller sends READY=1 once it listens.
"""

import os
import signal
import socket
import time

from conftest import SidestreamServer, binary_path, free_port, poll_until
from test_cluster import ControllerProcess
import kafka_wire


def notify_socket(tmp_path):
    path = str(tmp_path / "notify.sock")
    s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    s.bind(path)
    return s, path


def receive(sock, want, timeout=60):
    """Datagrams until one containing `want` (all of them returned, in order)."""
    got = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            got.append(sock.recv(4096).decode())
        except socket.timeout:
            break
        if want in got[-1]:
            return got
    raise AssertionError("no %r within %ss; got %r" % (want, timeout, got))


def stop_expecting_stopping(proc, sock):
    """SIGTERM: the process says STOPPING=1, then exits 0."""
    proc.send_signal(signal.SIGTERM)
    receive(sock, "STOPPING=1", timeout=30)
    assert proc.wait(30) == 0


def test_agent_notifies_ready_after_it_serves_then_watchdog_then_stopping(tmp_path):
    sock, path = notify_socket(tmp_path)
    server = SidestreamServer(tmp_path / "data", tmp_path / "agent.log",
                              {"NOTIFY_SOCKET": path, "WATCHDOG_USEC": "200000"})
    server.port = free_port()
    server._spawn(binary_path())  # not start(): its readiness poll would hide the order
    try:
        got = receive(sock, "READY=1")
        assert len(got) == 1 and got[0].startswith("READY=1"), got
        # At READY the listener answers at once and the WAL is replayed.
        with kafka_wire.Conn(server.host, server.port, timeout=5) as c:
            err, keys = kafka_wire.api_versions(c, 0)
            assert err == 0 and kafka_wire.API_VERSIONS in keys
        status, body = poll_until(lambda: "metrics_addr=" in server.log_text() and server.readyz(), 10,
                                  what="the metrics address in the log")
        assert body["checks"]["wal"]["ok"], body
        receive(sock, "WATCHDOG=1", timeout=10)
        stop_expecting_stopping(server.proc, sock)
    finally:
        server.close()
        sock.close()


def test_agent_without_notify_socket_starts_as_before(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "NOTIFY_SOCKET"}
    server = SidestreamServer(tmp_path / "data", tmp_path / "agent.log")
    old = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        server.start()
        server.stop()
    finally:
        os.environ.clear()
        os.environ.update(old)
        server.close()


def test_controller_notifies_ready_once_listening(tmp_path):
    sock, path = notify_socket(tmp_path)
    controller = ControllerProcess(tmp_path, "controller", "sqlite://%s" % (tmp_path / "c.db"), {"NOTIFY_SOCKET": path})
    try:
        controller.start()
        got = receive(sock, "READY=1")
        assert "controller service listening" in controller.log(), controller.log()
        assert got[0].startswith("READY=1"), got
        stop_expecting_stopping(controller.proc, sock)
    finally:
        controller.close()
        sock.close()


def broker_log_level(bootstrap):
    """The agent's `sidestream.log.level` broker config (DescribeConfigs of broker 1)."""
    from confluent_kafka.admin import AdminClient, ConfigResource, ResourceType
    res = ConfigResource(ResourceType.BROKER, "1")
    admin = AdminClient({"bootstrap.servers": bootstrap})  # kept alive until the answer
    configs = list(admin.describe_configs([res]).values())[0].result(30)
    return configs["sidestream.log.level"].value


def test_sighup_reloads_the_log_level_from_the_file_and_nothing_else(tmp_path, monkeypatch):
    """systemctl reload (SIGHUP) reads the configuration again: a changed `[log] level` applies
    at once (RELOADING=1, then READY=1); a filter set at run time through Kafka's config APIs
    (`sidestream.log.level`, dynamic) overrides the file's until deleted, as in Kafka; a file
    that no longer loads changes nothing."""
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ResourceType
    monkeypatch.delenv("RUST_LOG", raising=False)
    sock, path = notify_socket(tmp_path)
    config = tmp_path / "proxy.toml"
    config.write_text('[log]\nlevel = "info"\n')
    server = SidestreamServer(tmp_path / "data", tmp_path / "agent.log", {"NOTIFY_SOCKET": path}, config=config)
    try:
        server.start()
        receive(sock, "READY=1")
        assert broker_log_level(server.bootstrap) == "info"

        config.write_text('[log]\nlevel = "info,sidestream::controller=debug"\n')
        server.proc.send_signal(signal.SIGHUP)
        got = receive(sock, "READY=1", timeout=30)
        assert any("RELOADING=1" in g for g in got), got
        poll_until(lambda: broker_log_level(server.bootstrap) == "info,sidestream::controller=debug", 30,
                   what="the file's new level in force")
        assert "SIGHUP: [log] level applied" in server.log_text()

        # Set at run time (kafka-configs --alter): a SIGHUP with the file unchanged keeps it.
        res = ConfigResource(ResourceType.BROKER, "1", incremental_configs=[
            ConfigEntry("sidestream.log.level", "debug", incremental_operation=AlterConfigOpType.SET)])
        admin = AdminClient({"bootstrap.servers": server.bootstrap})
        list(admin.incremental_alter_configs([res]).values())[0].result(30)
        assert broker_log_level(server.bootstrap) == "debug"
        server.proc.send_signal(signal.SIGHUP)
        receive(sock, "READY=1", timeout=30)
        poll_until(lambda: "SIGHUP: [log] level unchanged" in server.log_text(), 30, what="the second reload")
        assert broker_log_level(server.bootstrap) == "debug"

        # A changed file while the run-time filter holds: read, not in force (a dynamic broker
        # config overrides the file, as in Kafka); deleting the dynamic one brings the file's back.
        config.write_text('[log]\nlevel = "warn"\n')
        server.proc.send_signal(signal.SIGHUP)
        receive(sock, "READY=1", timeout=30)
        poll_until(lambda: "stays in force until deleted" in server.log_text(), 30, what="the third reload")
        assert broker_log_level(server.bootstrap) == "debug"
        res = ConfigResource(ResourceType.BROKER, "1", incremental_configs=[
            ConfigEntry("sidestream.log.level", None, incremental_operation=AlterConfigOpType.DELETE)])
        list(admin.incremental_alter_configs([res]).values())[0].result(30)
        assert broker_log_level(server.bootstrap) == "warn"

        # A file that does not load: said in the log, nothing changes, the agent keeps serving.
        config.write_text('[log]\nlevel = "info"\nno_such_key = 1\n')
        server.proc.send_signal(signal.SIGHUP)
        receive(sock, "READY=1", timeout=30)
        poll_until(lambda: "SIGHUP: the configuration does not load" in server.log_text(), 30, what="the refusal")
        assert broker_log_level(server.bootstrap) == "warn"
    finally:
        server.close()
        sock.close()
