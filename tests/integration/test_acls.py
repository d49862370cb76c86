"""ACLs, Kafka's way, proven with real clients.

The server runs with `[acl] enabled = true, super_users = ["User:ANONYMOUS"]`: its PLAINTEXT
listener is the administrator's (anonymous, a super user), and a SASL_PLAINTEXT listener is
where users log in with SCRAM-SHA-512 (credentials created with AlterUserScramCredentials by the
administrator). A user allowed only READ on topic A and its group consumes A, and is refused,
with Kafka's error codes, producing to A, reading B, seeing B in Metadata, deleting B, and using
another group. The ACLs are made with confluent-kafka's AdminClient and, in a second scenario,
with Kafka 4.4's own `kafka-acls.sh` (org.apache.kafka.tools.AclCommand), the user made with
`kafka-configs.sh` (ConfigCommand). A server without the authorizer answers the ACL APIs
SECURITY_DISABLED, as Kafka without `authorizer.class.name`.
"""

import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)

from kafka import errors as kafka_errors
from kafka.admin import ACLFilter, ACLOperation, ACLPermissionType, ACLResourcePatternType, KafkaAdminClient
from kafka.admin import ResourcePatternFilter as KResourcePatternFilter
from kafka.admin import ResourceType as KResourceType

from compat import java_cmd, run
from conftest import SidestreamServer, free_port, poll_until

TIMEOUT = 30


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


@pytest.fixture(scope="module")
def acl_server(tmp_path_factory):
    """A server enforcing ACLs: PLAINTEXT (anonymous super user) and SASL_PLAINTEXT (SCRAM)."""
    base = tmp_path_factory.mktemp("acls")
    sasl_port = free_port()
    config = base / "acls.toml"
    config.write_text(
        '[[listeners]]\nname = "SASL"\naddress = "127.0.0.1:%d"\nprotocol = "SASL_PLAINTEXT"\n\n'
        '[acl]\nenabled = true\nsuper_users = ["User:ANONYMOUS"]\n' % sasl_port
    )
    srv = SidestreamServer(base / "data", base / "server.log", config=config)
    srv.sasl_bootstrap = "127.0.0.1:%d" % sasl_port
    try:
        srv.start()
        yield srv
    finally:
        srv.close()


def admin(bootstrap, **extra):
    return AdminClient({"bootstrap.servers": bootstrap, **extra})


def user_config(srv, user, password):
    return {
        "bootstrap.servers": srv.sasl_bootstrap,
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": user,
        "sasl.password": password,
    }


def create_user(srv, user, password):
    """A SCRAM-SHA-512 user, made by the (anonymous, super user) administrator."""
    a = admin(srv.bootstrap)
    upsert = UserScramCredentialUpsertion(user, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 4096), password.encode())
    for f in a.alter_user_scram_credentials([upsert]).values():
        f.result(TIMEOUT)


def create_topics(srv, *names):
    a = admin(srv.bootstrap)
    for f in a.create_topics([NewTopic(n, 1, 1) for n in names]).values():
        f.result(TIMEOUT)
    p = Producer({"bootstrap.servers": srv.bootstrap})
    for n in names:
        for i in range(5):
            p.produce(n, value=b"%s-%d" % (n.encode(), i))
    assert p.flush(TIMEOUT) == 0


def describe_everything(bootstrap, **sasl):
    """DescribeAcls of every binding with kafka-python (librdkafka drops DescribeAcls' top-level
    error code: confluent-kafka answers an empty list instead of CLUSTER_AUTHORIZATION_FAILED or
    SECURITY_DISABLED)."""
    a = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=TIMEOUT * 1000, **sasl)
    try:
        pattern = KResourcePatternFilter(KResourceType.ANY, None, ACLResourcePatternType.ANY)
        return a.describe_acls(ACLFilter(None, None, ACLOperation.ANY, ACLPermissionType.ANY, pattern))[0]
    finally:
        a.close()


def error_code(exc):
    return exc.args[0].code()


def consume(conf, topic, group, want, timeout=TIMEOUT):
    """(values read, first error) of a consumer of `topic` in `group` reading `want` records."""
    c = Consumer({**conf, "group.id": group, "auto.offset.reset": "earliest", "enable.auto.commit": False})
    values, error = [], None
    try:
        c.subscribe([topic])

        def done():
            nonlocal error
            m = c.poll(0.5)
            if m is not None and m.error() is not None and m.error().code() != KafkaError._PARTITION_EOF:
                error = m.error()
            elif m is not None and m.error() is None:
                values.append(m.value())
                c.commit(m, asynchronous=False)
            return error is not None or len(values) >= want

        poll_until(done, timeout, interval=0, what="%d records or an error from %s" % (want, topic))
    finally:
        c.close()
    return values, error


def produce_error(conf, topic):
    """The delivery error of one record produced to `topic` (None: delivered)."""
    p = Producer({**conf, "message.timeout.ms": 10000})
    errors = []
    p.produce(topic, value=b"x", on_delivery=lambda err, msg: errors.append(err))
    p.flush(TIMEOUT)
    assert len(errors) == 1, errors
    return errors[0]


