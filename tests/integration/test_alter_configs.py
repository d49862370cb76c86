"""Topic and broker configs changed with real clients (issue 21): Kafka 4.4's kafka-configs.sh
(ConfigCommand) and confluent-kafka's AdminClient (incremental_alter_configs, alter_configs).

- Topics: --add-config / --delete-config then --describe; retention.ms lowered on a topic with
  data makes the retention job delete it; APPEND / SUBTRACT on cleanup.policy, validate_only,
  Kafka's errors for an unknown config name, a bad value and an unknown topic; the legacy
  AlterConfigs replaces the whole set.
- Brokers: --describe --entity-type brokers (dynamic only, --all, --entity-default) lists the
  agent's settings under Kafka's names; a read-only one is refused with Kafka's error; the log
  filter changes at run time (sidestream.log.level, and per module through broker-loggers).
- Through a remote controller: a change made at one agent is seen by another (DescribeConfigs
  and max.message.bytes at produce).
- ACLs: a principal without ALTER_CONFIGS gets TOPIC_AUTHORIZATION_FAILED (topics) and
  CLUSTER_AUTHORIZATION_FAILED (brokers).
"""

import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource, ConfigSource, NewTopic, ResourceType

from compat import java_cmd, run
from conftest import SidestreamServer, poll_until
from test_acls import acl_server, create_user, user_config  # noqa: F401 (a fixture)
from test_cluster import ControllerProcess, make_agent

TIMEOUT = 60
NODE_ID = 3
INVALID_CONFIG = 40
INVALID_REQUEST = 42
UNKNOWN_TOPIC_OR_PARTITION = 3
TOPIC_AUTHORIZATION_FAILED = 29
CLUSTER_AUTHORIZATION_FAILED = 31
# The retention job every 200 ms (and its lease short), as in test_retention.py.
FAST_JOBS = {
    "SIDESTREAM_RETENTION_CHECK_INTERVAL_MS": "200",
    "SIDESTREAM_RETENTION_OBJECT_GC_INTERVAL_MS": "200",
    "SIDESTREAM_CONTROLLER_JOB_LEASE_MS": "2000",
}


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    base = tmp_path_factory.mktemp("alter-configs")
    env = {"SIDESTREAM_AGENT_NODE_ID": str(NODE_ID), "SIDESTREAM_TOPICS_NUM_PARTITIONS": "2", **FAST_JOBS}
    srv = SidestreamServer(base / "data", base / "server.log", extra_env=env)
    srv.start()
    try:
        yield srv
    finally:
        srv.close()


