"""Console entry points declared in ``pyproject.toml`` (``[project.scripts]``), and what they share."""

from __future__ import annotations


def interruptible() -> None:
    """Make SIGINT and SIGTERM stop this process like Ctrl-C (``KeyboardInterrupt``).

    The long jobs (collect, train, rollout) save their finished work when interrupted. A job
    started in the background of a non-interactive shell (``job &`` in a script, as on the GPU
    machine) inherits SIGINT *ignored*, and Python then never raises ``KeyboardInterrupt``: a
    time box (``timeout --signal=INT``, ``table2.py --max-seconds``) could not stop it (seen
    2026-11-23: 15 Table-2 cells ignored their stop signal until they were killed). Call it
    first thing in a command's ``main`` (main thread only).
    """
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return

    def _interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _interrupt)
