"""Fixtures that run the real `sidestream` binary for integration tests.

`SidestreamServer` starts `sidestream serve` on a free loopback port with a temporary data dir,
waits for readiness by polling (TCP connect plus a real ApiVersions round trip) with a deadline,
captures the server's stderr/stdout to a log file, and always kills the process on teardown.
`stop()` sends SIGTERM and asserts exit code 0 within a deadline; `start()` again reuses the same
data dir and port (restart tests). When a test fails, the tail of every server log it used is
attached to the pytest report.

`controller_store_env` and `STORE_KINDS` run a test's server with its embedded controller on
SQLite (the default) or on PostgreSQL.

Environment:
  SIDESTREAM_BIN   path of the binary (default: <repo>/target/release/sidestream)
  SIDESTREAM_TEST_POSTGRES_URL   a PostgreSQL server (scripts/test starts one); without it the
                   PostgreSQL variants skip
"""

import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

sys.path.insert(0, os.path.dirname(__file__))
import kafka_wire  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
START_TIMEOUT = float(os.environ.get("SIDESTREAM_START_TIMEOUT", "60"))
STOP_TIMEOUT = float(os.environ.get("SIDESTREAM_STOP_TIMEOUT", "30"))
FLUSH_INTERVAL_MS = os.environ.get("SIDESTREAM_TEST_FLUSH_INTERVAL_MS", "20")
LOG_TAIL_LINES = 200

# Servers that are running or were used by the current test: their logs go into failure reports.
# A closed server leaves the list at the end of the test that closed it.
_LIVE_SERVERS = []


