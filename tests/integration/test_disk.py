"""The agent and its host: a full disk that heals, one agent per data_dir, the open-file limit,
and failed reads that are counted and logged (once a minute, not once per request).

The disk tests put data_dir (WAL, SQLite, local objects, cache) on a small tmpfs (`mount -t tmpfs`,
root only: they skip with the reason otherwise) and fill it with a ballast file.
"""

import contextlib
import os
import re
import resource
import struct
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

import kafka_wire
from conftest import SidestreamServer, binary_path, free_port, poll_until
from readback import create_topic, read_all

KAFKA_STORAGE_ERROR = 56
TMPFS_BYTES = 64 << 20


@contextlib.contextmanager
def small_disk(path, size=TMPFS_BYTES):
    """A tmpfs of `size` bytes mounted at `path`, unmounted at the end even on failure."""
    path.mkdir(parents=True, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%d" % size, "tmpfs", str(path)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip("cannot mount a tmpfs (needs root): %s" % (r.stderr.strip() or r.returncode))
    try:
        yield path
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], check=False)


def fill(path, leave=0, chunk=1 << 20):
    """Writes zeros to `path` until the filesystem has at most `leave` bytes free (ENOSPC ends
    it when leave=0). Returns the bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as f:
        while True:
            st = os.statvfs(path)
            room = st.f_bavail * st.f_frsize - leave
            if room <= 0:
                break
            try:
                written += f.write(b"\0" * min(chunk, max(room, 4096)))
            except OSError:
                if leave == 0:
                    break
                raise
    return written


def metrics_now(srv):
    """/metrics of the server's current run (conftest's helper reads the first run's address)."""
    addr = re.search(r"metrics_addr=([0-9.:]+)", this_run(srv)).group(1)
    text = urllib.request.urlopen("http://%s/metrics" % addr, timeout=10).read().decode()
    return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines() if line and not line.startswith("#")}


def this_run(srv):
    """The server's log since its last start."""
    return srv.log_text().rsplit("===== start #", 1)[-1]


def produce_one(conn, topic, value, acks):
    batch = kafka_wire.record_batch([(None, value)])
    r = kafka_wire.produce(conn, 3, [(topic, [(0, batch)])], acks=acks, timeout_ms=10000)
    return r[(topic, 0)]["error_code"]


def wal_segments_whole(wal_dir):
    """Every WAL segment is a run of complete entries (len u32 | crc u32 | id u64 | payload)
    with consecutive ids, nothing torn after the last one. Returns the entry count."""
    total = 0
    for seg in sorted(Path(wal_dir).glob("*.wal")):
        data = seg.read_bytes()
        pos, expected = 0, int(seg.stem)
        while pos < len(data):
            assert pos + 16 <= len(data), "%s: torn entry header at byte %d of %d" % (seg, pos, len(data))
            n, _crc, entry_id = struct.unpack(">IIQ", data[pos:pos + 16])
            assert entry_id == expected and pos + 16 + n <= len(data), \
                "%s: entry at byte %d is not entry %d (id %d, %d bytes, file %d bytes)" % (
                    seg, pos, expected, entry_id, n, len(data))
            pos += 16 + n
            expected += 1
            total += 1
    return total


