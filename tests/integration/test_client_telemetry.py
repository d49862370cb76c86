"""Client telemetry (KIP-714): real clients push their metrics to the agent, which shows them on
/metrics as `kafka_client_*` series labelled with the client id; hostile pushes get Kafka's
error codes, never a crash.

The agent runs with `[client_telemetry] enabled = true` and a 1 s push interval (through
SIDESTREAM_CLIENT_TELEMETRY_* variables). Clients: Apache Kafka 4.4.0's Java producer (its
ProducerPerformance tool, `enable.metrics.push` on by default) and confluent-kafka
(librdkafka, which pushes from 2.5 on).
"""

import gzip
import re
import subprocess
import uuid

import pytest

import kafka_wire as kw
from compat import java_cmd
from conftest import SidestreamServer, poll_until

GET_TELEMETRY_SUBSCRIPTIONS = 71
PUSH_TELEMETRY = 72
PUSH_INTERVAL_MS = 1000
MAX_BYTES = 64 * 1024
MAX_DECOMPRESSED_BYTES = 256 * 1024
NONE, INVALID_REQUEST, UNSUPPORTED_COMPRESSION_TYPE, INVALID_RECORD = 0, 42, 76, 87
THROTTLING_QUOTA_EXCEEDED, UNKNOWN_SUBSCRIPTION_ID, TELEMETRY_TOO_LARGE = 89, 117, 118


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("client_telemetry")
    env = {
        "SIDESTREAM_CLIENT_TELEMETRY_ENABLED": "true",
        "SIDESTREAM_CLIENT_TELEMETRY_PUSH_INTERVAL_MS": str(PUSH_INTERVAL_MS),
        "SIDESTREAM_CLIENT_TELEMETRY_MAX_BYTES": str(MAX_BYTES),
        "SIDESTREAM_CLIENT_TELEMETRY_MAX_DECOMPRESSED_BYTES": str(MAX_DECOMPRESSED_BYTES),
    }
    srv = SidestreamServer(base / "data", base / "server.log", extra_env=env)
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


def client_series(server, client_id):
    """{metric name: [series]} of the kafka_client_* series labelled client_id=<client_id>."""
    out = {}
    for series in server.metrics():
        m = re.match(r'(kafka_client_\w+)\{client_id="%s",client_instance_id="[0-9a-f-]{36}"' % re.escape(client_id), series)
        if m:
            out.setdefault(m.group(1), []).append(series)
    return out


def create_topic(server, topic):
    with server.connect() as c:
        assert kw.create_topics(c, [(topic, 1, 1)])[topic][0] == 0


def test_java_producer_pushes_its_metrics(server, request):
    topic = "telemetry-java-%s" % uuid.uuid4().hex[:8]
    create_topic(server, topic)
    client_id = "telemetry-java"
    # About 20 s of producing at 100 records/s: long enough for several pushes.
    cmd = java_cmd("org.apache.kafka.tools.ProducerPerformance", "--topic", topic, "--num-records", "2000",
                   "--record-size", "100", "--throughput", "100", "--producer-props",
                   "bootstrap.servers=%s" % server.bootstrap, "client.id=%s" % client_id)
    outcomes = lambda: {o: server.metrics().get('sidestream_client_telemetry_requests_total{outcome="%s"}' % o, 0)
                        for o in ("pushed", "throttled")}
    before = outcomes()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        series = poll_until(lambda: {k: v for k, v in client_series(server, client_id).items()
                                     if k.startswith("kafka_client_org_apache_kafka_producer_")},
                            60, interval=0.5, what="the Java producer's pushed metrics on /metrics")
        # It keeps pushing at the interval, and is never throttled for pushing too early.
        poll_until(lambda: outcomes()["pushed"] >= before["pushed"] + 3, 30, interval=0.5, what="3 pushes")
        assert outcomes()["throttled"] == before["throttled"]
    finally:
        proc.kill()
        out, _ = proc.communicate(timeout=30)
    print("Java producer pushed %d metric names, e.g. %s" % (len(series), sorted(series)[:20]))
    assert "kafka_client_org_apache_kafka_producer_record_send_total" in series or \
        "kafka_client_org_apache_kafka_producer_record_queue_time_avg" in series, (sorted(series), out[-2000:])


