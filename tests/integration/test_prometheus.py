"""A real Prometheus (Debian's package) scrapes a running agent: its HTTP API shows
`sidestream_produce_records_total` moving by exactly the records produced, and
`sidestream_ready` at 1.
"""

import json
import re
import shutil
import subprocess
import urllib.parse
import urllib.request

import pytest
from confluent_kafka import Producer

from conftest import SidestreamServer, free_port, poll_until

RECORDS = 137


def query(port, expr):
    url = "http://127.0.0.1:%d/api/v1/query?%s" % (port, urllib.parse.urlencode({"query": expr}))
    body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert body["status"] == "success", body
    return [float(r["value"][1]) for r in body["data"]["result"]]


def test_prometheus_scrapes_the_produce_counter(tmp_path):
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
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
        agent.close()
