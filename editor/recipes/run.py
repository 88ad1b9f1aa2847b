"""A recipe run: an output directory whose steps cache their results, so a re-run skips finished
steps and an interrupted run resumes where it stopped."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import yaml

from editor.errors import UserError
from editor.io import write_json_atomic, write_text_atomic

RECIPE_FILE = "recipe.yaml"
# What a run writes at its top level (evaluation*.json/.md too); --fresh deletes nothing else.
RUN_ENTRIES = {RECIPE_FILE, "steps", "attribution", "adapters", "checkpoint", "compare", "data", "plan.json",
               "report.html", "search_trace.csv", "search_trace.json"}


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

    @classmethod
    def open(cls, out: str | Path, recipe: dict, fresh: bool = False, log: Callable[[str], None] = print,
             load: Callable[[], Any] | None = None) -> "Run":
        """Open (or create) the run directory; a directory made by a different recipe is refused."""
        out = Path(out)
        text = yaml.safe_dump(recipe, sort_keys=False)
        digest = hashlib.sha256(json.dumps(recipe, sort_keys=True).encode()).hexdigest()
        stamp = out / "steps" / "recipe.sha256"
        if fresh and out.exists():
            _check_run_directory(out, stamp)
            shutil.rmtree(out)
        if stamp.is_file() and stamp.read_text().strip() != digest:
            raise UserError(f"{out} holds a run of a different recipe (or different settings); "
                            "pass --fresh to start it again or choose another name")
        (out / "steps").mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / RECIPE_FILE, text)
        write_text_atomic(stamp, digest + "\n")
        return cls(out=out, recipe=recipe, log=log, load=load)

    def plan(self, names: list[str]) -> None:
        self.planned = names
        done = [n for n in names if self._file(n).is_file()]
        self.log(f"run {self.out}: {len(names)} steps" + (f", {len(done)} already done" if done else ""))
        for i, name in enumerate(names, 1):
            self.log(f"  {i}. {name}" + ("  (done)" if name in done else ""))

    def _file(self, name: str) -> Path:
        return self.out / "steps" / f"{name}.json"

    def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """Return the cached JSON result of ``name``, or compute it with ``fn`` and cache it."""
        number = f"[{self.planned.index(name) + 1}/{len(self.planned)}]" if name in self.planned else "[-]"
        path = self._file(name)
        if path.is_file():
            self.log(f"{number} {name}: done earlier (cached)")
            self.steps.append(StepRecord(name, 0.0, True))
            return json.loads(path.read_text())
        self.log(f"{number} {name} ...")
        start = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - start
        write_json_atomic(path, result)
        self.steps.append(StepRecord(name, round(seconds, 1), False))
        self.log(f"{number} {name}: {seconds:.1f} s")
        return result

    @property
    def model(self):
        """The recipe's model, loaded on first use (a run whose steps are all cached never loads it)."""
        if self._loaded is None:
            if self.load is None:
                raise RuntimeError("this run has no model loader")
            self._loaded = self.load()
        return self._loaded

    def path(self, *parts: str) -> Path:
        return self.out.joinpath(*parts)


def _check_run_directory(out: Path, stamp: Path) -> None:
    """``--fresh`` deletes only what is provably a run directory of ours: a directory whose
    ``steps/recipe.sha256`` we wrote, holding nothing but what a run writes. Anything else (a home
    directory, a folder of notes, a recipe's mistyped ``out:``) is refused before any deletion."""
    if out.is_symlink() or not out.is_dir() or not stamp.is_file():
        raise UserError(f"refusing to delete {out} for --fresh: it is not an lmedit run directory "
                        f"(no steps/recipe.sha256); choose another --out or remove it yourself")
    foreign = [p.name for p in out.iterdir()
               if p.name not in RUN_ENTRIES and not p.name.startswith((".", "evaluation"))]
    if foreign:
        raise UserError(f"refusing to delete {out} for --fresh: it holds files a run does not write "
                        f"({', '.join(sorted(foreign)[:3])}); remove them or choose another --out")
