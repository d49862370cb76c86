"""Limits that no client can turn against the others (issue 16): slow senders of huge frames,
abandoned long polls, idle connections, connections per address, fetch-session memory, the
partition cap, and a shutdown that does not wait for any of them. Real processes: raw sockets
(kafka_wire) for what misbehaves, confluent-kafka for the well-behaved client."""

import resource
import signal
import socket
import struct
import threading
import time
import uuid

import pytest

import kafka_wire
from conftest import SidestreamServer, poll_until

TIMEOUT = 30


@pytest.fixture
def make_server(tmp_path):
    """make_server(env) -> a started server of the test's own with `env` added."""
    servers = []

    def make(env):
        srv = SidestreamServer(tmp_path / ("data%d" % len(servers)), tmp_path / ("server%d.log" % len(servers)),
                               extra_env=env)
        servers.append(srv)
        return srv.start()

    yield make
    for srv in servers:
        srv.close()


def closed_total(srv, reason):
    return srv.metrics().get('sidestream_connections_closed_total{reason="%s"}' % reason, 0)


def open_connections(srv):
    return srv.metrics().get("sidestream_connections", -1)


def produce_and_consume(bootstrap, topic, n=20):
    """A well-behaved confluent-kafka producer and consumer: n records out and back."""
    from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5})
    delivered = []
    for i in range(n):
        producer.produce(topic, value=b"v%d" % i, partition=0,
                         on_delivery=lambda err, msg: delivered.append(err))
    assert producer.flush(TIMEOUT) == 0, "records still undelivered"
    assert delivered == [None] * n, delivered
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "limits-%s" % uuid.uuid4().hex,
                         "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    try:
        consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        got = []
        deadline = time.monotonic() + TIMEOUT
        while len(got) < n:
            assert time.monotonic() < deadline, "consumed %d of %d" % (len(got), n)
            for m in consumer.consume(num_messages=1000, timeout=0.2):
                assert not m.error(), m.error()
                got.append(m.value())
        assert got == [b"v%d" % i for i in range(n)]
    finally:
        consumer.close()


