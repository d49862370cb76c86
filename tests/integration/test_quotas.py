"""Client quotas with real clients: kafka-configs.sh (Kafka 4.4's ConfigCommand) altering and
describing quotas of users, client ids, both and their defaults (and a user's SCRAM credentials
beside its quotas); kafka-python's own encoding of DescribeClientQuotas / AlterClientQuotas
(neither confluent-kafka 2.16 nor kafka-python 3.0 has an admin method for them: the requests
are sent through kafka-python's admin client); and enforcement measured from the clients' side:
a confluent-kafka producer and consumer over their byte rates get those rates (within 10%) and
are told their throttle time, request_percentage throttles every response that can say so, and
controller_mutation_rate refuses topic creation and deletion with THROTTLING_QUOTA_EXCEEDED
(KIP-599).
"""
import time
import uuid

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic
from kafka.admin import KafkaAdminClient
from kafka.protocol.admin import (AlterClientQuotasRequest, CreateTopicsRequest, DeleteTopicsRequest,
                                  DescribeClientQuotasRequest)

from compat import java_cmd, run
from conftest import SidestreamServer

RATE = 200_000
# Kafka's windows: eleven samples of a second, a rate taken over at least ten of them. From the
# first byte, a client going as fast as it can gets about a window's worth at once and then the
# rate; measured over a window and a half sample it gets the rate.
MEASURE_S = 10.5
INVALID_REQUEST = 42
CLUSTER_AUTHORIZATION_FAILED = 31
THROTTLING_QUOTA_EXCEEDED = 89
MATCH_EXACT, MATCH_DEFAULT, MATCH_ANY = 0, 1, 2


def configs(server, *args):
    out, _ = run(java_cmd("org.apache.kafka.tools.ConfigCommand", "--bootstrap-server", server.bootstrap, *args))
    return out


def admin(server, client_id="quota-tests"):
    return KafkaAdminClient(bootstrap_servers=server.bootstrap, client_id=client_id)


def send(adm, request, deadline_s=30):
    """One request through kafka-python's admin client (its encoding, its version choice).
    A client throttled by its last answer has no ready node until the throttle time passes
    (kafka-python honours throttle_time_ms): the request waits for it, up to a deadline."""
    from kafka.errors import NodeNotReadyError
    deadline = time.monotonic() + deadline_s
    while True:
        try:
            return adm._manager.run(adm._manager.send, request)
        except NodeNotReadyError:
            assert time.monotonic() < deadline, "no ready node for %.0fs" % deadline_s
            time.sleep(0.05)


def alter(adm, entity, ops, validate_only=False, **version):
    """entity: [(type, name or None)]; ops: {key: value or None (remove)}. Returns
    [(error_code, error_message)], one per entry."""
    entry = (list(entity), [(k, 0.0 if v is None else float(v), v is None) for k, v in ops.items()])
    r = send(adm, AlterClientQuotasRequest(entries=[entry], validate_only=validate_only, **version))
    return [(e.error_code, e.error_message) for e in r.entries]


def set_quota(server, entity, ops):
    adm = admin(server)
    try:
        assert alter(adm, entity, ops) == [(0, None)]
    finally:
        adm.close()


def describe(adm, components, strict=False, **version):
    """components: [(type, match_type, match)]. Returns (error_code, {entity: {key: value}})
    with entity a tuple of (type, name) pairs."""
    r = send(adm, DescribeClientQuotasRequest(components=components, strict=strict, **version))
    found = {}
    for e in r.entries or []:
        found[tuple((d.entity_type, d.entity_name) for d in e.entity)] = {v.key: v.value for v in e.values}
    return r.error_code, found


def throttle_total(server, kind):
    return server.metrics().get('sidestream_quota_throttle_seconds_total{kind="%s"}' % kind, 0.0)


