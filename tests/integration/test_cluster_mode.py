"""Agents of a remote controller: the partition index cache and `[agent] cluster_mode`, with real
processes on loopback (one `sidestream controller` on SQLite, agents in remote mode sharing one
object store, confluent-kafka and kafka-python clients).

- Index cache: a second read of the same data, timestamp lookups and a tail consumer make no index lookup at the
  controller (the agent's `sidestream_index_lookups_total{source="controller"}` stays put); reads
  stay correct while the controller is down and after it restarts, and after the topic is
  deleted and re-created under the same name.
- Cluster mode: three agents list each other as brokers and spread partition leadership; a
  producer bootstrapped at one agent reaches all three; `client.id` with `sidestream_az=b`
  gets leaders in zone b only; a duplicate node id is refused; after SIGKILL of an agent its
  lease runs out, Metadata stops listing it and producers go on without losing an ack. A
  consumer group with members at two agents is coordinated by a live agent and consumes
  everything once.
"""

import threading
import time

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient
from kafka import KafkaAdminClient, KafkaConsumer
from kafka import TopicPartition as KTopicPartition

from conftest import ServerStartError, poll_until
from readback import create_topic, read_all
from test_cluster import ControllerProcess, make_agent

PARTITIONS = 4


def lookups(agent, source):
    return agent.metrics().get('sidestream_index_lookups_total{source="%s"}' % source, 0.0)


def produce_all(bootstrap, topic, values, partitions=None):
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 5, "enable.idempotence": False,
                  "retries": 0, "message.timeout.ms": 60000})
    failed = []
    for i, v in enumerate(values):
        kw = {"partition": i % partitions} if partitions else {}
        p.produce(topic, value=v, on_delivery=lambda err, msg: err and failed.append(err), **kw)
        p.poll(0)
    assert p.flush(60) == 0
    assert not failed, failed[:3]


def values_of(got):
    return sorted(v for records in got.values() for _, v in records)


def assert_dense(got):
    for p, records in got.items():
        assert [o for o, _ in records] == list(range(len(records))), "partition %d offsets not dense" % p