def test_librdkafka_producer_and_consumer_push_their_metrics(server):
    confluent_kafka = pytest.importorskip("confluent_kafka")
    topic = "telemetry-rd-%s" % uuid.uuid4().hex[:8]
    create_topic(server, topic)
    producer_id, consumer_id = "telemetry-rd-producer", "telemetry-rd-consumer"
    p = confluent_kafka.Producer({"bootstrap.servers": server.bootstrap, "client.id": producer_id})
    c = confluent_kafka.Consumer({"bootstrap.servers": server.bootstrap, "client.id": consumer_id,
                                  "group.id": "g-" + topic, "auto.offset.reset": "earliest"})
    c.subscribe([topic])

    def pushed():
        p.produce(topic, b"v")
        p.poll(0)
        c.poll(0.1)
        produced, consumed = client_series(server, producer_id), client_series(server, consumer_id)
        return (produced, consumed) if produced and consumed else None

    try:
        produced, consumed = poll_until(pushed, 60, interval=0.2, what="librdkafka's pushed metrics on /metrics")
    finally:
        p.flush(10)
        c.close()
    print("librdkafka %s pushed %s and %s" % (confluent_kafka.libversion()[0], sorted(produced), sorted(consumed)))
    assert "kafka_client_org_apache_kafka_producer_record_queue_time_avg" in produced, sorted(produced)
    assert any(k.startswith("kafka_client_org_apache_kafka_consumer_") for k in consumed), sorted(consumed)


def test_the_scrape_passes_promtool(server):
    """With the clients' series in it, /metrics is still valid exposition text. promtool's lint
    may only object to the clients' own metric names (the Java client's `start.time.ms`, `_ns`
    units), which are kept as the clients name them."""
    import shutil
    import urllib.request
    promtool = shutil.which("promtool")
    if not promtool:
        pytest.skip("promtool not installed (apt-get install prometheus)")
    text = urllib.request.urlopen("http://%s/metrics" % server.metrics_addr(), timeout=10).read()
    assert b"kafka_client_" in text
    p = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, timeout=60)
    problems = [line for line in (p.stdout + p.stderr).decode().splitlines() if line.strip()]
    assert all(line.startswith("kafka_client_") and " should " in line for line in problems), problems
    assert p.returncode in (0, 3), (p.returncode, problems)  # 3: lint problems only


# ------------------------------------------------------------------------- raw wire

def get_subscriptions(conn, instance_id=b"\0" * 16):
    r = conn.request(GET_TELEMETRY_SUBSCRIPTIONS, 0, instance_id + kw.NO_TAGS, flexible_header=True)
    throttle, err, iid, sub = r.i32(), r.i16(), r._take(16), r.i32()
    codecs = r.compact_array(lambda r: r.i8())
    interval, max_bytes, delta = r.i32(), r.i32(), r.boolean()
    metrics = r.compact_array(lambda r: r.compact_string())
    return {"error": err, "id": iid, "sub": sub, "codecs": codecs, "interval": interval,
            "max_bytes": max_bytes, "delta": delta, "metrics": metrics}


def push(conn, iid, sub, payload, compression=0, terminating=False):
    body = iid + kw.i32(sub) + kw.i8(1 if terminating else 0) + kw.i8(compression) + kw.compact_bytes(payload) + kw.NO_TAGS
    r = conn.request(PUSH_TELEMETRY, 0, body, flexible_header=True)
    r.i32()
    return r.i16()


def pb_bytes(field, b):
    return kw.uvarint(field << 3 | 2) + kw.uvarint(len(b)) + b


