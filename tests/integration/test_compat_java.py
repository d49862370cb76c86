"""Apache Kafka 4.4.0's own Java client and CLI tools, unchanged, against the server.

The Java scenarios live in tests/compat/java/Compat.java; the tools are the classes the shell
scripts of Kafka's bin/ run (kafka-topics.sh -> org.apache.kafka.tools.TopicCommand, ...), with
the same arguments. Scenarios that need consumer groups skip, naming the missing API, until the
server advertises it (issue 8); tests/compat/FINDINGS.md lists them.
"""

import re
import subprocess
import uuid

import pytest

import kafka_wire
from compat import java_cmd, observations, record, run
from conftest import SidestreamServer, free_port, poll_until

TOOLS = "org.apache.kafka.tools."
FIND_COORDINATOR = 10
JOIN_GROUP = 11
CONSUMER_GROUP_HEARTBEAT = 68
ADD_PARTITIONS_TO_TXN = 24


def topic_name(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def compat(*args):
    return java_cmd("Compat", *args)


def tool(name, *args):
    return java_cmd(TOOLS + name, *args)


def require_apis(server, *keys):
    """Skips unless the server advertises every API key (groups are issue 8)."""
    with server.connect() as c:
        _, apis = kafka_wire.api_versions(c, 0)
    missing = [k for k in keys if k not in apis]
    if missing:
        pytest.skip("needs API key(s) %s (consumer groups, issue 8): not advertised by this server" % missing)


# ------------------------------------------------------------------------- the Java client

def test_producer_defaults_then_assign_consumer(server, request):
    """Producer with every default (acks=all, idempotence on); consumers with assign(), one
    without and one with a group.id (assign() and no commits need no coordinator)."""
    topic = topic_name("java-pc")
    n = 3000
    produced = record(request, observations(run(compat("produce", server.bootstrap, topic, n, 3))[0]))
    assert produced["produced.total"] == str(n)
    assert produced["producer.acks"] == "all (default)"
    consumed = record(request, observations(run(compat("consume-assign", server.bootstrap, topic, n))[0]))
    assert consumed["consumer.partitions"] == "3"
    assert consumed["consumed.total"] == str(n)
    for p in range(3):
        assert consumed["consumed.partition.%d" % p] == produced["produced.partition.%d" % p]
    with_group = record(request, observations(run(compat("consume-assign", server.bootstrap, topic, n, "g-" + topic))[0]))
    assert with_group == consumed


def test_default_producer_under_object_store_faults(faulty_server):
    """The default (idempotent) producer while 30% of the server's object store requests fail:
    offsets dense and in send order, each record consumed once (after a restart without faults).
    A run may need few PUTs: topics are produced until faults were injected."""
    srv = faulty_server
    n = 3000
    produced = {}
    while srv.object_store_errors() == 0:
        assert len(produced) < 10, "no fault was injected in 10 runs: the test proves nothing"
        topic = topic_name("java-faults")
        produced[topic] = observations(run(compat("produce", srv.bootstrap, topic, n, 3))[0])
        assert produced[topic]["produced.total"] == str(n)
    srv.stop()
    srv.extra_env = {}
    srv.start()
    for topic, obs in produced.items():
        consumed = observations(run(compat("consume-assign", srv.bootstrap, topic, n))[0])
        assert consumed["consumed.total"] == str(n)
        for p in range(3):
            assert consumed["consumed.partition.%d" % p] == obs["produced.partition.%d" % p]


def test_admin_client(server, request):
    """createTopics, listTopics, describeTopics (paged too), describeConfigs, describeCluster, listOffsets
    (earliest, latest, max timestamp, by timestamp), deleteRecords, deleteTopics."""
    obs = record(request, observations(run(compat("admin", server.bootstrap, topic_name("java-admin")))[0]))
    assert obs == {
        "create": "ok",
        "create.again": "TopicExistsException",
        "list.contains": "true",
        "describe.partitions": "3",
        "describe.internal": "false",
        "describe.paged.partitions": "[0, 1, 2]",
        "describe.missing": "UnknownTopicOrPartitionException",
        "configs.retention.ms": "3600000 DYNAMIC_TOPIC_CONFIG",
        "configs.cleanup.policy": "delete DEFAULT_CONFIG",
        "cluster.nodes": "1",
        "offsets.empty.latest": "0",
        "offsets.earliest": "0",
        "offsets.latest": "5",
        "offsets.maxTimestamp": "4 ts+4000",
        "offsets.forTimestamp.after": "-1",
        "deleteRecords.lowWatermark": "2",
        "offsets.earliest.afterDelete": "2",
        "deleteRecords.beyond": "OffsetOutOfRangeException",
        "delete": "ok",
        "list.after.delete.contains": "false",
    }


@pytest.mark.parametrize("protocol", ["classic", "consumer"])
def test_group_consumer_subscribe(server, request, protocol):
    """A consumer with group.id and subscribe(), both group protocols, commits what it read."""
    require_apis(server, FIND_COORDINATOR, *([JOIN_GROUP] if protocol == "classic" else [CONSUMER_GROUP_HEARTBEAT]))
    topic = topic_name("java-group-" + protocol)
    run(compat("produce", server.bootstrap, topic, 1000, 3))
    obs = record(request, observations(run(compat("consume-group", server.bootstrap, topic, 1000, protocol, "g-" + topic))[0]))
    assert obs == {"group.assigned": "3", "group.consumed": "1000"}


# ------------------------------------------------------------------------- the CLI tools

def test_topic_command(server, request):
    """kafka-topics.sh: --create (with a config), --list, --describe, --delete."""
    topic = topic_name("cli-topics")
    bs = ["--bootstrap-server", server.bootstrap]
    out, _ = run(tool("TopicCommand", *bs, "--create", "--topic", topic, "--partitions", 2,
                      "--replication-factor", 1, "--config", "retention.ms=1000000"))
    assert out.strip() == "Created topic %s." % topic
    out, _ = run(tool("TopicCommand", *bs, "--list"))
    assert topic in out.split()
    out, _ = run(tool("TopicCommand", *bs, "--describe", "--topic", topic))
    lines = out.strip().splitlines()
    record(request, {"describe.%d" % i: re.sub(r"\s+", " ", re.sub(r"TopicId: \S+", "TopicId: *", ln.replace(topic, "T")))
                     for i, ln in enumerate(lines)})
    # A KRaft broker adds its cluster-level min.insync.replicas to Configs (FINDINGS.md).
    m = re.match(r"Topic: %s\tTopicId: \S+\tPartitionCount: 2\tReplicationFactor: 1\tConfigs: (\S+)$" % topic, lines[0])
    assert m and "retention.ms=1000000" in m.group(1).split(","), out
    assert [re.sub(r"\s+", " ", ln).strip() for ln in lines[1:]] == [
        "Topic: %s Partition: %d Leader: 1 Replicas: 1 Isr: 1 Elr: LastKnownElr:" % (topic, p) for p in (0, 1)], out
    out, _ = run(tool("TopicCommand", *bs, "--create", "--topic", topic, "--partitions", 1), check=False)
    record(request, {"create.again": out.strip().replace(topic, "T")})
    assert "Topic '%s' already exists." % topic in out, out
    run(tool("TopicCommand", *bs, "--delete", "--topic", topic))
    out, _ = run(tool("TopicCommand", *bs, "--list"))
    assert topic not in out.split()


def test_console_producer_and_consumer(server, request):
    """kafka-console-producer.sh with keys, then kafka-console-consumer.sh on a partition from
    the earliest offset (no group), printing keys and offsets."""
    topic = topic_name("cli-console")
    bs = ["--bootstrap-server", server.bootstrap]
    run(tool("TopicCommand", *bs, "--create", "--topic", topic, "--partitions", 1))
    lines = ["k%d:value %d" % (i, i) for i in range(50)]
    for half in (lines[:25], lines[25:]):  # two runs: at least two batches
        run(tool("ConsoleProducer", *bs, "--topic", topic, "--reader-property", "parse.key=true",
                 "--reader-property", "key.separator=:"), stdin="\n".join(half) + "\n")
    incremental = 'sidestream_fetch_requests_total{session="incremental"}'
    before = server.metrics().get(incremental, 0)
    # One batch per fetch: the consumer opens a fetch session (KIP-227), then fetches incrementally.
    out, err = run(tool("consumer.ConsoleConsumer", *bs, "--topic", topic, "--partition", 0, "--offset", "earliest",
                        "--command-property", "max.partition.fetch.bytes=1",
                        "--max-messages", len(lines), "--timeout-ms", 60000,
                        "--formatter-property", "print.key=true", "--formatter-property", "print.offset=true",
                        "--formatter-property", "key.separator=:"))
    record(request, {"consumed.lines": len(out.strip().splitlines())})
    assert out.strip().splitlines() == ["Offset:%d:%s" % (i, ln) for i, ln in enumerate(lines)]
    assert "Processed a total of %d messages" % len(lines) in err
    assert server.metrics()[incremental] > before


def test_get_offset_shell_and_producer_performance(server, request):
    """kafka-producer-perf-test.sh (defaults: acks=all, idempotent) writes N records; then
    kafka-get-offsets.sh reports latest (-1), earliest (-2) and max-timestamp (-3) offsets."""
    topic = topic_name("cli-perf")
    bs = ["--bootstrap-server", server.bootstrap]
    n = 20000
    run(tool("TopicCommand", *bs, "--create", "--topic", topic, "--partitions", 3))
    out, _ = run(tool("ProducerPerformance", "--topic", topic, "--num-records", n, "--record-size", 100,
                      "--throughput", -1, "--command-property", "bootstrap.servers=" + server.bootstrap))
    assert re.search(r"^%d records sent" % n, out, re.M), out

    def offsets(time_spec):
        out, _ = run(tool("GetOffsetShell", *bs, "--topic", topic, "--time", time_spec))
        got = {}
        for line in out.strip().splitlines():
            t, p, o = line.rsplit(":", 2)
            assert t == topic, line
            got[int(p)] = int(o)
        return got

    latest = offsets(-1)
    record(request, {"latest.total": sum(latest.values()), "partitions": len(latest)})
    assert sorted(latest) == [0, 1, 2] and sum(latest.values()) == n, latest
    assert offsets(-2) == {0: 0, 1: 0, 2: 0}
    max_ts = offsets(-3)
    assert all(0 <= max_ts[p] < latest[p] or latest[p] == 0 for p in latest), (max_ts, latest)


def test_delete_records_command(server, request, tmp_path):
    """kafka-delete-records.sh moves log starts (one partition to an offset, another to the high
    watermark with -1); kafka-get-offsets.sh --time -2 then reports them."""
    topic = topic_name("cli-delete-records")
    bs = ["--bootstrap-server", server.bootstrap]
    run(tool("TopicCommand", *bs, "--create", "--topic", topic, "--partitions", 2))
    run(tool("ProducerPerformance", "--topic", topic, "--num-records", 2000, "--record-size", 100,
             "--throughput", -1, "--command-property", "bootstrap.servers=" + server.bootstrap))
    spec = tmp_path / "delete.json"
    spec.write_text('{"version": 1, "partitions": [{"topic": "%s", "partition": 0, "offset": 7},'
                    ' {"topic": "%s", "partition": 1, "offset": -1}]}' % (topic, topic))
    out, _ = run(tool("DeleteRecordsCommand", *bs, "--offset-json-file", spec))
    record(request, {"output": " ".join(out.split())})
    assert re.search(r"partition: %s-0\s+low_watermark: 7" % re.escape(topic), out), out

    def offsets(time_spec):
        out, _ = run(tool("GetOffsetShell", *bs, "--topic", topic, "--time", time_spec))
        return {int(line.rsplit(":", 2)[1]): int(line.rsplit(":", 2)[2]) for line in out.strip().splitlines()}

    latest, earliest = offsets(-1), offsets(-2)
    assert earliest == {0: 7, 1: latest[1]}, (earliest, latest)
    assert re.search(r"partition: %s-1\s+low_watermark: %d" % (re.escape(topic), latest[1]), out), out


def test_consumer_group_command_and_consumer_performance(server, request):
    """kafka-consumer-perf-test.sh reads with a group; kafka-consumer-groups.sh --list,
    --describe, --reset-offsets --to-earliest --execute."""
    require_apis(server, FIND_COORDINATOR, JOIN_GROUP)
    topic = topic_name("cli-groups")
    group = "g-" + topic
    bs = ["--bootstrap-server", server.bootstrap]
    run(compat("produce", server.bootstrap, topic, 1000, 2))
    out, _ = run(tool("ConsumerPerformance", *bs, "--topic", topic, "--messages", 1000, "--group", group,
                      "--timeout", 60000))
    out, _ = run(tool("consumer.group.ConsumerGroupCommand", *bs, "--list"))
    assert group in out.split()
    out, _ = run(tool("consumer.group.ConsumerGroupCommand", *bs, "--describe", "--group", group))
    rows = [ln.split() for ln in out.strip().splitlines() if ln.startswith(group)]
    assert sorted((r[1], r[2], r[3], r[4]) for r in rows) == sorted(
        (topic, str(p), r[4], r[4]) for p, r in enumerate(sorted(rows, key=lambda r: int(r[2])))), out
    assert sum(int(r[3]) for r in rows) == 1000, out
    out, _ = run(tool("consumer.group.ConsumerGroupCommand", *bs, "--reset-offsets", "--group", group,
                      "--topic", topic, "--to-earliest", "--execute"))
    rows = [ln.split() for ln in out.strip().splitlines() if ln.startswith(group)]
    assert sorted((r[1], r[2], r[3]) for r in rows) == [(topic, "0", "0"), (topic, "1", "0")], out
    record(request, {"reset": len(rows)})


# ------------------------------------------------------------------------- Kafka Connect

def test_connect_standalone_file_source_to_sink(server, request, tmp_path):
    """connect-standalone.sh (Connect 4.3.1: connect-file 4.4.0 is not on Maven Central) with
    FileStreamSource (file -> topic) and, once groups exist, FileStreamSink (topic -> file,
    through the sink's consumer group)."""
    topic = topic_name("connect")
    lines = ["line %d" % i for i in range(200)]
    (tmp_path / "in.txt").write_text("\n".join(lines) + "\n")
    with server.connect() as c:
        _, apis = kafka_wire.api_versions(c, 0)
    with_sink = FIND_COORDINATOR in apis and JOIN_GROUP in apis
    worker = tmp_path / "worker.properties"
    worker.write_text("\n".join([
        "bootstrap.servers=%s" % server.bootstrap,
        "key.converter=org.apache.kafka.connect.storage.StringConverter",
        "value.converter=org.apache.kafka.connect.storage.StringConverter",
        "offset.storage.file.filename=%s" % (tmp_path / "offsets"),
        "offset.flush.interval.ms=500",
        "listeners=http://127.0.0.1:%d" % free_port(),
    ]) + "\n")
    source = tmp_path / "source.properties"
    source.write_text("name=file-source\nconnector.class=org.apache.kafka.connect.file.FileStreamSourceConnector\n"
                      "tasks.max=1\nfile=%s\ntopic=%s\n" % (tmp_path / "in.txt", topic))
    sink = tmp_path / "sink.properties"
    sink.write_text("name=file-sink\nconnector.class=org.apache.kafka.connect.file.FileStreamSinkConnector\n"
                    "tasks.max=1\nfile=%s\ntopics=%s\n" % (tmp_path / "out.txt", topic))
    log = open(tmp_path / "connect.log", "wb")
    cmd = java_cmd("org.apache.kafka.connect.cli.ConnectStandalone", worker, source, *([sink] if with_sink else []),
                   classpath="connect")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    try:
        def end_offset():
            if proc.poll() is not None:
                pytest.fail("connect exited with %s:\n%s" % (proc.returncode, (tmp_path / "connect.log").read_text()[-5000:]))
            with server.connect() as c:
                r = kafka_wire.list_offsets(c, topic, 0, kafka_wire.LATEST)
                return r["error_code"] == 0 and r["offset"] == len(lines)

        poll_until(end_offset, 120, interval=0.2, what="the source connector to write %d records" % len(lines))
        out, _ = run(tool("consumer.ConsoleConsumer", "--bootstrap-server", server.bootstrap, "--topic", topic,
                          "--partition", 0, "--offset", "earliest", "--max-messages", len(lines), "--timeout-ms", 60000))
        assert out.strip().splitlines() == lines
        record(request, {"source.records": len(lines)})
        if not with_sink:
            pytest.skip("FileStreamSink needs consumer groups (FindCoordinator, JoinGroup: issue 8); "
                        "the source half passed")
        poll_until(lambda: (tmp_path / "out.txt").exists()
                   and (tmp_path / "out.txt").read_text().splitlines() == lines,
                   120, interval=0.2, what="the sink connector to write every line")
        record(request, {"sink.lines": len(lines)})
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


# ------------------------------------------------------------------------- Kafka Streams

def test_streams_word_count(server, request, tmp_path):
    """Kafka Streams' word count: a repartition topic and a changelog (internal topics the
    application creates), a consumer group, offsets committed every 100 ms."""
    require_apis(server, FIND_COORDINATOR, JOIN_GROUP)
    obs = record(request, observations(run(compat("wordcount", server.bootstrap, topic_name("streams"), tmp_path))[0]))
    assert obs == {"wordcount.words": "8", "wordcount.kafka": "3"}


def test_streams_word_count_exactly_once_v2(server, request, tmp_path):
    """The same topology with processing.guarantee=exactly_once_v2: one transactional producer
    per stream thread, offsets committed in its transactions, read back read_committed. With
    transaction version 2 the offsets go in TxnOffsetCommit v5, which adds the group to the
    transaction (no AddOffsetsToTxn), and EndTxn is v5."""
    require_apis(server, FIND_COORDINATOR, JOIN_GROUP, ADD_PARTITIONS_TO_TXN)
    before = requests_by_api(server)
    obs = record(request, observations(run(compat("wordcount", server.bootstrap, topic_name("streams-eos"), tmp_path,
                                                  "exactly_once_v2"))[0]))
    assert obs == {"wordcount.words": "8", "wordcount.kafka": "3"}
    after = requests_by_api(server)
    used = sorted(k for k in after if after[k] > before.get(k, 0))
    txn_apis = [k for k in used if k[0] in ("TxnOffsetCommit", "AddOffsetsToTxn", "AddPartitionsToTxn", "EndTxn")]
    print("Kafka Streams exactly_once_v2, transaction API versions used:", txn_apis)
    assert ("TxnOffsetCommit", 5) in txn_apis and ("EndTxn", 5) in txn_apis, txn_apis
    assert not [k for k in txn_apis if k[0] in ("AddOffsetsToTxn", "AddPartitionsToTxn")], txn_apis


def test_streams_restores_its_state_store_from_a_compacted_changelog(request, tmp_path):
    """Kafka Streams after log compaction: 300 updates of 5 word counts; the app stops, the
    server compacts the changelog (cleanup.policy=compact, which Streams sets) down to the latest
    count per word; the app starts again with an empty state directory, restores its store from
    the changelog and counts on from there."""
    env = {"SIDESTREAM_COMPACTION_CHECK_INTERVAL_MS": "200", "SIDESTREAM_COMPACTION_MIN_AGE_MS": "0"}
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log", extra_env=env).start()
    try:
        obs = record(request, observations(run(compat("wordcount-restore", srv.bootstrap, topic_name("restore"),
                                                      tmp_path / "state"))[0]))
    finally:
        srv.close()
    assert obs == {"changelog.cleanup.policy": "compact", "changelog.compacted": "true", "restored.w0": "61"}


# ------------------------------------------------------------------------- transactions

def requests_by_api(server):
    """{(api, version): requests read} from the server's /metrics."""
    out = {}
    for key, value in server.metrics().items():
        m = re.match(r'sidestream_requests_total\{api="(\w+)",version="(\d+)"\}', key)
        if m:
            out[(m.group(1), int(m.group(2)))] = value
    return out


def transaction_batches(server, topic, partitions):
    """Every batch of the topic (read_uncommitted, markers included), by producer id:
    [(partition, 'data' | 'commit' | 'abort', epoch)] in offset order per partition."""
    by_producer = {}
    with server.connect() as c:
        for p in range(partitions):
            offset = 0
            while True:
                got = kafka_wire.fetch(c, topic, p, offset)
                assert got["error_code"] == 0, got
                batches = kafka_wire.parse_record_batches(got["records"])
                if not batches:
                    break
                for b in batches:
                    if b["attributes"] & 0x20:  # a control batch: key = version, type (0 abort, 1 commit)
                        kind = "commit" if b["records"][0]["key"][2:4] == b"\x00\x01" else "abort"
                    else:
                        kind = "data"
                    by_producer.setdefault(b["producer_id"], []).append((p, kind, b["producer_epoch"]))
                    offset = b["base_offset"] + b["last_offset_delta"] + 1
    return by_producer


def test_transactional_producer_and_read_committed_consumer(server, request):
    """Commit, abort, commit; read_committed vs read_uncommitted; fencing by a second producer
    with the same transactional.id; Admin describeTransactions and listTransactions. The Java
    4.4 producer negotiates transaction version 2 (KIP-890 part 2): EndTxn v5, no
    AddPartitionsToTxn, and the epoch bumped by one at every commit and abort, which the
    markers carry (read back raw)."""
    require_apis(server, ADD_PARTITIONS_TO_TXN)
    before = requests_by_api(server)
    topic = topic_name("java-txn")
    obs = record(request, observations(run(compat("transactions", server.bootstrap, topic))[0]))
    assert obs == {
        "txn.read_committed": "20",
        "txn.read_uncommitted": "30",
        "txn.zombie.commit": "ProducerFencedException",
        "txn.after.fencing": "21",
        "txn.describe.state": "CompleteCommit",
        "txn.list.fence": "1",
    }
    after = requests_by_api(server)
    used = {k: after[k] - before.get(k, 0) for k in after if after[k] > before.get(k, 0)}
    versions = {api: sorted(v for (a, v) in used if a == api)
                for api in ("EndTxn", "Produce", "AddPartitionsToTxn", "AddOffsetsToTxn", "InitProducerId")}
    print("Java 4.4 transactional producer, API versions used:", versions)
    assert versions["EndTxn"] == [5], versions
    assert versions["AddPartitionsToTxn"] == [] and versions["AddOffsetsToTxn"] == [], versions
    assert versions["Produce"] and min(versions["Produce"]) >= 12, versions
    # The producer of the commit, abort, commit sequence: the one with three markers per partition.
    by_producer = transaction_batches(server, topic, 2)
    sequences = [bs for bs in by_producer.values() if sum(1 for _, k, _ in bs if k != "data") == 6]
    assert len(sequences) == 1, by_producer
    batches = sequences[0]
    for p in range(2):
        mine = [(k, e) for q, k, e in batches if q == p]
        markers = [(k, e) for k, e in mine if k != "data"]
        assert [k for k, _ in markers] == ["commit", "abort", "commit"], mine
        first = markers[0][1] - 1
        # Each transaction's data at one epoch, its marker at the next, which the next one uses.
        assert [e for _, e in markers] == [first + 1, first + 2, first + 3], mine
        data_epochs = [e for k, e in mine if k == "data"]
        assert data_epochs == sorted(data_epochs) and set(data_epochs) <= {first, first + 1, first + 2}, mine
