"""OpenTelemetry export against a real receiver: Jaeger v2 (the OpenTelemetry Collector with
Jaeger's storage and query API; built by tests/compat/fetch from tests/compat/jaeger) receives
the agent's OTLP/HTTP traces and metrics.

- Traces: with `trace_sample_ratio = 1.0`, Jaeger's query API shows, for service `sidestream`,
  Produce traces (acks=all with its `upload.wait` child; acks=1 with `wal.append` and the group
  commit's `wal.write` below it), `object.upload` traces (their `object_store.put` and
  `controller.commit` children, and links to the Produce spans whose batches they carry), and
  Fetch traces with the `object_store.get` of a cold read; every parent id names a span of the
  same trace, and each trace has one root.
- Metrics: Jaeger's Prometheus exporter shows `sidestream_produce_records_total` at exactly the
  records produced, and the request latency histogram.
- A receiver that never answers: produce works as before; failed exports and dropped spans are
  counted in `/metrics`.
"""

import json
import re
import socket
import subprocess
import urllib.parse
import urllib.request
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition

import compat
from conftest import SidestreamServer, free_port, poll_until

RECORDS_ALL = 40
RECORDS_ONE = 25

JAEGER_CONFIG = """
service:
  extensions: [jaeger_storage, jaeger_query]
  pipelines:
    traces:
      receivers: [otlp]
      exporters: [jaeger_storage_exporter]
    metrics:
      receivers: [otlp]
      exporters: [prometheus]
  telemetry:
    metrics:
      level: none
    logs:
      level: info
extensions:
  jaeger_storage:
    backends:
      memstore:
        memory:
          max_traces: 100000
  jaeger_query:
    storage:
      traces: memstore
    http:
      endpoint: 127.0.0.1:{query}
    grpc:
      endpoint: 127.0.0.1:{query_grpc}
receivers:
  otlp:
    protocols:
      http:
        endpoint: 127.0.0.1:{otlp}
exporters:
  jaeger_storage_exporter:
    trace_storage: memstore
  prometheus:
    endpoint: 127.0.0.1:{prom}
"""


class Jaeger:
    """A Jaeger v2 process on free loopback ports: OTLP/HTTP in, the query API and a Prometheus
    exporter (of the metrics it received) out."""

    def __init__(self, tmp_path):
        self.otlp, self.query, self.prom = free_port(), free_port(), free_port()
        config = tmp_path / "jaeger.yaml"
        config.write_text(JAEGER_CONFIG.format(otlp=self.otlp, query=self.query, query_grpc=free_port(), prom=self.prom))
        self.log_path = tmp_path / "jaeger.log"
        binary = compat.require("jaeger")["jaeger_bin"]
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen([binary, "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
        poll_until(lambda: self.get("/api/services") is not None, 60, interval=0.2, what="Jaeger's query API")
        poll_until(lambda: socket.create_connection(("127.0.0.1", self.otlp), 1).close() or True, 30,
                   interval=0.2, what="Jaeger's OTLP/HTTP receiver")

    @property
    def endpoint(self):
        return "http://127.0.0.1:%d" % self.otlp

    def get(self, path):
        assert self.proc.poll() is None, "jaeger exited:\n%s" % self.log_path.read_text()[-3000:]
        return json.loads(urllib.request.urlopen("http://127.0.0.1:%d%s" % (self.query, path), timeout=10).read())

    def traces(self, operation):
        q = urllib.parse.urlencode({"service": "sidestream", "operation": operation, "limit": 10000, "lookback": "1h"})
        return self.get("/api/traces?" + q)["data"] or []

    def prometheus(self):
        """The Prometheus exporter's samples: {'name{labels}': value}."""
        text = urllib.request.urlopen("http://127.0.0.1:%d/metrics" % self.prom, timeout=10).read().decode()
        return {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
                for line in text.splitlines() if line and not line.startswith("#")}

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def tags(span):
    return {t["key"]: t["value"] for t in span.get("tags", [])}


def parent(span):
    refs = [r for r in span.get("references", []) if r["refType"] == "CHILD_OF"]
    assert len(refs) <= 1, span
    return refs[0]["spanID"] if refs else None


def check_tree(trace):
    """Every parent id names a span of the trace, one root; returns {name: [spans]}."""
    ids = {s["spanID"] for s in trace["spans"]}
    roots = [s for s in trace["spans"] if parent(s) is None]
    assert len(roots) == 1, [s["operationName"] for s in roots]
    for s in trace["spans"]:
        assert s["traceID"] == trace["traceID"], s
        assert parent(s) is None or parent(s) in ids, ("a parent outside the trace", s)
    by_name = {}
    for s in trace["spans"]:
        by_name.setdefault(s["operationName"], []).append(s)
    return roots[0], by_name


def produce(bootstrap, topic, acks, n):
    p = Producer({"bootstrap.servers": bootstrap, "acks": acks, "linger.ms": 0, "enable.idempotence": False})
    for i in range(n):
        p.produce(topic, b"%s-%d" % (topic.encode(), i))
        p.poll(0)
        if i % 5 == 4:
            assert p.flush(30) == 0
    assert p.flush(30) == 0


def consume(bootstrap, topic, n):
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "otlp-%s" % uuid.uuid4().hex,
                  "enable.auto.commit": False, "auto.offset.reset": "earliest"})
    c.assign([TopicPartition(topic, 0, 0)])
    got = []
    try:
        def read():
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m.value())
            return len(got) >= n
        poll_until(read, 60, interval=0, what="%d records of %s" % (n, topic))
    finally:
        c.close()
    return got


