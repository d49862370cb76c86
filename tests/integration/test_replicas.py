"""The admin tools that ask about replicas, leaders, log dirs and producers, run unchanged from
Apache Kafka 4.4 against `sidestream serve`: kafka-log-dirs (DescribeLogDirs),
kafka-leader-election (ElectLeaders), kafka-reassign-partitions (List- and
AlterPartitionReassignments), kafka-transactions describe-producers (DescribeProducers), list
(ListTransactions) and describe (DescribeTransactions); and
OffsetForLeaderEpoch, over the raw protocol and through the Java consumer, which validates its
position with it when it resumes from a committed offset that carries a leader epoch.
"""

import json
import time
import uuid

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

import kafka_wire as kw
from compat import java_cmd, run

OFFSET_FOR_LEADER_EPOCH = 23
FENCED_LEADER_EPOCH = 74
UNKNOWN_LEADER_EPOCH = 75
UNKNOWN_TOPIC_OR_PARTITION = 3


def tool(server, main_class, *args, check=True):
    out, err = run(java_cmd(main_class, "--bootstrap-server", server.bootstrap, *args), check=check)
    return out, err


def topic_with_records(server, partitions=2, records=20, idempotent=True):
    name = "replicas-" + uuid.uuid4().hex[:8]
    admin = AdminClient({"bootstrap.servers": server.bootstrap})
    admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(timeout=30)
    p = Producer({"bootstrap.servers": server.bootstrap, "enable.idempotence": idempotent, "linger.ms": 5})
    for i in range(records):
        p.produce(name, key=b"k%d" % i, value=b"v" * 100, partition=i % partitions)
    assert p.flush(30) == 0
    return name


def test_kafka_log_dirs_reports_the_object_store_and_each_partitions_bytes(server):
    name = topic_with_records(server, partitions=2, records=20)
    out, _ = tool(server, "org.apache.kafka.tools.LogDirsCommand", "--describe", "--topic-list", name)
    doc = json.loads([line for line in out.splitlines() if line.startswith("{")][-1])
    (broker,) = doc["brokers"]
    assert broker["broker"] == 1
    (log_dir,) = broker["logDirs"]
    assert log_dir["logDir"].startswith("file://") and log_dir["logDir"].endswith("/objects"), log_dir
    assert log_dir["error"] is None
    parts = {p["partition"]: p for p in log_dir["partitions"]}
    assert set(parts) == {name + "-0", name + "-1"}, parts
    # Ten records of 100-byte values and 2-byte keys in each partition: some hundreds of bytes.
    assert all(1000 <= p["size"] <= 10000 and p["offsetLag"] == 0 and not p["isFuture"] for p in parts.values()), parts


def test_kafka_leader_election_finds_the_leaders_already_elected(server):
    name = topic_with_records(server, partitions=2, records=2)
    out, _ = tool(server, "org.apache.kafka.tools.LeaderElectionCommand", "--election-type", "preferred",
                  "--topic", name, "--partition", "1")
    assert "Valid replica already elected for partitions %s-1" % name in out, out
    out, _ = tool(server, "org.apache.kafka.tools.LeaderElectionCommand", "--election-type", "unclean",
                  "--all-topic-partitions")
    assert "Error" not in out, out
    # An unknown partition fails the command with Kafka's error.
    out, err = tool(server, "org.apache.kafka.tools.LeaderElectionCommand", "--election-type", "preferred",
                    "--topic", name, "--partition", "7", check=False)
    assert "UnknownTopicOrPartitionException" in out + err, (out, err)


def test_kafka_reassign_partitions_lists_none_and_moves_nothing(server, tmp_path):
    name = topic_with_records(server, partitions=1, records=1)
    out, _ = tool(server, "org.apache.kafka.tools.reassign.ReassignPartitionsCommand", "--list")
    assert "No partition reassignments found." in out, out
    # The one replica stays where it is: a plan naming it completes at once, as on an idle Kafka.
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"version": 1, "partitions": [{"topic": name, "partition": 0, "replicas": [1]}]}))
    out, _ = tool(server, "org.apache.kafka.tools.reassign.ReassignPartitionsCommand", "--execute",
                  "--reassignment-json-file", plan)
    assert "Successfully started partition reassignment for %s-0" % name in out, out
    # --verify also clears replication throttles: nothing to clear, and that succeeds.
    out, _ = tool(server, "org.apache.kafka.tools.reassign.ReassignPartitionsCommand", "--verify",
                  "--reassignment-json-file", plan)
    assert "Reassignment of partition %s-0 is completed." % name in out, out
    # A move to a broker that does not exist is refused.
    plan.write_text(json.dumps({"version": 1, "partitions": [{"topic": name, "partition": 0, "replicas": [2]}]}))
    out, err = tool(server, "org.apache.kafka.tools.reassign.ReassignPartitionsCommand", "--execute",
                    "--reassignment-json-file", plan, check=False)
    assert "Unknown broker id" in out + err or "InvalidReplicaAssignment" in out + err, (out, err)


def test_kafka_transactions_describe_producers_shows_the_idempotent_producer(server):
    name = topic_with_records(server, partitions=1, records=5, idempotent=True)
    out, _ = tool(server, "org.apache.kafka.tools.TransactionsCommand", "describe-producers", "--topic", name,
                  "--partition", "0")
    lines = [line.split() for line in out.strip().splitlines()]
    header, rows = lines[0], lines[1:]
    assert header[:4] == ["ProducerId", "ProducerEpoch", "LatestCoordinatorEpoch", "LastSequence"], out
    (row,) = rows
    assert int(row[0]) >= 0 and row[1] == "0" and row[3] == "4", out
    # No transaction open: the start offset column says None.
    assert row[-1] == "None", out