def test_index_cache_second_and_tail_reads_make_no_index_call_and_stay_correct(tmp_path):
    ctl = ControllerProcess(tmp_path, "controller", "sqlite://%s" % (tmp_path / "controller.db")).start()
    agents = []
    try:
        ctl.wait_listening()
        objects = tmp_path / "objects"
        # The writer and the reader are different agents: the reader learns new extents from
        # the controller's commit notifications.
        writer, reader = [make_agent(tmp_path, i, [ctl.address], objects).start() for i in (1, 2)]
        agents = [writer, reader]
        topic = "cached"
        create_topic(writer.bootstrap, topic, PARTITIONS)
        # 4 MB: several fetches per partition (1 MiB each at most).
        first = [b"first-%05d-" % i + b"x" * 2000 for i in range(2000)]
        produce_all(writer.bootstrap, topic, first, partitions=PARTITIONS)  # every partition has data

        got = read_all(reader.bootstrap, topic, PARTITIONS, expected_min=len(first))
        assert values_of(got) == sorted(first)
        assert_dense(got)
        remote_after_first, cached_after_first = lookups(reader, "controller"), lookups(reader, "cache")
        assert remote_after_first > 0, "the first read must ask the controller"

        # The same data again: every index lookup from the cache.
        again = read_all(reader.bootstrap, topic, PARTITIONS, expected_min=len(first))
        assert again == got
        assert lookups(reader, "controller") == remote_after_first, "a repeated read asked the controller"
        assert lookups(reader, "cache") > cached_after_first
        # ListOffsets by timestamp: the reader holds every partition from its start, so it answers
        # from the cache too (the first extent for timestamp 0; none after the last record).
        kc = KafkaConsumer(bootstrap_servers=reader.bootstrap)
        try:
            far = int(time.time() * 1000) + 3600_000
            early = kc.offsets_for_times({KTopicPartition(topic, p): 0 for p in range(PARTITIONS)})
            late = kc.offsets_for_times({KTopicPartition(topic, p): far for p in range(PARTITIONS)})
        finally:
            kc.close()
        assert [v and v.offset for v in early.values()] == [0] * PARTITIONS, early
        assert list(late.values()) == [None] * PARTITIONS, late
        assert lookups(reader, "controller") == remote_after_first, "a timestamp lookup asked the controller"
        print("\nINDEX CACHE: first read %d controller lookups; second read and 8 ListOffsets-by-time lookups: %d from the cache, 0 from the controller"
              % (remote_after_first, lookups(reader, "cache") - cached_after_first))

        # A tail consumer on the reader while the writer produces: new extents arrive with the
        # commit notifications, so still no controller lookup.
        c = Consumer({"bootstrap.servers": reader.bootstrap, "group.id": "tail", "enable.auto.commit": False,
                      "fetch.wait.max.ms": 100})
        ends = [len(got[p]) for p in range(PARTITIONS)]
        c.assign([TopicPartition(topic, p, ends[p]) for p in range(PARTITIONS)])
        tail = [b"tail-%05d" % i for i in range(400)]
        seen = []
        try:
            for chunk in range(4):
                produce_all(writer.bootstrap, topic, tail[chunk * 100:(chunk + 1) * 100])
                deadline = time.monotonic() + 60
                while len(seen) < (chunk + 1) * 100 and time.monotonic() < deadline:
                    m = c.poll(0.2)
                    if m is not None and not m.error():
                        seen.append(m.value())
        finally:
            c.close()
        assert sorted(seen) == sorted(tail)
        assert lookups(reader, "controller") == remote_after_first, "the tail consumer asked the controller"

        # Controller down: reads of committed data are served from the agent's caches alone.
        ctl.close()
        down = read_all(reader.bootstrap, topic, PARTITIONS, expected_min=len(first) + len(tail))
        assert values_of(down) == sorted(first + tail)
        assert_dense(down)
        # read_committed too (librdkafka's default): with no transactional batch in the range
        # there is no aborted transaction to ask the controller for.
        down_committed = read_all(reader.bootstrap, topic, PARTITIONS, expected_min=len(first) + len(tail),
                                  isolation="read_committed")
        assert down_committed == down
        # Restarted on the same store and port: the writer's commits go on, reads stay right.
        ctl.log_path.rename(tmp_path / "controller.first.log")  # wait for the new process's line
        ctl.start()
        ctl.wait_listening()
        more = [b"more-%05d" % i for i in range(500)]
        produce_all(writer.bootstrap, topic, more)
        after = read_all(reader.bootstrap, topic, PARTITIONS, expected_min=len(first) + len(tail) + len(more))
        assert values_of(after) == sorted(first + tail + more)
        assert_dense(after)

        # Deleted and re-created under the same name: none of the old extents is served.
        admin = AdminClient({"bootstrap.servers": reader.bootstrap})
        admin.delete_topics([topic])[topic].result(30)
        create_topic(reader.bootstrap, topic, 2)
        poll_until(lambda: len(AdminClient({"bootstrap.servers": writer.bootstrap}).list_topics(topic, timeout=5)
                               .topics[topic].partitions) == 2, 30, what="the writer to see the new topic")
        fresh = [b"fresh-%05d" % i for i in range(300)]
        produce_all(writer.bootstrap, topic, fresh, partitions=2)
        got = read_all(reader.bootstrap, topic, 2, expected_min=len(fresh))
        assert values_of(got) == sorted(fresh), "old records served after the topic was re-created"
        assert_dense(got)
    finally:
        for a in agents:
            a.close()
        ctl.close()


CLUSTER_ENV = {"SIDESTREAM_AGENT_CLUSTER_MODE": "true"}


def cluster_metadata(bootstrap, topic, client_id="it"):
    md = AdminClient({"bootstrap.servers": bootstrap, "client.id": client_id}).list_topics(topic, timeout=10)
    brokers = {b.id: (b.host, b.port) for b in md.brokers.values()}
    leaders = {p.id: p.leader for p in md.topics[topic].partitions.values()}
    return brokers, leaders


