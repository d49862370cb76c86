"""A real Prometheus (Debian's package) scrapes a running agent: its HTTP API shows
`sidestream_produce_records_total` moving by exactly the records produced, and
`sidestream_ready` at 1; `sidestream_requests_total{api="Produce",version="3"}` moving by exactly
the Produce v3 requests a raw client sent, `sidestream_topic_bytes_in_total{topic}` by exactly
their batch bytes, `sidestream_request_errors_total{api="CreateTopics",error="TOPIC_ALREADY_EXISTS"}`
by the refused creations, and `histogram_quantile` over `sidestream_request_seconds_bucket`
(summed over agents' buckets, as a dashboard does) returning a latency.
"""

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request

import math

import pytest
from confluent_kafka import Producer

import kafka_wire
from conftest import SidestreamServer, free_port, poll_until

RECORDS = 137
RAW_REQUESTS = 23
P99 = 'histogram_quantile(0.99, sum by (le) (rate(sidestream_request_seconds_bucket{api="Produce"}[1m])))'


def query(port, expr):
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (port, urllib.parse.urlencode({"query": expr}))
    body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert body["status"] == "success", body
    return [float(r["value"][1]) for r in body["data"]["result"]]


def test_prometheus_scrapes_counters_and_request_histograms(tmp_path):
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("prometheus not found: scripts/test installs Debian's prometheus package")
    agent = SidestreamServer(tmp_path / "agent", tmp_path / "agent.log")
    proc = None
    try:
        agent.start()
        target = poll_until(lambda: re.search(r"metrics_addr=([0-9.:]+)", agent.log_text()), 10,
                            what="the metrics address in the log").group(1)
        config = tmp_path / "prometheus.yml"
        config.write_text("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: sidestream-agent\n"
                          "    static_configs:\n      - targets: ['%s']\n" % target)
        port = free_port()
        log = open(tmp_path / "prometheus.log", "wb")
        proc = subprocess.Popen([prometheus, "--config.file=%s" % config, "--storage.tsdb.path=%s" % (tmp_path / "tsdb"),
                                 "--web.listen-address=127.0.0.1:%d" % port], stdout=log, stderr=subprocess.STDOUT)
        log.close()
        # The counter is registered at the first produce: produce one record, wait for it.
        p = Producer({"bootstrap.servers": agent.bootstrap, "acks": "all", "linger.ms": 5})
        p.produce("prom", b"first")
        assert p.flush(30) == 0
        before = poll_until(lambda: query(port, "sidestream_produce_records_total"), 60,
                            interval=0.2, what="Prometheus to scrape the counter")
        assert before == [1.0], before
        for i in range(RECORDS):
            p.produce("prom", b"r%d" % i)
        assert p.flush(30) == 0
        poll_until(lambda: query(port, "sidestream_produce_records_total") == [1.0 + RECORDS], 60, interval=0.2,
                   what="the counter to move by %d in Prometheus" % RECORDS)
        assert query(port, 'sidestream_ready{job="sidestream-agent"}') == [1.0]
        assert query(port, 'up{job="sidestream-agent"}') == [1.0]

        batch = kafka_wire.record_batch([(None, b"raw")])
        with agent.connect() as c:
            def produce_v3():
                r = kafka_wire.produce(c, 3, [("prom", [(0, batch)])], acks=-1)
                assert r[("prom", 0)]["error_code"] == 0, r

            # p99 of Produce over the buckets: a rate needs two scrapes apart, so keep producing.
            def p99():
                produce_v3()
                v = query(port, P99)
                return v if v and math.isfinite(v[0]) else None
            latency = poll_until(p99, 60, interval=0.5, what="histogram_quantile over the request buckets")
            assert 0 < latency[0] <= 60, latency

            # Exact counts, Prometheus' values before and after a known number of requests.
            requests = 'sidestream_requests_total{api="Produce",version="3"}'
            bytes_in = 'sidestream_topic_bytes_in_total{topic="prom"}'
            errors = 'sidestream_request_errors_total{api="CreateTopics",error="TOPIC_ALREADY_EXISTS"}'
            m = agent.metrics()
            settled = lambda: query(port, requests) == [m[requests]] and query(port, bytes_in) == [m[bytes_in]]
            poll_until(settled, 60, interval=0.2, what="Prometheus to catch up with /metrics")
            before_requests, before_bytes = m[requests], m[bytes_in]
            for _ in range(RAW_REQUESTS):
                produce_v3()
            assert kafka_wire.create_topics(c, [("prom", 1, 1)])["prom"][0] == 36  # TOPIC_ALREADY_EXISTS
            assert kafka_wire.create_topics(c, [("prom", 1, 1)])["prom"][0] == 36
        poll_until(lambda: query(port, requests) == [before_requests + RAW_REQUESTS], 60, interval=0.2,
                   what="Produce v3 requests to move by %d in Prometheus" % RAW_REQUESTS)
        poll_until(lambda: query(port, bytes_in) == [before_bytes + RAW_REQUESTS * len(batch)], 60, interval=0.2,
                   what="the topic's bytes in to move by %d batches" % RAW_REQUESTS)
        poll_until(lambda: query(port, errors) == [2.0], 60, interval=0.2, what="the CreateTopics errors")
        assert query(port, 'sum(sidestream_requests_total{api="CreateTopics"})') == [2.0]
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        agent.close()
