"""kcat (Debian's kcat 1.7.1 on librdkafka 2.0.2: an older client generation than the Python wheels)."""

import json
import os
import random
import shutil
import subprocess

import pytest

import kafka_wire as kw
from conftest import poll_until

KCAT = shutil.which("kcat") or shutil.which("kafkacat") or "kcat"  # scripts/test installs it

COMPRESSIONS = ["none", "gzip", "snappy", "lz4", "zstd"]


def kcat(server, *args, input_text=None, timeout=60):
    cmd = [KCAT, "-b", server.bootstrap, *args]
    p = subprocess.run(cmd, input=input_text, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, "%s exited %d\nstderr:\n%s" % (" ".join(cmd), p.returncode, p.stderr[-4000:])
    return p.stdout


def list_metadata(server):
    return json.loads(kcat(server, "-L", "-J"))


def test_list_shows_the_broker_and_topics(server):
    name = "kcat-listed-%d" % os.getpid()
    with server.connect() as c:
        assert kw.create_topics(c, [(name, 3, 1)])[name][0] == kw.NONE

    md = list_metadata(server)
    assert [(b["id"], b["name"]) for b in md["brokers"]] == [(1, server.bootstrap)], md
    topics = {t["topic"]: t for t in md["topics"]}
    assert name in topics, md
    parts = sorted(topics[name]["partitions"], key=lambda p: p["partition"])
    assert [(p["partition"], p["leader"]) for p in parts] == [(0, 1), (1, 1), (2, 1)], parts

    text = kcat(server, "-L")
    assert "broker 1 at %s" % server.bootstrap in text, text
    assert 'topic "%s" with 3 partitions' % name in text, text


@pytest.mark.parametrize("compression", COMPRESSIONS)
def test_produce_and_consume_lines_with_keys(server, compression):
    seed = int(os.environ.get("SIDESTREAM_TEST_SEED", "7"))
    print("seed %d (rerun with SIDESTREAM_TEST_SEED=%d)" % (seed, seed))
    rng = random.Random(seed)
    topic = "kcat-lines-%s-%d" % (compression, os.getpid())
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 :;,.-_=+/éü€"
    lines = []
    for i in range(2000):
        n = rng.choice([0, 1, 10, 100, 1000, rng.randint(0, 8000)])
        value = "".join(rng.choice(alphabet) for _ in range(n))
        lines.append("key-%05d:%s" % (i, value))  # values contain ':' too; kcat splits at the first
    text = "\n".join(lines) + "\n"

    # The producer's Metadata request auto-creates the topic (1 partition).
    kcat(server, "-P", "-t", topic, "-K", ":", "-H", "origin=kcat", "-H", "empty=",
         "-X", "compression.codec=%s" % compression, "-X", "linger.ms=20", input_text=text)

    out = kcat(server, "-C", "-t", topic, "-e", "-o", "beginning", "-K", ":")
    got = out.splitlines()
    assert len(got) == len(lines), "seed %d: %d lines back, %d produced" % (seed, len(got), len(lines))
    for i, (a, b) in enumerate(zip(lines, got)):
        assert a == b, "seed %d: line %d differs:\n produced %r\n consumed %r" % (seed, i, a[:200], b[:200])

    recs = [json.loads(line) for line in
            kcat(server, "-C", "-t", topic, "-e", "-o", "beginning", "-J").splitlines()]
    assert [r["offset"] for r in recs] == list(range(len(lines))), "seed %d: offsets not dense" % seed
    assert {r["partition"] for r in recs} == {0}
    assert all(r["headers"] == ["origin", "kcat", "empty", ""] for r in recs), recs[0]

    md = list_metadata(server)
    assert topic in {t["topic"] for t in md["topics"]}, md


def test_consume_from_offset_and_count(server):
    topic = "kcat-offsets-%d" % os.getpid()
    lines = ["k%d:v%d" % (i, i) for i in range(50)]
    kcat(server, "-P", "-t", topic, "-K", ":", input_text="\n".join(lines) + "\n")
    out = kcat(server, "-C", "-t", topic, "-o", "30", "-c", "5", "-f", "%o %k %s\n")
    assert out.splitlines() == ["%d k%d v%d" % (i, i, i) for i in range(30, 35)]
    out = kcat(server, "-C", "-t", topic, "-o", "-3", "-e", "-f", "%o %s\n")
    assert out.splitlines() == ["%d v%d" % (i, i) for i in range(47, 50)]


def test_a_consumer_past_the_log_end_resets_to_earliest(server):
    """A fetch past the log end gets OFFSET_OUT_OF_RANGE with empty records (as Kafka sends them:
    librdkafka cannot parse a null record set and never sees the error), and the consumer
    resets as auto.offset.reset says: earliest reads the three records."""
    topic = "kcat-past-end-%d" % os.getpid()
    with server.connect() as c:
        assert kw.create_topics(c, [(topic, 1, 1)])[topic][0] == kw.NONE
    kcat(server, "-P", "-t", topic, "-p", "0", input_text="a\nb\nc\n")
    out = kcat(server, "-C", "-t", topic, "-p", "0", "-o", "1000", "-X", "auto.offset.reset=earliest",
               "-c", "3", "-f", "%o:%s\n", timeout=30)
    assert out.splitlines() == ["0:a", "1:b", "2:c"], out

    from confluent_kafka import Consumer, TopicPartition
    consumer = Consumer({"bootstrap.servers": server.bootstrap, "group.id": "past-end", "enable.auto.commit": False,
                         "auto.offset.reset": "earliest"})
    try:
        consumer.assign([TopicPartition(topic, 0, 1000)])
        assert first_records(consumer, 3) == [(0, b"a"), (1, b"b"), (2, b"c")]
    finally:
        consumer.close()


def test_a_group_resumes_from_the_start_of_a_re_created_topic(server):
    """The realistic way past the log end: a group committed offset 50 of a topic that is then
    deleted and created again with 3 records. Its consumer (librdkafka, auto.offset.reset=earliest)
    reads those 3 from offset 0, as on Kafka 4.4 (both forget a deleted topic's committed offsets;
    a broker that kept them would answer OFFSET_OUT_OF_RANGE, the test above)."""
    from confluent_kafka import Consumer, KafkaException, TopicPartition
    topic, group = "kcat-recreated-%d" % os.getpid(), "recreated-%d" % os.getpid()
    with server.connect() as c:
        assert kw.create_topics(c, [(topic, 1, 1)])[topic][0] == kw.NONE
    kcat(server, "-P", "-t", topic, "-p", "0", input_text="".join("old%d\n" % i for i in range(50)))
    conf = {"bootstrap.servers": server.bootstrap, "group.id": group, "enable.auto.commit": False,
            "auto.offset.reset": "earliest"}
    consumer = Consumer(conf)

    def committed():
        try:
            consumer.commit(offsets=[TopicPartition(topic, 0, 50)], asynchronous=False)
            return True
        except KafkaException as e:  # Kafka: NOT_COORDINATOR while its __consumer_offsets is new
            assert e.args[0].retriable(), e
            return False
    try:
        poll_until(committed, 30, what="the commit")
    finally:
        consumer.close()
    with server.connect() as c:
        assert kw.delete_topics(c, [topic])[topic] == kw.NONE
    poll_until(lambda: recreated(server, topic), 30, what="the topic created again")
    kcat(server, "-P", "-t", topic, "-p", "0", input_text="a\nb\nc\n")
    consumer = Consumer(conf)
    try:
        consumer.subscribe([topic])
        assert first_records(consumer, 3) == [(0, b"a"), (1, b"b"), (2, b"c")]
    finally:
        consumer.close()


def first_records(consumer, n):
    """The first n (offset, value) pairs the consumer polls (each poll waits up to 30 s)."""
    got = []
    for m in iter(lambda: consumer.poll(30), None):
        assert m.error() is None, m.error()
        got.append((m.offset(), m.value()))
        if len(got) == n:
            break
    return got


def recreated(server, topic):
    """Creates `topic` again once its deletion is done (Kafka deletes in the background)."""
    with server.connect() as c:
        return kw.create_topics(c, [(topic, 1, 1)])[topic][0] == kw.NONE