def test_disk_full_heals_without_restart(tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        data = disk / "data"
        # A small disk tier (preallocated at start-up) on the same filesystem: its writes must
        # not fail (foyer 0.22's flusher panics on a failed write) nor take the WAL's space.
        srv = SidestreamServer(data, tmp_path / "server.log", extra_env={
            "SIDESTREAM_CACHE_DISK_BYTES": str(16 << 20),
            "SIDESTREAM_CACHE_DISK_RESERVE_BYTES": str(16 << 20),
            "SIDESTREAM_CACHE_MEMORY_BYTES": str(4 << 20),
        })
        srv.start()
        try:
            topic = "disk-full"
            create_topic(srv.bootstrap, topic, 1)
            acked = []
            value = lambda i: b"v%06d-" % i + b"x" * 8000  # noqa: E731
            with srv.connect() as c:
                for i in range(20):
                    assert produce_one(c, topic, value(i), acks=1) == 0
                    acked.append(value(i))
                ballast = disk / "ballast"
                fill(ballast)
                # Appends that still fit succeed; then the WAL refuses with KAFKA_STORAGE_ERROR.
                n = [len(acked)]

                def refused():
                    err = produce_one(c, topic, value(n[0]), acks=1)
                    if err == 0:
                        acked.append(value(n[0]))
                    n[0] += 1
                    assert err in (0, KAFKA_STORAGE_ERROR), err
                    return err == KAFKA_STORAGE_ERROR

                poll_until(refused, 30, what="acks=1 to be refused on a full disk")
                assert srv.metrics().get("sidestream_wal_online") == 0
                # Still refused (offline, retried with a backoff), never a crash.
                for _ in range(5):
                    err = produce_one(c, topic, b"refused", acks=1)
                    assert err in (0, KAFKA_STORAGE_ERROR), err
                    if err == 0:
                        acked.append(b"refused")

                ballast.unlink()

                def accepted(acks, v):
                    if produce_one(c, topic, v, acks=acks) == 0:
                        acked.append(v)
                        return True
                    return False

                poll_until(lambda: accepted(1, b"healed-acks-1"), 30, what="acks=1 to succeed once space is free")
                poll_until(lambda: accepted(-1, b"healed-acks-all"), 60, what="acks=all to succeed once space is free")
                assert srv.metrics().get("sidestream_wal_online") == 1
            log = srv.log_text()
            assert log.count("the log is offline") == 1 and log.count("the log is back online") == 1, log[-3000:]

            # Nothing torn stays in the WAL: a crash now recovers every entry.
            srv.kill()
            assert wal_segments_whole(data / "wal") >= 1
            srv.start()
            got = read_all(srv.bootstrap, topic, 1, expected_min=len(acked), timeout=60)
            values = [v for _, v in got[0]]
            missing = [v[:8] for v in acked if v not in values]
            assert not missing, "acknowledged records lost: %r" % missing[:5]
            assert "panicked" not in srv.log_text()
            assert "WAL segment damaged" not in srv.log_text()
        finally:
            srv.close()


def test_starts_on_an_almost_full_disk(tmp_path):
    with small_disk(tmp_path / "disk") as disk:
        data = disk / "data"
        cache = data / "cache"
        srv = SidestreamServer(data, tmp_path / "server.log", extra_env={
            "SIDESTREAM_CACHE_DISK_BYTES": str(16 << 20),
            "SIDESTREAM_CACHE_DISK_RESERVE_BYTES": str(8 << 20),
        })
        try:
            # A first run creates the store, the WAL and a 16 MiB disk tier, allocated whole.
            srv.start()
            srv.stop()
            assert allocated(cache) >= 16 << 20
            # The disk fills up to its last 2 MiB: the tier shrinks to what leaves 8 MiB free.
            fill(disk / "ballast", leave=2 << 20)
            srv.start()
            assert "the read cache's disk tier is shrunk" in this_run(srv), this_run(srv)
            assert allocated(cache) <= 12 << 20
            topic = "almost-full"
            create_topic(srv.bootstrap, topic, 1)
            with srv.connect() as c:
                assert produce_one(c, topic, b"fits", acks=1) == 0
                assert produce_one(c, topic, b"fits-too", acks=-1) == 0
            got = read_all(srv.bootstrap, topic, 1, expected_min=2, timeout=30)
            assert [v for _, v in got[0]] == [b"fits", b"fits-too"]
            srv.stop()
            # Full to the last byte, with the tier's files on it (what once kept the agent from
            # starting: SQLite could not open): the tier gives its space back, the agent starts.
            fill(disk / "ballast2")
            srv.start()
            assert "too little free space: the read cache has no disk tier" in this_run(srv), this_run(srv)
            assert allocated(cache) < 1 << 20
            srv.assert_healthy()
            with srv.connect() as c:
                assert produce_one(c, topic, b"after-full", acks=-1) == 0
            srv.stop()
            # Full to the last byte with nothing to give back: a clear refusal.
            fill(disk / "ballast3")
            with pytest.raises(AssertionError):
                srv.start(timeout=20)
            # The figure is read after SQLite's failure, which may have given back its journal's
            # few pages meanwhile (135168 bytes once): nearly nothing, said as such.
            free = re.search(r"is full: (\d+) bytes free", this_run(srv))
            assert free and int(free.group(1)) < 1 << 20, this_run(srv)
            assert "panicked" not in srv.log_text()
        finally:
            srv.close()


def allocated(path):
    return sum(f.stat().st_blocks * 512 for f in Path(path).glob("*") if f.is_file())


def test_a_second_agent_on_the_same_data_dir_exits_at_once(tmp_path):
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log")
    srv.start()
    try:
        topic = "one-agent"
        create_topic(srv.bootstrap, topic, 1)
        with srv.connect() as c:
            assert produce_one(c, topic, b"before", acks=1) == 0
        env = dict(os.environ, SIDESTREAM_AGENT_DATA_DIR=str(srv.data_dir),
                   SIDESTREAM_AGENT_LISTEN="127.0.0.1:%d" % free_port(), SIDESTREAM_METRICS_LISTEN="127.0.0.1:0")
        started = time.monotonic()
        second = subprocess.run([str(binary_path()), "serve"], env=env, capture_output=True, text=True, timeout=30)
        took = time.monotonic() - started
        out = second.stdout + second.stderr
        assert second.returncode != 0, out
        assert "pid %d" % srv.proc.pid in out and str(srv.data_dir) in out, out
        assert "replaying" not in out and "listening" not in out, out
        assert took < 10, "the second agent took %.1fs to give up" % took
        # The first one keeps serving: acks=all needs its commits to go through.
        with srv.connect() as c:
            assert produce_one(c, topic, b"after", acks=-1) == 0
        got = read_all(srv.bootstrap, topic, 1, expected_min=2, timeout=30)
        assert [v for _, v in got[0]] == [b"before", b"after"]
    finally:
        srv.close()


def limited(soft, hard):
    def preexec():
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    return preexec


def test_open_file_limit_is_raised_or_refused_clearly(tmp_path, monkeypatch):
    env = dict(os.environ, SIDESTREAM_AGENT_DATA_DIR=str(tmp_path / "low"),
               SIDESTREAM_AGENT_LISTEN="127.0.0.1:%d" % free_port(), SIDESTREAM_METRICS_LISTEN="127.0.0.1:0")
    # Soft and hard both low: a clear refusal, with the numbers and the fix.
    r = subprocess.run([str(binary_path()), "serve"], env=env, capture_output=True, text=True, timeout=30,
                       preexec_fn=limited(512, 512))
    out = r.stdout + r.stderr
    assert r.returncode != 0, out
    assert "too few open files allowed: the limit is 512" in out and "ulimit -n" in out, out
    assert "object store" not in out and "coding error" not in out, out

    # A low soft limit under a high hard one: raised at start, the agent serves.
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    need = 10_000 + 64 + 256  # default max_connections + disk tier files at most + margin
    if hard != resource.RLIM_INFINITY and hard < need:
        pytest.skip("the hard open-file limit (%d) is below what the default configuration needs" % hard)
    srv = SidestreamServer(tmp_path / "raised", tmp_path / "server.log")
    real_popen = subprocess.Popen

    def popen(*a, **kw):
        kw["preexec_fn"] = limited(512, hard)
        return real_popen(*a, **kw)

    monkeypatch.setattr(subprocess, "Popen", popen)
    srv.start()
    monkeypatch.undo()
    try:
        limits = Path("/proc/%d/limits" % srv.proc.pid).read_text()
        soft_now = re.search(r"Max open files\s+(\S+)\s+(\S+)", limits)
        assert soft_now.group(1) == soft_now.group(2), limits
        srv.assert_healthy()
    finally:
        srv.close()


def test_failed_reads_are_counted_and_logged_once_a_minute(tmp_path):
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log",
                           extra_env={"SIDESTREAM_CACHE_DISK_BYTES": "0"})
    srv.start()
    try:
        topic = "failing-reads"
        create_topic(srv.bootstrap, topic, 1)
        with srv.connect() as c:
            assert produce_one(c, topic, b"stored", acks=-1) == 0
        # Restarted with an empty cache and an object store that fails every request: each
        # fetch of offset 0 needs a GET, and gets KAFKA_STORAGE_ERROR.
        srv.stop()
        srv.extra_env.update({"SIDESTREAM_OBJECT_STORE_FAULT_ERROR_RATE": "1.0",
                              "SIDESTREAM_OBJECT_STORE_FAULT_SEED": "7",
                              "SIDESTREAM_OBJECT_STORE_RETRY_DEADLINE_MS": "100"})
        srv.start()
        fetches = 25
        with srv.connect() as c:
            for _ in range(fetches):
                p = kafka_wire.fetch(c, topic, 0, 0, max_wait_ms=0)
                assert p["error_code"] == KAFKA_STORAGE_ERROR, p
        counted = metrics_now(srv).get('sidestream_request_errors_total{api="Fetch",error="KAFKA_STORAGE_ERROR"}', 0)
        assert counted >= fetches, counted
        lines = [line for line in this_run(srv).splitlines()
                 if "fetch failed" in line and "KAFKA_STORAGE_ERROR" in line]
        assert len(lines) == 1, lines
    finally:
        srv.close()
