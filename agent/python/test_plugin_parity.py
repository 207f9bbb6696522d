"""Parity tests for msfleet_pytest_plugin.

Runs real pytest subprocesses with the plugin loaded the way the msfleet agent
loads it (``-p msfleet_pytest_plugin``, PYTHONPATH, MSFLEET_RESULT_SOCKET) and
checks that the live results received on the Unix socket add up to exactly
what pytest's own terminal summary line reports.

Run with the project venv:  .venv/bin/python -m pytest agent/python/test_plugin_parity.py
Self-contained: stdlib + pytest only.
"""

import collections
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
SUITE = os.path.join(REPO, "examples", "suite")
FAIL = os.path.join(REPO, "examples", "fail")
EMPTY = os.path.join(REPO, "examples", "empty")

COUNTED = ("passed", "failed", "skipped", "xfailed", "xpassed", "error", "subpassed")
ALL_OUTCOMES = COUNTED + ("rerun", "other")
SUMMARY_RE = re.compile(r"(\d+) (subtests passed|passed|failed|skipped|xfailed|xpassed|errors?|warnings?|deselected)\b")
DURATION_RE = re.compile(r"\bin \d+(?:\.\d+)?s\b")
HAS_NPU = os.path.exists("/dev/davinci0")


class ResultServer:
    """Unix stream socket server standing in for the agent: records each line
    with its arrival time."""

    def __init__(self, close_immediately=False):
        self.dir = tempfile.mkdtemp(prefix="msfp-")
        self.path = os.path.join(self.dir, "results.sock")
        self.close_immediately = close_immediately
        self.raw = b""
        self.lines = []  # (monotonic arrival time, line text)
        self.chunks = []  # what each recv returned
        self.connections = 0
        self.closed = False  # the connection reached its end
        self._srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._srv.bind(self.path)
        self._srv.listen(4)
        self._srv.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join(10)
        self._srv.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def _serve(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._srv.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            self.connections += 1
            if self.close_immediately:
                conn.close()
                continue
            with conn:
                buf = b""
                while True:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    self.raw += chunk
                    self.chunks.append(chunk)
                    buf += chunk
                    while b"\n" in buf:
                        line, buf = buf.split(b"\n", 1)
                        self.lines.append((time.monotonic(), line.decode("utf-8")))
                if buf:
                    self.lines.append((time.monotonic(), buf.decode("utf-8")))
            self.closed = True

    def messages(self):
        return [json.loads(text) for _, text in self.lines]

    def wait_session(self, timeout=10.0):
        """The socket is closed right after the session message; wait for the
        reader thread to have recorded everything."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any('"type":"session"' in text for _, text in self.lines):
                return
            time.sleep(0.02)


def plugin_env(socket_path=None):
    env = dict(os.environ)
    for var in ("PYTEST_ADDOPTS", "PYTEST_PLUGINS", "MSFLEET_RESULT_SOCKET"):
        env.pop(var, None)
    env["PYTHONPATH"] = HERE + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    if socket_path is not None:
        env["MSFLEET_RESULT_SOCKET"] = socket_path
    return env


def run_pytest(cwd, args=(), socket_path=None, timeout=120):
    cmd = [sys.executable, "-m", "pytest", "-p", "msfleet_pytest_plugin", "-p", "no:cacheprovider"]
    cmd += list(args)
    proc = subprocess.run(
        cmd,
        cwd=cwd,
        env=plugin_env(socket_path),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        universal_newlines=True,
        timeout=timeout,
    )
    proc.finished_at = time.monotonic()
    return proc


def summary_counts(stdout):
    """Counts from pytest's final summary line, e.g.
    '==== 1 failed, 8 passed, 2 skipped, 1 error in 1.09s ===='."""
    for line in reversed(stdout.splitlines()):
        if DURATION_RE.search(line) and (SUMMARY_RE.search(line) or "no tests ran" in line):
            counts = collections.Counter()
            for n, word in SUMMARY_RE.findall(line):
                word = {"errors": "error", "warning": "warnings", "subtests passed": "subpassed"}.get(
                    word, word
                )
                counts[word] += int(n)
            return line, counts
    raise AssertionError("no summary line in pytest output:\n" + stdout)


def message_counts(msgs):
    return collections.Counter(m["outcome"] for m in msgs if m["type"] == "test")


def assert_parity(proc, server, hidden=()):
    """The plugin's results add up to pytest's summary line; `hidden`: outcomes
    the plugin sends that pytest's summary leaves out at this verbosity."""
    server.wait_session()
    msgs = server.messages()
    line, summary = summary_counts(proc.stdout)
    expected = {k: v for k, v in summary.items() if k in COUNTED and k not in hidden}
    got = {k: v for k, v in message_counts(msgs).items() if k in COUNTED and k not in hidden}
    assert got == expected, "summary %r vs messages %r\n%s" % (line, got, proc.stdout)

    # Wire format: one JSON object per \n-terminated line, session last.
    assert server.raw.endswith(b"\n")
    assert server.connections == 1
    running = None
    for m in msgs[:-1]:
        # A test's reports lie between its start and its finish.
        if m["type"] == "start":
            assert set(m) == {"type", "nodeid"} and running is None, (m, running)
            running = m["nodeid"]
            continue
        if m["type"] == "finish":
            assert m == {"type": "finish", "nodeid": running}, (m, running)
            running = None
            continue
        assert m["type"] == "test", m
        if m["when"] != "collect":
            assert m["nodeid"] == running, (m, running)
        keys = {"type", "nodeid", "when", "outcome", "category", "duration_s", "longrepr", "markers"}
        if "subtest" in m:
            assert isinstance(m["subtest"], str) and m["subtest"], m
            keys.add("subtest")
        assert set(m) == keys
        assert m["outcome"] in ALL_OUTCOMES
        assert m["when"] in ("collect", "setup", "call", "teardown")
        assert isinstance(m["duration_s"], float) and m["duration_s"] >= 0
        assert isinstance(m["longrepr"], str)
        assert isinstance(m["markers"], list)
    session = msgs[-1]
    assert session["type"] == "session", msgs
    assert session["exitstatus"] == proc.returncode, (session, proc.returncode, proc.stdout, proc.stderr)
    return msgs, session, summary


def by_name(msgs, name):
    found = [m for m in msgs if m["type"] == "test" and m["nodeid"].split("::")[-1] == name]
    assert found, "no message for %s in %r" % (name, msgs)
    return found


# ----------------------------------------------------------------------------


def test_example_suite_parity_and_content():
    with ResultServer() as server:
        started = time.monotonic()
        proc = run_pytest(SUITE, ["-rA"], socket_path=server.path)
        msgs, session, summary = assert_parity(proc, server)

    # The example suite's known outcomes (see examples/README.md).
    expected = {"failed": 1, "passed": 8, "skipped": 2, "xfailed": 1, "xpassed": 1, "error": 1}
    if HAS_NPU:
        expected["passed"] += 1
        expected["skipped"] -= 1
    assert dict(message_counts(msgs)) == expected
    assert session["collected"] == 14
    assert proc.returncode == 1

    (failed,) = by_name(msgs, "test_known_regression")
    assert failed["outcome"] == "failed" and failed["when"] == "call"
    assert "operator fusion produced 41, expected 42" in failed["longrepr"]
    assert failed["nodeid"] == "tests/regression/test_regression.py::test_known_regression"

    (skipped,) = by_name(msgs, "test_feature_flag")
    assert skipped["outcome"] == "skipped" and skipped["when"] == "setup"
    assert skipped["longrepr"] == "Skipped: feature flag not enabled in this suite"
    assert skipped["markers"] == ["skip"]

    (xfailed,) = by_name(msgs, "test_int8_rounding")
    assert xfailed["outcome"] == "xfailed"
    assert xfailed["longrepr"] == "issue #12: int8 rounding differs from reference"

    (xpassed,) = by_name(msgs, "test_sometimes_flaky")
    assert xpassed["outcome"] == "xpassed"
    assert xpassed["longrepr"] == "flaky on some hosts"

    (error,) = by_name(msgs, "test_uses_broken_device")
    assert error["outcome"] == "error" and error["when"] == "setup"
    assert "device handle could not be opened" in error["longrepr"]

    (nightly,) = by_name(msgs, "test_full_compile")
    assert nightly["markers"] == ["nightly"] and nightly["outcome"] == "passed"
    assert nightly["longrepr"] == "" and nightly["duration_s"] >= 0.25

    (npu,) = by_name(msgs, "test_npu_matmul")
    assert set(npu["markers"]) == {"npu", "skipif"}

    params = [m for m in msgs if m["type"] == "test" and "test_add_parametrized[" in m["nodeid"]]
    assert sorted(m["nodeid"].split("::")[-1] for m in params) == [
        "test_add_parametrized[-1-1-0]",
        "test_add_parametrized[0-0-0]",
        "test_add_parametrized[1-2-3]",
    ]
    assert all(m["markers"] == ["parametrize"] for m in params)

    # Live: the first result arrived well before the run ended (the suite
    # sleeps >= 0.7 s after its first test), not in one batch at exit.
    first_at = server.lines[0][0]
    last_at = server.lines[-1][0]
    assert first_at - started < proc.finished_at - started
    assert last_at - first_at > 0.5, (first_at, last_at)


@pytest.mark.parametrize("continue_on_errors", [False, True], ids=["interrupted", "continue"])
def test_collection_error_parity(tmp_path, continue_on_errors):
    (tmp_path / "test_ok.py").write_text("def test_ok():\n    assert True\n")
    (tmp_path / "test_bad.py").write_text("raise RuntimeError('broken at import time')\n")
    (tmp_path / "test_skipmod.py").write_text(
        "import pytest\npytest.skip('needs a toolchain', allow_module_level=True)\n"
    )
    args = ["--continue-on-collection-errors"] if continue_on_errors else []
    with ResultServer() as server:
        proc = run_pytest(str(tmp_path), args, socket_path=server.path)
        msgs, session, summary = assert_parity(proc, server)

    assert summary["error"] == 1
    (err,) = [m for m in msgs if m["type"] == "test" and m["outcome"] == "error"]
    assert err["when"] == "collect" and err["nodeid"] == "test_bad.py"
    assert "broken at import time" in err["longrepr"]
    (skip,) = [m for m in msgs if m["type"] == "test" and m["outcome"] == "skipped"]
    assert skip["when"] == "collect" and skip["nodeid"] == "test_skipmod.py"
    assert "needs a toolchain" in skip["longrepr"]
    if continue_on_errors:
        assert proc.returncode == 1 and summary["passed"] == 1
    else:
        assert proc.returncode == 2 and "passed" not in summary  # Interrupted


def test_fail_and_empty_examples_parity():
    with ResultServer() as server:
        proc = run_pytest(FAIL, socket_path=server.path)
        msgs, session, _ = assert_parity(proc, server)
    assert proc.returncode == 1 and session["collected"] == 2
    assert dict(message_counts(msgs)) == {"passed": 1, "failed": 1}

    with ResultServer() as server:
        proc = run_pytest(EMPTY, socket_path=server.path)
        msgs, session, _ = assert_parity(proc, server)
    assert proc.returncode == 5
    assert msgs == [{"type": "session", "exitstatus": 5, "collected": 0}]


def test_without_env_var_plugin_is_inert():
    proc = run_pytest(FAIL)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _, summary = summary_counts(proc.stdout)
    assert dict(summary) == {"failed": 1, "passed": 1}
    assert "msfleet" not in proc.stderr


def test_unreachable_socket_is_a_usage_error(tmp_path):
    missing = str(tmp_path / "nobody-listens.sock")
    proc = run_pytest(FAIL, socket_path=missing)
    assert proc.returncode == 4, proc.stdout + proc.stderr  # ExitCode.USAGE_ERROR
    assert "MSFLEET_RESULT_SOCKET" in proc.stderr and missing in proc.stderr


def test_agent_gone_does_not_crash_pytest():
    with ResultServer(close_immediately=True) as server:
        proc = run_pytest(FAIL, socket_path=server.path)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    _, summary = summary_counts(proc.stdout)
    assert dict(summary) == {"failed": 1, "passed": 1}
    assert proc.stderr.count("msfleet: cannot send results") == 1, proc.stderr
    assert "Traceback" not in proc.stderr


def test_plugin_is_single_stdlib_file():
    """The agent embeds the plugin with include_str!: it must not import
    anything beyond the stdlib and pytest."""
    with open(os.path.join(HERE, "msfleet_pytest_plugin.py")) as f:
        src = f.read()
    imported = set(re.findall(r"^(?:import|from) (\w+)", src, re.M))
    assert imported <= {"json", "os", "socket", "sys", "threading", "pytest"}, imported
    compile(textwrap.dedent(src), "msfleet_pytest_plugin.py", "exec")


def _collect_ids(cwd, args=()):
    """Node ids as pytest itself lists them with ``-q --collect-only``."""
    proc = run_pytest(cwd, ["-q", "--collect-only"] + list(args))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return [line.strip() for line in proc.stdout.splitlines() if "::" in line]


def test_select_file_runs_only_the_shard(tmp_path, monkeypatch):
    all_ids = _collect_ids(SUITE)
    assert len(all_ids) == 14, all_ids
    chosen = [
        "tests/regression/test_regression.py::test_known_regression",
        next(i for i in all_ids if "test_add_parametrized[" in i),
        next(i for i in all_ids if i.endswith("::test_full_compile")),
    ]
    assert all(c in all_ids for c in chosen), (chosen, all_ids)
    select = tmp_path / "select.txt"
    select.write_text("\n".join(chosen) + "\n")
    monkeypatch.setenv("MSFLEET_SELECT_FILE", str(select))
    with ResultServer() as server:
        proc = run_pytest(SUITE, socket_path=server.path)
        msgs, session, summary = assert_parity(proc, server)
    tests = [m for m in msgs if m["type"] == "test"]
    assert sorted(m["nodeid"] for m in tests) == sorted(chosen), tests
    assert summary["deselected"] == len(all_ids) - 3, proc.stdout
    assert "%d deselected" % (len(all_ids) - 3) in proc.stdout
    assert dict(message_counts(msgs)) == {"passed": 2, "failed": 1}
    # session.testscollected counts what was left after deselection.
    assert session["collected"] == 3
    assert proc.returncode == 1


def test_collect_only_reports_each_item_as_collected(monkeypatch):
    expected = _collect_ids(SUITE)
    with monkeypatch.context() as mp:
        mp.setenv("MSFLEET_COLLECT", "1")
        with ResultServer() as server:
            proc = run_pytest(SUITE, ["--collect-only", "-q"], socket_path=server.path)
            server.wait_session()
            msgs = server.messages()
    assert proc.returncode == 0, proc.stdout + proc.stderr
    tests = [m for m in msgs if m["type"] == "test"]
    assert [m["nodeid"] for m in tests] == expected
    for m in tests:
        assert m["when"] == "collect" and m["outcome"] == "collected", m
        assert m["duration_s"] == 0 and m["longrepr"] == ""
        assert isinstance(m["markers"], list)
    (nightly,) = by_name(msgs, "test_full_compile")
    assert nightly["markers"] == ["nightly"]
    assert msgs[-1] == {"type": "session", "exitstatus": 0, "collected": len(expected)}

    # Without MSFLEET_COLLECT a --collect-only run reports no items.
    with ResultServer() as server:
        proc = run_pytest(SUITE, ["--collect-only", "-q"], socket_path=server.path)
        server.wait_session()
        assert [m["type"] for m in server.messages()] == ["session"]


PYTEST_MAJOR = int(pytest.__version__.split(".")[0])

SUBTESTS = """
import unittest

def test_sub(subtests):
    for i in range(3):
        with subtests.test(msg="i", i=i):
            assert i != 1

def test_sub_ok(subtests):
    for i in range(2):
        with subtests.test(i=i):
            pass

def test_plain():
    pass
"""

UNITTEST_SUBTEST = """
import unittest

class T(unittest.TestCase):
    def test_ut(self):
        for i in range(3):
            with self.subTest(i=i):
                self.assertNotEqual(i, 2)

    def test_ut_ok(self):
        for i in range(2):
            with self.subTest(i=i):
                pass
"""


def run_subtests_parity(tmp_path):
    """Runs the suite in tmp_path with -v (pytest's summary then counts the
    passed subtests: "N subtests passed") and without (it hides them; the
    plugin sends the same results): parity both times. Returns the -v run's
    (proc, msgs)."""
    runs = []
    for args, hidden in ((["-v"], ()), ([], ("subpassed",))):
        with ResultServer() as server:
            proc = run_pytest(str(tmp_path), args, socket_path=server.path)
            msgs, session, summary = assert_parity(proc, server, hidden)
        assert proc.returncode == 1
        runs.append((proc, [m for m in msgs if m["type"] == "test"]))
    (verbose, verbose_msgs), (_, quiet_msgs) = runs
    strip = lambda ms: [(m["nodeid"], m["outcome"], m.get("subtest")) for m in ms]
    assert strip(verbose_msgs) == strip(quiet_msgs)
    return verbose, verbose_msgs


@pytest.mark.skipif(PYTEST_MAJOR < 9, reason="the subtests fixture is built into pytest 9")
def test_subtests_fixture_parity(tmp_path):
    """pytest 9's subtests: the plugin's counts are pytest's summary ("2
    failed, 2 passed, 4 subtests passed" with -v), and a failed subtest is a
    failed result naming its subtest."""
    (tmp_path / "test_sub.py").write_text(SUBTESTS)
    proc, msgs = run_subtests_parity(tmp_path)
    assert "2 failed, 2 passed, 4 subtests passed" in proc.stdout, proc.stdout
    failed = [m for m in msgs if m["outcome"] == "failed"]
    assert {m["nodeid"] for m in failed} == {"test_sub.py::test_sub"}, failed
    subfail = [m for m in failed if "subtest" in m]
    assert [m["subtest"] for m in subfail] == ["[i] (i=1)"], failed
    assert "assert 1 != 1" in subfail[0]["longrepr"]
    subpassed = [(m["nodeid"], m["subtest"]) for m in msgs if m["outcome"] == "subpassed"]
    assert subpassed == [
        ("test_sub.py::test_sub", "[i] (i=0)"),
        ("test_sub.py::test_sub", "[i] (i=2)"),
        ("test_sub.py::test_sub_ok", "(i=0)"),
        ("test_sub.py::test_sub_ok", "(i=1)"),
    ], msgs


def test_unittest_subtest_parity(tmp_path):
    """unittest's subTest, on every supported pytest: counts as pytest's own
    summary, and the failing subtest's test has a failed result."""
    (tmp_path / "test_ut.py").write_text(UNITTEST_SUBTEST)
    proc, msgs = run_subtests_parity(tmp_path)
    failed = [m for m in msgs if m["outcome"] == "failed"]
    assert [m["nodeid"] for m in failed] == ["test_ut.py::T::test_ut"], msgs
    if PYTEST_MAJOR >= 9:
        assert failed[0]["subtest"] == "(i=2)", failed
        assert "1 failed, 2 passed, 4 subtests passed" in proc.stdout, proc.stdout
    else:
        # pytest 8 has no subtest reports: the test itself fails.
        assert not any(m["outcome"] == "subpassed" for m in msgs), msgs


PACED = """
import time
import pytest

@pytest.fixture(autouse=True)
def slow_teardown():
    yield
    time.sleep(0.3)

def test_a():
    time.sleep(0.3)

def test_b_fails():
    time.sleep(0.3)
    assert False

def test_c():
    time.sleep(0.3)
"""


def chunk_types(server):
    """Each recv's lines as (type, last part of the node id)."""
    out = []
    for chunk in server.chunks:
        assert chunk.endswith(b"\n"), chunk  # whole lines in each write
        msgs = [json.loads(line) for line in chunk.decode("utf-8").splitlines()]
        out.append([(m["type"], m.get("nodeid", "").split("::")[-1]) for m in msgs])
    return out


def test_two_writes_per_test_each_before_what_it_runs(tmp_path):
    """A test's call result goes before its teardown runs; its finish line
    goes in the same write as the next test's start line (the last test's
    with the session line), before that test runs. Each test sleeps 0.3 s
    in its call and in its teardown, so no two writes share a recv."""
    (tmp_path / "test_paced.py").write_text(PACED)
    with ResultServer() as server:
        proc = run_pytest(str(tmp_path), socket_path=server.path)
        assert_parity(proc, server)
    assert chunk_types(server) == [
        [("start", "test_a")],
        [("test", "test_a")],
        [("finish", "test_a"), ("start", "test_b_fails")],
        [("test", "test_b_fails")],
        [("finish", "test_b_fails"), ("start", "test_c")],
        [("test", "test_c")],
        [("finish", "test_c"), ("session", "")],
    ], server.chunks
    # Each start arrived before its test ran, not at the end.
    starts = [t for t, text in server.lines if '"type":"start"' in text]
    assert len(starts) == 3
    assert starts[1] - starts[0] > 0.5 and starts[2] - starts[1] > 0.5, starts


KILLED = """
import os, signal

def test_a():
    pass

def test_b_dies():
    os.kill(os.getpid(), signal.SIGKILL)

def test_c():
    pass
"""


def run_until_killed(tmp_path):
    """Runs pytest on `tmp_path` that kills itself; its exit and every
    message that reached the socket before it died."""
    with ResultServer() as server:
        proc = run_pytest(str(tmp_path), socket_path=server.path)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and server.connections and not server.closed:
            time.sleep(0.02)
        return proc, server.messages()


def test_a_test_that_kills_pytest_is_the_last_started(tmp_path):
    """pytest killed in a test: the test's start line and every result
    before it are on the socket (the agent names the crashed test from them)."""
    (tmp_path / "test_killed.py").write_text(KILLED)
    proc, msgs = run_until_killed(tmp_path)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    assert [(m["type"], m["nodeid"].split("::")[-1], m.get("outcome")) for m in msgs] == [
        ("start", "test_a", None),
        ("test", "test_a", "passed"),
        ("finish", "test_a", None),
        ("start", "test_b_dies", None),
    ], msgs


KILLED_IN_TEARDOWN = """
import os, signal
import pytest

@pytest.fixture
def dies_after():
    yield
    os.kill(os.getpid(), signal.SIGKILL)

def test_a():
    pass

def test_b_dies_in_teardown(dies_after):
    pass

def test_c():
    pass
"""


def test_a_test_killed_in_its_teardown_has_sent_its_call_result(tmp_path):
    """pytest killed in a test's teardown: the test's passed call is on the
    socket (the agent counts the crash as a teardown error, not a failed call)."""
    (tmp_path / "test_killed_teardown.py").write_text(KILLED_IN_TEARDOWN)
    proc, msgs = run_until_killed(tmp_path)
    assert proc.returncode == -9, proc.stdout + proc.stderr
    assert [(m["type"], m["nodeid"].split("::")[-1], m.get("when"), m.get("outcome")) for m in msgs] == [
        ("start", "test_a", None, None),
        ("test", "test_a", "call", "passed"),
        ("finish", "test_a", None, None),
        ("start", "test_b_dies_in_teardown", None, None),
        ("test", "test_b_dies_in_teardown", "call", "passed"),
    ], msgs
