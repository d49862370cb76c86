"""Helpers of the compatibility scenarios (tests/compat/): the Kafka 4.4.0 Java client and tools,
and franz-go, run unchanged against the server under test.

`tools()` runs tests/compat/fetch once per session (idempotent: jars, compiled scenarios and the
Go binary are cached outside the repo) and returns where they are. `run()` runs one command with
a deadline, fails the test with its output when it exits non-zero, and returns its stdout.
Scenario programs print `OBS key=value` lines: what the client observed. With
SIDESTREAM_COMPAT_OBS_DIR set, every run's observations are written there, one file per test,
for tests/compat/differential to compare a Sidestream run with a real Kafka run.
"""

import os
import re
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
FETCH = REPO / "tests" / "compat" / "fetch"
RUN_TIMEOUT = 180
# The Java tools' command lines as bin/kafka-run-class.sh builds them, with a modest heap.
JAVA_OPTS = ["-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-Djava.awt.headless=true",
             "-Dorg.slf4j.simpleLogger.defaultLogLevel=warn"]

_TOOLS = None


def tools():
    """{'java_lib', 'java_classes', 'connect_lib', 'mirror_lib', 'go_bin'} (or '*_missing': why), from tests/compat/fetch."""
    global _TOOLS
    if _TOOLS is None:
        out = subprocess.run([str(FETCH)], check=True, capture_output=True, text=True, timeout=3600)
        _TOOLS = dict(line.split("=", 1) for line in out.stdout.splitlines() if "=" in line)
    return _TOOLS


def require(part):
    """Skip the test when a toolchain is missing (scripts/test installs it; a dev box may not)."""
    t = tools()
    if part + "_missing" in t:
        pytest.skip("%s scenarios need %s" % (part, t[part + "_missing"]))
    return t


def java_cmd(main_class, *args, classpath="java"):
    """classpath: "java" (Kafka 4.4.0 and the scenarios), "connect" (Connect 4.3.1) or "mirror"
    (MirrorMaker 2 4.3.1)."""
    t = require("java")
    cp = "%s/*:%s" % (t["java_lib"], t["java_classes"]) if classpath == "java" else "%s/*" % t[classpath + "_lib"]
    return ["java", *JAVA_OPTS, "-cp", cp, main_class, *map(str, args)]


def go_cmd(*args):
    return [require("go")["go_bin"], *map(str, args)]


def run(cmd, stdin=None, timeout=RUN_TIMEOUT, check=True):
    """Runs cmd; returns (stdout, stderr). A non-zero exit fails the test with both."""
    try:
        p = subprocess.run(cmd, input=stdin, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise AssertionError("timed out after %ss: %s\nstdout:\n%s\nstderr:\n%s"
                             % (timeout, " ".join(cmd), e.stdout, e.stderr)) from None
    if check and p.returncode != 0:
        raise AssertionError("exit %d: %s\nstdout:\n%s\nstderr:\n%s"
                             % (p.returncode, " ".join(cmd), p.stdout[-5000:], p.stderr[-5000:]))
    return p.stdout, p.stderr


def observations(stdout):
    """The `OBS key=value` lines of a scenario, as a dict."""
    return dict(line[4:].split("=", 1) for line in stdout.splitlines() if line.startswith("OBS "))


def record(request, obs):
    """Keeps a test's observations for the differential harness (when asked to)."""
    d = os.environ.get("SIDESTREAM_COMPAT_OBS_DIR")
    if d:
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid.split("::", 1)[-1])
        with open(Path(d) / (name + ".txt"), "a") as f:
            for k, v in obs.items():
                f.write("%s=%s\n" % (k, v))
    return obs