def test_kafka_configs_alters_and_describes_quotas_of_users_clients_and_defaults(server):
    configs(server, "--alter", "--add-config", "producer_byte_rate=1024", "--entity-type", "clients", "--entity-name", "c1")
    out = configs(server, "--describe", "--entity-type", "clients", "--entity-name", "c1")
    assert "Quota configs for client-id 'c1' are producer_byte_rate=1024.0" in out, out

    configs(server, "--alter", "--add-config", "consumer_byte_rate=2048,request_percentage=50",
            "--entity-type", "users", "--entity-name", "alice")
    out = configs(server, "--describe", "--entity-type", "users", "--entity-name", "alice")
    assert "Quota configs for user-principal 'alice' are" in out, out
    assert "consumer_byte_rate=2048.0" in out and "request_percentage=50.0" in out, out

    configs(server, "--alter", "--add-config", "producer_byte_rate=4096",
            "--entity-type", "users", "--entity-name", "alice", "--entity-type", "clients", "--entity-name", "c1")
    out = configs(server, "--describe", "--entity-type", "users", "--entity-name", "alice",
                  "--entity-type", "clients", "--entity-name", "c1")
    assert "Quota configs for user-principal 'alice', client-id 'c1' are producer_byte_rate=4096.0" in out, out

    configs(server, "--alter", "--add-config", "producer_byte_rate=100", "--entity-type", "users", "--entity-default")
    configs(server, "--alter", "--add-config", "consumer_byte_rate=300", "--entity-type", "clients", "--entity-default")
    out = configs(server, "--describe", "--entity-type", "users", "--entity-default")
    assert "Quota configs for the default user-principal are producer_byte_rate=100.0" in out, out
    out = configs(server, "--describe", "--entity-type", "clients", "--entity-default")
    assert "Quota configs for the default client-id are consumer_byte_rate=300.0" in out, out
    # Every user entity (not those with a client id too: the filter is strict).
    out = configs(server, "--describe", "--entity-type", "users")
    assert "user-principal 'alice' are" in out and "the default user-principal are" in out, out
    assert "client-id" not in out, out

    configs(server, "--alter", "--delete-config", "request_percentage", "--entity-type", "users", "--entity-name", "alice")
    out = configs(server, "--describe", "--entity-type", "users", "--entity-name", "alice")
    assert "consumer_byte_rate=2048.0" in out and "request_percentage" not in out, out
    configs(server, "--alter", "--delete-config", "producer_byte_rate", "--entity-type", "users", "--entity-default")
    configs(server, "--alter", "--delete-config", "consumer_byte_rate", "--entity-type", "clients", "--entity-default")
    assert "Quota configs" not in configs(server, "--describe", "--entity-type", "users", "--entity-default")


def test_a_users_description_shows_its_scram_credentials_beside_its_quotas(server):
    configs(server, "--alter", "--add-config", "SCRAM-SHA-256=[iterations=4096,password=pw]",
            "--entity-type", "users", "--entity-name", "bob")
    configs(server, "--alter", "--add-config", "producer_byte_rate=5000", "--entity-type", "users", "--entity-name", "bob")
    out = configs(server, "--describe", "--entity-type", "users", "--entity-name", "bob")
    assert "Quota configs for user-principal 'bob' are producer_byte_rate=5000.0" in out, out
    assert "SCRAM credential configs for user-principal 'bob' are SCRAM-SHA-256=iterations=4096" in out, out


@pytest.mark.parametrize("version", [0, 1])
def test_kafka_python_requests_filter_validate_and_refuse_as_kafka_does(server, version):
    v = {"min_version": version, "max_version": version}
    adm = admin(server)
    try:
        user = "carol-%d" % version
        assert alter(adm, [("user", user)], {"producer_byte_rate": 1000}, **v) == [(0, None)]
        assert alter(adm, [("user", user), ("client-id", None)], {"consumer_byte_rate": 2000}, **v) == [(0, None)]
        assert alter(adm, [("client-id", "tool-%d" % version)], {"request_percentage": 12.5}, **v) == [(0, None)]
        # validate_only changes nothing.
        assert alter(adm, [("user", user)], {"producer_byte_rate": 7}, validate_only=True, **v) == [(0, None)]

        err, found = describe(adm, [("user", MATCH_EXACT, user)], strict=True, **v)
        assert err == 0 and found == {(("user", user),): {"producer_byte_rate": 1000.0}}
        err, found = describe(adm, [("user", MATCH_EXACT, user)], **v)
        assert found == {(("user", user),): {"producer_byte_rate": 1000.0},
                         (("user", user), ("client-id", None)): {"consumer_byte_rate": 2000.0}}
        err, found = describe(adm, [("user", MATCH_EXACT, user), ("client-id", MATCH_DEFAULT, None)], **v)
        assert list(found) == [(("user", user), ("client-id", None))]
        err, found = describe(adm, [("client-id", MATCH_ANY, None)], strict=True, **v)
        assert found[(("client-id", "tool-%d" % version),)] == {"request_percentage": 12.5}

        # Kafka's refusals: unknown keys, fractions of LONG keys, values <= 0, unknown entity types.
        for entity, ops in [([("user", user)], {"producer_bytes_rate": 1}),
                            ([("user", user)], {"producer_byte_rate": 10.5}),
                            ([("user", user)], {"consumer_byte_rate": 0}),
                            ([("group", "g")], {"producer_byte_rate": 1}),
                            ([("user", "")], {"producer_byte_rate": 1})]:
            [(code, message)] = alter(adm, entity, ops, **v)
            assert code == INVALID_REQUEST and message, (entity, ops, message)
        err, _ = describe(adm, [("user", MATCH_ANY, None), ("user", MATCH_DEFAULT, None)], **v)
        assert err == INVALID_REQUEST

        assert alter(adm, [("user", user)], {"producer_byte_rate": None}, **v) == [(0, None)]
        err, found = describe(adm, [("user", MATCH_EXACT, user)], strict=True, **v)
        assert found == {}
    finally:
        adm.close()


