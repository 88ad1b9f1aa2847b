"""Fault injection for the crash tests: the process kills itself with SIGKILL at a named point.

Crash safety is a claim about what happens when a process dies at the worst moment (the OOM
killer, a power cut, `kill -9`). The tests make that moment exact instead of racing a timer: they
run a real lmedit process with ``LMEDIT_CRASH_AT=<point>`` and it dies there, with no cleanup code
run, as a real kill would. Unset (always, for users), a point costs one dictionary lookup."""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    """Die here when ``LMEDIT_CRASH_AT`` names this point; with ``LMEDIT_CRASH_ONCE=FILE`` only the
    first process to get here dies (it creates FILE first), so a retry can be tested."""
    if os.environ.get("LMEDIT_CRASH_AT") != name:
        return
    once = os.environ.get("LMEDIT_CRASH_ONCE")
    if once:
        try:
            os.close(os.open(once, os.O_CREAT | os.O_EXCL))
        except FileExistsError:
            return
    os.kill(os.getpid(), signal.SIGKILL)
