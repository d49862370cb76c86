"""A tiny raw Kafka wire-protocol client, enough for the bad-input tests.

Only what those tests need: request headers v1/v2, ApiVersions v0/v3, Metadata v1, Produce v3 and
v9 (flexible), Fetch v4, ListOffsets v1, CreateTopics v2, DeleteTopics v1, and a record batch v2
builder/parser with a pure-Python CRC32C so tests can corrupt a batch on purpose. Field layouts
follow the Apache Kafka message definitions (clients/src/main/resources/common/message/*.json).
"""

import socket
import struct
import time

# Error codes used by the tests (org.apache.kafka.common.protocol.Errors).
NONE = 0
OFFSET_OUT_OF_RANGE = 1
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_TOPIC_EXCEPTION = 17
INVALID_REQUIRED_ACKS = 21
UNSUPPORTED_VERSION = 35
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_RECORD = 87

# API keys.
PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
API_VERSIONS = 18
CREATE_TOPICS = 19
DELETE_TOPICS = 20

# --------------------------------------------------------------------------------------------
# CRC32C (Castagnoli), reflected polynomial 0x82F63B78, table driven.

_CRC32C_TABLE = []
for _n in range(256):
    _c = _n
    for _ in range(8):
        _c = (_c >> 1) ^ 0x82F63B78 if _c & 1 else _c >> 1
    _CRC32C_TABLE.append(_c)


def crc32c(data, crc=0):
    crc ^= 0xFFFFFFFF
    table = _CRC32C_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283  # the standard check value

# --------------------------------------------------------------------------------------------
# Primitive encoders.


def i8(v):
    return struct.pack(">b", v)


def i16(v):
    return struct.pack(">h", v)


def i32(v):
    return struct.pack(">i", v)


def u32(v):
    return struct.pack(">I", v)


def i64(v):
    return struct.pack(">q", v)


def uvarint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint(v):
    """Zig-zag signed varint (also used for varlong)."""
    return uvarint((v << 1) ^ (v >> 63))


def string(s):
    """STRING / NULLABLE_STRING (int16 length)."""
    if s is None:
        return i16(-1)
    b = s.encode() if isinstance(s, str) else s
    return i16(len(b)) + b


def compact_string(s):
    """COMPACT_STRING / COMPACT_NULLABLE_STRING (uvarint length + 1)."""
    if s is None:
        return uvarint(0)
    b = s.encode() if isinstance(s, str) else s
    return uvarint(len(b) + 1) + b


def nbytes(b):
    """BYTES / NULLABLE_BYTES / RECORDS (int32 length)."""
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def compact_bytes(b):
    if b is None:
        return uvarint(0)
    return uvarint(len(b) + 1) + b


def array(items, enc=lambda x: x):
    if items is None:
        return i32(-1)
    return i32(len(items)) + b"".join(enc(x) for x in items)


def compact_array(items, enc=lambda x: x):
    if items is None:
        return uvarint(0)
    return uvarint(len(items) + 1) + b"".join(enc(x) for x in items)


NO_TAGS = uvarint(0)

# --------------------------------------------------------------------------------------------
# Decoder.


class Reader:
    def __init__(self, data):
        self.data = bytes(data)
        self.pos = 0

    def _take(self, n):
        if n < 0 or self.pos + n > len(self.data):
            raise ValueError("short read: want %d at %d of %d" % (n, self.pos, len(self.data)))
        b = self.data[self.pos:self.pos + n]
        self.pos += n
        return b

    def remaining(self):
        return len(self.data) - self.pos

    def i8(self):
        return struct.unpack(">b", self._take(1))[0]

    def boolean(self):
        return self.i8() != 0

    def i16(self):
        return struct.unpack(">h", self._take(2))[0]

    def i32(self):
        return struct.unpack(">i", self._take(4))[0]

    def u32(self):
        return struct.unpack(">I", self._take(4))[0]

    def i64(self):
        return struct.unpack(">q", self._take(8))[0]

    def uvarint(self):
        shift = value = 0
        while True:
            b = self._take(1)[0]
            value |= (b & 0x7F) << shift
            if not b & 0x80:
                return value
            shift += 7
            if shift > 63:
                raise ValueError("varint too long")

    def varint(self):
        v = self.uvarint()
        return (v >> 1) ^ -(v & 1)

    def string(self):
        n = self.i16()
        return None if n < 0 else self._take(n).decode()

    def compact_string(self):
        n = self.uvarint() - 1
        return None if n < 0 else self._take(n).decode()

    def nbytes(self):
        n = self.i32()
        return None if n < 0 else self._take(n)

    def compact_bytes(self):
        n = self.uvarint() - 1
        return None if n < 0 else self._take(n)

    def array(self, dec):
        n = self.i32()
        return None if n < 0 else [dec(self) for _ in range(n)]

    def compact_array(self, dec):
        n = self.uvarint() - 1
        return None if n < 0 else [dec(self) for _ in range(n)]

    def tags(self):
        for _ in range(self.uvarint()):
            self.uvarint()  # tag
            self._take(self.uvarint())


