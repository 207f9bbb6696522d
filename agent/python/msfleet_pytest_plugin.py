"""msfleet pytest plugin: streams test results live to the msfleet agent.

Loaded by the agent as ``python -m pytest -p msfleet_pytest_plugin ...`` with
``MSFLEET_RESULT_SOCKET`` naming a Unix stream socket the agent listens on.
Without that variable the plugin does nothing, so loading it by hand is
harmless.

Protocol: one JSON object per line (UTF-8, ``\\n``-terminated), sent as soon
as each result is known::

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

_PLUGIN_NAME = "msfleet-result-reporter"

# Never die of SIGPIPE if the agent goes away (Python ignores SIGPIPE anyway,
# unless something restored the default disposition).
_SEND_FLAGS = getattr(socket, "MSG_NOSIGNAL", 0)


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


class MsfleetReporter:
    def __init__(self, config, sock, path):
        self.config = config
        self._sock = sock
        self._path = path
        self._lock = threading.Lock()
        self._broken = False
        self._markers = {}  # nodeid -> [marker names]
        self._registered_marks = None
        self._session_sent = False

    # ------------------------------------------------------------ transport
    def _send(self, obj):
        if self._sock is None or self._broken:
            return
        line = json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"
        data = line.encode("utf-8", "replace")  # lone surrogates -> '?'
        with self._lock:
            if self._broken:
                return
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

    def close(self):
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
    def _remember(self, item):
        try:
            self._markers[item.nodeid] = _marker_names(item.iter_markers())
        except Exception:
            pass

    def _markers_for(self, report):
        names = self._markers.get(report.nodeid)
        if names is not None:
            return names
        # No local item (xdist controller): recover marker names from the
        # report's keywords, restricted to registered marker names.
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
        keywords = getattr(report, "keywords", None) or {}
        return [k for k in keywords if k in self._registered_marks]

    @pytest.hookimpl(trylast=True)
    def pytest_itemcollected(self, item):
        self._remember(item)

    @pytest.hookimpl(tryfirst=True)
    def pytest_runtest_setup(self, item):
        # Refresh: pytest_collection_modifyitems may have added markers.
        self._remember(item)

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

    def _emit(self, report, category, when):
        outcome = _CATEGORY_TO_OUTCOME.get(category, "other")
        if outcome is None:
            return
        duration = getattr(report, "duration", None)
        try:
            duration = float(duration) if duration is not None else 0.0
        except (TypeError, ValueError):
            duration = 0.0
        msg = {
            "type": "test",
            "nodeid": report.nodeid,
            "when": when,
            "outcome": outcome,
            "category": category,
            "duration_s": duration,
            "longrepr": self._longrepr(report, outcome),
            "markers": self._markers_for(report),
        }
        subtest = _subtest_description(report)
        if subtest is not None:
            msg["subtest"] = subtest
        self._send(msg)

    def pytest_runtest_logstart(self, nodeid, location):
        self._send({"type": "start", "nodeid": nodeid})

    def pytest_runtest_logfinish(self, nodeid, location):
        self._send({"type": "finish", "nodeid": nodeid})

    def pytest_runtest_logreport(self, report):
        if not getattr(report, "count_towards_summary", True):
            return
        category = _category(self.config, report)
        if category == "" and _subtest_description(report) is not None:
            # pytest 9 hides passed (and xfailed) subtests from its summary
            # unless verbose; they are counted all the same, as -v shows.
            if getattr(report, "wasxfail", None) is not None:
                category = "xfailed"
            elif report.passed:
                category = "subtests passed"
        self._emit(report, category, report.when)

    def pytest_collectreport(self, report):
        # Same rule as TerminalReporter.pytest_collectreport.
        if not getattr(report, "count_towards_summary", True):
            return
        if report.failed:
            self._emit(report, "error", "collect")
        elif report.skipped:
            self._emit(report, "skipped", "collect")

    # ----------------------------------------------------------- collect-only
    def pytest_collection_finish(self, session):
        if os.environ.get(ENV_COLLECT) != "1":
            return
        for item in list(getattr(session, "items", None) or []):
            try:
                markers = _marker_names(item.iter_markers())
            except Exception:
                markers = []
            self._send(
                {
                    "type": "test",
                    "nodeid": item.nodeid,
                    "when": "collect",
                    "outcome": "collected",
                    "category": "collected",
                    "duration_s": 0.0,
                    "longrepr": "",
                    "markers": markers,
                }
            )

    # ------------------------------------------------------------- session
    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session, exitstatus):
        status = getattr(session, "exitstatus", exitstatus)
        try:
            status = int(status)
        except (TypeError, ValueError):
            status = int(exitstatus)
        self._send(
            {
                "type": "session",
                "exitstatus": status,
                "collected": int(getattr(session, "testscollected", 0) or 0),
            }
        )
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
