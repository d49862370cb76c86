"""Kafka 4.4's `kafka-broker-api-versions.sh` and `kafka-features.sh` against `sidestream serve`:
the first lists the agent as a broker and every API it advertises with its version range, usable
by the 4.4 client (what it calls UNSUPPORTED is exactly what ApiVersions leaves out); the second
the KIP-584 features, as Kafka 4.4 prints them."""

import re

import kafka_wire as kw
from compat import java_cmd, run
from conftest import SidestreamServer


def test_broker_api_versions_lists_what_api_versions_advertises(tmp_path):
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log")
    srv.start()
    try:
        host, port = srv.bootstrap.split(":")
        with kw.Conn(host, int(port)) as c:
            err, advertised = kw.api_versions(c, 0)
        assert err == 0
        out, _ = run(java_cmd("org.apache.kafka.tools.BrokerApiVersionsCommand", "--bootstrap-server", srv.bootstrap))
        assert re.search(r"^127\.0\.0\.1:%s \(id: 1 rack: null isFenced: false\) -> \(" % port, out, re.M), out[:300]
        listed = {}
        unsupported = set()
        for name, key, rest in re.findall(r"^\s+(\w+)\((\d+)\): (.*?),?$", out, re.M):
            if rest == "UNSUPPORTED":
                unsupported.add(int(key))
                continue
            m = re.fullmatch(r"(\d+)(?: to (\d+))? \[usable: (\d+)\]", rest)
            assert m, "cannot read %s(%s): %s" % (name, key, rest)
            lo, hi = int(m.group(1)), int(m.group(2) or m.group(1))
            # The 4.4 client can use the newest version the agent offers.
            assert int(m.group(3)) == hi, "%s(%s): %s" % (name, key, rest)
            listed[int(key)] = (lo, hi)
        assert listed == advertised
        assert not unsupported & set(advertised)
        # The operators' APIs of issue 21 are among them.
        for key in (37, 33, 44, 35, 43, 45, 46, 61, 23):
            assert key in listed, key
    finally:
        srv.close()


def test_kafka_features_describe(server):
    """group.version 1 (KIP-848 groups are served); transaction.version, share.version and
    streams.version at 0, not offered; no KRaft features (there is no quorum); `upgrade` refused."""
    out, _ = run(java_cmd("org.apache.kafka.tools.FeatureCommand", "--bootstrap-server", server.bootstrap, "describe"))
    rows = {}
    for line in out.splitlines():
        m = re.fullmatch(r"Feature: (\S+)\s+SupportedMinVersion: (\S+)\s+SupportedMaxVersion: (\S+)\s+"
                         r"FinalizedVersionLevel: (\S+)\s+Epoch: (\S+)", line.strip())
        assert m, "cannot read: %r" % line
        rows[m.group(1)] = m.groups()[1:]
    assert rows == {
        "group.version": ("0", "1", "1", "1"),
        "share.version": ("0", "0", "0", "1"),
        "streams.version": ("0", "0", "0", "1"),
        "transaction.version": ("0", "0", "0", "1"),
    }, out
    # Nothing to upgrade: the tool says the node does not take UpdateFeatures.
    out, err = run(java_cmd("org.apache.kafka.tools.FeatureCommand", "--bootstrap-server", server.bootstrap, "upgrade",
                            "--feature", "transaction.version=2"), check=False)
    assert "Could not upgrade transaction.version to 2. The node does not support UPDATE_FEATURES" in out + err, out + err


def test_kafkas_internal_topic_names_stay_reserved(tmp_path):
    """Groups and transactions live in the controller, so there is no `__consumer_offsets`; a
    client must not make an ordinary topic of that name by auto-creation or CreateTopics."""
    from confluent_kafka.admin import AdminClient, NewTopic
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log")
    srv.start()
    try:
        host, port = srv.bootstrap.split(":")
        with kw.Conn(host, int(port)) as c:
            # Metadata v1 always allows auto-creation.
            topics = kw.metadata(c, ["__consumer_offsets", "__transaction_state", "ordinary"])["topics"]
        assert topics["__consumer_offsets"]["error_code"] == 17 and not topics["__consumer_offsets"]["partitions"]
        assert topics["__transaction_state"]["error_code"] == 17
        assert topics["ordinary"]["error_code"] == 0
        admin = AdminClient({"bootstrap.servers": srv.bootstrap})
        err = admin.create_topics([NewTopic("__consumer_offsets", 1, 1)])["__consumer_offsets"].exception(30)
        assert err is not None and "internal topic" in str(err), err
        with kw.Conn(host, int(port)) as c:
            assert "__consumer_offsets" not in kw.metadata(c, None)["topics"]
    finally:
        srv.close()
