"""msfleet pytest plugin: streams test results live to the msfleet agent.

Loaded by the agent as ``python -m pytest -p msfleet_pytest_plugin ...`` with
``MSFLEET_RESULT_SOCKET`` naming a Unix stream socket the agent listens on.
Without that variable the plugin does nothing, so loading it by hand is
harmless.

Protocol: one JSON object per line (UTF-8, ``\\n``-terminated)::

    {"type": "test", "nodeid": "tests/test_a.py::test_x[1-2]",
     "when": "call", "outcome": "failed", "category": "failed",
     "duration_s": 0.0123, "longrepr": "...", "markers": ["nightly"]}
    ...
    {"type": "session", "exitstatus": 1, "collected": 17}

Around each test's reports the plugin also says when the test starts and
when it is done (so that the agent can name the test that was running when
pytest died of a signal)::

    {"type": "start", "nodeid": "tests/test_a.py::test_x[1-2]"}
    {"type": "finish", "nodeid": "tests/test_a.py::test_x[1-2]"}

Two writes per test: a test's setup and call results are sent before its
teardown runs; its teardown result and finish line are held until the next
test starts and go in the same write as that test's start line, which is
on the socket before the test runs; the last test's go with the session
line. Nothing is held past the start of the test's teardown, the start of
the next test or the end of the session: collection reports go when
collection is finished, and what is held goes at once on an internal error
or a keyboard interrupt. If pytest dies of a signal, the agent has every
result before the crash: a crash in a test's call is its failed call, a
crash in its teardown (a fixture's finalizer) an error in its teardown
after its call's own result, as pytest counts them.

A subtest's report (pytest 9's ``subtests`` fixture, unittest's ``subTest``
under pytest 9, the pytest-subtests plugin) carries its description, as
pytest shows it after SUBPASS/SUBFAIL, in one more field::

    {"type": "test", "nodeid": "t.py::test_x", "when": "call", "outcome": "failed",
     ..., "subtest": "[msg] (i=1)"}

``outcome`` is one of passed, failed, skipped, xfailed, xpassed, error,
subpassed (a passed subtest: pytest's "subtests passed", sent whatever the
verbosity; pytest 9 shows the count with ``-v``), rerun, other or collected.  Every message except rerun/other corresponds one-to-one to
an entry counted in pytest's own terminal summary line ("3 failed,
10 passed, ..."), because each report is classified with the same
``pytest_report_teststatus`` hook the terminal reporter uses.  ``category``
is the raw category returned by that hook (useful for ``other``).

With ``MSFLEET_SELECT_FILE`` (a file of node ids, one a line) only the
collected items with those node ids are kept (a shard of the selection); the
rest are deselected through ``pytest_deselected`` so pytest's summary counts
them as "deselected", and they are not reported.

With ``MSFLEET_DESELECT_FILE`` (a file of node ids, one a line) the
collected items with those node ids are deselected the same way (the agent
restarts pytest after a crash on the tests not yet reported).

With ``MSFLEET_COLLECT=1`` (the agent also passes ``--collect-only -q``) each
item left after collection is sent once, as soon as collection is finished::

    {"type": "test", "nodeid": "...", "when": "collect", "outcome": "collected",
     "category": "collected", "duration_s": 0.0, "longrepr": "", "markers": [...]}

This file is embedded in the Rust agent (include_str!) and must stay a single
self-contained module: stdlib + pytest only, Python >= 3.8, pytest 7, 8 and 9.
"""

import json
import os
import socket
import sys
import threading

import pytest

ENV_SOCKET = "MSFLEET_RESULT_SOCKET"
ENV_SELECT = "MSFLEET_SELECT_FILE"
ENV_DESELECT = "MSFLEET_DESELECT_FILE"
ENV_COLLECT = "MSFLEET_COLLECT"
MAX_LONGREPR_BYTES = 64 * 1024
_TRUNC_SUFFIX = "\n[msfleet: longrepr truncated]"

# Terminal-reporter categories -> protocol outcomes.  Categories mapped to
# None are never sent ("" is a passed setup/teardown).
_CATEGORY_TO_OUTCOME = {
    "passed": "passed",
    "failed": "failed",
    "skipped": "skipped",
    "xfailed": "xfailed",
    "xpassed": "xpassed",
    "error": "error",
    "errors": "error",
    "rerun": "rerun",
    # A passed subtest: pytest 9 (-v) and pytest-subtests count it apart, as
    # "N subtests passed". pytest-subtests' failed and skipped subtests are
    # failed and skipped results (pytest 9 counts them so).
    "subtests passed": "subpassed",
    "subtests failed": "failed",
    "subtests skipped": "skipped",
    "": None,
    "deselected": None,
    "warnings": None,
    "warning": None,
}