def fetch_error(conf, topic, group):
    """The error of a consumer assigned partition 0 of `topic` (it fetches; librdkafka still
    finds the coordinator of `group`, which the user may use)."""
    c = Consumer({**conf, "group.id": group, "enable.auto.commit": False})
    error = None
    try:
        c.assign([TopicPartition(topic, 0, 0)])

        def failed():
            nonlocal error
            m = c.poll(0.5)
            if m is not None and m.error() is not None and m.error().code() != KafkaError._PARTITION_EOF:
                error = m.error()
            return error is not None

        poll_until(failed, TIMEOUT, interval=0, what="a fetch error from %s" % topic)
    finally:
        c.close()
    return error


def read_only_scenario(srv, user, password, a, b, c, group):
    """`user` may READ topic `a` and group `group`, DESCRIBE topic `c`, nothing else."""
    conf = user_config(srv, user, password)
    values, error = consume(conf, a, group, 5)
    assert error is None, error
    assert sorted(values) == [b"%s-%d" % (a.encode(), i) for i in range(5)]

    err = produce_error(conf, a)
    assert err is not None and err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err

    _, error = consume(conf, b, group, 1)
    assert error is not None and error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, error

    # DESCRIBE on c lets the client find its leader; only the fetch is refused (READ).
    err = fetch_error(conf, c, group)
    assert err.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, err

    _, error = consume(conf, a, unique("other-group"), 1)
    assert error is not None and error.code() == KafkaError.GROUP_AUTHORIZATION_FAILED, error

    listed = admin(srv.sasl_bootstrap, **{k: v for k, v in conf.items() if k != "bootstrap.servers"}).list_topics(timeout=TIMEOUT)
    assert a in listed.topics and c in listed.topics
    assert b not in listed.topics, "a topic the user may not describe is left out of Metadata"

    user_admin = admin(srv.sasl_bootstrap, **{k: v for k, v in conf.items() if k != "bootstrap.servers"})
    with pytest.raises(KafkaException) as e:
        user_admin.delete_topics([b], operation_timeout=10)[b].result(TIMEOUT)
    assert error_code(e.value) == KafkaError.TOPIC_AUTHORIZATION_FAILED
    assert b in admin(srv.bootstrap).list_topics(timeout=TIMEOUT).topics, "B is still there"


def test_a_user_allowed_to_read_one_topic_gets_kafkas_errors_for_the_rest(acl_server):
    srv = acl_server
    a, b, c, group = unique("A"), unique("B"), unique("C"), unique("g-alice")
    create_topics(srv, a, b, c)
    create_user(srv, "alice", "alice-secret")
    acls = [
        AclBinding(ResourceType.TOPIC, a, ResourcePatternType.LITERAL, "User:alice", "*", AclOperation.READ, AclPermissionType.ALLOW),
        AclBinding(ResourceType.GROUP, group, ResourcePatternType.LITERAL, "User:alice", "*", AclOperation.READ, AclPermissionType.ALLOW),
        AclBinding(ResourceType.TOPIC, c, ResourcePatternType.LITERAL, "User:alice", "*", AclOperation.DESCRIBE,
                   AclPermissionType.ALLOW),
    ]
    su = admin(srv.bootstrap)
    for f in su.create_acls(acls).values():
        f.result(TIMEOUT)
    described = su.describe_acls(AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, "User:alice", None,
                                                  AclOperation.ANY, AclPermissionType.ANY)).result(TIMEOUT)
    assert sorted(map(str, described)) == sorted(map(str, acls))

    read_only_scenario(srv, "alice", "alice-secret", a, b, c, group)
    denied = {k: v for k, v in srv.metrics().items() if k.startswith("sidestream_authorization_denied_total")}
    assert denied.get('sidestream_authorization_denied_total{api="Produce"}', 0) >= 1, denied
    assert denied.get('sidestream_authorization_denied_total{api="Fetch"}', 0) >= 1, denied
    assert denied.get('sidestream_authorization_denied_total{api="DeleteTopics"}', 0) >= 1, denied

    # Deleting by filter answers the bindings removed; alice then reads nothing.
    removed = su.delete_acls([AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, "User:alice", None,
                                               AclOperation.ANY, AclPermissionType.ANY)])
    assert sorted(map(str, list(removed.values())[0].result(TIMEOUT))) == sorted(map(str, acls))
    _, error = consume(user_config(srv, "alice", "alice-secret"), a, group, 1)
    assert error is not None and error.code() in (KafkaError.TOPIC_AUTHORIZATION_FAILED, KafkaError.GROUP_AUTHORIZATION_FAILED)


