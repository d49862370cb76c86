"""Client telemetry (KIP-714): real clients push their metrics to the agent, which shows them on
/metrics as `kafka_client_*` series labelled with the client id; hostile pushes get Kafka's
error codes, never a crash.

The agent runs with `[client_telemetry] enabled = true` and a 1 s push interval (through
SIDESTREAM_CLIENT_TELEMETRY_* variables). Clients: Apache Kafka 4.4.0's Java producer (its
ProducerPerformance tool, `enable.metrics.push` on by default) and confluent-kafka
(librdkafka, which pushes from 2.5 on).
"""

import contextlib
import gzip
import re
import subprocess
import uuid

import pytest

import kafka_wire as kw
from compat import java_cmd
from conftest import STORE_KINDS, SidestreamServer, controller_store_env, poll_until

GET_TELEMETRY_SUBSCRIPTIONS = 71
PUSH_TELEMETRY = 72
PUSH_INTERVAL_MS = 1000
MAX_BYTES = 64 * 1024
MAX_DECOMPRESSED_BYTES = 256 * 1024
NONE, INVALID_REQUEST, UNSUPPORTED_COMPRESSION_TYPE, INVALID_RECORD = 0, 42, 76, 87
THROTTLING_QUOTA_EXCEEDED, UNKNOWN_SUBSCRIPTION_ID, TELEMETRY_TOO_LARGE = 89, 117, 118


def running_server(base, env):
    """An agent with telemetry on and `env`, closed when the fixture ends."""
    srv = SidestreamServer(base / "data", base / "server.log", extra_env={"SIDESTREAM_CLIENT_TELEMETRY_ENABLED": "true", **env})
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    yield from running_server(tmp_path_factory.mktemp("client_telemetry"), {
        "SIDESTREAM_CLIENT_TELEMETRY_PUSH_INTERVAL_MS": str(PUSH_INTERVAL_MS),
        "SIDESTREAM_CLIENT_TELEMETRY_MAX_BYTES": str(MAX_BYTES),
        "SIDESTREAM_CLIENT_TELEMETRY_MAX_DECOMPRESSED_BYTES": str(MAX_DECOMPRESSED_BYTES),
    })


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


# ------------------------------------------------ CLIENT_METRICS subscriptions (kafka-client-metrics.sh)

NO_FILE_SUBSCRIPTION = {"SIDESTREAM_CLIENT_TELEMETRY_METRICS": ""}

@pytest.fixture(scope="module")
def subs_server(tmp_path_factory):
    """An agent with telemetry on and no subscription in its config file: clients get only what
    CLIENT_METRICS resources give them."""
    yield from running_server(tmp_path_factory.mktemp("client_metrics_subscriptions"), NO_FILE_SUBSCRIPTION)


