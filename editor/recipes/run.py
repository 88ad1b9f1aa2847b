"""A recipe run: an output directory whose steps cache their results, so a re-run skips finished
steps and an interrupted run resumes where it stopped.

Each cached step is keyed on its own inputs: the recipe settings it reads, the results of the steps
it uses and the lmedit version. Changing one setting therefore reruns only the steps that read it
(and those downstream of a changed result); an upgrade of lmedit reruns everything; a damaged step
file is recomputed, never fatal. One process writes a run directory at a time (a lock)."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from editor.errors import UserError
from editor.events import emit
from editor.faults import crash_point
from editor.io import DirectoryLock, protected, sweep_directory, write_json_atomic, write_text_atomic

RECIPE_FILE = "recipe.yaml"
# What a run writes at its top level (evaluation*.json/.md too); --fresh deletes nothing else.
RUN_ENTRIES = {RECIPE_FILE, "steps", "attribution", "adapters", "checkpoint", "compare", "data", "plan.json",
               "report.html", "search_trace.csv", "search_trace.json"}
# Settings that never change a result: where the run is written, what it is called, and where its
# attribution runs (Ray shards merge to the single-process numbers).
UNREAD = {"name", "out", "executor", "ray_address", "workers", "threads"}
# Recipe kinds under their earlier names: old recipe files and run directories still read.
RENAMED = {"arithmetic-prune": "prune"}


def _digest(value: Any) -> str:
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _setting(recipe: dict, dotted: str) -> Any:
    value: Any = recipe
    for part in dotted.split("."):
        if not isinstance(value, dict) or part not in value:
            raise KeyError(f"a step reads the unknown setting {dotted!r}")  # a programming error, not a user's
        value = value[part]
    return value


@dataclass
class StepRecord:
    name: str
    seconds: float
    cached: bool


@dataclass
class Run:
    """``checkpoints/<name>/``: ``recipe.yaml`` (resolved), ``steps/<step>.json``, outputs, report."""

    out: Path
    recipe: dict
    log: Callable[[str], None] = print
    steps: list[StepRecord] = field(default_factory=list)
    planned: list[str] = field(default_factory=list)
    _loaded: Any = None
    load: Callable[[], Any] | None = None
    _results: dict[str, str] = field(default_factory=dict)  # step name -> digest of its result
    _depth: int = 0  # > 0 while a step computes (steps it runs inside are covered by its own result)
    _lock: DirectoryLock | None = None
    _scorer: Any = None
    _close_scorer: Callable[[], None] | None = None

    @classmethod
    def open(cls, out: str | Path, recipe: dict, fresh: bool = False, log: Callable[[str], None] = print,
             load: Callable[[], Any] | None = None) -> "Run":
        """Open (or create) and lock the run directory. A directory holding another kind of recipe
        is refused; ``fresh`` empties a run directory of ours (and nothing else) first."""
        out = Path(out)
        stamp = out / "steps" / "recipe.sha256"
        if fresh and out.exists():
            _check_run_directory(out, stamp)  # before anything is written there
        _check_kind(out, recipe)
        lock = DirectoryLock(out).acquire()
        try:
            if fresh:
                _empty_run_directory(out)
            (out / "steps").mkdir(parents=True, exist_ok=True)
            for directory in (out, out / "steps"):  # what a killed earlier run left half-written
                sweep_directory(directory)
            write_text_atomic(out / RECIPE_FILE, yaml.safe_dump(recipe, sort_keys=False))
            write_text_atomic(stamp, _digest(recipe) + "\n")
        except BaseException:
            lock.release()
            raise
        return cls(out=out, recipe=recipe, log=log, load=load, _lock=lock)

    def close(self) -> None:
        """Stop the Ray workers, if any, and release the directory (also released when the process
        ends, however it ends)."""
        if self._close_scorer is not None:
            self._close_scorer()
            self._close_scorer = None
        if self._lock is not None:
            self._lock.release()

    def plan(self, names: list[str]) -> None:
        self.planned = names
        done = [n for n in names if self._file(n).is_file()]
        self.log(f"run {self.out}: {len(names)} steps" + (f", {len(done)} with earlier results" if done else ""))
        for i, name in enumerate(names, 1):
            self.log(f"  {i}. {name}" + ("  (earlier result)" if name in done else ""))
        emit("plan", steps=names, earlier=done)

    def _file(self, name: str) -> Path:
        return self.out / "steps" / f"{name}.json"

    def key(self, name: str, reads: Sequence[str] | None = None, uses: Sequence[str] | None = None) -> str:
        """What a step's result depends on. ``reads``: dotted recipe settings (default: all of them);
        ``uses``: earlier steps whose results it consumes (default: every step so far)."""
        from editor import __version__

        settings = ({k: v for k, v in self.recipe.items() if k not in UNREAD} if reads is None
                    else {k: _setting(self.recipe, k) for k in reads})
        used = self._results if uses is None else {u: self._results[u] for u in uses}
        return _digest({"step": name, "lmedit": __version__, "settings": settings, "uses": used})

    def _cached(self, name: str, key: str) -> tuple[bool, Any]:
        path = self._file(name)
        if not path.is_file():
            return False, None
        try:
            stored = json.loads(path.read_text())
            if not isinstance(stored, dict) or "key" not in stored or "result" not in stored:
                raise ValueError("not a step record")
        except (OSError, UnicodeDecodeError, ValueError):
            self.log(f"{name}: the cached result is damaged; computing it again")
            return False, None
        if stored["key"] != key:
            self.log(f"{name}: its settings, inputs or the lmedit version changed; computing it again")
            return False, None
        return True, stored["result"]

    def step(self, name: str, fn: Callable[[], Any], reads: Sequence[str] | None = None,
             uses: Sequence[str] | None = None) -> Any:
        """Return the cached JSON result of ``name`` when its key still matches, else compute it
        with ``fn`` and cache it (see :meth:`key` for ``reads`` and ``uses``)."""
        place = ({"number": self.planned.index(name) + 1, "total": len(self.planned)} if name in self.planned else {})
        number = f"[{place['number']}/{place['total']}]" if place else "[-]"
        key = self.key(name, reads, uses)
        hit, result = self._cached(name, key)
        if hit:
            self.log(f"{number} {name}: done earlier (cached)")
            emit("step", name=name, status="cached", **place)
            self.steps.append(StepRecord(name, 0.0, True))
        else:
            self.log(f"{number} {name} ...")
            emit("step", name=name, status="started", **place)
            start = time.perf_counter()
            self._depth += 1
            try:
                result = fn()
            finally:
                self._depth -= 1
            seconds = time.perf_counter() - start
            crash_point(f"step:{name}")  # the crash tests kill here: computed, not yet saved
            write_json_atomic(self._file(name), {"key": key, "result": result})
            self.steps.append(StepRecord(name, round(seconds, 1), False))
            self.log(f"{number} {name}: {seconds:.1f} s")
            emit("step", name=name, status="done", seconds=round(seconds, 1), **place)
        if self._depth == 0:  # a nested step is not run at all when its outer step is cached
            self._results[name] = _digest(json.loads(json.dumps(result)))  # as a later run reads it back
        return result

    @property
    def model(self):
        """The recipe's model, loaded on first use (a run whose steps are all cached never loads it)."""
        if self._loaded is None:
            if self.load is None:
                raise RuntimeError("this run has no model loader")
            self._loaded = self.load()
        return self._loaded

    @property
    def scorer(self):
        """Where the recipe's attribution runs (editor/attribution/sharded.py): the loaded model here,
        or Ray workers when the recipe says ``executor: ray``; made on first use."""
        if self._scorer is None:
            from editor.attribution.sharded import scorer_for
            from editor.distributed import ModelSpec

            r = self.recipe
            spec = ModelSpec(r.get("device", "cpu"), r.get("dtype", "auto"), False, r.get("threads", 1))
            self._scorer, self._close_scorer = scorer_for(
                r.get("executor", "local"), lambda: self.model, r["model"], r.get("batch_size", 16), r.get("workers", 2),
                r.get("ray_address"), spec, progress=True, log=self.log)
            if r.get("executor") == "ray":
                self.log(f"attribution on {r.get('workers', 2)} Ray workers ({r.get('ray_address') or 'a local Ray instance'})")
        return self._scorer

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)


