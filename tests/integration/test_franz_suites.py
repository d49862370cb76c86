"""franz-go's own integration suites (pkg/kgo and pkg/kadm of the pinned release, as Tansu runs
them) against `sidestream serve`: every test passes except those on tests/compat/franz-allowlist.txt,
each listed with the feature it needs. tests/compat/franz-suites runs them and compares.

The agent has a SASL_PLAINTEXT listener with a SCRAM user for the SCRAM tests
(KGO_TEST_SCRAM_SEEDS). Against Kafka (README, Compatibility):
  SIDESTREAM_BIN=scripts/kafka-reference-broker .venv/bin/pytest -q tests/integration/test_franz_suites.py
runs the suites and only reports (the allow list is Sidestream's).
"""

import os
import subprocess
import textwrap
import warnings

from compat import REPO, require
from conftest import SidestreamServer, binary_path, free_port

SUITES = REPO / "tests" / "compat" / "franz-suites"
ALLOWLIST = REPO / "tests" / "compat" / "franz-allowlist.txt"
USER, PASSWORD = "franz", "franz-secret"


def test_franz_go_suites(tmp_path):
    require("go")
    reference = binary_path().name == "kafka-reference-broker"
    sasl_port = free_port()
    config = None if reference else textwrap.dedent("""
        [[listeners]]
        name = "SASL"
        address = "127.0.0.1:%d"
        protocol = "SASL_PLAINTEXT"

        [sasl]
        mechanisms = ["SCRAM-SHA-256"]
        """ % sasl_port)
    srv = SidestreamServer(tmp_path / "data", tmp_path / "server.log", config=config)
    env = dict(os.environ)
    try:
        srv.start()
        if not reference:
            subprocess.run([str(binary_path()), "user", "add", USER, "--mechanism", "SCRAM-SHA-256",
                            "--config", str(tmp_path / "proxy.toml")], input=PASSWORD + "\n", text=True,
                           env=dict(env, SIDESTREAM_AGENT_DATA_DIR=str(srv.data_dir)), check=True, timeout=60)
            env.update(KGO_TEST_SCRAM_SEEDS="127.0.0.1:%d" % sasl_port, KGO_TEST_SCRAM="%s:%s" % (USER, PASSWORD))
        args = [str(SUITES), srv.bootstrap, "--raw", str(tmp_path / "go-test.json")]
        args += [] if reference else ["--allowlist", str(ALLOWLIST)]
        p = subprocess.run(args, env=env, capture_output=True, text=True, timeout=840)
    finally:
        srv.close()
    print(p.stdout)
    assert p.returncode == 0, "franz-suites exit %d against %s (go test's output: %s):\n%s\n%s" % (
        p.returncode, srv.bootstrap, tmp_path / "go-test.json", p.stdout[-20000:], p.stderr[-5000:])
    if "ALLOWED BUT PASSED" in p.stdout:
        warnings.warn([line for line in p.stdout.splitlines() if "ALLOWED BUT PASSED" in line][0])
