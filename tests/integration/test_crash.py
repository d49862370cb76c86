"""Crash safety of the acks contract, with the real binary and a real client.

- SIGKILL at random moments while confluent-kafka produces continuously (acks=1 and acks=all):
  after restarts, every record whose delivery was acknowledged is present exactly once.
  The producer runs with retries disabled, so any duplicate is the server's doing.
- A torn or corrupt WAL tail (truncated or flipped at random byte positions after a SIGKILL):
  the server starts, keeps every complete entry before the damage, says what it dropped.

Environment: SIDESTREAM_TEST_SEED (default: fixed per test; printed on failure);
SIDESTREAM_CRASH_KILLS (SIGKILL cycles per test, default 3: the soak runs hundreds, see README).
"""

import os
import random
import struct
import time
from pathlib import Path

import pytest
from confluent_kafka import Producer

from conftest import SidestreamServer
from readback import create_topic, read_all

SEED = int(os.environ.get("SIDESTREAM_TEST_SEED", "20261125"))
PARTITIONS = 3
KILLS = int(os.environ.get("SIDESTREAM_CRASH_KILLS", "3"))


def consume_all(bootstrap, topic, partitions, expected_min, timeout=60.0):
    """Every record of the topic: {value: count} and the per-partition offsets seen."""
    got = read_all(bootstrap, topic, partitions, expected_min, timeout)
    counts = {}
    for records in got.values():
        for _, value in records:
            counts[value] = counts.get(value, 0) + 1
    return counts, {p: [o for o, _ in records] for p, records in got.items()}


@pytest.mark.parametrize("acks", ["1", "all"])
def test_sigkill_loses_no_acknowledged_record(tmp_path, acks):
    seed = SEED + (1 if acks == "1" else 2)
    rng = random.Random(seed)
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log")
    srv.start()
    topic = "crash-acks-%s" % acks
    acked, failed = [], []
    try:
        create_topic(srv.bootstrap, topic, PARTITIONS)
        p = Producer({"bootstrap.servers": srv.bootstrap, "acks": acks, "linger.ms": 2,
                      "retries": 0, "enable.idempotence": False, "message.timeout.ms": 60000,
                      "socket.timeout.ms": 10000, "reconnect.backoff.ms": 20,
                      "reconnect.backoff.max.ms": 200})

        def report(err, msg):
            (failed if err else acked).append(msg.value())

        seq = 0
        for k in range(KILLS):
            run_for = rng.uniform(0.3, 1.2)
            end = time.monotonic() + run_for
            while time.monotonic() < end:
                try:
                    p.produce(topic, value=b"r%08d" % seq, key=b"k%d" % (seq % 7), on_delivery=report)
                except BufferError:  # the client's queue is full (long soaks): let it drain
                    p.poll(0.05)
                    continue
                seq += 1
                p.poll(0)
                if seq % 50 == 0:
                    time.sleep(0.001)
            srv.kill()  # SIGKILL, mid-stream
            p.poll(0.05)
            srv.start()
        # A last stretch after the final restart, then wait for every delivery report.
        last = seq + 500
        while seq < last:
            try:
                p.produce(topic, value=b"r%08d" % seq, key=b"k%d" % (seq % 7), on_delivery=report)
            except BufferError:
                p.poll(0.05)
                continue
            seq += 1
            p.poll(0)
        remaining = p.flush(120)
        assert remaining == 0, "%d deliveries never reported" % remaining
        assert len(acked) > 500, "too few acknowledged records (%d) for a meaningful test" % len(acked)

        counts, offsets = consume_all(srv.bootstrap, topic, PARTITIONS, expected_min=len(acked))
        missing = [v for v in acked if counts.get(v, 0) == 0]
        duplicated = [v for v, n in counts.items() if n > 1]
        assert not missing, "seed %d: %d acknowledged records lost, e.g. %r" % (seed, len(missing), missing[:5])
        assert not duplicated, "seed %d: records stored twice: %r" % (seed, duplicated[:5])
        for part, offs in offsets.items():
            assert offs == list(range(len(offs))), "seed %d: partition %d offsets not dense" % (seed, part)
        # Unacknowledged records may be absent, but nothing appears that was never produced.
        produced = {b"r%08d" % i for i in range(seq)}
        assert set(counts) <= produced
        print("crash soak (acks=%s, seed %d): %d kill -9 cycles, %d records acknowledged, %d stored, lost 0"
              % (acks, seed, KILLS, len(acked), sum(counts.values())))
    except AssertionError as e:
        raise AssertionError("%s (seed %d, acked %d, failed %d)" % (e, seed, len(acked), len(failed))) from e
    finally:
        srv.close()


def wal_entry_ends(data):
    """Byte offsets where each complete WAL entry ends (len u32 | crc u32 | id u64 | payload)."""
    ends, pos = [], 0
    while pos + 16 <= len(data):
        (n,) = struct.unpack(">I", data[pos:pos + 4])
        if pos + 16 + n > len(data):
            break
        pos += 16 + n
        ends.append(pos)
    return ends


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_torn_wal_tail_keeps_complete_entries(tmp_path, damage):
    seed = SEED + (10 if damage == "truncate" else 11)
    rng = random.Random(seed)
    # Nothing is flushed by time: everything acknowledged lives only in the WAL when we kill.
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log",
                           extra_env={"SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS": "60000"})
    srv.start()
    topic = "torn-%s" % damage
    try:
        create_topic(srv.bootstrap, topic, 1)
        p = Producer({"bootstrap.servers": srv.bootstrap, "acks": "1", "linger.ms": 0, "retries": 0})
        n = 100
        for i in range(n):
            p.produce(topic, value=b"t%05d" % i, partition=0)
            assert p.flush(10) == 0  # one record per request: one WAL entry each
        srv.kill()

        segments = sorted((tmp_path / "data" / "wal").glob("*.wal"))
        assert segments, "no WAL segment written"
        seg = segments[-1]
        data = seg.read_bytes()
        ends = wal_entry_ends(data)
        assert len(ends) == n, "expected %d entries in %s, found %d" % (n, seg, len(ends))
        pos = rng.randrange(ends[0], len(data))  # damage somewhere after the first entry
        if damage == "truncate":
            seg.write_bytes(data[:pos])
        else:
            bad = bytearray(data)
            bad[pos] ^= 0xFF
            seg.write_bytes(bytes(bad))
        # Entries wholly before the damaged byte survive; the one holding it and later ones go.
        survivors = sum(1 for e in ends if e <= pos)

        srv.start()
        log = srv.log_text()
        assert "WAL segment damaged" in log, "the server did not report the damage"
        counts, offsets = consume_all(srv.bootstrap, topic, 1, expected_min=survivors, timeout=30)
        got = sorted(counts)
        assert got == [b"t%05d" % i for i in range(survivors)], \
            "seed %d: damage at byte %d of %d: expected the first %d records, got %d" % (
                seed, pos, len(data), survivors, len(got))
        assert offsets[0] == list(range(survivors))
    finally:
        srv.close()