def create_topic(srv, topic, partitions):
    with srv.connect(timeout=TIMEOUT) as c:
        err, msg = kafka_wire.create_topics(c, [(topic, partitions, 1)])[topic]
        assert err == 0, (err, msg)


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(n, hard) if hard != resource.RLIM_INFINITY else n, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def reset(sock):
    """Close with a TCP RST (SO_LINGER 0), as a crashed client or a dropped NAT entry looks."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def long_poll_fetch(topic):
    """A Fetch v4 frame waiting 2^31-1 ms for 1 byte of an empty partition."""
    body = kafka_wire.fetch_v4_body([(topic, [(0, 0, 1 << 20)])], max_wait_ms=2**31 - 1, min_bytes=1)
    return kafka_wire.frame(kafka_wire.request_header_v1(kafka_wire.FETCH, 4, 7) + body)


def test_slow_senders_of_huge_frames_do_not_starve_others(make_server):
    # Six connections each declare a 100 MiB frame (600 MiB > the 512 MiB request budget) and
    # trickle it; before the fix the sixth waited for 100 MiB at the head of the budget's queue and
    # every other request waited behind it.
    srv = make_server({"SIDESTREAM_AGENT_REQUEST_READ_TIMEOUT_MS": "12000"})
    topic = "slow-frames"
    create_topic(srv, topic, 1)
    slow = []
    for _ in range(6):
        s = socket.create_connection((srv.host, srv.port))
        s.sendall(struct.pack(">i", 100 * 1024 * 1024) + kafka_wire.request_header_v1(kafka_wire.PRODUCE, 3, 1))
        slow.append(s)
    stop = threading.Event()

    def trickle():
        deadline = time.monotonic() + 60
        while not stop.is_set() and time.monotonic() < deadline:
            for s in slow:
                try:
                    s.send(b"\0" * 1024)
                except OSError:
                    pass
            stop.wait(0.5)

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        started = time.monotonic()
        produce_and_consume(srv.bootstrap, topic)
        took = time.monotonic() - started
        # Well before the slow frames time out (12 s).
        assert took < 8, "the well-behaved client took %.1fs" % took
        # The slow connections are closed once their frame is not whole within the timeout.
        for s in slow:
            conn = kafka_wire.Conn.__new__(kafka_wire.Conn)
            conn.sock, conn.timeout = s, 30.0
            conn.wait_closed(30.0)
        poll_until(lambda: closed_total(srv, "read_timeout") >= 6, 10, what="6 read timeouts on /metrics")
    finally:
        stop.set()
        t.join()
        for s in slow:
            s.close()
    srv.assert_healthy()


def test_abandoned_long_polls_free_their_slots_and_shutdown_does_not_wait(make_server):
    n = 10_000
    have = raise_nofile(n + 2000)
    if have < n + 500:
        pytest.skip("RLIMIT_NOFILE %d is too low for %d connections" % (have, n))
    # The agent inherits the raised limit. Its max_connections (10,000) is the default: before the
    # fix, 10,000 abandoned long polls held every slot (for 24 days).
    srv = make_server({"SIDESTREAM_AGENT_MAX_CONNECTIONS_PER_IP": "20000"})
    topic = "long-polls"
    create_topic(srv, topic, 1)
    request = long_poll_fetch(topic)
    started = time.monotonic()
    batch = 1000
    for _ in range(n // batch):
        socks = []
        for _ in range(batch):
            s = socket.create_connection((srv.host, srv.port), timeout=TIMEOUT)
            s.sendall(request)
            socks.append(s)
        for s in socks:
            reset(s)
    print("opened and reset %d long polls in %.1fs" % (n, time.monotonic() - started))
    poll_until(lambda: open_connections(srv) == 0, TIMEOUT, interval=0.2, what="connections back to 0")
    assert srv.metrics().get("sidestream_fetches_cancelled_total", 0) >= n * 0.9
    produce_and_consume(srv.bootstrap, topic)
    # Shutdown with live long polls (and idle connections) and nothing to commit: exit 0 at once.
    live = [socket.create_connection((srv.host, srv.port)) for _ in range(100)]
    for s in live[:50]:
        s.sendall(request)
    poll_until(lambda: open_connections(srv) >= 100, TIMEOUT, what="100 live connections")
    started = time.monotonic()
    srv.stop(timeout=10)
    took = time.monotonic() - started
    for s in live:
        s.close()
    assert took < 5, "SIGTERM took %.1fs" % took
    print("SIGTERM with 50 long polls and 50 idle connections: exit 0 in %.2fs" % took)


def test_idle_connections_close_but_long_polls_are_not_idle(make_server):
    srv = make_server({"SIDESTREAM_AGENT_CONNECTIONS_MAX_IDLE_MS": "1000",
                       "SIDESTREAM_AGENT_FETCH_MAX_WAIT_MS_MAX": "2500"})
    topic = "idle"
    create_topic(srv, topic, 1)
    with srv.connect() as idle, srv.connect() as polling:
        assert kafka_wire.api_versions(idle, 0)[0] == 0
        # A fetch asking 2^31-1 ms waits the cap (2.5 s, longer than the idle timeout), and its
        # connection is not closed meanwhile.
        started = time.monotonic()
        polling.send_raw(long_poll_fetch(topic))
        r = kafka_wire.Reader(polling.recv_frame())
        took = time.monotonic() - started
        assert r.i32() == 7
        assert 2.0 < took < 6, "long poll answered after %.1fs" % took
        idle.wait_closed(10)
        polling.wait_closed(10)
    poll_until(lambda: closed_total(srv, "idle") >= 2, 10, what="2 idle closes on /metrics")
    # A connection that keeps sending is never idle.
    with srv.connect() as busy:
        end = time.monotonic() + 2.5
        while time.monotonic() < end:
            assert kafka_wire.api_versions(busy, 0)[0] == 0
            time.sleep(0.2)


def test_connections_per_address_are_limited(make_server):
    srv = make_server({"SIDESTREAM_AGENT_MAX_CONNECTIONS_PER_IP": "5"})
    # The readiness probes' connections are gone first.
    poll_until(lambda: open_connections(srv) == 0, 10, what="no connection open")
    conns = [srv.connect() for _ in range(5)]
    try:
        for c in conns:
            assert kafka_wire.api_versions(c, 0)[0] == 0
        with srv.connect() as extra:
            extra.wait_closed(10)
        assert closed_total(srv, "per_ip_limit") == 1
        for c in conns:
            assert kafka_wire.api_versions(c, 0)[0] == 0
        conns.pop().close()

        def new_one_served():
            with srv.connect(timeout=2) as c:
                return kafka_wire.api_versions(c, 0)[0] == 0
        poll_until(new_one_served, 10, what="a connection once one closed")
    finally:
        for c in conns:
            c.close()


def rss_bytes(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def open_sessions(srv, topic, partitions, sessions):
    """Opens `sessions` fetch sessions over every partition, one connection each; returns the
    connections and the session ids."""
    parts = [(p, 0, 1 << 20) for p in range(partitions)]
    body = kafka_wire.fetch_v7_body([(topic, parts)], session_id=0, session_epoch=0, max_wait_ms=0, min_bytes=0)
    frame = kafka_wire.frame(kafka_wire.request_header_v1(kafka_wire.FETCH, 7, 1) + body)
    conns, ids = [], []
    for _ in range(sessions):
        c = srv.connect(timeout=TIMEOUT)
        c.send_raw(frame)
        r = kafka_wire.Reader(c.recv_frame())
        assert r.i32() == 1
        r.i32()  # throttle
        assert r.i16() == 0
        ids.append(r.i32())
        conns.append(c)
    return conns, ids


def test_fetch_session_memory_is_bounded_and_freed_with_connections(make_server):
    partitions, sessions = 10_000, 400
    bound = 16 << 20
    raise_nofile(sessions + 1000)
    srv = make_server({"SIDESTREAM_AGENT_FETCH_SESSIONS_BYTES_MAX": str(bound),
                       "SIDESTREAM_TOPICS_MAX_PARTITIONS_TOTAL": str(partitions)})
    topic = "sessions"
    create_topic(srv, topic, partitions)
    # Warm up (allocator arenas, caches) with a few sessions, then measure from there.
    warm, _ = open_sessions(srv, topic, partitions, 5)
    for c in warm:
        c.close()
    poll_until(lambda: open_connections(srv) == 0, TIMEOUT, what="warm-up connections closed")
    base = rss_bytes(srv.proc.pid)
    started = time.monotonic()
    conns, ids = open_sessions(srv, topic, partitions, sessions)
    peak = rss_bytes(srv.proc.pid)
    print("%d sessions of %d partitions in %.1fs: RSS %.0f MiB -> %.0f MiB (bound %d MiB)"
          % (sessions, partitions, time.monotonic() - started, base / 2**20, peak / 2**20, bound >> 20))
    assert all(i != 0 for i in ids), "every fetch opened a session"
    assert srv.metrics().get("sidestream_fetch_sessions_evicted_total", 0) > 0
    # Without a bound, 1,000 sessions over 10,000 partitions took RSS from 30 MiB to 1172 MiB
    # (measured with the fix reverted); 400 keep the test short and far above the bound.
    assert peak - base < bound + (64 << 20), "RSS grew by %.0f MiB" % ((peak - base) / 2**20)
    # The newest session still answers incrementally; the oldest was evicted.
    newest = kafka_wire.fetch_v7_body([], session_id=ids[-1], session_epoch=1, max_wait_ms=0, min_bytes=0)
    error_code, session_id, _ = kafka_wire.parse_fetch_v7(conns[-1].request(kafka_wire.FETCH, 7, newest))
    assert (error_code, session_id) == (0, ids[-1])
    oldest = kafka_wire.fetch_v7_body([], session_id=ids[0], session_epoch=1, max_wait_ms=0, min_bytes=0)
    error_code, _, _ = kafka_wire.parse_fetch_v7(conns[0].request(kafka_wire.FETCH, 7, oldest))
    assert error_code == kafka_wire.FETCH_SESSION_ID_NOT_FOUND
    # A session dies with its connection: resuming it from another one is refused.
    last = ids[-1]
    for c in conns:
        c.close()
    poll_until(lambda: open_connections(srv) == 0, TIMEOUT, what="connections closed")
    with srv.connect() as c:
        resume = kafka_wire.fetch_v7_body([], session_id=last, session_epoch=2, max_wait_ms=0, min_bytes=0)
        assert kafka_wire.parse_fetch_v7(c.request(kafka_wire.FETCH, 7, resume))[0] == \
            kafka_wire.FETCH_SESSION_ID_NOT_FOUND
    after = rss_bytes(srv.proc.pid)
    print("after every connection closed: RSS %.0f MiB" % (after / 2**20))
    assert after - base < 32 << 20, "RSS stayed %.0f MiB above the start" % ((after - base) / 2**20)


def test_partitions_in_total_are_capped(make_server):
    srv = make_server({"SIDESTREAM_TOPICS_MAX_PARTITIONS_TOTAL": "10"})
    with srv.connect() as c:
        assert kafka_wire.create_topics(c, [("cap-a", 6, 1)])["cap-a"][0] == 0
        err, msg = kafka_wire.create_topics(c, [("cap-b", 5, 1)])["cap-b"]
        assert err == 44, (err, msg)  # POLICY_VIOLATION, as Kafka answers a policy's refusal
        assert "max_partitions_total" in msg
        assert kafka_wire.create_topics(c, [("cap-b", 4, 1)])["cap-b"][0] == 0
        md = kafka_wire.metadata(c, ["cap-b"])
        assert len(md["topics"]["cap-b"]["partitions"]) == 4