# --------------------------------------------------------------------------------------------
# Framing and headers.


def request_header_v1(api_key, api_version, correlation_id, client_id="sidestream-tests"):
    return i16(api_key) + i16(api_version) + i32(correlation_id) + string(client_id)


def request_header_v2(api_key, api_version, correlation_id, client_id="sidestream-tests"):
    return request_header_v1(api_key, api_version, correlation_id, client_id) + NO_TAGS


def frame(payload):
    return i32(len(payload)) + payload


class ConnectionClosed(Exception):
    pass


class Conn:
    """One TCP connection speaking length-prefixed Kafka frames, with a deadline on every read."""

    def __init__(self, host, port, timeout=10.0, client_id="sidestream-tests"):
        self.client_id = client_id
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.next_correlation_id = 1

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def send_raw(self, data):
        self.sock.sendall(data)

    def _recv_exact(self, n, deadline):
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("no complete response within %.1fs (got %d of %d bytes)"
                                   % (self.timeout, len(buf), n))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(n - len(buf))
            except socket.timeout:
                continue
            except ConnectionResetError:
                chunk = b""
            if not chunk:
                raise ConnectionClosed("connection closed after %d of %d bytes" % (len(buf), n))
            buf += chunk
        return bytes(buf)

    def recv_frame(self):
        deadline = time.monotonic() + self.timeout
        (size,) = struct.unpack(">i", self._recv_exact(4, deadline))
        return self._recv_exact(size, deadline)

    def wait_closed(self, timeout=None):
        """Return normally if the peer closes the connection without sending anything more.

        Raises AssertionError if bytes arrive instead, or if the connection stays open.
        """
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        got = bytearray()
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError("connection still open after %.1fs (received %r)"
                                     % (timeout, bytes(got[:64])))
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                continue
            except (ConnectionResetError, BrokenPipeError):
                chunk = b""
            if not chunk:
                if got:
                    raise AssertionError("expected the connection to be closed without a response, "
                                         "but received %d bytes first: %r" % (len(got), bytes(got[:64])))
                return
            got += chunk

    def request(self, api_key, api_version, body, flexible_header=None, correlation_id=None):
        """Send one request and return (correlation_id_echoed, Reader positioned after the header).

        Response header v1 (with tagged fields) is used for flexible versions, except for
        ApiVersions which always answers with response header v0.
        """
        flexible = flexible_header if flexible_header is not None else is_flexible(api_key, api_version)
        cid = self.send(api_key, api_version, body, flexible, correlation_id)
        return self.read_response(cid, flexible and api_key != API_VERSIONS)

    def send(self, api_key, api_version, body, flexible=False, correlation_id=None):
        cid = self.next_correlation_id if correlation_id is None else correlation_id
        self.next_correlation_id = cid + 1
        hdr = (request_header_v2 if flexible else request_header_v1)(api_key, api_version, cid, self.client_id)
        self.send_raw(frame(hdr + body))
        return cid

    def read_response(self, expected_cid, flexible_response_header):
        r = Reader(self.recv_frame())
        cid = r.i32()
        if cid != expected_cid:
            raise AssertionError("correlation id %d, expected %d" % (cid, expected_cid))
        if flexible_response_header:
            r.tags()
        return r