def test_traces_and_metrics_reach_jaeger(tmp_path):
    jaeger = Jaeger(tmp_path)
    agent = SidestreamServer(tmp_path / "agent", tmp_path / "agent.log", extra_env={
        "SIDESTREAM_TELEMETRY_OTLP_ENDPOINT": jaeger.endpoint,
        "SIDESTREAM_TELEMETRY_TRACE_SAMPLE_RATIO": "1.0",
        "SIDESTREAM_TELEMETRY_METRICS_INTERVAL_MS": "200",
        # No disk tier: after a restart, reads go to the object store (a traced GET).
        "SIDESTREAM_CACHE_DISK_BYTES": "0",
        "SIDESTREAM_TOPICS_NUM_PARTITIONS": "1",
    })
    try:
        agent.start()
        produce(agent.bootstrap, "otel-all", "all", RECORDS_ALL)
        produce(agent.bootstrap, "otel-one", "1", RECORDS_ONE)
        assert len(consume(agent.bootstrap, "otel-all", RECORDS_ALL)) == RECORDS_ALL

        # Metrics: the counter, as Jaeger's Prometheus exporter shows what it received.
        def produced():
            m = jaeger.prometheus()
            v = [v for k, v in m.items() if re.match(r"sidestream_produce_records_total(_total)?(\{|$)", k)]
            return v == [RECORDS_ALL + RECORDS_ONE] and m
        prom = poll_until(produced, 60, interval=0.2, what="sidestream_produce_records_total = %d in Jaeger's exporter"
                          % (RECORDS_ALL + RECORDS_ONE))
        assert any(k.startswith("sidestream_produce_seconds_bucket{") and 'acks="all"' in k for k in prom), sorted(prom)[:50]
        assert any(k.startswith("sidestream_requests_total") and 'api="Produce"' in k for k in prom)

        # A cold read after a restart (the memory cache is gone): its GETs are traced.
        agent.restart()
        assert len(consume(agent.bootstrap, "otel-one", RECORDS_ONE)) == RECORDS_ONE

        def produce_traces():
            found = {"-1": [], "1": []}
            for t in jaeger.traces("Produce"):
                root, spans = check_tree(t)
                assert root["operationName"] == "Produce"
                tg = tags(root)
                assert tg["messaging.system"] == "kafka" and tg["kafka.api_version"] >= 3, tg
                assert str(tg["kafka.acks"]) in found, tg
                found[str(tg["kafka.acks"])].append((root, spans))
            return found if len(found["-1"]) >= RECORDS_ALL // 5 and len(found["1"]) >= RECORDS_ONE // 5 else None
        found = poll_until(produce_traces, 60, interval=0.5, what="the Produce traces in Jaeger")
        produce_spans = set()
        for root, spans in found["-1"]:
            assert [s["operationName"] for s in spans["upload.wait"]] == ["upload.wait"], spans.keys()
            assert parent(spans["upload.wait"][0]) == root["spanID"]
            assert "wal.append" not in spans, "acks=all does not touch the WAL"
            produce_spans.add(spans["upload.wait"][0]["spanID"])
        for root, spans in found["1"]:
            wal = spans["wal.append"][0]
            assert parent(wal) == root["spanID"]
            write = spans["wal.write"][0]
            assert parent(write) == wal["spanID"] and tags(write)["sidestream.wal.group_entries"] >= 1
            produce_spans.add(wal["spanID"])

        # Objects: their own traces, with the PUT and the commit, linked to the requests.
        def object_traces():
            linked = []
            for t in jaeger.traces("object.upload"):
                root, spans = check_tree(t)
                assert root["operationName"] == "object.upload"
                assert parent(spans["controller.commit"][0]) == root["spanID"], spans.keys()
                assert parent(spans["object_store.put"][0]) == root["spanID"]
                links = {r["spanID"] for r in root.get("references", []) if r["refType"] == "FOLLOWS_FROM"}
                linked.extend(links & produce_spans)
            return len(set(linked)) >= len(produce_spans) and linked
        poll_until(object_traces, 60, interval=0.5, what="object.upload traces linked to every sampled Produce")

        def fetch_traces():
            for t in jaeger.traces("Fetch"):
                root, spans = check_tree(t)
                assert tags(root)["messaging.system"] == "kafka"
                gets = spans.get("object_store.get", [])
                if gets:
                    assert all(parent(g) == root["spanID"] for g in gets)
                    assert tags(gets[0])["sidestream.range_bytes"] > 0
                    return True
            return False
        poll_until(fetch_traces, 60, interval=0.5, what="a Fetch trace with its object_store.get")
        m = agent.metrics()
        assert m.get('sidestream_otlp_exports_total{outcome="ok",signal="traces"}', 0) >= 1, m
        assert m.get('sidestream_otlp_exports_total{outcome="failed",signal="traces"}', 0) == 0, m
        assert m.get("sidestream_otlp_dropped_spans_total", 0) == 0, m
        agent.stop()
    finally:
        agent.close()
        jaeger.close()