def test_kafka_acls_tool_grants_read(acl_server):
    """The same, with Kafka 4.4's own tools: the user made with kafka-configs.sh, the ACLs with
    kafka-acls.sh."""
    srv = acl_server
    a, b, c, group = unique("A"), unique("B"), unique("C"), unique("g-bob")
    create_topics(srv, a, b, c)
    run(java_cmd("org.apache.kafka.tools.ConfigCommand", "--bootstrap-server", srv.bootstrap, "--alter", "--entity-type",
                 "users", "--entity-name", "bob", "--add-config", "SCRAM-SHA-512=[iterations=8192,password=bob-secret]"))
    tool = lambda *args: run(java_cmd("org.apache.kafka.tools.AclCommand", "--bootstrap-server", srv.bootstrap, *args))
    tool("--add", "--allow-principal", "User:bob", "--operation", "Read", "--topic", a, "--group", group)
    tool("--add", "--allow-principal", "User:bob", "--operation", "Describe", "--topic", c)
    listed, _ = tool("--list", "--topic", a)
    assert "User:bob" in listed and "READ" in listed and "ALLOW" in listed, listed

    read_only_scenario(srv, "bob", "bob-secret", a, b, c, group)

    tool("--remove", "--force", "--allow-principal", "User:bob", "--operation", "Read", "--topic", a, "--group", group)
    listed, _ = tool("--list", "--principal", "User:bob")
    assert a not in listed and group not in listed and c in listed, listed


def test_acl_apis_check_the_cluster_and_validate(acl_server):
    """CreateAcls/DeleteAcls need ALTER, DescribeAcls DESCRIBE on the cluster; bad bindings and
    filters are INVALID_REQUEST."""
    srv = acl_server
    create_user(srv, "carol", "carol-secret")
    conf = {k: v for k, v in user_config(srv, "carol", "carol-secret").items() if k != "bootstrap.servers"}
    carol = admin(srv.sasl_bootstrap, **conf)
    topic = unique("t")
    binding = AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, "User:carol", "*", AclOperation.READ,
                         AclPermissionType.ALLOW)
    everything = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.ANY, None, None, AclOperation.ANY, AclPermissionType.ANY)
    for call in (lambda: list(carol.create_acls([binding]).values())[0].result(TIMEOUT),
                 lambda: list(carol.delete_acls([everything]).values())[0].result(TIMEOUT)):
        with pytest.raises(KafkaException) as e:
            call()
        assert error_code(e.value) == KafkaError.CLUSTER_AUTHORIZATION_FAILED
    sasl = dict(security_protocol="SASL_PLAINTEXT", sasl_mechanism="SCRAM-SHA-512", sasl_plain_username="carol",
                sasl_plain_password="carol-secret")
    with pytest.raises(kafka_errors.ClusterAuthorizationFailedError):
        describe_everything(srv.sasl_bootstrap, **sasl)

    # A cluster resource named other than kafka-cluster is refused, the other binding created.
    su = admin(srv.bootstrap)
    bad = AclBinding(ResourceType.BROKER, "other", ResourcePatternType.LITERAL, "User:carol", "*", AclOperation.ALTER,
                     AclPermissionType.ALLOW)
    results = su.create_acls([bad, binding])
    with pytest.raises(KafkaException) as e:
        results[bad].result(TIMEOUT)
    assert error_code(e.value) == KafkaError.INVALID_REQUEST
    results[binding].result(TIMEOUT)
    # Once carol may DESCRIBE the cluster, she lists the ACLs.
    allow_describe = AclBinding(ResourceType.BROKER, "kafka-cluster", ResourcePatternType.LITERAL, "User:carol", "*",
                                AclOperation.DESCRIBE, AclPermissionType.ALLOW)
    list(su.create_acls([allow_describe]).values())[0].result(TIMEOUT)
    mine = AclBindingFilter(ResourceType.ANY, None, ResourcePatternType.MATCH, "User:carol", None, AclOperation.ANY,
                            AclPermissionType.ANY)
    assert sorted(map(str, carol.describe_acls(mine).result(TIMEOUT))) == sorted(map(str, [binding, allow_describe]))
    assert len(describe_everything(srv.sasl_bootstrap, **sasl)) >= 2


def test_without_the_authorizer_acl_apis_answer_security_disabled(server):
    """Kafka without an authorizer: the ACL APIs answer SECURITY_DISABLED, as kafka-acls.sh shows."""
    with pytest.raises(kafka_errors.SecurityDisabledError):
        describe_everything(server.bootstrap)
    a = admin(server.bootstrap)
    binding = AclBinding(ResourceType.TOPIC, "t", ResourcePatternType.LITERAL, "User:x", "*", AclOperation.READ,
                         AclPermissionType.ALLOW)
    with pytest.raises(KafkaException) as e:
        list(a.create_acls([binding]).values())[0].result(TIMEOUT)
    assert error_code(e.value) == KafkaError.SECURITY_DISABLED
    out, err = run(java_cmd("org.apache.kafka.tools.AclCommand", "--bootstrap-server", server.bootstrap, "--list"), check=False)
    assert "SecurityDisabledException" in out + err, out + err
