"""A real S3-compatible HTTP server for integration tests: s3s-fs on loopback.

`S3Server` runs `s3s-fs` (installed by scripts/test with `cargo install s3s-fs`) on a free port
with a temporary root directory and static SigV4 credentials, waits for readiness by polling
with a deadline, and kills it by PID on teardown. `stop()` / `start()` keep the port and the data
(s3s-fs stores objects as files under its root), so a test can take S3 away and bring it back.

`sidestream_env()` gives the SIDESTREAM_* variables that point an agent at it.

Environment:
  S3S_FS_BIN   path of the s3s-fs binary (default: `s3s-fs` on PATH, then ~/.cargo/bin/s3s-fs)
"""

import os
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

ACCESS_KEY = "sidestream-test"
SECRET_KEY = "sidestream-test-secret"
START_TIMEOUT = 30.0


def s3s_fs_binary():
    explicit = os.environ.get("S3S_FS_BIN")
    if explicit:
        return explicit
    found = shutil.which("s3s-fs")
    if found:
        return found
    home = Path.home() / ".cargo" / "bin" / "s3s-fs"
    return str(home) if home.exists() else None


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    def __init__(self, root, log_path, bucket="sidestream"):
        self.root = Path(root)
        self.log_path = Path(log_path)
        self.bucket = bucket
        self.port = None
        self.proc = None

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def bucket_dir(self):
        return self.root / self.bucket

    def start(self, timeout=START_TIMEOUT):
        assert self.proc is None or self.proc.poll() is not None, "s3s-fs already running"
        binary = s3s_fs_binary()
        assert binary, "s3s-fs not found: run scripts/test (it installs it) or set S3S_FS_BIN"
        self.bucket_dir.mkdir(parents=True, exist_ok=True)
        fixed = self.port is not None
        for attempt in range(1 if fixed else 5):
            if not fixed:
                self.port = _free_port()
            log = open(self.log_path, "ab")
            try:
                self.proc = subprocess.Popen(
                    [binary, "--host", "127.0.0.1", "--port", str(self.port), "--access-key", ACCESS_KEY,
                     "--secret-key", SECRET_KEY, str(self.root)],
                    stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
            finally:
                log.close()
            if self._wait_ready(timeout):
                return self
            self.kill()
        raise AssertionError("s3s-fs did not start on %s; log tail:\n%s" % (self.endpoint, self.log_tail()))

    def _wait_ready(self, timeout):
        """Polls until the port answers HTTP (any status: unsigned requests get 403)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                return False
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1.0) as s:
                    s.sendall(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
                    if s.recv(16).startswith(b"HTTP/1."):
                        return True
            except OSError:
                pass
            time.sleep(0.05)
        return False

    def stop(self):
        """Takes S3 away (SIGKILL: no goodbye to open connections), keeping port and data."""
        self.kill()

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass

    def objects(self, prefix=""):
        """Keys of the objects stored under the bucket (s3s-fs keeps one file per object)."""
        base = self.bucket_dir
        out = []
        for p in base.rglob("*"):
            if p.is_file():
                key = p.relative_to(base).as_posix()
                if key.startswith(prefix) and key.endswith(".sso"):
                    out.append(key)
        return sorted(out)

    def log_tail(self, n=50):
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except FileNotFoundError:
            return ""

    def sidestream_env(self, prefix="cluster-a"):
        return {
            "SIDESTREAM_OBJECT_STORE_URL": "s3://%s/%s" % (self.bucket, prefix),
            "SIDESTREAM_OBJECT_STORE_ENDPOINT": self.endpoint,
            "SIDESTREAM_OBJECT_STORE_REGION": "us-east-1",
            "SIDESTREAM_OBJECT_STORE_PATH_STYLE": "true",
            "SIDESTREAM_OBJECT_STORE_ACCESS_KEY_ID": ACCESS_KEY,
            "SIDESTREAM_OBJECT_STORE_SECRET_ACCESS_KEY": SECRET_KEY,
        }
