"""What security costs on the produce path: the agent's CPU seconds per GB produced, throughput,
latency and peak memory, per listener kind, with one agent serving them all.

One `sidestream serve` (local object store, acks=1 so the WAL, not the object store, is the
path measured) with a PLAINTEXT, an SSL and a SASL_SSL (SCRAM-SHA-512) listener; then a second
agent, the same but with the authorizer on (`[acl] enabled = true`), where a super user (never
checked) produces first, then a user that writes by a prefixed ACL, so that every produce
request is checked. For each mode a
confluent-kafka producer sends --mb MB of --value-bytes records as fast as it can; the agent's
CPU time (utime + stime from /proc) is read before and after.

    SIDESTREAM_BIN=target/release/sidestream .venv/bin/python bench/security.py --mb 512

Prints one JSON line per mode. Not part of CI (it moves gigabytes); the numbers go into the
README's Security section.
"""

import argparse
import json
import os
import sys
import tempfile
import textwrap
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "integration"))
from conftest import SidestreamServer, free_port  # noqa: E402
from test_security import make_ca, make_cert  # noqa: E402

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid):
    fields = Path("/proc/%d/stat" % pid).read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def peak_rss_mb(pid):
    for line in Path("/proc/%d/status" % pid).read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def certificates(d):
    """A CA and a server certificate for 127.0.0.1, made as the security tests make theirs."""
    make_ca(d, "ca")
    make_cert(d, "ca", "server", "/CN=localhost", "IP:127.0.0.1")


def config(d, ports, acl=False):
    text = textwrap.dedent("""
        [[listeners]]
        name = "SECURE"
        address = "127.0.0.1:{ssl}"
        protocol = "SSL"

        [[listeners]]
        name = "EXTERNAL"
        address = "127.0.0.1:{sasl}"
        protocol = "SASL_SSL"

        [tls]
        cert_file = "{d}/server.pem"
        key_file = "{d}/server.key"
        """).format(d=d, **ports)
    if acl:
        # The plaintext listener's ANONYMOUS sets the bench up; the producer "bench" is checked.
        text += textwrap.dedent("""
            [acl]
            enabled = true
            super_users = ["User:ANONYMOUS", "User:bench-super"]
            """)
    return text


def produce(conf, mb, value_bytes):
    from confluent_kafka import Producer
    latencies = []
    topic = "sec-" + uuid.uuid4().hex[:8]
    n = mb * 1_000_000 // value_bytes
    value = os.urandom(value_bytes)
    p = Producer(dict(conf, **{"acks": "1", "linger.ms": 5, "batch.size": 1 << 20,
                               "queue.buffering.max.kbytes": 1 << 18, "enable.idempotence": False}))

    def delivered(err, msg, sent=None):
        if err is None:
            latencies.append(time.monotonic() - sent)

    # Warm up (topic creation, connections, TLS and SASL handshakes).
    p.produce(topic, value=value)
    p.flush(60)
    start = time.monotonic()
    for _ in range(n):
        while True:
            try:
                now = time.monotonic()
                p.produce(topic, value=value, on_delivery=lambda e, m, s=now: delivered(e, m, s))
                break
            except BufferError:
                p.poll(0.01)
        p.poll(0)
    assert p.flush(300) == 0
    seconds = time.monotonic() - start
    latencies.sort()

    def pct(q):
        return round(latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000, 2)
    return {"records": n, "seconds": round(seconds, 2), "mb_per_s": round(n * value_bytes / 1e6 / seconds, 1),
            "p50_ms": pct(0.50), "p99_ms": pct(0.99), "p999_ms": pct(0.999)}


def run_mode(srv, name, conf, mb, value_bytes):
    before = cpu_seconds(srv.proc.pid)
    out = produce(conf, mb, value_bytes)
    cpu = cpu_seconds(srv.proc.pid) - before
    out.update({"mode": name, "agent_cpu_s_per_gb": round(cpu / (mb / 1000), 2),
                "agent_peak_rss_mb": round(peak_rss_mb(srv.proc.pid), 1)})
    print(json.dumps(out), flush=True)


def add_user(bootstrap, user="bench"):
    from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialUpsertion)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    up = UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"bench-secret")
    for f in admin.alter_user_scram_credentials([up]).values():
        f.result(timeout=30)


def allow_bench_to_write(bootstrap):
    """User:bench may create, write and describe the topics named sec-*: an ordinary
    principal whose every produce request goes through the authorizer."""
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient,
                                       ResourcePatternType, ResourceType)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    bindings = [AclBinding(ResourceType.TOPIC, "sec-", ResourcePatternType.PREFIXED, "User:bench", "*",
                           op, AclPermissionType.ALLOW)
                for op in (AclOperation.CREATE, AclOperation.WRITE, AclOperation.DESCRIBE)]
    for f in admin.create_acls(bindings).values():
        f.result(timeout=30)


def sasl_ssl(d, port, user="bench"):
    return {"ssl.ca.location": str(d / "ca.pem"), "bootstrap.servers": "127.0.0.1:%d" % port,
            "security.protocol": "SASL_SSL", "sasl.mechanism": "SCRAM-SHA-512",
            "sasl.username": user, "sasl.password": "bench-secret"}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mb", type=int, default=512)
    ap.add_argument("--value-bytes", type=int, default=1000)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        certificates(d)
        ports = {"ssl": free_port(), "sasl": free_port()}
        srv = SidestreamServer(d / "data", d / "server.log", config=config(d, ports))
        srv.start()
        try:
            add_user(srv.bootstrap)
            tls = {"ssl.ca.location": str(d / "ca.pem")}
            run_mode(srv, "plaintext", {"bootstrap.servers": srv.bootstrap}, args.mb, args.value_bytes)
            run_mode(srv, "ssl", dict(tls, **{"bootstrap.servers": "127.0.0.1:%d" % ports["ssl"],
                                              "security.protocol": "SSL"}), args.mb, args.value_bytes)
            run_mode(srv, "sasl_ssl_scram512", sasl_ssl(d, ports["sasl"]), args.mb, args.value_bytes)
        finally:
            srv.close()
        ports = {"ssl": free_port(), "sasl": free_port()}
        srv = SidestreamServer(d / "data-acl", d / "server-acl.log", config=config(d, ports, acl=True))
        srv.start()
        try:
            add_user(srv.bootstrap)
            add_user(srv.bootstrap, "bench-super")
            allow_bench_to_write(srv.bootstrap)
            # The same agent with the authorizer on: a super user (never checked), then "bench",
            # checked on every request.
            run_mode(srv, "sasl_ssl_scram512_super_user", sasl_ssl(d, ports["sasl"], "bench-super"), args.mb, args.value_bytes)
            run_mode(srv, "sasl_ssl_scram512_acl", sasl_ssl(d, ports["sasl"]), args.mb, args.value_bytes)
        finally:
            srv.close()


if __name__ == "__main__":
    main()
