"""Nothing acknowledged is lost through outages of the controller and of the object store.

Real processes on loopback: a `sidestream controller` (SQLite), one agent in remote mode on a
real S3 server (s3s-fs) with a one-second orphan grace and a collector scanning every 100 ms,
the harshest setting. Two confluent-kafka producers write unique, numbered records the whole
time, one with acks=1 (answered from the WAL) and one with acks=all (answered after commit), at
about 1,500 records/s together. Then one of these outages, longer than the grace:

- the controller paused (SIGSTOP) for 4 s, then resumed;
- the object store gone (SIGKILL of s3s-fs) for 4 s, then back on the same port and data;
- the controller killed (SIGKILL) and restarted on its store.

Afterwards a fresh consumer must read every acknowledged record, each once, and each partition
in the order its producer acknowledged them; the agent must report no loss (/metrics, /readyz)
and exit 0 on SIGTERM. Before the fix (agent/orphans.rs, agent/upload.rs) the collector claimed
objects whose commit was still being retried and their acks=1 records vanished: 11 of 21 such
trials lost records.
"""

import os
import signal
import threading
import time

import pytest
from confluent_kafka import Producer

from conftest import poll_until
from readback import create_topic, read_all
from test_cluster import remote_agent_on_s3

PARTITIONS = 3
RATE_PER_PRODUCER = 750  # records/s
OUTAGE_S = 4.0


class PacedProducer:
    """Produces `prefix-<n>` records at a steady rate on a thread until stopped; remembers
    which were acknowledged, in acknowledgement order per partition."""

    def __init__(self, bootstrap, topic, acks, prefix):
        self.topic, self.prefix = topic, prefix
        self.p = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 5,
                           "enable.idempotence": False, "retries": 0, "max.in.flight": 1,
                           "message.timeout.ms": 120000, "request.timeout.ms": 60000})
        self.acked = {p: [] for p in range(PARTITIONS)}
        self.errors = []
        self.sent = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _delivered(self, err, msg):
        if err is not None:
            self.errors.append(err)
        else:
            self.acked[msg.partition()].append(msg.value())

    def _run(self):
        started = time.monotonic()
        while not self._stop.is_set():
            due = int((time.monotonic() - started) * RATE_PER_PRODUCER)
            while self.sent < due:
                value = ("%s-%07d" % (self.prefix, self.sent)).encode()
                try:
                    self.p.produce(self.topic, value=value, partition=self.sent % PARTITIONS,
                                   on_delivery=self._delivered)
                except BufferError:
                    break
                self.sent += 1
            self.p.poll(0.005)

    def start(self):
        self._thread.start()
        return self

    def stop(self, timeout=180):
        self._stop.set()
        self._thread.join()
        left = self.p.flush(timeout)
        assert left == 0, "%s: %d records still unanswered after %ds" % (self.prefix, left, timeout)

    def acked_count(self):
        return sum(len(v) for v in self.acked.values())


def check_everything_acknowledged_is_there(bootstrap, topic, producers):
    expected = sum(p.acked_count() for p in producers)
    got = read_all(bootstrap, topic, PARTITIONS, expected_min=expected, timeout=120)
    for part, records in got.items():
        offsets = [o for o, _ in records]
        assert offsets == list(range(len(offsets))), "partition %d: offsets not dense from 0" % part
        values = [v for _, v in records]
        assert len(set(values)) == len(values), "partition %d: a record was stored twice" % part
        for prod in producers:
            mine = [v for v in values if v.startswith(prod.prefix.encode() + b"-")]
            acked = prod.acked[part]
            missing = set(acked) - set(mine)
            assert not missing, "%s partition %d: %d of %d acknowledged records lost, e.g. %r" % (
                prod.prefix, part, len(missing), len(acked), sorted(missing)[:5])
            # Acknowledged records keep the order in which they were acknowledged.
            position = {v: i for i, v in enumerate(mine)}
            order = [position[v] for v in acked]
            assert order == sorted(order), "%s partition %d: acknowledged records out of order" % (
                prod.prefix, part)
    return sum(len(r) for r in got.values())


def lost_batches(agent):
    return sum(v for k, v in agent.metrics().items() if k.startswith("sidestream_acknowledged_batches_lost_total"))


@pytest.mark.parametrize("outage", ["controller-paused", "object-store-down", "controller-killed"])
def test_no_acknowledged_record_is_lost_through_an_outage_longer_than_the_orphan_grace(tmp_path, outage):
    s3, controller, agent = remote_agent_on_s3(tmp_path, "outage", {
        "SIDESTREAM_OBJECT_STORE_REQUEST_TIMEOUT_MS": "1000",
        "SIDESTREAM_OBJECT_STORE_ORPHAN_GRACE_MS": "1000",
        "SIDESTREAM_OBJECT_STORE_ORPHAN_SCAN_INTERVAL_MS": "100",
        "SIDESTREAM_CONTROLLER_CALL_TIMEOUT_MS": "1000",
        "SIDESTREAM_UPLOAD_FLUSH_INTERVAL_MS": "100",
    })
    producers = []
    try:
        agent.start()
        topic = "outage-" + outage
        create_topic(agent.bootstrap, topic, PARTITIONS)
        producers = [PacedProducer(agent.bootstrap, topic, "1", "acks1").start(),
                     PacedProducer(agent.bootstrap, topic, "all", "acksall").start()]
        poll_until(lambda: all(p.acked_count() > 500 for p in producers), 30, what="records acknowledged before the outage")

        if outage == "controller-paused":
            os.kill(controller.proc.pid, signal.SIGSTOP)
            time.sleep(OUTAGE_S)  # the outage itself: its length is the scenario, not a wait for a condition
            os.kill(controller.proc.pid, signal.SIGCONT)
        elif outage == "object-store-down":
            s3.stop()
            poll_until(lambda: agent.readyz()[0] == 503, 30, what="/readyz to say the object store is down")
            time.sleep(OUTAGE_S)
            s3.start()
        else:
            controller.proc.kill()
            controller.proc.wait(10)
            time.sleep(OUTAGE_S)
            controller.start().wait_listening()

        # Records keep being acknowledged after the outage, then everything is answered.
        marks = [p.acked_count() for p in producers]
        poll_until(lambda: all(p.acked_count() > m + 500 for p, m in zip(producers, marks)), 120,
                   what="records acknowledged after the outage")
        for p in producers:
            p.stop()
        print("%s: acknowledged %s records, errors %s" % (
            outage, [p.acked_count() for p in producers], [len(p.errors) for p in producers]))

        # Past the grace, with the collector scanning: everything acknowledged is there...
        stored = check_everything_acknowledged_is_there(agent.bootstrap, topic, producers)
        # ...and the agent says it kept every promise.
        assert lost_batches(agent) == 0
        assert "ACKNOWLEDGED DATA LOST" not in agent.log_text()
        poll_until(lambda: agent.readyz()[0] == 200, 60, what="/readyz to recover")
        print("%s: %d records read back" % (outage, stored))
        agent.stop()
        assert "every accepted batch is committed" in agent.log_text()
        # And after a restart (WAL replay above the contiguous mark): the same, nothing twice.
        agent.start()
        check_everything_acknowledged_is_there(agent.bootstrap, topic, producers)
    finally:
        for p in producers:
            p._stop.set()
        agent.close()
        controller.close()
        s3.kill()