# The implementations of pytest_report_teststatus known to give a passed
# setup or teardown report (without ``wasxfail``) no category: with only
# these registered, such a report (two of every test) is dropped without
# calling the hook. Any other implementation is asked, as the terminal
# reporter asks it.
_PLAIN_STATUS_MODULES = frozenset(
    (
        "_pytest.runner",  # "" for a passed setup/teardown
        "_pytest.terminal",  # trylast: after runner
        "_pytest.skipping",  # only with wasxfail
        "_pytest.subtests",  # only the call phase
        "pytest_rerunfailures",  # only outcome "rerun"
    )
)

_PLUGIN_NAME = "msfleet-result-reporter"

# Never die of SIGPIPE if the agent goes away (Python ignores SIGPIPE anyway,
# unless something restored the default disposition).
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)

# A JSON string literal of a str, as json.dumps(ensure_ascii=False) writes it
# (the C encoder; a line is built from these and known literals).
_json_str = getattr(json.encoder, "c_encode_basestring", None) or json.encoder.encode_basestring

_START_LINE = '{"type":"start","nodeid":%s}\n'
_FINISH_LINE = '{"type":"finish","nodeid":%s}\n'
_TEST_LINE = (
    '{"type":"test","nodeid":%s,"when":%s,"outcome":%s,"category":%s,'
    '"duration_s":%s,"longrepr":%s,"markers":%s%s}\n'
)


def _truncate(text):
    if not isinstance(text, str):
        text = str(text)
    data = text.encode("utf-8", "replace")
    if len(data) <= MAX_LONGREPR_BYTES:
        return text
    keep = MAX_LONGREPR_BYTES - len(_TRUNC_SUFFIX.encode("utf-8"))
    return data[:keep].decode("utf-8", "ignore") + _TRUNC_SUFFIX


def _marker_names(marks):
    names = []
    seen = set()
    for mark in marks:
        name = getattr(mark, "name", None)
        if name and name not in seen:
            seen.add(name)
            names.append(name)
    return names


def _json_list(names):
    return "[" + ",".join([_json_str(n) for n in names]) + "]"


def _json_duration(duration):
    """A duration as a JSON number (0.0 for what is not a finite number)."""
    try:
        value = float(duration) if duration is not None else 0.0
    except (TypeError, ValueError):
        return "0.0"
    if value - value != 0.0:  # inf or nan
        return "0.0"
    return repr(value)


def _test_line(nodeid_json, when, outcome, category, duration, longrepr, markers_json, subtest):
    return _TEST_LINE % (
        nodeid_json,
        _json_str(when),
        _json_str(outcome),
        _json_str(category),
        _json_duration(duration),
        _json_str(longrepr),
        markers_json,
        "" if subtest is None else ',"subtest":' + _json_str(subtest),
    )


def _subtest_description(report):
    """The description of a subtest's report ("[msg] (i=1)"), else None."""
    context = getattr(report, "context", None)
    if context is None or not hasattr(context, "kwargs"):
        return None
    describe = getattr(report, "_sub_test_description", None)
    if callable(describe):
        try:
            return str(describe())
        except Exception:
            pass
    parts = []
    msg = getattr(context, "msg", None)
    if msg is not None:
        parts.append("[%s]" % (msg,))
    kwargs = getattr(context, "kwargs", None) or {}
    if kwargs:
        parts.append("(%s)" % ", ".join("%s=%s" % kv for kv in kwargs.items()))
    return " ".join(parts) or "(<subtest>)"


def _category(config, report):
    """Category of a runtest report exactly as the terminal reporter sees it."""
    try:
        res = config.hook.pytest_report_teststatus(report=report, config=config)
    except Exception:
        res = None
    if res:
        category = res[0]
        # Some plugins return (category, markup)-like tuples; take the name.
        while isinstance(category, tuple):
            category = category[0] if category else ""
        return category if isinstance(category, str) else str(category)
    # No reporter answered (e.g. ``-p no:terminal``): mimic pytest's default.
    outcome = report.outcome
    if report.when in ("setup", "teardown"):
        if outcome == "passed":
            return ""
        if outcome == "failed":
            return "error"
    return outcome