def otlp_gauge(name, value):
    """MetricsData { resource_metrics { scope_metrics { metrics { name, gauge { point } } } } }."""
    import struct
    point = kw.uvarint(4 << 3 | 1) + struct.pack("<d", value)
    metric = pb_bytes(1, name.encode()) + pb_bytes(5, pb_bytes(1, point))
    return pb_bytes(1, pb_bytes(2, pb_bytes(2, metric)))


def fresh(conn):
    """A new client instance (a subscription, so that its first push is taken)."""
    s = get_subscriptions(conn)
    assert s["error"] == NONE
    return s["id"], s["sub"]


def test_hostile_pushes_get_kafkas_error_codes(server):
    zstd = pytest.importorskip("zstandard")
    with server.connect() as c:
        c.client_id = "telemetry-raw"
        s = get_subscriptions(c)
        assert s["error"] == NONE and s["id"] != b"\0" * 16
        assert (s["interval"], s["max_bytes"], s["delta"], s["metrics"]) == (PUSH_INTERVAL_MS, MAX_BYTES, False, ["*"])
        assert s["codecs"] == [4, 3, 1, 2]
        # A well-formed push is taken and shows up; a second one at once is throttled.
        assert push(c, s["id"], s["sub"], gzip.compress(otlp_gauge("raw.test.gauge", 2.5)), compression=1) == NONE
        assert push(c, s["id"], s["sub"], otlp_gauge("raw.test.gauge", 3.0)) == THROTTLING_QUOTA_EXCEEDED
        assert get_subscriptions(c, s["id"])["error"] == THROTTLING_QUOTA_EXCEEDED
        series = client_series(server, "telemetry-raw")
        assert list(series) == ["kafka_client_raw_test_gauge"], series
        assert server.metrics()[series["kafka_client_raw_test_gauge"][0]] == 2.5

        garbage = bytes([0x0b]) + b"\xff" * 100
        iid, sub = fresh(c)
        assert push(c, iid, sub, garbage) == INVALID_RECORD
        iid, sub = fresh(c)
        assert push(c, iid, sub, b"\x28\xb5\x2f\xfd garbage zstd", compression=4) == INVALID_RECORD
        iid, sub = fresh(c)
        assert push(c, iid, sub, b"x" * (MAX_BYTES + 1)) == TELEMETRY_TOO_LARGE
        # A zip bomb: small compressed, over the decompressed bound.
        bomb = zstd.ZstdCompressor().compress(b"\0" * (4 * MAX_DECOMPRESSED_BYTES))
        assert len(bomb) < MAX_BYTES
        iid, sub = fresh(c)
        assert push(c, iid, sub, bomb, compression=4) == TELEMETRY_TOO_LARGE
        iid, sub = fresh(c)
        assert push(c, iid, sub, otlp_gauge("x", 1.0), compression=9) == UNSUPPORTED_COMPRESSION_TYPE
        iid, sub = fresh(c)
        assert push(c, iid, sub ^ 1, otlp_gauge("x", 1.0)) == UNKNOWN_SUBSCRIPTION_ID
        assert push(c, b"\0" * 16, 0, otlp_gauge("x", 1.0)) == INVALID_REQUEST
        # Terminating: taken at any time; nothing after it.
        iid, sub = fresh(c)
        assert push(c, iid, sub, b"", terminating=True) == NONE
        assert push(c, iid, sub, b"", terminating=True) == INVALID_REQUEST
        # The connection and the agent are fine.
        _, apis = kw.api_versions(c, 0)
        assert GET_TELEMETRY_SUBSCRIPTIONS in apis and PUSH_TELEMETRY in apis
    m = server.metrics()
    for outcome in ("invalid_record", "too_large", "unsupported_compression", "unknown_subscription", "throttled"):
        assert m.get('sidestream_client_telemetry_requests_total{outcome="%s"}' % outcome, 0) >= 1, outcome
    server.assert_healthy()