def offset_for_leader_epoch(server, topic, partition, current_epoch, epoch):
    host, port = server.bootstrap.split(":")
    body = kw.i32(-1) + kw.array([kw.string(topic) + kw.array([kw.i32(partition) + kw.i32(current_epoch) + kw.i32(epoch)])])
    with kw.Conn(host, int(port)) as c:
        r = c.request(OFFSET_FOR_LEADER_EPOCH, 3, body)
    r.i32()  # throttle
    ((_, ((code, p, leader_epoch, end_offset),)),) = r.array(
        lambda r: (r.string(), r.array(lambda r: (r.i16(), r.i32(), r.i32(), r.i64()))))
    assert p == partition
    return code, leader_epoch, end_offset


def test_offset_for_leader_epoch_ends_the_current_epoch_at_the_high_watermark(server):
    name = topic_with_records(server, partitions=1, records=7)
    assert offset_for_leader_epoch(server, name, 0, -1, 0) == (0, 0, 7)
    assert offset_for_leader_epoch(server, name, 0, 0, 0) == (0, 0, 7)
    # A newer epoch than any is unknown; the current epoch fences older and newer callers.
    assert offset_for_leader_epoch(server, name, 0, -1, 1) == (0, -1, -1)
    assert offset_for_leader_epoch(server, name, 0, 1, 0)[0] == UNKNOWN_LEADER_EPOCH
    assert offset_for_leader_epoch(server, name, 3, -1, 0)[0] == UNKNOWN_TOPIC_OR_PARTITION


def consume(server, topic, group, n):
    c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": group, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    got = []
    try:
        c.subscribe([topic])
        end = time.monotonic() + 60
        while len(got) < n and time.monotonic() < end:
            m = c.poll(0.2)
            if m is None or m.error():
                continue
            got.append(m)
        assert len(got) >= n, "consumed %d of %d" % (len(got), n)
        last = got[n - 1]
        # Commit with the batch's leader epoch, which the next consumer validates.
        c.commit(offsets=[TopicPartition(topic, last.partition(), last.offset() + 1, leader_epoch=last.leader_epoch())],
                 asynchronous=False)
    finally:
        c.close()
    return got[:n]


def test_a_consumer_resuming_from_an_offset_with_its_epoch_validates_it_and_goes_on(server):
    name = topic_with_records(server, partitions=1, records=10)
    group = "resume-" + uuid.uuid4().hex[:6]
    first = consume(server, name, group, 4)
    assert [m.offset() for m in first] == [0, 1, 2, 3]
    assert first[-1].leader_epoch() == 0
    # The Java client resumes from the committed offset 4 and its epoch 0: it validates the
    # position with OffsetForLeaderEpoch (epoch 0 ends at 10, no truncation) and reads 4-9,
    # neither reset to the beginning nor to the end.
    cmd = java_cmd("org.apache.kafka.tools.consumer.ConsoleConsumer", "--bootstrap-server", server.bootstrap,
                   "--topic", name, "--group", group, "--timeout-ms", "5000", "--formatter-property", "print.offset=true")
    cmd.insert(1, "-Dorg.slf4j.simpleLogger.log.org.apache.kafka.clients.consumer.internals.OffsetsForLeaderEpochUtils=debug")
    out, err = run(cmd, check=False)
    assert "Got offset 10 for epoch 0" in err, err[-2000:]
    offsets = [int(line.split("\t")[0].split(":")[1]) for line in out.splitlines() if line.startswith("Offset:")]
    assert offsets == list(range(4, 10)), out[:500]


def test_kafka_transactions_list_and_describe_follow_a_transaction(server):
    """kafka-transactions list (ListTransactions) and describe (DescribeTransactions): an open
    transaction is Ongoing with its partition, then CompleteCommit once committed."""
    name = topic_with_records(server, partitions=2, records=2)
    txn_id = "txn-tool-" + uuid.uuid4().hex[:8]
    p = Producer({"bootstrap.servers": server.bootstrap, "transactional.id": txn_id})
    p.init_transactions(30)
    p.begin_transaction()
    p.produce(name, value=b"in a transaction", partition=1)
    assert p.flush(30) == 0

    def listed():
        out, _ = tool(server, "org.apache.kafka.tools.TransactionsCommand", "list")
        lines = [line.split() for line in out.strip().splitlines()]
        assert lines[0] == ["TransactionalId", "Coordinator", "ProducerId", "TransactionState"], out
        return {row[0]: row for row in lines[1:]}

    def described():
        out, _ = tool(server, "org.apache.kafka.tools.TransactionsCommand", "describe", "--transactional-id", txn_id)
        header, row = [line.split("\t") for line in out.strip().splitlines()][:2]
        return dict(zip([h.strip() for h in header], [v.strip() for v in row])), out

    row = listed()[txn_id]
    assert row[1].isdigit() and int(row[2]) >= 0 and row[3] == "Ongoing", row
    d, out = described()
    assert d["TransactionalId"] == txn_id and d["TransactionState"] == "Ongoing", out
    assert d.get("TopicPartitions") == "%s-1" % name, (d, out)
    assert d["ProducerId"] == row[2], out
    p.commit_transaction(30)
    assert listed()[txn_id][3] == "CompleteCommit"
    d, out = described()
    assert d["TransactionState"] == "CompleteCommit" and d.get("TopicPartitions", "") == "", (d, out)