def _plain_status(config):
    """True when every pytest_report_teststatus implementation is one of
    ``_PLAIN_STATUS_MODULES`` (see there)."""
    try:
        impls = config.pluginmanager.hook.pytest_report_teststatus.get_hookimpls()
        modules = set(getattr(impl.plugin, "__name__", None) for impl in impls)
    except Exception:
        return False
    return modules <= _PLAIN_STATUS_MODULES


class MsfleetReporter:
    def __init__(self, config, sock, path):
        self.config = config
        self._sock = sock
        self._path = path
        self._lock = threading.Lock()
        self._broken = False
        # Lines not sent yet: the running test's results and its finish.
        self._held = []
        self._registered_marks = None
        self._session_sent = False
        # Whether a passed setup/teardown may skip the status hook; known
        # once collection is finished (conftest plugins are loaded then).
        self._plain_status = False
        # The test being run (pytest_runtest_setup) and, once one of its
        # reports is sent, its node id and marker names as JSON.
        self._item = None
        self._item_json = None

    # ------------------------------------------------------------ transport
    def _send(self, line, flush):
        """Holds `line`; with `flush`, sends everything held in one write."""
        with self._lock:
            if self._sock is None or self._broken:
                return
            held = self._held
            if line is not None:
                held.append(line)
            if not flush or not held:
                return
            self._held = []
            data = "".join(held).encode("utf-8", "replace")  # lone surrogates -> '?'
            try:
                self._sock.sendall(data, _SEND_FLAGS)
            except (OSError, ValueError) as exc:
                self._broken = True
                try:
                    sys.stderr.write(
                        "msfleet: cannot send results to agent socket %s (%s); "
                        "no further results will be reported\n" % (self._path, exc)
                    )
                    sys.stderr.flush()
                except Exception:
                    pass

    def _flush(self):
        self._send(None, True)

    def close(self):
        self._flush()
        with self._lock:
            sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_WR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass

    # -------------------------------------------------------------- markers
    def _registered(self):
        if self._registered_marks is None:
            regs = set()
            try:
                for line in self.config.getini("markers"):
                    name = line.split(":", 1)[0].split("(", 1)[0].strip()
                    if name:
                        regs.add(name)
            except Exception:
                pass
            self._registered_marks = regs
        return self._registered_marks

    def _nodeid_and_markers(self, report):
        """The report's node id and marker names, as JSON."""
        nodeid = report.nodeid
        cached = self._item_json
        if cached is not None and cached[0] == nodeid:
            return cached[1], cached[2]
        item = self._item
        if item is not None and item.nodeid == nodeid:
            try:
                names = _marker_names(item.iter_markers())
            except Exception:
                names = []
            cached = (nodeid, _json_str(nodeid), _json_list(names))
            self._item_json = cached
            return cached[1], cached[2]
        # No local item (a collect report, the xdist controller): recover
        # marker names from the report's keywords, restricted to registered
        # marker names.
        keywords = getattr(report, "keywords", None) or {}
        registered = self._registered()
        return _json_str(nodeid), _json_list([k for k in keywords if k in registered])

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        self._item = item
        self._item_json = None

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_teardown(self, item, nextitem):
        # The call's result goes before teardown runs: pytest killed in a
        # teardown (a fixture's finalizer) then leaves a passed call and a
        # crashed teardown, as pytest would count them, not a failed call.
        self._flush()

    # -------------------------------------------------------------- reports
    def _longrepr(self, report, outcome):
        wasxfail = getattr(report, "wasxfail", None)
        if outcome in ("xfailed", "xpassed") and wasxfail is not None:
            return _truncate(wasxfail)
        longrepr = report.longrepr
        if outcome == "passed" or longrepr is None:
            return ""
        if report.skipped and isinstance(longrepr, tuple) and len(longrepr) == 3:
            return _truncate(longrepr[2])
        try:
            return _truncate(str(longrepr))
        except Exception as exc:  # a broken repr must not lose the result
            return "<msfleet: unprintable longrepr: %r>" % (exc,)

    def _emit(self, report, category, when, subtest):
        outcome = _CATEGORY_TO_OUTCOME.get(category, "other")
        if outcome is None:
            return
        nodeid_json, markers_json = self._nodeid_and_markers(report)
        line = _test_line(
            nodeid_json,
            when,
            outcome,
            category,
            getattr(report, "duration", None),
            self._longrepr(report, outcome),
            markers_json,
            subtest,
        )
        self._send(line, False)

    def pytest_runtest_logstart(self, nodeid, location):
        # The previous test's results go with this start line, before this
        # test runs.
        self._send(_START_LINE % _json_str(nodeid), True)

    def pytest_runtest_logfinish(self, nodeid, location):
        self._send(_FINISH_LINE % _json_str(nodeid), False)

    def pytest_runtest_logreport(self, report):
        if not getattr(report, "count_towards_summary", True):
            return
        when = report.when
        if (
            self._plain_status
            and when != "call"
            and report.passed
            and not hasattr(report, "wasxfail")
        ):
            return  # category "": a passed setup or teardown is no result
        category = _category(self.config, report)
        subtest = _subtest_description(report)
        if category == "" and subtest is not None:
            # pytest 9 hides passed (and xfailed) subtests from its summary
            # unless verbose; they are counted all the same, as -v shows.
            if getattr(report, "wasxfail", None) is not None:
                category = "xfailed"
            elif report.passed:
                category = "subtests passed"
        self._emit(report, category, when, subtest)

    def pytest_collectreport(self, report):
        # Same rule as TerminalReporter.pytest_collectreport.
        if not getattr(report, "count_towards_summary", True):
            return
        if report.failed:
            self._emit(report, "error", "collect", _subtest_description(report))
        elif report.skipped:
            self._emit(report, "skipped", "collect", _subtest_description(report))

    # ------------------------------------------------------------ collection
    def pytest_collection_finish(self, session):
        self._plain_status = _plain_status(self.config)
        if os.environ.get(ENV_COLLECT) == "1":
            for item in list(getattr(session, "items", None) or []):
                try:
                    markers = _marker_names(item.iter_markers())
                except Exception:
                    markers = []
                line = _test_line(
                    _json_str(item.nodeid),
                    "collect",
                    "collected",
                    "collected",
                    0.0,
                    "",
                    _json_list(markers),
                    None,
                )
                self._send(line, False)
        # Collection errors and skips, and the collected items, go now.
        self._flush()

    # ------------------------------------------------------------- session
    def pytest_internalerror(self, excrepr, excinfo):
        self._flush()

    def pytest_keyboard_interrupt(self, excinfo):
        self._flush()

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        status = getattr(session, "exitstatus", exitstatus)
        try:
            status = int(status)
        except (TypeError, ValueError):
            status = int(exitstatus)
        collected = int(getattr(session, "testscollected", 0) or 0)
        self._send('{"type":"session","exitstatus":%d,"collected":%d}\n' % (status, collected), True)
        self._session_sent = True
        self.close()

    def pytest_unconfigure(self, config):
        self.close()


