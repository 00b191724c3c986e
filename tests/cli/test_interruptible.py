"""Long commands stop on SIGINT/SIGTERM even when started with SIGINT ignored (``job &`` in a script)."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

# "ready" is printed inside the try: a signal sent as soon as the parent reads it must land where
# the child handles it (printed before the try, a signal arriving in between escaped as an
# uncaught KeyboardInterrupt, exit -2; seen on a loaded 2-core machine).
CHILD = """
import sys, time
from geo4d_policy.cli import interruptible
if sys.argv[1] == "1":
    interruptible()
try:
    print("ready", flush=True)
    time.sleep(60)
except KeyboardInterrupt:
    print("interrupted", flush=True)
    sys.exit(130)
"""


def _start(call_it: bool) -> subprocess.Popen:
    # What a non-interactive shell does to a background job: SIGINT ignored, inherited.
    proc = subprocess.Popen([sys.executable, "-c", CHILD, "1" if call_it else "0"], stdout=subprocess.PIPE,
                            text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert proc.stdout.readline().strip() == "ready"
    return proc


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_a_command_started_with_sigint_ignored_still_stops_like_ctrl_c(sig):
    proc = _start(call_it=True)
    proc.send_signal(sig)
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 130 and "interrupted" in out


def test_without_it_the_ignored_sigint_is_lost():
    proc = _start(call_it=False)
    proc.send_signal(signal.SIGINT)
    with pytest.raises(subprocess.TimeoutExpired):
        proc.wait(timeout=2)
    proc.kill()
    proc.communicate()
