"""TLS listeners and SASL, with real clients: kcat and confluent-kafka (librdkafka) over SSL,
SASL_SSL (SCRAM-SHA-512, SCRAM-SHA-256) and SASL_PLAINTEXT (PLAIN), the Java client with a JAAS
config, users managed with AlterUserScramCredentials, wrong passwords, plaintext bytes on a TLS
port, client certificates (mTLS), certificate rotation on SIGHUP, re-authentication (KIP-368),
TLS 1.2 and 1.3, and the admin CLI's `--command-config` (one client properties file for it and
kafka-topics.sh). Certificates are made in the test with openssl.
"""
import json
import os
import signal
import socket
import ssl
import subprocess
import textwrap
import time
import uuid

import pytest

import kafka_wire
from compat import java_cmd, run
from conftest import REPO, SidestreamServer, free_port, poll_until

PASSWORD = "alice-secret"
SASL_AUTHENTICATION_FAILED = 58


def openssl(*args, cwd):
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True)


def make_ca(d, name):
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-days", "2",
            "-subj", "/CN=%s" % name, "-keyout", "%s.key" % name, "-out", "%s.pem" % name, cwd=d)
    return d / ("%s.pem" % name)


def make_cert(d, ca, name, subject, san=None):
    """A certificate for `subject` signed by `ca`; returns (cert path, key path)."""
    ext = d / ("%s.ext" % name)
    ext.write_text("subjectAltName=%s\n" % san if san else "basicConstraints=CA:FALSE\n")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes", "-subj", subject,
            "-keyout", "%s.key" % name, "-out", "%s.csr" % name, cwd=d)
    openssl("x509", "-req", "-in", "%s.csr" % name, "-CA", "%s.pem" % ca, "-CAkey", "%s.key" % ca,
            "-CAcreateserial", "-days", "2", "-extfile", ext.name, "-out", "%s.pem" % name, cwd=d)
    return d / ("%s.pem" % name), d / ("%s.key" % name)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    d = tmp_path_factory.mktemp("certs")
    make_ca(d, "ca")
    make_ca(d, "otherca")
    server = make_cert(d, "ca", "server", "/CN=localhost", "IP:127.0.0.1,DNS:localhost")
    client = make_cert(d, "ca", "client", "/C=US/O=Example/CN=app")
    stranger = make_cert(d, "otherca", "stranger", "/CN=stranger")
    colleague = make_cert(d, "ca", "colleague", "/C=US/O=Example/CN=colleague")
    return {"dir": d, "ca": d / "ca.pem", "otherca": d / "otherca.pem", "server": server, "client": client,
            "stranger": stranger, "colleague": colleague}


def secure_config(certs, client_auth="requested", reauth_ms=0):
    ports = {"SSL": free_port(), "SASL_SSL": free_port(), "SASL_PLAINTEXT": free_port()}
    text = textwrap.dedent("""
        [[listeners]]
        name = "SECURE"
        address = "127.0.0.1:{SSL}"
        protocol = "SSL"

        [[listeners]]
        name = "EXTERNAL"
        address = "127.0.0.1:{SASL_SSL}"
        protocol = "SASL_SSL"

        [[listeners]]
        name = "INTERNAL"
        address = "127.0.0.1:{SASL_PLAINTEXT}"
        protocol = "SASL_PLAINTEXT"

        [tls]
        cert_file = "{cert}"
        key_file = "{key}"
        client_ca_file = "{ca}"
        client_auth = "{client_auth}"

        [sasl]
        mechanisms = ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"]
        connections_max_reauth_ms = {reauth_ms}
        """).format(cert=certs["server"][0], key=certs["server"][1], ca=certs["ca"], client_auth=client_auth,
                    reauth_ms=reauth_ms, **ports)
    return text, ports


def add_user(bootstrap, user, password, mechanisms=("SCRAM-SHA-512", "SCRAM-SHA-256")):
    from confluent_kafka.admin import (AdminClient, ScramCredentialInfo, ScramMechanism,
                                       UserScramCredentialUpsertion)
    admin = AdminClient({"bootstrap.servers": bootstrap})
    ups = [UserScramCredentialUpsertion(user, ScramCredentialInfo(getattr(ScramMechanism, m.replace("-", "_")), 4096),
                                        password.encode()) for m in mechanisms]
    for f in admin.alter_user_scram_credentials(ups, request_timeout=30).values():
        f.result(timeout=30)