def create_topic(server, name, partitions=1):
    a = AdminClient({"bootstrap.servers": server.bootstrap})
    a.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])[name].result(30)
    server.wait_topic_ready(name, partitions)


def test_a_producer_over_its_byte_rate_is_throttled_to_it(server):
    topic = "quota-produce-%s" % uuid.uuid4().hex[:8]
    create_topic(server, topic)
    set_quota(server, [("client-id", "c1")], {"producer_byte_rate": RATE})
    throttles = []
    p = Producer({"bootstrap.servers": server.bootstrap, "client.id": "c1", "acks": 1, "linger.ms": 5,
                  "batch.size": 16384, "queue.buffering.max.messages": 2000,
                  "throttle_cb": lambda e: throttles.append(e.throttle_time)})
    p.list_topics(topic, timeout=10)
    value = b"v" * 1000
    delivered = [0]
    start = time.monotonic()
    end = start + MEASURE_S

    def on_delivery(err, msg):
        if err is None and time.monotonic() <= end:
            delivered[0] += len(msg.value())

    while time.monotonic() < end:
        try:
            p.produce(topic, value, on_delivery=on_delivery)
        except BufferError:
            p.poll(0.005)
            continue
        p.poll(0)
    p.poll(0)
    p.purge()
    p.flush(10)
    rate = delivered[0] / MEASURE_S
    print("producer: %.0f B/s against %d B/s, %d throttle events, max %.3f s" % (rate, RATE, len(throttles), max(throttles or [0])))
    assert abs(rate - RATE) <= RATE * 0.10, rate
    assert any(t > 0 for t in throttles), throttles
    assert throttle_total(server, "produce") > 0


def test_a_consumer_over_its_byte_rate_is_throttled_to_it(server):
    topic = "quota-consume-%s" % uuid.uuid4().hex[:8]
    create_topic(server, topic)
    p = Producer({"bootstrap.servers": server.bootstrap, "client.id": "loader", "linger.ms": 20, "batch.size": 16384})
    value = b"w" * 1000
    for _ in range(5000):
        while True:
            try:
                p.produce(topic, value)
                break
            except BufferError:
                p.poll(0.01)
    assert p.flush(60) == 0
    set_quota(server, [("client-id", "c2")], {"consumer_byte_rate": RATE})
    throttles = []
    c = Consumer({"bootstrap.servers": server.bootstrap, "client.id": "c2", "group.id": "quota-%s" % topic,
                  "auto.offset.reset": "earliest", "enable.auto.commit": False,
                  "fetch.max.bytes": 65536, "max.partition.fetch.bytes": 65536, "message.max.bytes": 65536,
                  "throttle_cb": lambda e: throttles.append(e.throttle_time)})
    try:
        c.subscribe([topic])
        received = 0
        start = end = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            msgs = c.consume(1000, 0.1)
            now = time.monotonic()
            if start is None and msgs:
                start, end = now, now + MEASURE_S
            if end is not None and now > end:
                break
            received += sum(len(m.value()) for m in msgs if m.error() is None)
        assert start is not None, "nothing consumed"
        rate = received / MEASURE_S
        print("consumer: %.0f B/s against %d B/s, %d throttle events, max %.3f s" % (rate, RATE, len(throttles), max(throttles or [0])))
        assert abs(rate - RATE) <= RATE * 0.10, rate
        assert received < 5000 * 1000, "all of it, as fast as it came"
        assert any(t > 0 for t in throttles), throttles
        assert throttle_total(server, "fetch") > 0
    finally:
        c.close()


def test_request_percentage_throttles_every_response_that_has_the_field(server):
    set_quota(server, [("client-id", "busy")], {"request_percentage": 0.001})
    busy = admin(server, client_id="busy")
    try:
        # A few requests' handling time is over 0.001% of the window (kafka-python then pauses
        # the connection for the throttle time: one throttled answer is all it can see).
        throttled = []
        for _ in range(20):
            r = send(busy, DescribeClientQuotasRequest(components=[("client-id", MATCH_EXACT, "busy")], strict=True))
            throttled.append(r.throttle_time_ms)
            if r.throttle_time_ms:
                break
        # Kafka bounds a request-time throttle to one sample's time.
        assert 0 < throttled[-1] <= 1000, throttled
        assert throttle_total(server, "request") > 0
    finally:
        busy.close()


