"""Malformed and invalid requests on the raw wire: the server answers exactly what Apache Kafka 4.x
answers (an error code), or closes that one connection when the framing or header is broken, and
nothing else is affected: after every case a fresh connection still gets correct answers."""

import os
import random
import struct

import pytest

import kafka_wire as kw

SUPPORTED = {
    kw.API_VERSIONS: (0, 4),
    kw.METADATA: (0, 13),
    kw.CREATE_TOPICS: (2, 7),
    kw.DELETE_TOPICS: (1, 6),
    kw.PRODUCE: (3, 13),
    kw.FETCH: (4, 18),
    kw.LIST_OFFSETS: (1, 10),
    32: (1, 4),  # DescribeConfigs
    60: (0, 2),  # DescribeCluster
    75: (0, 0),  # DescribeTopicPartitions
}


@pytest.fixture(autouse=True)
def healthy_after(server):
    """After every case, the process is alive and a second, fresh connection works."""
    yield
    if not server.alive():
        rc = server.proc.poll()
        server.start()  # same data dir and port, so that the following cases still run
        pytest.fail("the server died during this test (exit code %s): see its log below" % rc)
    server.assert_healthy()


_topic_counter = [0]


def new_topic(server, partitions=1, prefix="bad"):
    _topic_counter[0] += 1
    name = "%s-%d-%d" % (prefix, os.getpid(), _topic_counter[0])
    with server.connect() as c:
        res = kw.create_topics(c, [(name, partitions, 1)])
    assert res[name][0] == kw.NONE, res
    server.wait_topic_ready(name, partitions)
    return name


def good_batch(n=3, tag=b"x"):
    return kw.record_batch([(b"k%d" % i, tag + b"-%d" % i, [("h", b"v%d" % i)]) for i in range(n)])


