"""Fault injection for the crash tests: the process kills itself with SIGKILL at a named point.

Crash safety is a claim about what happens when a process dies at the worst moment (the OOM
killer, a power cut, `kill -9`). The tests make that moment exact instead of racing a timer: they
run a real lmedit process with ``LMEDIT_CRASH_AT=<point>`` and it dies there, with no cleanup code
run, as a real kill would. Unset (always, for users), a point costs one dictionary lookup."""

from __future__ import annotations

import os
import signal


def crash_point(name: str) -> None:
    if os.environ.get("LMEDIT_CRASH_AT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