def create(client_id, server, name, partitions, version):
    adm = admin(server, client_id=client_id)
    try:
        req = CreateTopicsRequest(topics=[(name, partitions, 1, [], [])], timeout_ms=30000, validate_only=False,
                                  min_version=version, max_version=version)
        r = send(adm, req)
        return r.topics[0].error_code, r.throttle_time_ms
    finally:
        adm.close()


def test_controller_mutation_rate_refuses_topic_changes_over_it(server):
    set_quota(server, [("client-id", "creator")], {"controller_mutation_rate": 1})
    suffix = uuid.uuid4().hex[:8]
    # A burst of a whole window (11 partitions at 1/s) is allowed, and one request may go past it.
    assert create("creator", server, "mut-a-" + suffix, 20, 7) == (0, 0)
    # Now 9 partitions under: refused for about 9 s, each on a fresh connection (a refused
    # request also mutes its connection).
    code, throttle = create("creator", server, "mut-b-" + suffix, 1, 7)
    assert code == THROTTLING_QUOTA_EXCEEDED and 7000 < throttle <= 9000, (code, throttle)
    deleter = admin(server, client_id="creator")
    try:
        state = DeleteTopicsRequest.DeleteTopicState(name="mut-a-" + suffix)
        r = send(deleter, DeleteTopicsRequest(topics=[state], timeout_ms=30000, min_version=6, max_version=6))
        assert r.responses[0].error_code == THROTTLING_QUOTA_EXCEEDED, r
    finally:
        deleter.close()
    # Before v6 (v5 here) creation is not refused, only throttled.
    code, throttle = create("creator", server, "mut-c-" + suffix, 1, 5)
    assert code == 0 and throttle > 0, (code, throttle)
    # Other clients are not limited.
    assert create("someone-else", server, "mut-d-" + suffix, 20, 7) == (0, 0)
    assert throttle_total(server, "controller_mutation") > 0


def test_quota_apis_need_the_cluster_and_user_quotas_follow_the_sasl_principal(tmp_path_factory):
    """With ACLs on: a SASL user without DESCRIBE_CONFIGS / ALTER_CONFIGS on the cluster gets
    CLUSTER_AUTHORIZATION_FAILED from the quota APIs (the anonymous super user does not), and a
    quota set for that user (`--entity-type users`) throttles its requests, refused ones too."""
    from confluent_kafka.admin import ScramCredentialInfo, ScramMechanism, UserScramCredentialUpsertion
    from conftest import free_port
    base = tmp_path_factory.mktemp("quota-acls")
    sasl_port = free_port()
    config = ('[[listeners]]\nname = "SASL"\naddress = "127.0.0.1:%d"\nprotocol = "SASL_PLAINTEXT"\n\n'
              '[acl]\nenabled = true\nsuper_users = ["User:ANONYMOUS"]\n' % sasl_port)
    srv = SidestreamServer(base / "data", base / "server.log", config=config)
    try:
        srv.start()
        a = AdminClient({"bootstrap.servers": srv.bootstrap})
        upsert = UserScramCredentialUpsertion("quser", ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), b"quser-pw")
        for f in a.alter_user_scram_credentials([upsert]).values():
            f.result(30)
        set_quota(srv, [("user", "quser")], {"request_percentage": 0.001})
        user = KafkaAdminClient(bootstrap_servers="127.0.0.1:%d" % sasl_port, security_protocol="SASL_PLAINTEXT",
                                sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="quser",
                                sasl_plain_password="quser-pw", client_id="any-client")
        try:
            [(code, _)] = alter(user, [("user", "quser")], {"request_percentage": 100})
            assert code == CLUSTER_AUTHORIZATION_FAILED
            throttles = []
            for _ in range(20):
                r = send(user, DescribeClientQuotasRequest(components=[], strict=False))
                assert r.error_code == CLUSTER_AUTHORIZATION_FAILED and r.entries is None, r
                throttles.append(r.throttle_time_ms)
                if r.throttle_time_ms:
                    break
            assert 0 < throttles[-1] <= 1000, throttles
        finally:
            user.close()
        # The quota is untouched, as the (super user) administrator sees it.
        adm = admin(srv)
        try:
            err, found = describe(adm, [("user", MATCH_EXACT, "quser")], strict=True)
            assert err == 0 and found == {(("user", "quser"),): {"request_percentage": 0.001}}
        finally:
            adm.close()
    finally:
        srv.close()