def unique(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def kafka_configs(bootstrap, *args, check=True):
    out, err = run(java_cmd("org.apache.kafka.tools.ConfigCommand", "--bootstrap-server", bootstrap, *args), check=check)
    return out + err


def admin(bootstrap, **extra):
    return AdminClient({"bootstrap.servers": bootstrap, **extra})


def create_topic(bootstrap, name, partitions=1, **configs):
    a = admin(bootstrap)  # held until the answer: a collected client abandons its requests
    f = a.create_topics([NewTopic(name, partitions, 1, config={k.replace("_", "."): str(v) for k, v in configs.items()})])
    f[name].result(TIMEOUT)


def topic_configs(bootstrap, name):
    r, a = ConfigResource(ResourceType.TOPIC, name), admin(bootstrap)
    return a.describe_configs([r])[r].result(TIMEOUT)


def incremental(bootstrap, restype, name, ops, validate_only=False, **extra):
    """ops: [(name, value, AlterConfigOpType)]. Returns the error (code, message) or None."""
    entries = [ConfigEntry(k, v, incremental_operation=op) for k, v, op in ops]
    res = ConfigResource(restype, name, incremental_configs=entries)
    a = admin(bootstrap, **extra)
    f = a.incremental_alter_configs([res], validate_only=validate_only)
    try:
        list(f.values())[0].result(TIMEOUT)
        return None
    except KafkaException as e:
        return e.args[0].code(), e.args[0].str()


SET, DELETE, APPEND, SUBTRACT = AlterConfigOpType.SET, AlterConfigOpType.DELETE, AlterConfigOpType.APPEND, AlterConfigOpType.SUBTRACT


def test_kafka_configs_adds_describes_and_deletes_topic_configs(server):
    topic = unique("cfg")
    create_topic(server.bootstrap, topic)
    out = kafka_configs(server.bootstrap, "--alter", "--entity-type", "topics", "--entity-name", topic,
                        "--add-config", "retention.ms=1000,cleanup.policy=[compact,delete]")
    assert "Completed updating config for topic %s." % topic in out, out
    out = kafka_configs(server.bootstrap, "--describe", "--entity-type", "topics", "--entity-name", topic)
    assert "Dynamic configs for topic %s are:" % topic in out, out
    assert "retention.ms=1000 sensitive=false synonyms={DYNAMIC_TOPIC_CONFIG:retention.ms=1000}" in out, out
    assert "cleanup.policy=compact,delete sensitive=false" in out, out
    got = topic_configs(server.bootstrap, topic)
    assert got["retention.ms"].value == "1000" and got["retention.ms"].source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    assert got["segment.ms"].source == ConfigSource.DEFAULT_CONFIG.value

    out = kafka_configs(server.bootstrap, "--alter", "--entity-type", "topics", "--entity-name", topic,
                        "--delete-config", "retention.ms")
    assert "Completed updating config" in out, out
    out = kafka_configs(server.bootstrap, "--describe", "--entity-type", "topics", "--entity-name", topic)
    assert "retention.ms" not in out and "cleanup.policy=compact,delete" in out, out
    got = topic_configs(server.bootstrap, topic)
    assert got["retention.ms"].value == "604800000" and got["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value

    out = kafka_configs(server.bootstrap, "--alter", "--entity-type", "topics", "--entity-name", topic,
                        "--add-config", "no.such.config=1", check=False)
    assert "InvalidConfigurationException: Unknown topic config name: no.such.config" in out, out
    out = kafka_configs(server.bootstrap, "--alter", "--entity-type", "topics", "--entity-name", unique("missing"),
                        "--add-config", "retention.ms=5", check=False)
    assert "UnknownTopicOrPartitionException" in out, out


def test_lowered_retention_ms_makes_the_retention_job_delete_old_data(server):
    topic = unique("ret")
    create_topic(server.bootstrap, topic)
    p = Producer({"bootstrap.servers": server.bootstrap, "acks": "all"})
    hour_ago = int(time.time() * 1000) - 3600_000
    for i in range(20):
        p.produce(topic, value=b"old-%d" % i, partition=0, timestamp=hour_ago)
    assert p.flush(TIMEOUT) == 0
    c = Consumer({"bootstrap.servers": server.bootstrap, "group.id": unique("g")})
    try:
        def low():
            return c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10, cached=False)
        assert low() == (0, 20)
        # With the default retention (7 days) the data stays; a minute makes it an hour too old.
        assert incremental(server.bootstrap, ResourceType.TOPIC, topic, [("retention.ms", "60000", SET)]) is None
        poll_until(lambda: low() == (20, 20), TIMEOUT, interval=0.2, what="retention deleting the hour-old records")
    finally:
        c.close()


def test_incremental_append_subtract_validate_only_and_errors(server):
    topic = unique("inc")
    create_topic(server.bootstrap, topic, retention_ms=5000)
    policy = lambda: topic_configs(server.bootstrap, topic)["cleanup.policy"].value  # noqa: E731
    # APPEND starts from the default (delete).
    assert incremental(server.bootstrap, ResourceType.TOPIC, topic, [("cleanup.policy", "compact", APPEND)]) is None
    assert policy() == "delete,compact"
    assert incremental(server.bootstrap, ResourceType.TOPIC, topic, [("cleanup.policy", "delete", SUBTRACT)]) is None
    assert policy() == "compact"
    # validate_only: answered, nothing changed.
    assert incremental(server.bootstrap, ResourceType.TOPIC, topic, [("cleanup.policy", "delete", SET)], validate_only=True) is None
    assert policy() == "compact"
    assert incremental(server.bootstrap, ResourceType.TOPIC, topic, [("no.such.config", "1", SET)]) == (
        INVALID_CONFIG, "Unknown topic config name: no.such.config")
    assert incremental(server.bootstrap, ResourceType.TOPIC, topic, [("retention.ms", "abc", SET)]) == (
        INVALID_CONFIG, "Invalid value abc for configuration retention.ms: Not a number of type LONG")
    assert incremental(server.bootstrap, ResourceType.TOPIC, topic, [("retention.ms", "5", APPEND)]) == (
        INVALID_CONFIG, "Can't APPEND to key retention.ms because its type is not LIST.")
    assert incremental(server.bootstrap, ResourceType.TOPIC, topic, [("cleanup.policy", "shred", SET)]) == (
        INVALID_CONFIG, "Invalid value shred for configuration cleanup.policy: String must be one of: compact, delete")
    missing = unique("missing")
    assert incremental(server.bootstrap, ResourceType.TOPIC, missing, [("retention.ms", "5", SET)]) == (
        UNKNOWN_TOPIC_OR_PARTITION, "The topic '%s' does not exist." % missing)
    assert topic_configs(server.bootstrap, topic)["retention.ms"].value == "5000", "a refused change changes nothing"

    # The legacy AlterConfigs replaces the whole set: retention.ms goes back to its default.
    res = ConfigResource(ResourceType.TOPIC, topic, set_config={"segment.ms": "100000"})
    a = admin(server.bootstrap)
    list(a.alter_configs([res]).values())[0].result(TIMEOUT)
    got = topic_configs(server.bootstrap, topic)
    assert got["segment.ms"].value == "100000"
    assert got["retention.ms"].source == ConfigSource.DEFAULT_CONFIG.value
    assert got["cleanup.policy"].value == "delete"


def test_broker_configs_are_described_and_only_the_log_filter_changes(server):
    out = kafka_configs(server.bootstrap, "--describe", "--entity-type", "brokers", "--entity-name", str(NODE_ID), "--all")
    assert "All configs for broker %d are:" % NODE_ID in out, out
    for line in ("broker.id=%d sensitive=false synonyms={STATIC_BROKER_CONFIG:broker.id=%d}" % (NODE_ID, NODE_ID),
                 "num.partitions=2 sensitive=false synonyms={STATIC_BROKER_CONFIG:num.partitions=2, DEFAULT_CONFIG:num.partitions=1}",
                 "message.max.bytes=1048588 sensitive=false synonyms={DEFAULT_CONFIG:message.max.bytes=1048588}",
                 "log.retention.ms=604800000 sensitive=false",
                 "auto.create.topics.enable=true",
                 "listeners=PLAINTEXT://%s" % server.bootstrap,
                 "advertised.listeners=PLAINTEXT://%s" % server.bootstrap,
                 "log.dirs=file://",
                 "process.roles=broker,controller"):
        assert line in out, (line, out)
    out = kafka_configs(server.bootstrap, "--describe", "--entity-type", "brokers", "--entity-name", str(NODE_ID))
    assert out.strip().endswith("Dynamic configs for broker %d are:" % NODE_ID), out
    out = kafka_configs(server.bootstrap, "--describe", "--entity-type", "brokers", "--entity-default")
    assert "Default configs for brokers in the cluster are:" in out, out

    r = ConfigResource(ResourceType.BROKER, str(NODE_ID))
    a = admin(server.bootstrap)
    got = a.describe_configs([r])[r].result(TIMEOUT)
    assert got["num.partitions"].is_read_only and got["num.partitions"].source == ConfigSource.STATIC_BROKER_CONFIG.value
    assert got["message.max.bytes"].source == ConfigSource.DEFAULT_CONFIG.value
    assert not got["sidestream.log.level"].is_read_only

    out = kafka_configs(server.bootstrap, "--alter", "--entity-type", "brokers", "--entity-name", str(NODE_ID),
                        "--add-config", "num.partitions=5", check=False)
    assert "InvalidRequestException: Cannot update these configs dynamically: [num.partitions]" in out, out
    assert incremental(server.bootstrap, ResourceType.BROKER, str(NODE_ID), [("broker.id", "7", SET)]) == (
        INVALID_REQUEST, "Cannot update these configs dynamically: [broker.id]")

    # The log filter: debug lines appear, and go again once the setting is deleted.
    debug_lines = lambda: server.log_text().count(" DEBUG ")  # noqa: E731
    assert debug_lines() == 0
    out = kafka_configs(server.bootstrap, "--alter", "--entity-type", "brokers", "--entity-name", str(NODE_ID),
                        "--add-config", "sidestream.log.level=debug")
    assert "Completed updating config for broker %d." % NODE_ID in out, out
    out = kafka_configs(server.bootstrap, "--describe", "--entity-type", "brokers", "--entity-name", str(NODE_ID))
    assert "sidestream.log.level=debug sensitive=false synonyms={DYNAMIC_BROKER_CONFIG:sidestream.log.level=debug" in out, out

    def makes_debug_lines():
        admin(server.bootstrap).list_topics(timeout=10)
        return debug_lines() > 0
    poll_until(makes_debug_lines, TIMEOUT, interval=0.2, what="debug lines in the agent's log")
    kafka_configs(server.bootstrap, "--alter", "--entity-type", "brokers", "--entity-name", str(NODE_ID),
                  "--delete-config", "sidestream.log.level")
    out = kafka_configs(server.bootstrap, "--describe", "--entity-type", "brokers", "--entity-name", str(NODE_ID))
    assert "sidestream.log.level" not in out, out
    settled = debug_lines()
    admin(server.bootstrap).list_topics(timeout=10)
    assert debug_lines() == settled, "debug lines after the filter went back to info"

    # Per module, as Kafka's broker loggers.
    out = kafka_configs(server.bootstrap, "--describe", "--entity-type", "broker-loggers", "--entity-name", str(NODE_ID))
    assert "root=INFO" in out and "sidestream.agent=INFO" in out, out
    kafka_configs(server.bootstrap, "--alter", "--entity-type", "broker-loggers", "--entity-name", str(NODE_ID),
                  "--add-config", "sidestream.controller=DEBUG")
    out = kafka_configs(server.bootstrap, "--describe", "--entity-type", "broker-loggers", "--entity-name", str(NODE_ID))
    assert "sidestream.controller=DEBUG" in out and "root=INFO" in out, out
    out = kafka_configs(server.bootstrap, "--alter", "--entity-type", "broker-loggers", "--entity-name", str(NODE_ID),
                        "--delete-config", "root", check=False)
    assert "Removing the log level of the root logger is not allowed" in out, out
    kafka_configs(server.bootstrap, "--alter", "--entity-type", "broker-loggers", "--entity-name", str(NODE_ID),
                  "--delete-config", "sidestream.controller")
    out = kafka_configs(server.bootstrap, "--describe", "--entity-type", "broker-loggers", "--entity-name", str(NODE_ID))
    assert "sidestream.controller=INFO" in out, out


def test_a_change_at_one_agent_reaches_the_others_through_the_remote_controller(tmp_path):
    ctl = ControllerProcess(tmp_path, "controller", "sqlite://%s" % (tmp_path / "controller.db")).start()
    agents = []
    try:
        ctl.wait_listening()
        objects = tmp_path / "objects"
        one, two = [make_agent(tmp_path, i, [ctl.address], objects).start() for i in (1, 2)]
        agents = [one, two]
        topic = unique("remote")
        create_topic(one.bootstrap, topic)
        poll_until(lambda: topic in admin(two.bootstrap).list_topics(timeout=10).topics, TIMEOUT, what="the topic at agent 2")
        assert incremental(one.bootstrap, ResourceType.TOPIC, topic, [("retention.ms", "123456", SET), ("max.message.bytes", "1000", SET)]) is None
        assert topic_configs(one.bootstrap, topic)["retention.ms"].value == "123456", "the agent reads its own write"
        poll_until(lambda: topic_configs(two.bootstrap, topic)["retention.ms"].value == "123456", TIMEOUT,
                   what="agent 2 seeing the new retention.ms")
        # The other agent enforces the new max.message.bytes.
        p = Producer({"bootstrap.servers": two.bootstrap, "acks": "all", "retries": 0})
        errors = []
        p.produce(topic, value=b"x" * 5000, on_delivery=lambda err, msg: errors.append(err))
        p.flush(TIMEOUT)
        assert errors and errors[0] is not None and errors[0].name() == "MSG_SIZE_TOO_LARGE", errors
    finally:
        for a in agents:
            a.close()
        ctl.close()


def test_without_alter_configs_a_principal_is_refused(acl_server):  # noqa: F811
    srv = acl_server
    topic = unique("acl-cfg")
    create_topic(srv.bootstrap, topic)
    create_user(srv, "erin", "erin-secret")
    conf = {k: v for k, v in user_config(srv, "erin", "erin-secret").items() if k != "bootstrap.servers"}
    assert incremental(srv.sasl_bootstrap, ResourceType.TOPIC, topic, [("retention.ms", "5", SET)], **conf)[0] == TOPIC_AUTHORIZATION_FAILED
    assert incremental(srv.sasl_bootstrap, ResourceType.BROKER, "1", [("sidestream.log.level", "info", SET)], **conf)[0] == \
        CLUSTER_AUTHORIZATION_FAILED
    assert "retention.ms" not in {k for k, v in topic_configs(srv.bootstrap, topic).items() if v.source == 1}
    # Granted ALTER_CONFIGS on the topic, the same change goes through.
    run(java_cmd("org.apache.kafka.tools.AclCommand", "--bootstrap-server", srv.bootstrap, "--add", "--allow-principal",
                 "User:erin", "--operation", "AlterConfigs", "--topic", topic))
    poll_until(lambda: incremental(srv.sasl_bootstrap, ResourceType.TOPIC, topic, [("retention.ms", "5", SET)], **conf) is None,
               TIMEOUT, interval=0.2, what="ALTER_CONFIGS granted")
    assert topic_configs(srv.bootstrap, topic)["retention.ms"].value == "5"