def test_cluster_mode_lists_live_agents_spreads_leaders_by_zone_and_forgets_dead_agents(tmp_path):
    ctl = ControllerProcess(tmp_path, "controller", "sqlite://%s" % (tmp_path / "controller.db"),
                            {"SIDESTREAM_CONTROLLER_AGENT_LEASE_MS": "1500"}).start()
    agents = []
    try:
        ctl.wait_listening()
        objects = tmp_path / "objects"
        zones = ["a", "b", "b"]
        agents = [make_agent(tmp_path, i, [ctl.address], objects, dict(CLUSTER_ENV, SIDESTREAM_AGENT_ZONE=z)).start()
                  for i, z in enumerate(zones)]
        expected = {i: ("127.0.0.1", a.port) for i, a in enumerate(agents)}
        topic = "spread"
        partitions = 48
        create_topic(agents[0].bootstrap, topic, partitions)
        for a in agents:
            poll_until(lambda: cluster_metadata(a.bootstrap, topic)[0] == expected, 30,
                       what="agent %s to list all three agents" % a.port)
        brokers, leaders = cluster_metadata(agents[0].bootstrap, topic)
        assert sorted(set(leaders.values())) == [0, 1, 2], leaders
        print("\nCLUSTER: leaders per agent %r" % {n: list(leaders.values()).count(n) for n in range(3)})
        # The same answer from every agent, and from another client library.
        for a in agents[1:]:
            assert cluster_metadata(a.bootstrap, topic)[1] == leaders
        kp = KafkaAdminClient(bootstrap_servers=agents[1].bootstrap, client_id="kafka-python")
        try:
            described = kp.describe_cluster()
            assert sorted((b["broker_id"], b["port"], b["rack"]) for b in described["brokers"]) == \
                [(i, expected[i][1], zones[i]) for i in range(3)]
        finally:
            kp.close()

        # Zone first: a client in zone b is led by agents 1 and 2 only, one in zone a by agent 0.
        _, in_b = cluster_metadata(agents[0].bootstrap, topic, "app,sidestream_az=b")
        assert set(in_b.values()) == {1, 2}, in_b
        _, in_a = cluster_metadata(agents[1].bootstrap, topic, "sidestream_az=a")
        assert set(in_a.values()) == {0}, in_a

        # A producer bootstrapped at one agent writes to every partition: all three agents get
        # produce requests.
        values = [b"spread-%05d" % i for i in range(2400)]
        produce_all(agents[0].bootstrap, topic, values, partitions=partitions)
        for i, a in enumerate(agents):
            produced = sum(v for k, v in a.metrics().items() if k.startswith("sidestream_produce_seconds_count"))
            assert produced > 0, "agent %d got no produce request" % i
        got = read_all(agents[1].bootstrap, topic, partitions, expected_min=len(values))
        assert values_of(got) == sorted(values)
        assert_dense(got)

        # A second agent with node id 1 at another address is refused while agent 1 lives.
        dup = make_agent(tmp_path / "dup", 1, [ctl.address], objects, CLUSTER_ENV)
        try:
            dup.start(timeout=30)
            raise AssertionError("an agent with a duplicate node id started")
        except ServerStartError:
            pass
        finally:
            dup.kill()
        assert "duplicate node id" in dup.log_text(), dup.log_tail(20)

        # SIGKILL agent 2 under load: once its lease ran out nobody lists it, and the producer
        # (bootstrapped at agent 0, retries on) loses no acknowledged record.
        p = Producer({"bootstrap.servers": agents[0].bootstrap, "acks": "all", "linger.ms": 5,
                      "enable.idempotence": False, "message.timeout.ms": 120000, "retry.backoff.ms": 100})
        acked, failed = [], []
        stop = threading.Event()

        def report(err, msg):
            (failed if err else acked).append(msg.value())

        def load():
            i = 0
            while not stop.is_set():
                p.produce(topic, value=b"kill-%06d" % i, partition=i % partitions, on_delivery=report)
                p.poll(0)
                i += 1
                if i % 50 == 0:
                    time.sleep(0.01)

        t = threading.Thread(target=load)
        t.start()
        try:
            time.sleep(1.0)
            killed_at = time.monotonic()
            agents[2].kill()
            live = {i: expected[i] for i in (0, 1)}
            for a in agents[:2]:
                poll_until(lambda: cluster_metadata(a.bootstrap, topic)[0] == live, 30,
                           what="agent %s to forget the killed agent" % a.port)
            forgotten_s = time.monotonic() - killed_at
            _, leaders = cluster_metadata(agents[0].bootstrap, topic)
            assert set(leaders.values()) == {0, 1}
            time.sleep(1.0)
        finally:
            stop.set()
            t.join()
        assert p.flush(120) == 0
        print("CLUSTER: killed agent unlisted %.2f s after SIGKILL (agent_lease_ms=1500); %d acks"
              % (forgotten_s, len(acked)))
        assert not failed, "%d deliveries failed, e.g. %r" % (len(failed), failed[:3])
        got = read_all(agents[0].bootstrap, topic, partitions, expected_min=len(values) + len(acked))
        seen = set(v for records in got.values() for _, v in records)
        missing = [v for v in acked if v not in seen]
        assert not missing, "%d acknowledged records lost, e.g. %r" % (len(missing), missing[:3])
        assert_dense(got)
    finally:
        for a in agents:
            a.close()
        ctl.close()