# First flexible version of each API (request header v2 / response header v1 from there on).
FIRST_FLEXIBLE = {PRODUCE: 9, FETCH: 12, LIST_OFFSETS: 6, METADATA: 9, API_VERSIONS: 3,
                  CREATE_TOPICS: 5, DELETE_TOPICS: 4, 37: 2}


def is_flexible(api_key, api_version):
    return api_key in FIRST_FLEXIBLE and api_version >= FIRST_FLEXIBLE[api_key]


# --------------------------------------------------------------------------------------------
# ApiVersions.


def api_versions_v0_body():
    return b""


def api_versions_v3_body(name="sidestream-tests", version="1.0"):
    return compact_string(name) + compact_string(version) + NO_TAGS


def parse_api_versions_v0(r):
    """v0 body: error_code, [api_key, min_version, max_version]. Returns (error, {key: (min, max)})."""
    err = r.i16()
    keys = r.array(lambda r: (r.i16(), r.i16(), r.i16()))
    return err, {k: (lo, hi) for k, lo, hi in (keys or [])}


def parse_api_versions_v3(r):
    err = r.i16()

    def entry(r):
        e = (r.i16(), r.i16(), r.i16())
        r.tags()
        return e

    keys = r.compact_array(entry)
    throttle = r.i32()
    r.tags()
    return err, {k: (lo, hi) for k, lo, hi in (keys or [])}, throttle


def api_versions(conn, version=0):
    if version >= 3:
        r = conn.request(API_VERSIONS, version, api_versions_v3_body())
        err, keys, _ = parse_api_versions_v3(r)
        return err, keys
    r = conn.request(API_VERSIONS, version, b"")
    return parse_api_versions_v0(r)


# --------------------------------------------------------------------------------------------
# Metadata v1.


def metadata_v1_body(topics):
    """topics=None asks for all topics (v1 semantics); v1 always allows auto creation."""
    return array(topics, string)


def parse_metadata_v1(r):
    brokers = r.array(lambda r: dict(node_id=r.i32(), host=r.string(), port=r.i32(), rack=r.string()))
    controller_id = r.i32()

    def partition(r):
        return dict(error_code=r.i16(), partition_index=r.i32(), leader_id=r.i32(),
                    replica_nodes=r.array(lambda r: r.i32()), isr_nodes=r.array(lambda r: r.i32()))

    topics = r.array(lambda r: dict(error_code=r.i16(), name=r.string(), is_internal=r.boolean(),
                                    partitions=r.array(partition)))
    return dict(brokers=brokers, controller_id=controller_id, topics={t["name"]: t for t in topics})


def metadata(conn, topics):
    return parse_metadata_v1(conn.request(METADATA, 1, metadata_v1_body(topics)))


# --------------------------------------------------------------------------------------------
# Record batch v2.


def encode_record(offset_delta, key, value, headers=(), timestamp_delta=0):
    body = bytearray()
    body += i8(0)  # attributes
    body += varint(timestamp_delta)
    body += varint(offset_delta)
    for b in (key, value):
        if b is None:
            body += varint(-1)
        else:
            body += varint(len(b)) + b
    body += varint(len(headers))
    for hk, hv in headers:
        hkb = hk.encode()
        body += varint(len(hkb)) + hkb
        body += varint(-1) if hv is None else varint(len(hv)) + hv
    return varint(len(body)) + bytes(body)


def record_batch(records, base_offset=0, base_timestamp=None, magic=2, corrupt_crc=False,
                 attributes=0, producer_id=-1, producer_epoch=-1, base_sequence=-1):
    """records: list of (key, value) or (key, value, headers). Returns the encoded batch bytes."""
    if base_timestamp is None:
        base_timestamp = int(time.time() * 1000)
    recs = b"".join(encode_record(i, *r) for i, r in enumerate(records))
    after_crc = (i16(attributes) + i32(len(records) - 1) + i64(base_timestamp) + i64(base_timestamp)
                 + i64(producer_id) + i16(producer_epoch) + i32(base_sequence) + i32(len(records)) + recs)
    crc = crc32c(after_crc)
    if corrupt_crc:
        crc ^= 0xDEADBEEF
    after_length = i32(-1) + i8(magic) + u32(crc) + after_crc  # partitionLeaderEpoch, magic, crc
    return i64(base_offset) + i32(len(after_length)) + after_length


