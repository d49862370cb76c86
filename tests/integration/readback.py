"""Shared helpers for tests that create a topic and read a whole topic back with confluent-kafka
(manual assignment, no group), stopping at end-of-partition once enough records were seen."""

import time

from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

PARTITION_EOF = -191


def create_topic(bootstrap, name, partitions):
    admin = AdminClient({"bootstrap.servers": bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(30)


def read_all(bootstrap, topic, partitions, expected_min, timeout=90.0, isolation="read_uncommitted"):
    """{partition: [(offset, value), ...]} for every record, in partition order (read_committed:
    up to the last stable offset)."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "readback", "enable.auto.commit": False,
                  "auto.offset.reset": "earliest", "enable.partition.eof": True, "isolation.level": isolation})
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got = {p: [] for p in range(partitions)}
    eof = set()
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == PARTITION_EOF:
                    eof.add(m.partition())
                    if len(eof) == partitions and sum(len(v) for v in got.values()) >= expected_min:
                        break
                    continue
                raise AssertionError("consumer error: %s" % m.error())
            eof.discard(m.partition())
            got[m.partition()].append((m.offset(), m.value()))
    finally:
        c.close()
    return got