def binary_path():
    p = Path(os.environ.get("SIDESTREAM_BIN", REPO / "target" / "release" / "sidestream"))
    if not p.is_absolute():
        p = REPO / p
    return p


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def poll_until(predicate, timeout, interval=0.05, what="condition"):
    """Call predicate() until it returns a truthy value or the deadline passes."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = predicate()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - reported below
            last_exc = e
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s (last error: %r)"
                                 % (timeout, what, last_exc))
        time.sleep(interval)


PG_URL = os.environ.get("SIDESTREAM_TEST_POSTGRES_URL", "")

# Parameters of tests that run on both controller stores.
STORE_KINDS = ["sqlite", pytest.param("postgres", marks=pytest.mark.skipif(
    not PG_URL, reason="needs SIDESTREAM_TEST_POSTGRES_URL (scripts/test starts PostgreSQL)"))]


@contextlib.contextmanager
def controller_store_env(kind):
    """The environment of a server whose embedded controller uses store `kind`: "sqlite" (the
    default file in its data dir) or "postgres" (a database of its own on the test server,
    dropped afterwards)."""
    if kind == "sqlite":
        yield {}
        return
    assert kind == "postgres", kind
    name = "sidestream_it_%s" % uuid.uuid4().hex[:12]
    subprocess.run(["psql", PG_URL, "-qc", "CREATE DATABASE %s" % name], check=True)
    try:
        yield {"SIDESTREAM_CONTROLLER_STORE": PG_URL.rsplit("/", 1)[0] + "/" + name}
    finally:
        subprocess.run(["psql", PG_URL, "-qc", "DROP DATABASE IF EXISTS %s WITH (FORCE)" % name], check=False)


class ServerStartError(AssertionError):
    pass


class SidestreamServer:
    def __init__(self, data_dir, log_path, extra_env=None, config=None, binary=None):
        self.data_dir = Path(data_dir)
        # Another program with the same contract (scripts/kafka-reference-broker); default binary_path().
        self.binary = binary
        self.log_path = Path(log_path)
        self.extra_env = dict(extra_env or {})
        # proxy.toml (`serve --config`), for what variables cannot say ([[listeners]]): its text,
        # or a Path to a file. The environment still wins over it.
        self.config = config
        self.host = "127.0.0.1"
        self.port = None
        self.proc = None
        self.starts = 0
        self.closed = False

    @property
    def bootstrap(self):
        return "%s:%d" % (self.host, self.port)

    # ---------------------------------------------------------------- lifecycle

    def start(self, timeout=START_TIMEOUT):
        """Start the server (same port and data dir as before if it ran already) and wait until ready."""
        assert self.proc is None or self.proc.poll() is not None, "server already running"
        binary = Path(self.binary) if self.binary else binary_path()
        if not binary.exists():
            raise ServerStartError("sidestream binary not found at %s (build it with "
                                   "`cargo build --release`, or set SIDESTREAM_BIN)" % binary)
        fixed_port = self.port is not None
        attempts = 1 if fixed_port else 5
        for attempt in range(attempts):
            if not fixed_port:
                self.port = free_port()
            self._spawn(binary)
            try:
                self._wait_ready(timeout)
                return self
            except ServerStartError:
                exited = self.proc.poll() is not None
                log = self.log_tail(50).lower()
                port_taken = exited and ("address already in use" in log or "os error 98" in log
                                         or "addrinuse" in log)
                self.kill()
                if port_taken and attempt + 1 < attempts:
                    continue
                raise

    def _spawn(self, binary):
        self.data_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update({
            "SIDESTREAM_AGENT_LISTEN": self.bootstrap,
            "SIDESTREAM_AGENT_DATA_DIR": str(self.data_dir),
            "SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS": FLUSH_INTERVAL_MS,
            "SIDESTREAM_METRICS_LISTEN": "127.0.0.1:0",
            "SIDESTREAM_CACHE_DISK_BYTES": str(64 << 20),
            "RUST_BACKTRACE": "1",
        })
        env.update(self.extra_env)
        self.starts += 1
        self.closed = False
        log = open(self.log_path, "ab")
        log.write(("\n===== start #%d: %s serve (listen %s, data_dir %s) =====\n"
                   % (self.starts, binary, self.bootstrap, self.data_dir)).encode())
        log.flush()
        args = [str(binary), "serve"]
        if isinstance(self.config, Path):
            args += ["--config", str(self.config)]
        elif self.config is not None:
            path = self.data_dir.parent / "proxy.toml"
            path.write_text(self.config)
            args += ["--config", str(path)]
        try:
            self.proc = subprocess.Popen(args, env=env, stdin=subprocess.DEVNULL,
                                         stdout=log, stderr=subprocess.STDOUT, cwd=str(self.data_dir))
        finally:
            log.close()
        if self not in _LIVE_SERVERS:
            _LIVE_SERVERS.append(self)

    def _ready_once(self):
        with kafka_wire.Conn(self.host, self.port, timeout=2.0) as c:
            err, keys = kafka_wire.api_versions(c, 0)
            return err == 0 and kafka_wire.API_VERSIONS in keys

    def _wait_ready(self, timeout):
        deadline = time.monotonic() + timeout
        last = None
        while True:
            rc = self.proc.poll()
            if rc is not None:
                raise ServerStartError("sidestream exited with code %s during start-up; log tail:\n%s"
                                       % (rc, self.log_tail(50)))
            try:
                if self._ready_once():
                    return
            except (OSError, kafka_wire.ConnectionClosed, ValueError, TimeoutError, AssertionError) as e:
                last = e
            if time.monotonic() >= deadline:
                raise ServerStartError("sidestream not ready within %.0fs on %s (last error: %r); log tail:\n%s"
                                       % (timeout, self.bootstrap, last, self.log_tail(50)))
            time.sleep(0.05)

    def stop(self, timeout=STOP_TIMEOUT):
        """SIGTERM, then assert a clean exit (code 0) within the deadline."""
        assert self.proc is not None and self.proc.poll() is None, "server is not running"
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            raise AssertionError("sidestream did not exit within %.0fs of SIGTERM; log tail:\n%s"
                                 % (timeout, self.log_tail(50)))
        assert rc == 0, "sidestream exited with code %s after SIGTERM; log tail:\n%s" % (rc, self.log_tail(50))

    def restart(self):
        self.stop()
        self.start()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def close(self):
        """Teardown: stop gracefully if possible, SIGKILL otherwise. Never raises."""
        self.closed = True
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()

    # ---------------------------------------------------------------- helpers

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def connect(self, timeout=10.0):
        return kafka_wire.Conn(self.host, self.port, timeout=timeout)

    def assert_healthy(self):
        """The process runs, and a fresh connection gets correct ApiVersions and Metadata answers."""
        assert self.alive(), "sidestream is not running (exit code %s); log tail:\n%s" % (
            self.proc.poll() if self.proc else None, self.log_tail(50))
        with self.connect() as c:
            err, keys = kafka_wire.api_versions(c, 0)
            assert err == 0, "ApiVersions v0 error %d" % err
            assert keys.get(kafka_wire.API_VERSIONS, (1, -1))[0] == 0
            md = kafka_wire.metadata(c, [])
            assert [(b["node_id"], b["host"], b["port"]) for b in md["brokers"]] == [(1, self.host, self.port)], md

    def wait_topic_ready(self, topic, partitions, timeout=30):
        """Poll until every partition of the topic answers ListOffsets without error.

        Immediate on sidestream. A real Kafka broker takes a moment to lead a new partition, and
        produce requests that arrive before then fail and are retried after later ones (KAFKA-15591),
        which would reorder records: this keeps the tests valid against a reference broker.
        """
        def ready():
            with self.connect() as c:
                t = kafka_wire.metadata(c, [topic])["topics"].get(topic)
                return (t is not None and t["error_code"] == 0 and len(t["partitions"]) == partitions
                        and all(kafka_wire.list_offsets(c, topic, p, kafka_wire.LATEST)["error_code"] == 0
                                for p in range(partitions)))

        poll_until(ready, timeout, what="topic %s to be ready" % topic)

    def metrics_addr(self):
        """The /metrics address of the running process (the last start's, in the log)."""
        return re.findall(r"metrics_addr=([0-9.:]+)", self.log_text())[-1]

    def metrics(self):
        """The server's /metrics as {'name{labels}': value} (the address is in its start-up log)."""
        addr = self.metrics_addr()
        text = urllib.request.urlopen("http://%s/metrics" % addr, timeout=10).read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line and not line.startswith("#")}

    def readyz(self):
        """(HTTP status, JSON body) of the server's /readyz."""
        import json
        import urllib.error
        addr = self.metrics_addr()
        try:
            with urllib.request.urlopen("http://%s/readyz" % addr, timeout=10) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read())

    def object_store_errors(self):
        """Failed object store attempts (injected faults among them), from /metrics: retries
        hide them from the log."""
        return sum(v for k, v in self.metrics().items() if k.startswith("sidestream_object_store_errors_total"))

    def log_text(self):
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def log_tail(self, n=LOG_TAIL_LINES):
        return "\n".join(self.log_text().splitlines()[-n:])