def parse_record_batches(data):
    """Parse a RECORDS blob (as returned by Fetch) into a list of batch dicts.

    Verifies each batch's CRC32C. Handles uncompressed batches only (the tests produce those).
    A trailing partial batch (allowed by Kafka) is ignored.
    """
    batches = []
    pos = 0
    while len(data) - pos >= 12:
        base_offset, length = struct.unpack_from(">qi", data, pos)
        if len(data) - pos - 12 < length:
            break  # partial batch at the end
        r = Reader(data[pos + 12:pos + 12 + length])
        leader_epoch = r.i32()
        magic = r.i8()
        crc = r.u32()
        crc_ok = crc32c(r.data[r.pos:]) == crc
        attributes = r.i16()
        last_offset_delta = r.i32()
        base_ts = r.i64()
        max_ts = r.i64()
        pid = r.i64()
        pepoch = r.i16()
        bseq = r.i32()
        count = r.i32()
        records = []
        if attributes & 0x7 == 0:
            for _ in range(count):
                rec_len = r.varint()
                end = r.pos + rec_len
                r.i8()
                ts_delta = r.varint()
                off_delta = r.varint()
                kl = r.varint()
                key = None if kl < 0 else r._take(kl)
                vl = r.varint()
                value = None if vl < 0 else r._take(vl)
                headers = []
                for _ in range(r.varint()):
                    hk = r._take(r.varint()).decode()
                    hl = r.varint()
                    headers.append((hk, None if hl < 0 else r._take(hl)))
                assert r.pos == end, "record length mismatch"
                records.append(dict(offset=base_offset + off_delta, timestamp=base_ts + ts_delta,
                                    key=key, value=value, headers=headers))
        batches.append(dict(base_offset=base_offset, magic=magic, crc_ok=crc_ok, attributes=attributes,
                            last_offset_delta=last_offset_delta, count=count, records=records,
                            producer_id=pid, producer_epoch=pepoch, base_sequence=bseq,
                            leader_epoch=leader_epoch, max_timestamp=max_ts))
        pos += 12 + length
    return batches


# --------------------------------------------------------------------------------------------
# Produce v3 and v9.


def produce_body(version, topic_data, acks=-1, timeout_ms=30000, transactional_id=None):
    """topic_data: list of (topic, [(partition, records_bytes_or_None)])."""
    if version >= 9:
        def part_v9(p):
            return i32(p[0]) + compact_bytes(p[1]) + NO_TAGS

        def topic_v9(t):
            return compact_string(t[0]) + compact_array(t[1], part_v9) + NO_TAGS

        return (compact_string(transactional_id) + i16(acks) + i32(timeout_ms)
                + compact_array(topic_data, topic_v9) + NO_TAGS)

    def part(p):
        return i32(p[0]) + nbytes(p[1])

    def topic(t):
        return string(t[0]) + array(t[1], part)

    return string(transactional_id) + i16(acks) + i32(timeout_ms) + array(topic_data, topic)


def parse_produce_response(r, version):
    """Returns {(topic, partition): dict(error_code, base_offset, ...)}."""
    out = {}
    if version >= 9:
        def perr(r):
            e = dict(batch_index=r.i32(), message=r.compact_string())
            r.tags()
            return e

        def part(r):
            p = dict(index=r.i32(), error_code=r.i16(), base_offset=r.i64(), log_append_time_ms=r.i64(),
                     log_start_offset=r.i64(), record_errors=r.compact_array(perr),
                     error_message=r.compact_string())
            r.tags()
            return p

        def topic(r):
            t = (r.compact_string(), r.compact_array(part))
            r.tags()
            return t

        topics = r.compact_array(topic)
        r.i32()  # throttle_time_ms
        r.tags()
    else:
        def part(r):
            p = dict(index=r.i32(), error_code=r.i16(), base_offset=r.i64())
            if version >= 2:
                p["log_append_time_ms"] = r.i64()
            if version >= 5:
                p["log_start_offset"] = r.i64()
            return p

        topics = r.array(lambda r: (r.string(), r.array(part)))
        r.i32()  # throttle_time_ms
    for name, parts in topics:
        for p in parts:
            out[(name, p["index"])] = p
    return out


