"""Suite for cancel/timeout tests.

test_quick passes at once; test_hangs starts a child process (``sleep 300``)
and then sleeps 60 s, so a cancel or timeout catches it running and can check
that the whole process group (pytest *and* the child) is killed.
"""
import os
import subprocess
import time


def test_quick():
    assert True


def test_hangs():
    child = subprocess.Popen(["sleep", "300"])
    # Let the harness find the grandchild if it wants to check it is killed.
    pidfile = os.environ.get("MSFLEET_SLOW_CHILD_PIDFILE")
    if pidfile:
        with open(pidfile, "w") as f:
            f.write("%d\n" % child.pid)
    # No cleanup of the child on purpose: only killing the process group
    # gets rid of it, which is what the cancel/timeout tests verify.
    time.sleep(60)
    child.wait()
