"""Structured run events: what a running command reports to whoever watches it, one JSON object per line.

A leaf module (every layer may emit). The service gives each job's worker the file to write in the
environment (``LMEDIT_EVENTS``) and reads it back (editor/service/runner.py); nothing parses the
human log lines. Outside the service nothing is written. Events:

* ``plan``: ``steps`` (names), ``earlier`` (those with cached results);
* ``step``: ``name``, ``status`` (started, done, cached), ``number``/``total`` (absent for a step
  inside a step), ``seconds``;
* ``progress``: ``label``, ``done``, ``total``, ``unit``: a bar's state, at most twice a second
  and when it completes;
* ``artifact``: ``path`` (absolute), ``kind`` (checkpoint, report, results, gguf, ...);
* ``error``: ``line``: the one line the command printed after ``Error:``.

Each event is one ``write`` of one line to a file opened for appending, so lines from one process
never interleave and a reader sees whole lines or a trailing partial one it keeps for later.
"""

from __future__ import annotations

import json
import os
import time

ENV = "LMEDIT_EVENTS"


def emit(event: str, **fields) -> None:
    """Append one event; a no-op unless ``LMEDIT_EVENTS`` names a file."""
    path = os.environ.get(ENV)
    if not path:
        return
    line = json.dumps({"event": event, "time": round(time.time(), 3), **fields}, default=str) + "\n"
    try:
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
    except OSError:  # a watcher's file is not worth failing the work for
        pass


def artifact(path, kind: str) -> None:
    emit("artifact", path=os.path.abspath(str(path)), kind=kind)


class Progress:
    """Progress events for one bar, throttled: the first update, then at most every ``interval``
    seconds, and the last one."""

    def __init__(self, label: str, total: int, unit: str, interval: float = 0.5):
        self.label, self.total, self.unit, self.interval = label, total, unit, interval
        self.done, self._last = 0, 0.0
        self.enabled = bool(os.environ.get(ENV))

    def update(self, n: int = 1) -> None:
        self.done += n
        if not self.enabled:
            return
        now = time.monotonic()
        if self.done >= self.total or now - self._last >= self.interval:
            self._last = now
            emit("progress", label=self.label, done=self.done, total=self.total, unit=self.unit)