def client_metrics_tool(server, *args, check=True):
    """Kafka 4.4's kafka-client-metrics.sh; (exit code, stdout)."""
    cmd = java_cmd("org.apache.kafka.tools.ClientMetricsCommand", "--bootstrap-server", server.bootstrap, *args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    if check:
        assert p.returncode == 0, (p.returncode, p.stdout[-3000:], p.stderr[-3000:])
    return p.returncode, p.stdout


def described(out):
    """{name: {key: value}} from `--describe` output."""
    subs, current = {}, None
    for line in out.splitlines():
        m = re.match(r"Client metrics configs for (\S+) are:$", line)
        if m:
            current = subs.setdefault(m.group(1), {})
        elif line.startswith("  ") and current is not None:
            k, v = line.strip().split("=", 1)
            current[k] = v
    return subs


def listed(server):
    return set(client_metrics_tool(server, "--list")[1].split())


def test_kafka_client_metrics_tool_alters_describes_lists_and_deletes(subs_server):
    """Runs against Kafka 4.4 too (SIDESTREAM_BIN=scripts/kafka-reference-broker)."""
    s = subs_server
    try:
        tool_round_trip(s)
    finally:  # the other tests see only their own subscriptions
        for name in listed(s):
            client_metrics_tool(s, "--delete", "--name", name)
    assert listed(s) == set()


def tool_round_trip(s):
    _, out = client_metrics_tool(s, "--alter", "--name", "tool-sub", "--metrics", "org.apache.kafka.producer.,org.apache.kafka.consumer.",
                                 "--interval", "10000", "--match", "client_id=foo.*,client_software_name=apache-kafka-java")
    assert out.strip() == "Altered client metrics config for tool-sub."
    _, out = client_metrics_tool(s, "--describe", "--name", "tool-sub")
    assert described(out) == {"tool-sub": {"metrics": "org.apache.kafka.producer.,org.apache.kafka.consumer.", "interval.ms": "10000",
                                           "match": "client_id=foo.*,client_software_name=apache-kafka-java"}}, out
    # An edit keeps the other keys.
    client_metrics_tool(s, "--alter", "--name", "tool-sub", "--interval", "20000")
    assert described(client_metrics_tool(s, "--describe", "--name", "tool-sub")[1])["tool-sub"]["interval.ms"] == "20000"
    _, out = client_metrics_tool(s, "--alter", "--generate-name", "--metrics", "org.apache.kafka.consumer.")
    generated = re.match(r"Altered client metrics config for (\S+)\.$", out.strip()).group(1)
    uuid_chars = re.compile(r"^[A-Za-z0-9_-]{22}$")
    assert uuid_chars.match(generated), generated
    assert {"tool-sub", generated} <= listed(s)
    everything = described(client_metrics_tool(s, "--describe")[1])
    # Keys not set are shown at their defaults.
    assert everything["tool-sub"]["interval.ms"] == "20000"
    assert everything[generated] == {"metrics": "org.apache.kafka.consumer.", "interval.ms": "300000", "match": ""}, everything
    # A name never set has no config.
    _, out = client_metrics_tool(s, "--describe", "--name", "never-set")
    assert out.strip() == "The client metric resource never-set doesn't exist and doesn't have dynamic config.", out
    # Bad input: Kafka's refusals, nothing stored.
    for args, message in [(("--interval", "50"), "interval must be between 100 and 3600000"),
                          (("--match", "nope=x"), "Illegal client matching pattern: nope=x"),
                          (("--match", "client_id=("), "Illegal client matching pattern")]:
        code, out = client_metrics_tool(s, "--alter", "--name", "bad-sub", *args, check=False)
        assert code == 1 and "Error while executing client metrics command" in out and message in out, (args, out)
    assert "bad-sub" not in listed(s)
    _, out = client_metrics_tool(s, "--delete", "--name", generated)
    assert out.strip() == "Deleted client metrics config for %s." % generated
    names = listed(s)
    assert generated not in names and "tool-sub" in names
    client_metrics_tool(s, "--delete", "--name", "tool-sub")
    assert "tool-sub" not in listed(s)


def test_a_client_gets_the_union_of_the_subscriptions_it_matches(subs_server):
    s = subs_server
    client_metrics_tool(s, "--alter", "--name", "union-a", "--metrics", "a.one.,a.two.", "--interval", "5000",
                        "--match", "client_id=union-.*")
    client_metrics_tool(s, "--alter", "--name", "union-b", "--metrics", "b.one.", "--interval", "2000",
                        "--match", "client_id=union-both")
    try:
        with s.connect() as c:
            c.client_id = "union-both"
            got = get_subscriptions(c)
            assert (got["error"], sorted(got["metrics"]), got["interval"]) == (NONE, ["a.one.", "a.two.", "b.one."], 2000)
            c.client_id = "union-one"
            got = get_subscriptions(c)
            assert (sorted(got["metrics"]), got["interval"]) == (["a.one.", "a.two."], 5000)
            c.client_id = "nobody"
            got = get_subscriptions(c)
            assert (got["metrics"], got["interval"]) == ([], 300000), "no match: Kafka's empty subscription"
            # A change gives a matched instance a new subscription id: its push with the old one
            # is refused, and it fetches the new one at once.
            c.client_id = "union-both"
            got = get_subscriptions(c)
            client_metrics_tool(s, "--alter", "--name", "union-b", "--metrics", "*")
            assert push(c, got["id"], got["sub"], b"") == UNKNOWN_SUBSCRIPTION_ID
            again = get_subscriptions(c, got["id"])
            assert (again["error"], again["metrics"], again["interval"]) == (NONE, ["*"], 2000)
            assert again["sub"] != got["sub"]
    finally:
        client_metrics_tool(s, "--delete", "--name", "union-a")
        client_metrics_tool(s, "--delete", "--name", "union-b")


def producer_perf(server, topic, client_id, seconds=25):
    return subprocess.Popen(java_cmd("org.apache.kafka.tools.ProducerPerformance", "--topic", topic, "--num-records",
                                     str(seconds * 50), "--record-size", "100", "--throughput", "50", "--producer-props",
                                     "bootstrap.servers=%s" % server.bootstrap, "client.id=%s" % client_id),
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def test_a_java_producer_matched_by_client_id_pushes_exactly_its_subscription(subs_server):
    s = subs_server
    topic = "cm-java-%s" % uuid.uuid4().hex[:8]
    create_topic(s, topic)
    prefix = "org.apache.kafka.producer.record."
    client_metrics_tool(s, "--alter", "--name", "cm-java", "--metrics", prefix, "--interval", "1000",
                        "--match", "client_id=cm-matched,client_software_name=apache-kafka-java")
    pushed = lambda: s.metrics().get('sidestream_client_telemetry_requests_total{outcome="pushed"}', 0)
    matched, other = producer_perf(s, topic, "cm-matched"), producer_perf(s, topic, "cm-other")
    try:
        series = poll_until(lambda: client_series(s, "cm-matched"), 60, interval=0.5, what="the matched producer's metrics")
        before = pushed()
        poll_until(lambda: pushed() >= before + 3, 30, interval=0.5, what="3 more pushes")
        series = client_series(s, "cm-matched")
        assert series and all(k.startswith("kafka_client_org_apache_kafka_producer_record_") for k in series), sorted(series)
        assert client_series(s, "cm-other") == {}, "an unmatched producer pushes nothing"
    finally:
        for p in (matched, other):
            p.kill()
            p.communicate(timeout=30)
        client_metrics_tool(s, "--delete", "--name", "cm-java")
    print("the matched Java producer pushed %s" % sorted(series))


@pytest.mark.parametrize("store", STORE_KINDS)
def test_subscriptions_survive_an_agent_restart(tmp_path, store):
    with controller_store_env(store) as env, contextlib.contextmanager(running_server)(tmp_path, {**NO_FILE_SUBSCRIPTION, **env}) as srv:
        client_metrics_tool(srv, "--alter", "--name", "durable", "--metrics", "org.apache.kafka.producer.", "--interval", "3000",
                            "--match", "client_id=durable-client")
        srv.restart()
        assert described(client_metrics_tool(srv, "--describe", "--name", "durable")[1]) == {
            "durable": {"metrics": "org.apache.kafka.producer.", "interval.ms": "3000", "match": "client_id=durable-client"}}
        with srv.connect() as c:
            c.client_id = "durable-client"
            got = get_subscriptions(c)
            assert (got["metrics"], got["interval"]) == (["org.apache.kafka.producer."], 3000)
