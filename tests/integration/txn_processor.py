"""A consume-transform-produce processor with exactly-once semantics (confluent-kafka):
reads IN with a read_committed group consumer, writes each record's value upper-cased to OUT,
and commits the consumed offsets with send_offsets_to_transaction, one transaction per poll.
Run as a subprocess so a test can SIGKILL it mid-run.

usage: txn_processor.py BOOTSTRAP IN OUT GROUP TRANSACTIONAL_ID EXPECTED_TOTAL
Exits 0 once the group's committed offsets cover EXPECTED_TOTAL input records.
"""

import sys
import time

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition


def main():
    bootstrap, topic_in, topic_out, group, txn_id, expected = sys.argv[1:7]
    expected = int(expected)
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False,
                         "auto.offset.reset": "earliest", "isolation.level": "read_committed",
                         "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
    producer = Producer({"bootstrap.servers": bootstrap, "transactional.id": txn_id, "linger.ms": 5,
                         "transaction.timeout.ms": 60000})
    producer.init_transactions(30)
    consumer.subscribe([topic_in])
    done = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        msgs = consumer.consume(num_messages=20, timeout=0.5)
        msgs = [m for m in msgs if not m.error()]
        if not msgs:
            assignment = consumer.assignment()
            if assignment:
                committed = consumer.committed(assignment, timeout=10)
                if sum(max(tp.offset, 0) for tp in committed) >= expected:
                    break
            continue
        producer.begin_transaction()
        for m in msgs:
            producer.produce(topic_out, key=m.key(), value=m.value().upper(), partition=m.partition())
        # Give a killer a window in the middle of a transaction.
        producer.flush(30)
        time.sleep(0.05)
        positions = consumer.position(consumer.assignment())
        producer.send_offsets_to_transaction(positions, consumer.consumer_group_metadata(), 30)
        try:
            producer.commit_transaction(30)
        except KafkaException as e:
            if e.args[0].txn_requires_abort():
                producer.abort_transaction(30)
                # Rewind to the committed offsets and process again.
                for tp in consumer.committed(consumer.assignment(), timeout=10):
                    consumer.seek(TopicPartition(tp.topic, tp.partition, max(tp.offset, 0)))
                continue
            raise
        done += len(msgs)
        print("committed %d" % done, flush=True)
    consumer.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