@pytest.fixture(scope="module")
def server(tmp_path_factory, request):
    """One server per test module (shared: tests use distinct topic names)."""
    base = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    srv = SidestreamServer(base / "data", base / "server.log")
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


FAULT_SEED = int(os.environ.get("SIDESTREAM_TEST_SEED", "848"))
FAULT_ENV = {"SIDESTREAM_OBJECT_STORE_FAULT_ERROR_RATE": "0.3",
             "SIDESTREAM_OBJECT_STORE_FAULT_SEED": str(FAULT_SEED)}


@pytest.fixture
def faulty_server(tmp_path):
    """A server of the test's own whose object store fails 30% of requests (`[object_store]
    fault_error_rate`, seed SIDESTREAM_TEST_SEED); it retries them. `extra_env = {}` and a
    restart turn the faults off."""
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log", extra_env=dict(FAULT_ENV))
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


@pytest.fixture
def fresh_server(tmp_path):
    """A server of the test's own, for tests that stop, restart or break it."""
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log")
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


@pytest.fixture
def s3(tmp_path):
    """A real S3-compatible server of the test's own (s3s-fs on loopback, see s3_server.py)."""
    from s3_server import S3Server

    srv = S3Server(tmp_path / "s3", tmp_path / "s3s-fs.log")
    try:
        srv.start()
        yield srv
    finally:
        srv.kill()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for srv in list(_LIVE_SERVERS):
            report.sections.append(("sidestream log %s (last %d lines)" % (srv.log_path, LOG_TAIL_LINES),
                                    srv.log_tail()))
    if report.when == "teardown":
        _LIVE_SERVERS[:] = [srv for srv in _LIVE_SERVERS if not srv.closed]