def test_a_consumer_group_in_cluster_mode_is_coordinated_by_a_live_agent(tmp_path):
    """Members bootstrapped at different agents of the tier: FindCoordinator names a live agent,
    the group forms there (its state is in the controller), both members share the partitions,
    every record is consumed, and the committed offsets are seen through a third agent."""
    ctl = ControllerProcess(tmp_path, "controller", "sqlite://%s" % (tmp_path / "controller.db")).start()
    agents, consumers = [], []
    try:
        ctl.wait_listening()
        objects = tmp_path / "objects"
        agents = [make_agent(tmp_path, i, [ctl.address], objects, CLUSTER_ENV).start() for i in range(3)]
        expected = {i: ("127.0.0.1", a.port) for i, a in enumerate(agents)}
        topic, group, partitions = "tier", "tier-group", 12
        create_topic(agents[0].bootstrap, topic, partitions)
        for a in agents:
            poll_until(lambda: cluster_metadata(a.bootstrap, topic)[0] == expected, 30,
                       what="agent %s to list all three agents" % a.port)
        consumers = [Consumer({"bootstrap.servers": agents[i].bootstrap, "group.id": group,
                               "auto.offset.reset": "earliest", "enable.auto.commit": False,
                               "session.timeout.ms": 6000, "heartbeat.interval.ms": 500})
                     for i in (0, 1)]
        for c in consumers:
            c.subscribe([topic])
        seen = []

        def poll_both():
            for c in consumers:
                m = c.poll(0.1)
                if m is not None and m.error() is None:
                    seen.append(m.value())

        def both_assigned():
            poll_both()
            return all(c.assignment() for c in consumers)

        poll_until(both_assigned, 60, interval=0, what="both members of the group assigned")
        values = [b"tier-%05d" % i for i in range(1200)]
        produce_all(agents[2].bootstrap, topic, values, partitions=partitions)

        def consumed_all():
            poll_both()
            return len(seen) >= len(values)

        poll_until(consumed_all, 60, interval=0, what="every record consumed by the group")
        assert sorted(seen) == sorted(values), "lost or consumed twice"
        for c in consumers:
            c.commit(asynchronous=False)

        admin = AdminClient({"bootstrap.servers": agents[2].bootstrap})
        described = admin.describe_consumer_groups([group])[group].result(30)
        assert described.coordinator.id in expected, described.coordinator
        assert len(described.members) == 2, described.members
        owned = sorted(tp.partition for m in described.members for tp in m.assignment.topic_partitions)
        assert owned == list(range(partitions)), owned
        reader = Consumer({"bootstrap.servers": agents[2].bootstrap, "group.id": group})
        try:
            committed = reader.committed([TopicPartition(topic, p) for p in range(partitions)], timeout=30)
        finally:
            reader.close()
        assert [tp.offset for tp in committed] == [len(values) // partitions] * partitions, committed
    finally:
        for c in consumers:
            c.close()
        for a in agents:
            a.close()
        ctl.close()