def produce(conn, version, topic_data, acks=-1, timeout_ms=30000):
    r = conn.request(PRODUCE, version, produce_body(version, topic_data, acks, timeout_ms))
    return parse_produce_response(r, version)


# --------------------------------------------------------------------------------------------
# Fetch v4.


def fetch_v4_body(topics, max_wait_ms=100, min_bytes=1, max_bytes=50 * 1024 * 1024, isolation_level=0):
    """topics: list of (topic, [(partition, fetch_offset, partition_max_bytes)])."""
    def part(p):
        return i32(p[0]) + i64(p[1]) + i32(p[2])

    def topic(t):
        return string(t[0]) + array(t[1], part)

    return i32(-1) + i32(max_wait_ms) + i32(min_bytes) + i32(max_bytes) + i8(isolation_level) + array(topics, topic)


def _fetch_responses(r, version):
    """The responses array of Fetch v4-v11: {(topic, partition): partition}."""
    def part(r):
        p = dict(partition_index=r.i32(), error_code=r.i16(), high_watermark=r.i64(),
                 last_stable_offset=r.i64())
        if version >= 5:
            p["log_start_offset"] = r.i64()
        p["aborted_transactions"] = r.array(lambda r: (r.i64(), r.i64()))
        p["records"] = r.nbytes()
        return p

    out = {}
    for name, parts in r.array(lambda r: (r.string(), r.array(part))):
        for p in parts:
            out[(name, p["partition_index"])] = p
    return out


def parse_fetch_v4(r):
    r.i32()  # throttle_time_ms
    return _fetch_responses(r, 4)


FETCH_SESSION_ID_NOT_FOUND = 70
INVALID_FETCH_SESSION_EPOCH = 71


def fetch_v7_body(topics, session_id=0, session_epoch=-1, forgotten=(), max_wait_ms=100, min_bytes=1,
                  max_bytes=50 * 1024 * 1024):
    """Fetch v7, the first with fetch sessions (KIP-227).
    topics: list of (topic, [(partition, fetch_offset, partition_max_bytes)]);
    forgotten: list of (topic, [partition])."""
    def part(p):
        return i32(p[0]) + i64(p[1]) + i64(-1) + i32(p[2])

    def topic(t):
        return string(t[0]) + array(t[1], part)

    def forget(t):
        return string(t[0]) + array(t[1], i32)

    return (i32(-1) + i32(max_wait_ms) + i32(min_bytes) + i32(max_bytes) + i8(0) + i32(session_id)
            + i32(session_epoch) + array(topics, topic) + array(list(forgotten), forget))


def parse_fetch_v7(r):
    """(error_code, session_id, {(topic, partition): partition})."""
    r.i32()  # throttle_time_ms
    error_code, session_id = r.i16(), r.i32()
    return error_code, session_id, _fetch_responses(r, 7)


def fetch(conn, topic, partition, offset, max_wait_ms=100, partition_max_bytes=10 * 1024 * 1024):
    r = conn.request(FETCH, 4, fetch_v4_body([(topic, [(partition, offset, partition_max_bytes)])], max_wait_ms))
    return parse_fetch_v4(r)[(topic, partition)]


# --------------------------------------------------------------------------------------------
# ListOffsets v1.

LATEST = -1
EARLIEST = -2


def list_offsets_v1_body(topics):
    """topics: list of (topic, [(partition, timestamp)])."""
    def part(p):
        return i32(p[0]) + i64(p[1])

    def topic(t):
        return string(t[0]) + array(t[1], part)

    return i32(-1) + array(topics, topic)


def parse_list_offsets_v1(r):
    def part(r):
        return dict(partition_index=r.i32(), error_code=r.i16(), timestamp=r.i64(), offset=r.i64())

    out = {}
    for name, parts in r.array(lambda r: (r.string(), r.array(part))):
        for p in parts:
            out[(name, p["partition_index"])] = p
    return out