def test_a_silent_receiver_never_holds_up_produce(tmp_path):
    # Accepts connections (the kernel does) and never answers: every export times out.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen(128)
    agent = SidestreamServer(tmp_path / "agent", tmp_path / "agent.log", extra_env={
        "SIDESTREAM_TELEMETRY_OTLP_ENDPOINT": "http://127.0.0.1:%d" % silent.getsockname()[1],
        "SIDESTREAM_TELEMETRY_TRACE_SAMPLE_RATIO": "1.0",
        "SIDESTREAM_TELEMETRY_METRICS_INTERVAL_MS": "100",
        "SIDESTREAM_TELEMETRY_TIMEOUT_MS": "2000",
        "SIDESTREAM_TELEMETRY_MAX_QUEUED_SPANS": "4",
    })
    try:
        agent.start()
        produce(agent.bootstrap, "silent", "1", 60)
        assert len(consume(agent.bootstrap, "silent", 60)) == 60

        def counted():
            m = agent.metrics()
            return (m.get('sidestream_otlp_exports_total{outcome="failed",signal="metrics"}', 0) >= 1
                    and m.get("sidestream_otlp_dropped_spans_total", 0) > 0 and m)
        m = poll_until(counted, 30, interval=0.2, what="failed exports and dropped spans in /metrics")
        assert m.get('sidestream_otlp_exports_total{outcome="ok",signal="metrics"}', 0) == 0, m
        assert m['sidestream_produce_records_total'] == 60
        # Stops within the export timeout, not held by the receiver.
        agent.stop(timeout=15)
    finally:
        agent.close()
        silent.close()