def assert_closed(server, data, what):
    with server.connect() as c:
        try:
            c.send_raw(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # closed even before we finished writing: fine
        c.wait_closed()
    assert server.alive(), "server died after %s" % what


# --------------------------------------------------------------------------------------------
# Sanity of the good paths these tests rely on.


def test_api_versions_v0_and_v3_list_the_supported_ranges(server):
    with server.connect() as c:
        err0, keys0 = kw.api_versions(c, 0)
        err3, keys3 = kw.api_versions(c, 3)
    assert err0 == 0 and err3 == 0
    assert keys0 == keys3
    for key, (lo, hi) in SUPPORTED.items():
        assert key in keys0, "api key %d missing from %r" % (key, keys0)
        assert keys0[key][0] <= lo and keys0[key][1] >= hi, (key, keys0[key], (lo, hi))


def test_pipelined_requests_are_answered_in_order(server):
    topic = new_topic(server)
    with server.connect() as c:
        sent = [
            (c.send(kw.API_VERSIONS, 0, b"", correlation_id=101), False),
            (c.send(kw.METADATA, 1, kw.metadata_v1_body([topic]), correlation_id=7), False),
            (c.send(kw.PRODUCE, 9, kw.produce_body(9, [(topic, [(0, good_batch())])]), flexible=True,
                    correlation_id=55), True),
            (c.send(kw.API_VERSIONS, 3, kw.api_versions_v3_body(), flexible=True, correlation_id=3), False),
        ]
        for cid, flex in sent:
            c.read_response(cid, flex)


@pytest.mark.parametrize("version", [3, 9])
def test_pipelined_produce_requests_keep_their_order(server, version):
    """Kafka handles one request per connection at a time: pipelined produces to a partition get
    increasing offsets in the order they were sent (clients rely on it, e.g. max.in.flight > 1)."""
    topic = new_topic(server)
    n, rounds = 30, 5  # a race shows up in some rounds only: several bursts make it likely to show
    offsets = []
    with server.connect() as c:
        for rnd in range(rounds):
            cids = [c.send(kw.PRODUCE, version,
                           kw.produce_body(version, [(topic, [(0, good_batch(2, b"r%d" % (rnd * n + i)))])]),
                           flexible=version >= 9) for i in range(n)]
            for cid in cids:
                res = kw.parse_produce_response(c.read_response(cid, version >= 9), version)
                assert res[(topic, 0)]["error_code"] == 0, res
                offsets.append(res[(topic, 0)]["base_offset"])
        f = kw.fetch(c, topic, 0, 0)
    total = n * rounds
    bad = [i for i, o in enumerate(offsets) if o != 2 * i]
    assert not bad, ("base offsets not in send order: request #%d (round %d) got %d, expected %d; "
                     "requests #%d..#%d got %r" % (bad[0], bad[0] // n, offsets[bad[0]], 2 * bad[0], bad[0],
                                                   bad[0] + 9, offsets[bad[0]:bad[0] + 10]))
    values = [r["value"] for b in kw.parse_record_batches(f["records"]) for r in b["records"]]
    assert values == [b"r%d-%d" % (i, j) for i in range(total) for j in range(2)], values


def offset_commit_v2_body(group, topic, partition, offset):
    """OffsetCommit v2 of a group without members (generation -1, as assign()-based clients)."""
    return (kw.string(group) + kw.i32(-1) + kw.string("") + kw.i64(-1)
            + kw.array([topic], lambda t: kw.string(t) + kw.array([(partition, offset)],
                       lambda p: kw.i32(p[0]) + kw.i64(p[1]) + kw.string(""))))


def committed_offset_v1(c, group, topic, partition):
    body = kw.string(group) + kw.array([topic], lambda t: kw.string(t) + kw.array([partition], kw.i32))
    r = c.request(OFFSET_FETCH, 1, body)
    assert r.i32() == 1 and r.string() == topic and r.i32() == 1 and r.i32() == partition
    offset, _metadata, error = r.i64(), r.string(), r.i16()
    assert error == 0, error
    return offset


OFFSET_COMMIT, OFFSET_FETCH = 8, 9


def test_pipelined_offset_commits_take_effect_in_order(server):
    """Kafka handles one request per connection at a time: of pipelined OffsetCommits (librdkafka
    sends its asynchronous commits so, on one connection), the last one sent is the one that
    stays, or a restarted consumer reads again what it had processed."""
    topic = new_topic(server)
    group = "pipelined-" + topic
    n, rounds = 50, 5  # a race shows up in some rounds only
    with server.connect() as c:
        for rnd in range(rounds):
            cids = [c.send(OFFSET_COMMIT, 2, offset_commit_v2_body(group, topic, 0, rnd * n + i + 1)) for i in range(n)]
            for cid in cids:
                r = c.read_response(cid, False)
                assert r.i32() == 1 and r.string() == topic and r.i32() == 1 and r.i32() == 0
                assert r.i16() == 0, "OffsetCommit failed"
            got = committed_offset_v1(c, group, topic, 0)
            assert got == (rnd + 1) * n, "round %d: committed offset %d, the last commit sent was %d" % (rnd, got, (rnd + 1) * n)


# --------------------------------------------------------------------------------------------
# Framing and headers: the connection is closed without a response.


@pytest.mark.parametrize("size", [100 * 1024 * 1024 + 1, 2 ** 31 - 1], ids=["100MiB+1", "2^31-1"])
def test_oversized_frame_closes_connection(server, size):
    assert_closed(server, struct.pack(">i", size) + b"\x00" * 64, "a frame of %d bytes" % size)


@pytest.mark.parametrize("size", [-1, -(2 ** 31), 0, 4, 7])
def test_undersized_frame_closes_connection(server, size):
    body = b"\x00\x12" * 8
    payload = body[:max(size, 0)]
    assert_closed(server, struct.pack(">i", size) + payload, "a frame of %d bytes" % size)


def test_unparseable_header_closes_connection(server):
    # ApiVersions v0 whose client_id claims 500 bytes that the frame does not have.
    hdr = kw.i16(kw.API_VERSIONS) + kw.i16(0) + kw.i32(1) + kw.i16(500) + b"abc"
    assert_closed(server, kw.frame(hdr), "a truncated client_id")


def test_truncated_header_closes_connection(server):
    # 8 bytes: api key, version and correlation id, but no client_id field at all.
    hdr = kw.i16(kw.METADATA) + kw.i16(1) + kw.i32(9)
    assert_closed(server, kw.frame(hdr), "a header without client_id")


@pytest.mark.parametrize("api_key", [-1, 1000, 32767])
def test_unknown_api_key_closes_connection(server, api_key):
    assert_closed(server, kw.frame(kw.request_header_v1(api_key, 0, 1) + b"\x00" * 16),
                  "api key %d" % api_key)


@pytest.mark.parametrize("api_key,version", [
    (kw.PRODUCE, 2), (kw.PRODUCE, 100), (kw.FETCH, 3), (kw.FETCH, 100), (kw.METADATA, 100),
    (kw.LIST_OFFSETS, 0), (kw.CREATE_TOPICS, 1), (kw.DELETE_TOPICS, 0), (kw.LIST_OFFSETS, 100),
    (32, 0), (32, 100), (60, 100), (75, 1),
])
def test_unsupported_version_closes_connection(server, api_key, version):
    hdr = (kw.request_header_v2 if version >= 50 else kw.request_header_v1)(api_key, version, 1)
    assert_closed(server, kw.frame(hdr + b"\x00" * 32), "api %d v%d" % (api_key, version))


@pytest.mark.parametrize("version", [5, 100])
def test_api_versions_unsupported_version_gets_v0_error_response(server, version):
    with server.connect() as c:
        cid = c.send(kw.API_VERSIONS, version, kw.api_versions_v3_body(), flexible=True)
        r = c.read_response(cid, False)  # ApiVersions responses always use response header v0
        err, keys = kw.parse_api_versions_v0(r)
        assert err == kw.UNSUPPORTED_VERSION
        assert keys.get(kw.API_VERSIONS) == (0, 4), keys
        assert r.remaining() == 0, "v0 response expected, %d trailing bytes" % r.remaining()
        # The connection stays usable: the client retries with a version from the list.
        err, keys = kw.api_versions(c, 3)
        assert err == 0 and keys[kw.API_VERSIONS][1] >= 4


# --------------------------------------------------------------------------------------------
# Bodies that cannot be parsed: closed connection, live server.


@pytest.mark.parametrize("where", ["topics", "partitions", "flexible-topics"])
def test_produce_with_huge_array_length_closes_connection(server, where):
    if where == "topics":
        body = kw.string(None) + kw.i16(-1) + kw.i32(30000) + kw.i32(2 ** 31 - 1) + kw.string("t")
        hdr = kw.request_header_v1(kw.PRODUCE, 3, 1)
    elif where == "partitions":
        body = kw.string(None) + kw.i16(-1) + kw.i32(30000) + kw.i32(1) + kw.string("t") + kw.i32(2 ** 31 - 1)
        hdr = kw.request_header_v1(kw.PRODUCE, 3, 1)
    else:
        body = kw.compact_string(None) + kw.i16(-1) + kw.i32(30000) + kw.uvarint(2 ** 31 - 1)
        hdr = kw.request_header_v2(kw.PRODUCE, 9, 1)
    assert_closed(server, kw.frame(hdr + body + b"\x00" * 16), "a produce array of 2^31-1 %s" % where)


def test_produce_with_huge_records_length_closes_connection(server):
    body = (kw.string(None) + kw.i16(-1) + kw.i32(30000) + kw.i32(1) + kw.string("t") + kw.i32(1)
            + kw.i32(0) + kw.i32(2 ** 31 - 1) + b"\x00" * 16)
    assert_closed(server, kw.frame(kw.request_header_v1(kw.PRODUCE, 3, 1) + body),
                  "a records field of 2^31-1 bytes")


def test_random_bytes_do_not_affect_other_connections(server):
    seed = int(os.environ.get("SIDESTREAM_TEST_SEED", "20240601"))
    print("random-bytes seed: %d (rerun with SIDESTREAM_TEST_SEED=%d)" % (seed, seed))
    rng = random.Random(seed)
    topic = new_topic(server)
    with server.connect() as other:
        assert kw.api_versions(other, 0)[0] == 0
        for i in range(60):
            kind = i % 3
            if kind == 0:  # pure noise
                data = rng.randbytes(rng.randint(1, 4096))
            elif kind == 1:  # a plausible frame length, then noise
                n = rng.randint(0, 2048)
                data = struct.pack(">i", n) + rng.randbytes(n)
            else:  # a valid header of a supported API and version, then a random body
                key = rng.choice(sorted(SUPPORTED))
                lo, hi = SUPPORTED[key]
                ver = rng.randint(lo, hi)
                hdr = (kw.request_header_v2 if kw.is_flexible(key, ver) else kw.request_header_v1)(key, ver, i)
                data = kw.frame(hdr + rng.randbytes(rng.randint(0, 512)))
            with server.connect() as c:
                try:
                    c.send_raw(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass
            # The other, long-lived connection is unaffected.
            if i % 10 == 9:
                assert kw.api_versions(other, 0)[0] == 0, "seed %d, round %d" % (seed, i)
                md = kw.metadata(other, [topic])
                assert md["topics"][topic]["error_code"] == 0, "seed %d, round %d: %r" % (seed, i, md)
        res = kw.produce(other, 3, [(topic, [(0, good_batch())])])
        assert res[(topic, 0)]["error_code"] == 0, "seed %d: %r" % (seed, res)
    assert server.alive(), "server died (seed %d)" % seed


# --------------------------------------------------------------------------------------------
# Produce errors (per partition), for a classic and a flexible version.


@pytest.mark.parametrize("version", [3, 9])
def test_produce_error_codes(server, version):
    topic = new_topic(server)
    two_batches = good_batch(2, b"a") + good_batch(2, b"b")
    cases = [
        ("bad crc", topic, 0, kw.record_batch([(b"k", b"v")], corrupt_crc=True), -1, kw.CORRUPT_MESSAGE),
        ("magic 1", topic, 0, kw.record_batch([(b"k", b"v")], magic=1), -1, kw.INVALID_RECORD),
        ("magic 0", topic, 0, kw.record_batch([(b"k", b"v")], magic=0), -1, kw.INVALID_RECORD),
        ("two batches", topic, 0, two_batches, -1, kw.INVALID_RECORD),
        ("zero batches", topic, 0, b"", -1, kw.INVALID_RECORD),
        ("acks=2", topic, 0, good_batch(), 2, kw.INVALID_REQUIRED_ACKS),
        ("acks=-2", topic, 0, good_batch(), -2, kw.INVALID_REQUIRED_ACKS),
        ("unknown topic", "no-such-topic-%d" % os.getpid(), 0, good_batch(), -1, kw.UNKNOWN_TOPIC_OR_PARTITION),
        ("unknown partition", topic, 7, good_batch(), -1, kw.UNKNOWN_TOPIC_OR_PARTITION),
    ]
    failures = []
    with server.connect() as c:
        for what, t, p, records, acks, expected in cases:
            res = kw.produce(c, version, [(t, [(p, records)])], acks=acks)
            got = res.get((t, p), {}).get("error_code")
            if got != expected:
                failures.append("%s: expected error %d, got %r (%r)" % (what, expected, got, res))
        # A good batch on the same connection still works, and only good data was stored.
        res = kw.produce(c, version, [(topic, [(0, good_batch(3, b"good"))])])
        assert res[(topic, 0)]["error_code"] == 0, res
        assert res[(topic, 0)]["base_offset"] == 0, "rejected batches took offsets: %r" % res
        f = kw.fetch(c, topic, 0, 0)
    assert not failures, "\n".join(failures)
    assert f["error_code"] == 0 and f["high_watermark"] == 3, f
    batches = kw.parse_record_batches(f["records"])
    assert [b["crc_ok"] for b in batches] == [True]
    assert [(r["offset"], r["key"], r["value"], r["headers"]) for r in batches[0]["records"]] == [
        (i, b"k%d" % i, b"good-%d" % i, [("h", b"v%d" % i)]) for i in range(3)]


def test_produce_errors_are_per_partition(server):
    topic = new_topic(server, partitions=2)
    with server.connect() as c:
        res = kw.produce(c, 3, [(topic, [(0, kw.record_batch([(b"k", b"v")], corrupt_crc=True)),
                                         (1, good_batch(2))])])
    assert res[(topic, 0)]["error_code"] == kw.CORRUPT_MESSAGE, res
    assert res[(topic, 1)]["error_code"] == kw.NONE and res[(topic, 1)]["base_offset"] == 0, res


# --------------------------------------------------------------------------------------------
# Fetch and ListOffsets errors.


def test_fetch_out_of_range_and_unknown_topic(server):
    topic = new_topic(server)
    with server.connect() as c:
        res = kw.produce(c, 3, [(topic, [(0, good_batch(5))])])
        assert res[(topic, 0)]["error_code"] == 0, res
        at_hw = kw.fetch(c, topic, 0, 5, max_wait_ms=10)
        beyond = kw.fetch(c, topic, 0, 6, max_wait_ms=10)
        far = kw.fetch(c, topic, 0, 10 ** 12, max_wait_ms=10)
        below = kw.fetch(c, topic, 0, -5, max_wait_ms=10)
        unknown = kw.fetch(c, "no-such-topic-f-%d" % os.getpid(), 0, 0, max_wait_ms=10)
        unknown_part = kw.fetch(c, topic, 9, 0, max_wait_ms=10)
    assert at_hw["error_code"] == 0 and at_hw["high_watermark"] == 5, at_hw
    assert not kw.parse_record_batches(at_hw["records"] or b""), at_hw
    assert beyond["error_code"] == kw.OFFSET_OUT_OF_RANGE, beyond
    assert far["error_code"] == kw.OFFSET_OUT_OF_RANGE, far
    assert below["error_code"] == kw.OFFSET_OUT_OF_RANGE, below
    assert unknown["error_code"] == kw.UNKNOWN_TOPIC_OR_PARTITION, unknown
    assert unknown_part["error_code"] == kw.UNKNOWN_TOPIC_OR_PARTITION, unknown_part


def test_fetch_sessions(server):
    """KIP-227: a full fetch with epoch 0 opens a session; incremental fetches answer only the
    partitions with news and keep the positions they were given; wrong epochs and unknown
    sessions get their error codes; epoch -1 closes the session."""
    topic = new_topic(server, partitions=2)
    with server.connect() as c:
        for p in (0, 1):
            assert kw.produce(c, 3, [(topic, [(p, good_batch(2))])])[(topic, p)]["error_code"] == 0

        def fetch(*args, **kwargs):
            return kw.parse_fetch_v7(c.request(kw.FETCH, 7, kw.fetch_v7_body(*args, max_wait_ms=10, **kwargs)))

        both = [(topic, [(0, 0, 1 << 20), (1, 2, 1 << 20)])]
        err, session, parts = fetch(both, session_id=0, session_epoch=0)
        assert err == 0 and session != 0
        assert len(kw.parse_record_batches(parts[(topic, 0)]["records"])) == 1
        assert kw.parse_record_batches(parts[(topic, 1)]["records"] or b"") == []
        # Nothing new anywhere: an incremental fetch answers no partition at all.
        err, same, parts = fetch([(topic, [(0, 2, 1 << 20)])], session_id=session, session_epoch=1)
        assert (err, same, parts) == (0, session, {})
        # New data in partition 1 (whose position the session remembers): only it is answered.
        assert kw.produce(c, 3, [(topic, [(1, good_batch(3))])])[(topic, 1)]["error_code"] == 0
        err, _, parts = fetch([], session_id=session, session_epoch=2)
        assert err == 0 and list(parts) == [(topic, 1)], parts
        assert parts[(topic, 1)]["high_watermark"] == 5
        assert len(kw.parse_record_batches(parts[(topic, 1)]["records"])) == 1

        assert fetch([], session_id=session, session_epoch=2)[0] == kw.INVALID_FETCH_SESSION_EPOCH
        assert fetch([], session_id=session ^ 0x5a5a, session_epoch=1)[0] == kw.FETCH_SESSION_ID_NOT_FOUND
        # Forgetting partition 1 leaves partition 0 only; epoch -1 then closes the session.
        err, _, parts = fetch([], session_id=session, session_epoch=3, forgotten=[(topic, [1])])
        assert err == 0 and parts == {}
        err, closed, parts = fetch(both, session_id=session, session_epoch=-1)
        assert err == 0 and closed == 0 and len(parts) == 2
        assert fetch([], session_id=session, session_epoch=4)[0] == kw.FETCH_SESSION_ID_NOT_FOUND


def test_list_offsets(server):
    topic = new_topic(server)
    with server.connect() as c:
        empty_latest = kw.list_offsets(c, topic, 0, kw.LATEST)
        res = kw.produce(c, 3, [(topic, [(0, good_batch(4))])])
        assert res[(topic, 0)]["error_code"] == 0, res
        earliest = kw.list_offsets(c, topic, 0, kw.EARLIEST)
        latest = kw.list_offsets(c, topic, 0, kw.LATEST)
        unknown = kw.list_offsets(c, "no-such-topic-l-%d" % os.getpid(), 0, kw.LATEST)
    assert (empty_latest["error_code"], empty_latest["offset"]) == (0, 0), empty_latest
    assert (earliest["error_code"], earliest["offset"]) == (0, 0), earliest
    assert (latest["error_code"], latest["offset"]) == (0, 4), latest
    assert unknown["error_code"] == kw.UNKNOWN_TOPIC_OR_PARTITION, unknown


# --------------------------------------------------------------------------------------------
# CreateTopics and DeleteTopics errors.


def test_create_topics_errors(server):
    existing = new_topic(server)
    n = "ct-%d" % os.getpid()
    with server.connect() as c:
        res = kw.create_topics(c, [
            (existing, 1, 1),
            ("bad name!", 1, 1),
            ("..", 1, 1),
            ("x" * 250, 1, 1),
            (n + "-zero", 0, 1),
            (n + "-negative", -5, 1),
            (n + "-ok", 2, 1),
        ])
        md = kw.metadata(c, [n + "-ok"])
    codes = {name: err for name, (err, _msg) in res.items()}
    assert codes == {
        existing: kw.TOPIC_ALREADY_EXISTS,
        "bad name!": kw.INVALID_TOPIC_EXCEPTION,
        "..": kw.INVALID_TOPIC_EXCEPTION,
        "x" * 250: kw.INVALID_TOPIC_EXCEPTION,
        n + "-zero": kw.INVALID_PARTITIONS,
        n + "-negative": kw.INVALID_PARTITIONS,
        n + "-ok": kw.NONE,
    }, res
    t = md["topics"][n + "-ok"]
    assert t["error_code"] == 0 and sorted(p["partition_index"] for p in t["partitions"]) == [0, 1], t
    assert all(p["leader_id"] == 1 for p in t["partitions"]), t


def test_delete_topics(server):
    topic = new_topic(server)
    unknown = "no-such-topic-d-%d" % os.getpid()
    with server.connect() as c:
        res = kw.delete_topics(c, [topic, unknown])
        assert res == {topic: kw.NONE, unknown: kw.UNKNOWN_TOPIC_OR_PARTITION}, res
        again = kw.delete_topics(c, [topic])
        assert again == {topic: kw.UNKNOWN_TOPIC_OR_PARTITION}, again
        pr = kw.produce(c, 3, [(topic, [(0, good_batch())])])
        assert pr[(topic, 0)]["error_code"] == kw.UNKNOWN_TOPIC_OR_PARTITION, pr
