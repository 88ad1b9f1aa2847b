"""Running jobs: one worker process per job, watched by one scheduler thread.

Each job runs the ``lmedit`` command line of :func:`editor.service.jobs.worker_argv` in a process of
its own, so a crash or an out-of-memory kill ends that job (``failed``, with the reason), never the
service. The worker writes its log (``job_dir/log.txt``, passed on line by line as log events) and
its structured events (``job_dir/events.jsonl``, editor/events.py: plan, steps, progress, artifacts,
the error line), which the scheduler turns into the job's state; no log text is parsed. The local
and the Ray executor report progress the same way.

A worker dies with the service (Linux ``PR_SET_PDEATHSIG``): after a SIGKILL of the service no
orphan keeps writing, and at the next start every job that was running is queued again; it runs in
the same run directory, whose step cache makes it resume from its last finished step.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from editor.events import ENV as EVENTS_ENV
from editor.service.jobs import prepare, worker_argv
from editor.service.store import JobStore

EVENTS = "events.jsonl"


def _worker_preexec() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Die with the service (PR_SET_PDEATHSIG), and yield the CPU to it: a job computing on every core
    must not make the API slow to answer (workers run at nice 10)."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except OSError:
        pass
    try:
        os.nice(10)
    except OSError:
        pass


def spawn_worker(argv: list[str], job_dir: Path, job_id: str) -> subprocess.Popen:
    """A job's ``lmedit`` process, whichever executor runs it: its own process group (cancel kills
    the group), stderr appended to ``log.txt`` (the progress the service follows), stdout to
    ``stdout.txt`` (the result), tagged ``LMEDIT_JOB`` (so a stale one is recognised at start-up)."""
    env = {**os.environ, "LMEDIT_JOB": job_id, "TQDM_DISABLE": "1", EVENTS_ENV: str(job_dir / EVENTS)}
    with open(job_dir / "log.txt", "ab") as log, open(job_dir / "stdout.txt", "wb") as out:
        return subprocess.Popen(argv, stdout=out, stderr=log, stdin=subprocess.DEVNULL, env=env,
                                cwd=job_dir, start_new_session=True, preexec_fn=_worker_preexec)


class LocalExecutor:
    """Worker processes on this machine."""

    name = "local"

    def start(self, job_id: str, argv: list[str], job_dir: Path, resources: dict):
        return spawn_worker(argv, job_dir, job_id)

    def ident(self, handle) -> str:
        return str(handle.pid)

    def poll(self, handle) -> int | None:
        return handle.poll()

    def stop(self, handle) -> None:
        try:
            os.killpg(handle.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        handle.wait()


def stop_stale(worker: str | None, job_id: str) -> None:
    """At start-up: a worker of ``job_id`` still alive from before (it should have died with the old
    service; on systems without PDEATHSIG it may not) is killed before the job runs again."""
    if not worker or not worker.isdigit():
        return
    try:
        environ = Path(f"/proc/{worker}/environ").read_bytes()
    except OSError:
        return
    if f"LMEDIT_JOB={job_id}".encode() in environ.split(b"\0"):
        try:
            os.killpg(int(worker), signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


@dataclass
class _Tail:
    """New complete lines of a file that another process appends to."""

    path: Path
    offset: int = 0
    partial: bytes = b""

    @classmethod
    def at_end(cls, path: Path) -> "_Tail":
        return cls(path, path.stat().st_size if path.exists() else 0)

    def lines(self) -> list[str]:
        try:
            with open(self.path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return []
        self.offset += len(data)
        lines = (self.partial + data).split(b"\n")
        self.partial = lines.pop()
        return [raw.decode("utf-8", "replace").rstrip("\r") for raw in lines]


@dataclass
class _Running:
    job_id: str
    handle: object
    job_dir: Path
    log: _Tail
    events: _Tail
    error: str | None = None  # the worker's error line, from its error event
    progress_logged: float = 0.0  # when a progress event last went into the store (at most one per 2 s)


class Scheduler:
    """Starts queued jobs while slots are free, follows their logs, ends them, honours cancels."""

    def __init__(self, store: JobStore, home: Path, executor, workers: int = 1, interval: float = 0.2):
        self.store, self.home, self.executor = store, home, executor
        self.workers, self.interval = workers, interval
        self.running: dict[str, _Running] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="lmedit-scheduler", daemon=True)

    def job_dir(self, job_id: str) -> Path:
        return self.home / "jobs" / job_id

    def start(self) -> None:
        self.recover()
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def recover(self) -> None:
        """Jobs that were running when the service died go back to the queue (they resume)."""
        for job in self.store.by_state("running"):
            stop_stale(job.worker, job.id)
            self.store.update(job.id, ("state", {"state": "queued", "note": "the service restarted; resuming"}),
                              state="queued", worker=None)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.tick()
            except Exception as exc:  # noqa: BLE001 - the loop must survive anything one job does
                print(f"lmedit scheduler: {type(exc).__name__}: {exc}", flush=True)
            self._stop.wait(self.interval)

    def tick(self) -> None:
        for job_id, run in list(self.running.items()):
            self._follow(run)
            job = self.store.get(job_id)
            if job is not None and job.cancel:
                self.executor.stop(run.handle)
                self._follow(run)
                self.store.update(job_id, ("state", {"state": "cancelled"}), state="cancelled", finished=time.time())
                del self.running[job_id]
                continue
            code = self.executor.poll(run.handle)
            if code is not None:
                self._follow(run)
                self._finish(run, code)
                del self.running[job_id]
        for job in self.store.by_state("queued"):
            if len(self.running) >= self.workers:
                break
            try:
                self._launch(job)
            except OSError as exc:  # its folder or worker cannot be made (disk full, permissions): fail it once
                error = f"could not start the job's worker: {exc.strerror or exc}"
                self.store.update(job.id, ("state", {"state": "failed", "error": error}), state="failed",
                                  finished=time.time(), error=error)

    def _launch(self, job) -> None:
        job_dir = self.job_dir(job.id)
        prepare(job.spec, job_dir)
        log, events = _Tail.at_end(job_dir / "log.txt"), _Tail.at_end(job_dir / EVENTS)
        handle = self.executor.start(job.id, worker_argv(job.spec, job_dir), job_dir, job.spec.get("resources", {}))
        if not self.store.claim(job.id, self.executor.ident(handle)):  # cancelled meanwhile
            self.executor.stop(handle)
            return
        self.running[job.id] = _Running(job.id, handle, job_dir, log, events)

    def _follow(self, run: _Running) -> None:
        """New log lines -> log events; new structured events -> the job's state and events."""
        for line in run.log.lines():
            if line.strip():
                self.store.update(run.job_id, ("log", {"line": line}))
        for line in run.events.lines():
            try:
                event = json.loads(line)
            except ValueError:
                continue  # not ours (a stray write); the next line is read on its own
            if isinstance(event, dict):
                self._event(run, event)

    def _event(self, run: _Running, ev: dict) -> None:
        job_id, kind = run.job_id, ev.get("event")
        if kind == "plan":
            self.store.update(job_id, ("plan", {"steps": len(ev["steps"]), "earlier": len(ev.get("earlier", []))}),
                              total_steps=len(ev["steps"]))
        elif kind == "step":
            status = ev["status"]
            data = {"step": ev["name"], "status": status}
            if status == "done":
                data["detail"] = f"{ev.get('seconds', 0):.1f} s"
            elif status == "cached":
                data["detail"] = "done earlier (cached)"
            if "number" not in ev:  # a step inside a step (a search round): no count of its own
                self.store.update(job_id, ("step", {**data, "inner": True}))
            elif status == "started":
                self.store.update(job_id, ("step", {**data, "number": ev["number"], "total": ev["total"]}),
                                  step=ev["name"], total_steps=ev["total"], activity=None)
            else:
                self.store.update(job_id, ("step", {**data, "number": ev["number"], "total": ev["total"]}),
                                  step=ev["name"], done_steps=ev["number"], total_steps=ev["total"])
        elif kind == "progress":
            data = {k: ev[k] for k in ("label", "done", "total", "unit") if k in ev}
            activity = f"{data.get('label')}: {data.get('done')}/{data.get('total')} {data.get('unit', '')}".strip()
            now = time.monotonic()
            keep = data.get("done") == data.get("total") or now - run.progress_logged >= 2.0
            if keep:
                run.progress_logged = now
            self.store.update(job_id, ("progress", data) if keep else None, activity=activity)
        elif kind == "artifact":
            path = Path(ev["path"])
            root = (run.job_dir / "run").resolve()
            shown = str(path.relative_to(root)) if root in path.resolve().parents or path.resolve() == root else None
            self.store.update(job_id, ("artifact", {"path": shown, "kind": ev.get("kind")}))
        elif kind == "error":
            run.error = str(ev.get("line", ""))

    def _finish(self, run: _Running, code: int) -> None:
        result = None
        stdout = run.job_dir / "stdout.txt"
        if code == 0:
            try:
                result = json.loads(stdout.read_text())
            except (OSError, ValueError):
                result = None
            if result is not None:
                from editor.io import write_json_atomic

                write_json_atomic(run.job_dir / "result.json", result)
            self.store.update(run.job_id, ("state", {"state": "succeeded"}), state="succeeded", finished=time.time(),
                              error=None)
            return
        error = _reason(code, run.error)
        self.store.update(run.job_id, ("state", {"state": "failed", "error": error}), state="failed",
                          finished=time.time(), error=error)


def _reason(code: int, error: str | None) -> str:
    """One line: the worker's own error line (its error event), or the signal that killed it."""
    if code < 0:
        name = signal.Signals(-code).name
        hint = " (out of memory, or killed by hand)" if name == "SIGKILL" else ""
        return f"the worker process was killed by {name}{hint}"
    return error or f"the worker exited with status {code}"