def start_agent(tmp_path, certs, **kw):
    text, ports = secure_config(certs, **kw)
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log", config=text)
    srv.start()
    return srv, ports


@pytest.fixture(scope="module")
def secure(tmp_path_factory, certs):
    base = tmp_path_factory.mktemp("secure")
    srv, ports = start_agent(base, certs)
    try:
        add_user(srv.bootstrap, "alice", PASSWORD)
        yield srv, ports
    finally:
        srv.close()


def client_conf(ports, certs, protocol, mechanism=None, password=PASSWORD, user="alice"):
    conf = {"bootstrap.servers": "127.0.0.1:%d" % ports[protocol], "security.protocol": protocol}
    if protocol.endswith("SSL"):
        conf["ssl.ca.location"] = str(certs["ca"])
    if mechanism:
        conf.update({"sasl.mechanism": mechanism, "sasl.username": user, "sasl.password": password})
    return conf


def produce_consume(conf, topic, n=20):
    """Produces n records with confluent-kafka on `conf`, consumes them back; returns the values."""
    from confluent_kafka import Consumer, Producer
    errors = []
    p = Producer(dict(conf, **{"error_cb": errors.append}))
    for i in range(n):
        p.produce(topic, value=b"v%d" % i)
    assert p.flush(30) == 0, errors
    c = Consumer(dict(conf, **{"group.id": "g-" + uuid.uuid4().hex, "auto.offset.reset": "earliest"}))
    c.subscribe([topic])
    got = []
    deadline = time.monotonic() + 30
    try:
        while len(got) < n:
            assert time.monotonic() < deadline, "consumed %d of %d" % (len(got), n)
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m.value())
    finally:
        c.close()
    return got


def topic_name(prefix):
    return "%s-%s" % (prefix, uuid.uuid4().hex[:8])


def test_users_are_managed_with_kafka_s_admin_apis(secure):
    from confluent_kafka.admin import AdminClient, ScramMechanism, UserScramCredentialDeletion
    srv, _ = secure
    add_user(srv.bootstrap, "bob", "bob-secret", mechanisms=("SCRAM-SHA-256",))
    admin = AdminClient({"bootstrap.servers": srv.bootstrap})
    described = admin.describe_user_scram_credentials(["alice", "bob"], request_timeout=30)
    mechanisms = {u: sorted((i.mechanism, i.iterations) for i in f.result(timeout=30).scram_credential_infos)
                  for u, f in described.items()}
    assert mechanisms == {"alice": sorted([(ScramMechanism.SCRAM_SHA_256, 4096), (ScramMechanism.SCRAM_SHA_512, 4096)]),
                          "bob": [(ScramMechanism.SCRAM_SHA_256, 4096)]}
    for f in admin.alter_user_scram_credentials([UserScramCredentialDeletion("bob", ScramMechanism.SCRAM_SHA_256)]).values():
        f.result(timeout=30)
    missing = admin.describe_user_scram_credentials(["bob"], request_timeout=30)
    with pytest.raises(Exception, match="RESOURCE_NOT_FOUND|does not exist"):
        missing["bob"].result()
    # Deleting again: RESOURCE_NOT_FOUND.
    again = admin.alter_user_scram_credentials([UserScramCredentialDeletion("bob", ScramMechanism.SCRAM_SHA_256)])
    with pytest.raises(Exception, match="RESOURCE_NOT_FOUND|does not exist"):
        again["bob"].result(timeout=30)
    # The store holds keys, never the password.
    db = (srv.data_dir / "controller.db").read_bytes()
    assert PASSWORD.encode() not in db