def list_offsets(conn, topic, partition, timestamp):
    r = conn.request(LIST_OFFSETS, 1, list_offsets_v1_body([(topic, [(partition, timestamp)])]))
    return parse_list_offsets_v1(r)[(topic, partition)]


def list_offsets_v7(conn, topic, partition, timestamp):
    """ListOffsets v7 (Kafka 4.4 refuses v1, and max timestamp needs v7):
    {partition_index, error_code, timestamp, offset, leader_epoch}."""
    def part(p):
        return i32(p) + i32(-1) + i64(timestamp) + NO_TAGS

    def tpc(t):
        return compact_string(t) + compact_array([partition], part) + NO_TAGS

    r = conn.request(LIST_OFFSETS, 7, i32(-1) + i8(0) + compact_array([topic], tpc) + NO_TAGS)

    def rpart(r):
        p = dict(partition_index=r.i32(), error_code=r.i16(), timestamp=r.i64(), offset=r.i64(), leader_epoch=r.i32())
        r.tags()
        return p

    def rtopic(r):
        t = (r.compact_string(), r.compact_array(rpart))
        r.tags()
        return t

    r.i32()  # throttle_time_ms
    out = {}
    for name, parts in r.compact_array(rtopic):
        for p in parts:
            out[(name, p["partition_index"])] = p
    return out[(topic, partition)]


# --------------------------------------------------------------------------------------------
# CreateTopics v2 and DeleteTopics v1.


def create_topics_v2_body(topics, timeout_ms=30000, validate_only=False):
    """topics: list of (name, num_partitions, replication_factor)."""
    def topic(t):
        return (string(t[0]) + i32(t[1]) + i16(t[2]) + array([]) + array([]))  # no assignments/configs

    return array(topics, topic) + i32(timeout_ms) + i8(1 if validate_only else 0)


def parse_create_topics_v2(r):
    r.i32()  # throttle_time_ms
    return {name: (err, msg) for name, err, msg in r.array(lambda r: (r.string(), r.i16(), r.string()))}


def create_topics(conn, topics, validate_only=False):
    """Returns {name: (error_code, error_message)}."""
    r = conn.request(CREATE_TOPICS, 2, create_topics_v2_body(topics, validate_only=validate_only))
    return parse_create_topics_v2(r)


def delete_topics(conn, names, timeout_ms=30000):
    """DeleteTopics v1. Returns {name: error_code}."""
    r = conn.request(DELETE_TOPICS, 1, array(names, string) + i32(timeout_ms))
    r.i32()  # throttle_time_ms
    return dict(r.array(lambda r: (r.string(), r.i16())))


# --------------------------------------------------------------------------------------------
# Producer ids and transactions: InitProducerId v1, AddPartitionsToTxn v2, EndTxn v1,
# DescribeTransactions v0, ListTransactions v0 (the last two are flexible only).

INIT_PRODUCER_ID = 22
ADD_PARTITIONS_TO_TXN = 24
END_TXN = 26
DESCRIBE_TRANSACTIONS = 65
LIST_TRANSACTIONS = 66
TRANSACTIONAL_ID_NOT_FOUND = 105
TRANSACTIONAL = 0x10  # record batch attribute


def init_producer_id(conn, transactional_id=None, timeout_ms=60000):
    """Returns (error_code, producer_id, epoch)."""
    r = conn.request(INIT_PRODUCER_ID, 1, string(transactional_id) + i32(timeout_ms), flexible_header=False)
    r.i32()  # throttle_time_ms
    return r.i16(), r.i64(), r.i16()


def add_partitions_to_txn(conn, transactional_id, producer_id, epoch, topic, partitions):
    """Returns {partition: error_code}."""
    body = (string(transactional_id) + i64(producer_id) + i16(epoch)
            + array([(topic, partitions)], lambda t: string(t[0]) + array(t[1], i32)))
    r = conn.request(ADD_PARTITIONS_TO_TXN, 2, body, flexible_header=False)
    r.i32()  # throttle_time_ms
    topics = r.array(lambda r: (r.string(), r.array(lambda r: (r.i32(), r.i16()))))
    return {p: e for _, parts in topics for p, e in parts}