def _check_kind(out: Path, recipe: dict) -> None:
    """A run directory holds one kind of recipe: a gender-debias run never reads an arithmetic one's steps."""
    path = out / RECIPE_FILE
    if not path.is_file():
        return
    try:
        earlier = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        earlier = None
    kind = earlier.get("recipe") if isinstance(earlier, dict) else None
    kind = RENAMED.get(kind, kind)
    if kind is not None and kind != recipe.get("recipe"):
        raise UserError(f"{out} holds a run of the {kind!r} recipe, not {recipe.get('recipe')!r}; "
                        "choose another output directory (or start it afresh)")


def _empty_run_directory(out: Path) -> None:
    """Delete what a run wrote (checked by :func:`_check_run_directory`), keeping the lock."""
    for entry in out.iterdir():
        if entry.name in (DirectoryLock.NAME, ".lmedit.pid"):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _check_run_directory(out: Path, stamp: Path) -> None:
    """``--fresh`` deletes only what is provably a run directory of ours: a directory whose
    ``steps/recipe.sha256`` we wrote, holding nothing but what a run writes. Anything else (a home
    directory, a folder of notes, a recipe's mistyped ``out:``) is refused before any deletion,
    and so is the current directory or one above it, even when it is a run of ours."""
    why = protected(out)
    if why:
        raise UserError(f"refusing to delete {out} to start afresh: {why}; choose another output directory")
    if out.is_symlink() or not out.is_dir() or not stamp.is_file():
        raise UserError(f"refusing to delete {out} to start afresh: it is not an lmedit run directory "
                        f"(no steps/recipe.sha256); choose another output directory or remove it yourself")
    foreign = [p.name for p in out.iterdir()
               if p.name not in RUN_ENTRIES and not p.name.startswith((".", "evaluation"))]
    if foreign:
        raise UserError(f"refusing to delete {out} to start afresh: it holds files a run does not write "
                        f"({', '.join(sorted(foreign)[:3])}); remove them or choose another output directory")


def step_result(run_dir: str | Path, name: str) -> Any:
    """The cached result of step ``name`` in a run directory (for benchmarks and tools reading a
    finished run). Runs written before steps carried keys stored the bare result; both are read."""
    stored = json.loads((Path(run_dir) / "steps" / f"{name}.json").read_text())
    if isinstance(stored, dict) and set(stored) == {"key", "result"}:
        return stored["result"]
    return stored