def _read_select_file(path):
    with open(path, encoding="utf-8") as f:
        return set(line.rstrip("\r\n") for line in f if line.rstrip("\r\n"))


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    """A shard: keep only the node ids listed in ``MSFLEET_SELECT_FILE``;
    a restart after a crash: drop those listed in ``MSFLEET_DESELECT_FILE``."""
    wanted = None
    unwanted = set()
    for var in (ENV_SELECT, ENV_DESELECT):
        path = os.environ.get(var)
        if not path:
            continue
        try:
            ids = _read_select_file(path)
        except OSError as exc:
            raise pytest.UsageError("msfleet: cannot read %s=%s: %s" % (var, path, exc))
        if var == ENV_SELECT:
            wanted = ids
        else:
            unwanted = ids
    if wanted is None and not unwanted:
        return
    kept = []
    deselected = []
    for item in items:
        keep = (wanted is None or item.nodeid in wanted) and item.nodeid not in unwanted
        (kept if keep else deselected).append(item)
    if deselected:
        config.hook.pytest_deselected(items=deselected)
        items[:] = kept


def pytest_configure(config):
    if hasattr(config, "workerinput"):
        return  # xdist worker: the controller reports via its own hooks
    path = os.environ.get(ENV_SOCKET)
    if not path:
        return
    if config.pluginmanager.has_plugin(_PLUGIN_NAME):
        return
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
    except OSError as exc:
        sock.close()
        raise pytest.UsageError(
            "msfleet: cannot connect to the agent's result socket %s=%s: %s"
            % (ENV_SOCKET, path, exc)
        )
    config.pluginmanager.register(MsfleetReporter(config, sock, path), _PLUGIN_NAME)