def test_kcat_and_confluent_kafka_over_ssl(secure, certs):
    srv, ports = secure
    topic = topic_name("ssl")
    ssl_port = "127.0.0.1:%d" % ports["SSL"]
    tls = ["-X", "security.protocol=SSL", "-X", "ssl.ca.location=%s" % certs["ca"]]
    run(["kcat", "-b", ssl_port, *tls, "-P", "-t", topic, "-p", "0"], stdin="one\ntwo\nthree\n")
    out, _ = run(["kcat", "-b", ssl_port, *tls, "-C", "-t", topic, "-p", "0", "-o", "beginning", "-c", "3", "-e"])
    assert out.split() == ["one", "two", "three"]
    # Metadata on the SSL listener names the SSL listener's address.
    out, _ = run(["kcat", "-b", ssl_port, *tls, "-L", "-J"])
    assert '"brokers":[{"id":1,"name":"127.0.0.1:%d"}]' % ports["SSL"] in out.replace(" ", ""), out
    assert produce_consume(client_conf(ports, certs, "SSL"), topic_name("ssl-ck")) == [b"v%d" % i for i in range(20)]
    # A client that does not trust the server's CA cannot connect.
    bad = ["-X", "security.protocol=SSL", "-X", "ssl.ca.location=%s" % certs["otherca"]]
    p = subprocess.run(["kcat", "-b", ssl_port, *bad, "-L", "-m", "5"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "certificate verify failed" in (p.stderr + p.stdout), p.stderr


@pytest.mark.parametrize("protocol,mechanism", [("SASL_SSL", "SCRAM-SHA-512"), ("SASL_SSL", "SCRAM-SHA-256"),
                                                ("SASL_PLAINTEXT", "PLAIN"), ("SASL_SSL", "PLAIN")])
def test_confluent_kafka_over_sasl(secure, certs, protocol, mechanism):
    srv, ports = secure
    before = srv.metrics().get('sidestream_sasl_authentications_total{mechanism="%s",outcome="ok"}' % mechanism, 0)
    topic = topic_name("sasl")
    assert produce_consume(client_conf(ports, certs, protocol, mechanism), topic) == [b"v%d" % i for i in range(20)]
    assert srv.metrics()['sidestream_sasl_authentications_total{mechanism="%s",outcome="ok"}' % mechanism] > before


def test_java_client_over_sasl_ssl_with_scram_and_plain(secure, certs, tmp_path):
    srv, ports = secure
    for protocol, mechanism, module in [("SASL_SSL", "SCRAM-SHA-512", "org.apache.kafka.common.security.scram.ScramLoginModule"),
                                        ("SASL_PLAINTEXT", "PLAIN", "org.apache.kafka.common.security.plain.PlainLoginModule")]:
        props = tmp_path / ("%s.properties" % mechanism)
        props.write_text("\n".join([
            "security.protocol=%s" % protocol,
            "sasl.mechanism=%s" % mechanism,
            'sasl.jaas.config=%s required username="alice" password="%s";' % (module, PASSWORD),
            "ssl.truststore.type=PEM",
            "ssl.truststore.location=%s" % certs["ca"],
        ]) + "\n")
        topic = topic_name("java-sasl")
        bs = ["--bootstrap-server", "127.0.0.1:%d" % ports[protocol]]
        run(java_cmd("org.apache.kafka.tools.ConsoleProducer", *bs, "--topic", topic, "--command-config", str(props)),
            stdin="a\nb\nc\n")
        out, _ = run(java_cmd("org.apache.kafka.tools.consumer.ConsoleConsumer", *bs, "--topic", topic, "--from-beginning",
                              "--max-messages", "3", "--command-config", str(props)))
        assert out.split() == ["a", "b", "c"], out


def test_a_wrong_password_gets_sasl_authentication_failed_and_no_data(secure, certs):
    from confluent_kafka import Producer
    srv, ports = secure
    topic = topic_name("wrong")
    errors = []
    p = Producer(dict(client_conf(ports, certs, "SASL_SSL", "SCRAM-SHA-512", password="guess"),
                      **{"error_cb": errors.append, "message.timeout.ms": 3000}))
    p.produce(topic, value=b"x")
    p.flush(10)
    assert any("Authentication failed" in e.str() for e in errors), [e.str() for e in errors]
    # On the wire: PLAIN with a wrong password is answered SASL_AUTHENTICATION_FAILED, then closed.
    with kafka_wire.Conn("127.0.0.1", ports["SASL_PLAINTEXT"], timeout=10) as c:
        assert kafka_wire.sasl_handshake(c, "PLAIN") == 0
        code, message = kafka_wire.sasl_authenticate(c, b"\0alice\0guess")
        assert code == SASL_AUTHENTICATION_FAILED and "guess" not in message, message
        with pytest.raises((kafka_wire.ConnectionClosed, OSError)):
            kafka_wire.api_versions(c, 0)
    # The failure is logged with the user's name and the reason, never the password; a second
    # failure of the same user and reason within the minute adds no line.
    with kafka_wire.Conn("127.0.0.1", ports["SASL_PLAINTEXT"], timeout=10) as c:
        assert kafka_wire.sasl_handshake(c, "PLAIN") == 0
        assert kafka_wire.sasl_authenticate(c, b"\0alice\0guess")[0] == SASL_AUTHENTICATION_FAILED
    lines = [l for l in srv.log_text().splitlines() if "SASL authentication failed" in l and "PLAIN" in l]
    assert len(lines) == 1 and "alice" in lines[0] and "Invalid username or password" in lines[0], lines
    assert "guess" not in srv.log_text()
    # Nothing was written: the topic was never created.
    from confluent_kafka.admin import AdminClient
    assert topic not in AdminClient({"bootstrap.servers": srv.bootstrap}).list_topics(timeout=30).topics
    # A request other than SASL before authenticating closes the connection.
    with kafka_wire.Conn("127.0.0.1", ports["SASL_PLAINTEXT"], timeout=10) as c:
        with pytest.raises((kafka_wire.ConnectionClosed, OSError)):
            kafka_wire.metadata(c, [])


def test_plaintext_bytes_on_the_tls_port_close_only_that_connection(secure, certs):
    from confluent_kafka import Producer
    srv, ports = secure
    topic = topic_name("tls-mixed")
    p = Producer(client_conf(ports, certs, "SSL"))
    p.produce(topic, value=b"before")
    assert p.flush(30) == 0
    with kafka_wire.Conn("127.0.0.1", ports["SSL"], timeout=10) as c:
        with pytest.raises((kafka_wire.ConnectionClosed, OSError)):
            kafka_wire.api_versions(c, 0)
    p.produce(topic, value=b"after")
    assert p.flush(30) == 0
    assert srv.metrics().get('sidestream_connections_closed_total{reason="tls_handshake"}', 0) >= 1


@pytest.mark.parametrize("version", ["TLSv1_2", "TLSv1_3"])
def test_tls_1_2_and_1_3_are_served_and_older_versions_refused(secure, certs, version):
    """A client pinned to TLS 1.2 or to TLS 1.3 completes the handshake and is answered
    ApiVersions over it; one that offers only TLS 1.1 is refused (rustls has no older ones)."""
    srv, ports = secure
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(str(certs["ca"]))
    ctx.minimum_version = ctx.maximum_version = getattr(ssl.TLSVersion, version)
    with kafka_wire.Conn("127.0.0.1", ports["SSL"], timeout=10) as c:
        c.sock = ctx.wrap_socket(c.sock, server_hostname="localhost")
        assert c.sock.version() == version.replace("_", "."), c.sock.version()
        assert kafka_wire.api_versions(c, 0)[0] == 0
    old = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    old.load_verify_locations(str(certs["ca"]))
    old.set_ciphers("ALL:@SECLEVEL=0")
    old.minimum_version = old.maximum_version = ssl.TLSVersion.TLSv1_1
    with socket.create_connection(("127.0.0.1", ports["SSL"]), timeout=10) as raw:
        with pytest.raises(ssl.SSLError):
            old.wrap_socket(raw, server_hostname="localhost")


def test_client_certificates_are_verified_when_required(tmp_path, certs):
    srv, ports = start_agent(tmp_path, certs, client_auth="required")
    try:
        base = client_conf(ports, certs, "SSL")
        topic = topic_name("mtls")
        with_cert = dict(base, **{"ssl.certificate.location": str(certs["client"][0]), "ssl.key.location": str(certs["client"][1])})
        assert produce_consume(with_cert, topic, n=5) == [b"v%d" % i for i in range(5)]
        for conf in (base, dict(base, **{"ssl.certificate.location": str(certs["stranger"][0]),
                                         "ssl.key.location": str(certs["stranger"][1])})):
            p = subprocess.run(["kcat", "-b", conf["bootstrap.servers"], "-X", "security.protocol=SSL",
                                "-X", "ssl.ca.location=%s" % certs["ca"]]
                               + (["-X", "ssl.certificate.location=%s" % conf["ssl.certificate.location"],
                                   "-X", "ssl.key.location=%s" % conf["ssl.key.location"]]
                                  if "ssl.certificate.location" in conf else [])
                               + ["-L", "-m", "5"], capture_output=True, text=True, timeout=60)
            assert p.returncode != 0, p.stdout
    finally:
        srv.close()


def test_a_client_certificate_s_subject_is_its_principal(tmp_path, certs):
    """With client_auth = "required" and the authorizer on, an ACL for
    `User:CN=app,O=Example,C=US` (Kafka's default mapping of the subject /C=US/O=Example/CN=app)
    lets that certificate's client produce and consume; a certificate of the same CA with another
    subject gets TOPIC_AUTHORIZATION_FAILED."""
    from confluent_kafka import KafkaError, Producer
    from confluent_kafka.admin import (AclBinding, AclOperation, AclPermissionType, AdminClient, NewTopic,
                                       ResourcePatternType, ResourceType)
    text, ports = secure_config(certs, client_auth="required")
    text += '\n[acl]\nenabled = true\nsuper_users = ["User:ANONYMOUS"]\n'
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log", config=text)
    srv.start()
    try:
        topic = topic_name("mtls-acl")
        admin = AdminClient({"bootstrap.servers": srv.bootstrap})
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
        principal = "User:CN=app,O=Example,C=US"
        acls = [AclBinding(ResourceType.TOPIC, topic, ResourcePatternType.LITERAL, principal, "*", AclOperation.ALL,
                           AclPermissionType.ALLOW),
                AclBinding(ResourceType.GROUP, "*", ResourcePatternType.LITERAL, principal, "*", AclOperation.READ,
                           AclPermissionType.ALLOW)]
        for f in admin.create_acls(acls).values():
            f.result(30)

        def with_cert(name):
            cert, key = certs[name]
            return dict(client_conf(ports, certs, "SSL"), **{"ssl.certificate.location": str(cert),
                                                              "ssl.key.location": str(key)})

        assert produce_consume(with_cert("client"), topic, n=5) == [b"v%d" % i for i in range(5)]
        errors = []
        p = Producer(dict(with_cert("colleague"), **{"message.timeout.ms": 10000}))
        p.produce(topic, value=b"x", on_delivery=lambda err, msg: errors.append(err))
        p.flush(30)
        assert len(errors) == 1 and errors[0] is not None and errors[0].code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, errors
    finally:
        srv.close()


def served_certificate(port):
    """The subject's CN of the certificate a new TLS connection is served."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        with ctx.wrap_socket(s) as t:
            der = t.getpeercert(binary_form=True)
    out = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout", "-subject"], input=der,
                         capture_output=True, check=True).stdout.decode()
    return out.strip()


def test_certificates_are_reloaded_on_sighup_without_dropping_connections(tmp_path, certs):
    from confluent_kafka import Producer
    d = tmp_path / "rot"
    d.mkdir()
    for f in ("ca.pem", "ca.key", "server.pem", "server.key"):
        (d / f).write_bytes((certs["dir"] / f).read_bytes())
    rotated = dict(certs, server=(d / "server.pem", d / "server.key"))
    srv, ports = start_agent(tmp_path, rotated)
    try:
        assert "CN=localhost" in served_certificate(ports["SSL"]) or "CN = localhost" in served_certificate(ports["SSL"])
        topic = topic_name("rotate")
        p = Producer(client_conf(ports, certs, "SSL"))
        p.produce(topic, value=b"1")
        assert p.flush(30) == 0
        new_cert, new_key = make_cert(d, "ca", "next", "/CN=rotated.localhost", "IP:127.0.0.1")
        (d / "server.key").write_bytes(new_key.read_bytes())
        (d / "server.pem").write_bytes(new_cert.read_bytes())
        srv.proc.send_signal(signal.SIGHUP)
        poll_until(lambda: "rotated.localhost" in served_certificate(ports["SSL"]), 30, what="the new certificate")
        # The connection opened before the rotation still works.
        p.produce(topic, value=b"2")
        assert p.flush(30) == 0
        assert srv.metrics()['sidestream_tls_reloads_total{outcome="ok"}'] >= 1
        # Without SIGHUP: the files' modification time changing is enough.
        third_cert, third_key = make_cert(d, "ca", "third", "/CN=third.localhost", "IP:127.0.0.1")
        (d / "server.key").write_bytes(third_key.read_bytes())
        (d / "server.pem").write_bytes(third_cert.read_bytes())
        poll_until(lambda: "third.localhost" in served_certificate(ports["SSL"]), 30, what="the file change to be seen")
        p.produce(topic, value=b"3")
        assert p.flush(30) == 0
    finally:
        srv.close()


def test_sessions_expire_and_clients_reauthenticate(tmp_path, certs):
    from confluent_kafka import Producer
    srv, ports = start_agent(tmp_path, certs, reauth_ms=1500)
    try:
        add_user(srv.bootstrap, "alice", PASSWORD)
        key = 'sidestream_sasl_authentications_total{mechanism="SCRAM-SHA-512",outcome="ok"}'
        p = Producer(client_conf(ports, certs, "SASL_SSL", "SCRAM-SHA-512"))
        topic = topic_name("reauth")
        start = time.monotonic()
        sent = 0
        # Produce for 5 s (three session lifetimes), one record every 100 ms.
        while time.monotonic() - start < 5:
            p.produce(topic, value=b"%d" % sent)
            sent += 1
            p.poll(0.1)
        assert p.flush(30) == 0
        assert srv.metrics()[key] >= 3, "the client re-authenticated %s times" % srv.metrics()[key]
        with srv.connect() as c:
            md = kafka_wire.metadata(c, [topic])
        assert md["topics"][topic]["error_code"] == 0
    finally:
        srv.close()


def test_the_first_user_is_made_with_sidestream_user(secure, certs):
    """`sidestream user add` writes to the store of a running agent; the user logs in at once."""
    from conftest import binary_path
    srv, ports = secure
    env = dict(__import__("os").environ, SIDESTREAM_AGENT_DATA_DIR=str(srv.data_dir))
    cli = [str(binary_path()), "user", "--config", str(srv.data_dir.parent / "proxy.toml")]
    subprocess.run(cli + ["add", "carol"], input="carol-secret\n", text=True, env=env, check=True, timeout=60)
    listed = subprocess.run(cli + ["list"], capture_output=True, text=True, env=env, check=True, timeout=60).stdout
    assert "carol\tSCRAM-SHA-256(iterations=8192) SCRAM-SHA-512(iterations=8192)" in listed, listed
    for mechanism in ("PLAIN", "SCRAM-SHA-256"):
        conf = client_conf(ports, certs, "SASL_PLAINTEXT", mechanism, user="carol", password="carol-secret")
        assert produce_consume(conf, topic_name("carol"), n=3) == [b"v0", b"v1", b"v2"]
    subprocess.run(cli + ["delete", "carol"], env=env, check=True, timeout=60)
    with kafka_wire.Conn("127.0.0.1", ports["SASL_PLAINTEXT"], timeout=10) as c:
        assert kafka_wire.sasl_handshake(c, "PLAIN") == 0
        assert kafka_wire.sasl_authenticate(c, b"\0carol\0carol-secret")[0] == SASL_AUTHENTICATION_FAILED
    p = subprocess.run(cli + ["delete", "carol"], capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode != 0 and "no user" in p.stderr


def test_kafka_configs_sh_manages_scram_users(secure, certs):
    """kafka-configs.sh --entity-type users (Kafka 4.4), as an operator runs it."""
    srv, ports = secure
    bs = ["--bootstrap-server", srv.bootstrap]
    run(java_cmd("org.apache.kafka.tools.ConfigCommand", *bs, "--alter", "--entity-type", "users", "--entity-name", "dave",
                 "--add-config", "SCRAM-SHA-512=[iterations=4096,password=dave-secret]"))
    # (--describe of users also asks for client quotas: tests/integration/test_quotas.py.)
    conf = client_conf(ports, certs, "SASL_SSL", "SCRAM-SHA-512", user="dave", password="dave-secret")
    assert produce_consume(conf, topic_name("dave"), n=3) == [b"v0", b"v1", b"v2"]
    run(java_cmd("org.apache.kafka.tools.ConfigCommand", *bs, "--alter", "--entity-type", "users", "--entity-name", "dave",
                 "--delete-config", "SCRAM-SHA-512"))
    with kafka_wire.Conn("127.0.0.1", ports["SASL_PLAINTEXT"], timeout=10) as c:
        assert kafka_wire.sasl_handshake(c, "PLAIN") == 0
        assert kafka_wire.sasl_authenticate(c, b"\0dave\0dave-secret")[0] == SASL_AUTHENTICATION_FAILED


def sidestream_cli(bootstrap, properties, *args, stdin=None):
    """The admin CLI with `--command-config properties`; returns the CompletedProcess."""
    cli = os.environ.get("SIDESTREAM_CLI", str(REPO / "target" / "release" / "sidestream"))
    return subprocess.run([cli, *map(str, args), "--bootstrap-server", bootstrap, "--command-config", str(properties)],
                          input=stdin, capture_output=True, text=True, timeout=120)


def test_the_admin_cli_and_kafka_tools_share_one_client_properties_file(secure, certs, tmp_path):
    """`sidestream topic|produce|consume --command-config` over SASL_SSL (SCRAM-SHA-512, a Java
    style file that kafka-topics.sh reads too), SASL_PLAINTEXT (PLAIN, librdkafka's key names)
    and SSL with a client certificate; a wrong password and a wrong CA are one clear line and
    exit 1."""
    srv, ports = secure
    java_style = tmp_path / "java.properties"
    java_style.write_text(textwrap.dedent("""\
        # the client.properties of an operator, as Kafka's tools read it
        security.protocol=SASL_SSL
        ssl.truststore.type=PEM
        ssl.truststore.location={ca}
        sasl.mechanism=SCRAM-SHA-512
        sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required \\
            username="alice" password="{pw}";
        """).format(ca=certs["ca"], pw=PASSWORD))
    bs_ssl = "localhost:%d" % ports["SASL_SSL"]
    topic = topic_name("cli-sasl")
    r = sidestream_cli(bs_ssl, java_style, "topic", "create", topic, "--partitions", "2", "--json")
    assert r.returncode == 0, r.stderr
    out, _ = run(java_cmd("org.apache.kafka.tools.TopicCommand", "--bootstrap-server", bs_ssl, "--command-config",
                          java_style, "--describe", "--topic", topic))
    assert "PartitionCount: 2" in out, out

    rdkafka_style = tmp_path / "rdkafka.properties"
    rdkafka_style.write_text("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=PLAIN\nsasl.username=alice\n"
                             "sasl.password=%s\n" % PASSWORD)
    bs_plain = "127.0.0.1:%d" % ports["SASL_PLAINTEXT"]
    r = sidestream_cli(bs_plain, rdkafka_style, "produce", topic, "--json", stdin="one\ntwo\nthree\n")
    assert r.returncode == 0 and json.loads(r.stdout.splitlines()[-1])["records"] == 3, (r.stdout, r.stderr)

    mtls = tmp_path / "mtls.properties"
    mtls.write_text("security.protocol=SSL\nssl.ca.location=%s\nssl.certificate.location=%s\nssl.key.location=%s\n"
                    % (certs["ca"], certs["client"][0], certs["client"][1]))
    r = sidestream_cli("localhost:%d" % ports["SSL"], mtls, "consume", topic, "--exit-at-end")
    assert r.returncode == 0 and sorted(r.stdout.split()) == ["one", "three", "two"], (r.stdout, r.stderr)
    r = sidestream_cli("localhost:%d" % ports["SSL"], mtls, "topic", "list", "--json")
    assert r.returncode == 0 and topic in [t["name"] for t in json.loads(r.stdout)["topics"]], (r.stdout, r.stderr)

    wrong = tmp_path / "wrong.properties"
    wrong.write_text(rdkafka_style.read_text().replace(PASSWORD, "guess"))
    r = sidestream_cli(bs_plain, wrong, "topic", "list")
    assert r.returncode == 1 and r.stdout == "", (r.stdout, r.stderr)
    assert "authentication of alice with %s failed: Authentication failed: Invalid username or password " \
           "(SASL_AUTHENTICATION_FAILED)" % bs_plain in r.stderr, r.stderr
    stranger_ca = tmp_path / "stranger-ca.properties"
    stranger_ca.write_text("security.protocol=SSL\nssl.ca.location=%s\n" % certs["otherca"])
    r = sidestream_cli("localhost:%d" % ports["SSL"], stranger_ca, "topic", "list")
    assert r.returncode == 1 and "TLS handshake failed" in r.stderr, r.stderr