def end_txn(conn, transactional_id, producer_id, epoch, commit):
    """Returns the error code."""
    r = conn.request(END_TXN, 1, string(transactional_id) + i64(producer_id) + i16(epoch) + i8(1 if commit else 0),
                     flexible_header=False)
    r.i32()  # throttle_time_ms
    return r.i16()


def describe_transaction(conn, transactional_id):
    """One transactional id: dict(error_code, state, producer_id, epoch, partitions)."""
    r = conn.request(DESCRIBE_TRANSACTIONS, 0, compact_array([transactional_id], compact_string) + NO_TAGS,
                     flexible_header=True)
    r.i32()  # throttle_time_ms

    def topic(r):
        t = (r.compact_string(), r.compact_array(lambda r: r.i32()))
        r.tags()
        return t

    def state(r):
        s = dict(error_code=r.i16(), transactional_id=r.compact_string(), state=r.compact_string(),
                 timeout_ms=r.i32(), start_time_ms=r.i64(), producer_id=r.i64(), epoch=r.i16(),
                 partitions=sorted((t, p) for t, ps in r.compact_array(topic) for p in ps))
        r.tags()
        return s

    (s,) = r.compact_array(state)
    return s


def list_transactions(conn):
    """Every transaction: {transactional_id: (producer_id, state)}."""
    r = conn.request(LIST_TRANSACTIONS, 0, compact_array([], compact_string) + compact_array([], i64) + NO_TAGS,
                     flexible_header=True)
    r.i32()  # throttle_time_ms
    err = r.i16()
    assert err == NONE, "ListTransactions error %d" % err
    r.compact_array(lambda r: r.compact_string())  # unknown_state_filters

    def state(r):
        s = (r.compact_string(), r.i64(), r.compact_string())
        r.tags()
        return s

    return {t: (pid, st) for t, pid, st in r.compact_array(state)}


# --------------------------------------------------------------------------------------------
# SASL (v1 of both: the tokens travel in SaslAuthenticate requests).

SASL_HANDSHAKE = 17
SASL_AUTHENTICATE = 36


def sasl_handshake(conn, mechanism):
    """SaslHandshake v1; returns the error code."""
    r = conn.request(SASL_HANDSHAKE, 1, string(mechanism))
    err = r.i16()
    r.array(lambda r: r.string())
    return err


def sasl_authenticate(conn, token):
    """SaslAuthenticate v1; returns (error code, error message or "")."""
    r = conn.request(SASL_AUTHENTICATE, 1, nbytes(token))
    err = r.i16()
    message = r.string() or ""
    r.nbytes()
    r.i64()
    return err, message


# --------------------------------------------------------------------------------------------
# CreatePartitions v1 (the last version without tagged fields) and v3 (flexible).

CREATE_PARTITIONS = 37
INVALID_REPLICA_ASSIGNMENT = 39
INVALID_REQUEST = 42
POLICY_VIOLATION = 44
TOPIC_AUTHORIZATION_FAILED = 29
THROTTLING_QUOTA_EXCEEDED = 89


def create_partitions(conn, topics, validate_only=False, timeout_ms=30000, version=1):
    """topics: list of (name, count, assignments), assignments None or a list of broker id lists.
    Returns (throttle_time_ms, [(name, error_code, error_message)] in answer order)."""
    flexible = version >= 2
    arr, st = (compact_array, compact_string) if flexible else (array, string)
    tags = NO_TAGS if flexible else b""

    def topic(t):
        name, count, assignments = t
        body = st(name) + i32(count)
        if assignments is None:
            return body + (uvarint(0) if flexible else i32(-1)) + tags
        return body + arr(assignments, lambda a: arr(a, i32) + tags) + tags

    body = arr(topics, topic) + i32(timeout_ms) + i8(1 if validate_only else 0) + tags
    r = conn.request(CREATE_PARTITIONS, version, body)
    throttle = r.i32()
    if flexible:
        results = r.compact_array(lambda r: (r.compact_string(), r.i16(), r.compact_string(), r.tags())[:3])
    else:
        results = r.array(lambda r: (r.string(), r.i16(), r.string()))
    return throttle, results
