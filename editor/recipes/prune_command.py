"""``lmedit prune`` and ``editor.recipes.prune_command.prune``: the prune recipe configured
from a command line's options and run by the one recipe runner. It sits above the recipe registry
(editor/recipes/__init__.py), which it calls, and the recipe (prune.py), which it configures."""

from __future__ import annotations

from pathlib import Path

from editor.errors import UserError
from editor.recipes import run_config, validate
from editor.recipes.prune import PruneRecipe
from editor.settings import apply_overrides


def prune_config(model: str = "smollm2-135m", out=None, data: str = "arithmetic", test_file=None,
                 delimiter: str | None = None, retain: float = 0.95, units=("neurons", "heads", "layers"),
                 method: str = "attribution", baselines=(), max_guard_increase: float | None = None,
                 recover: str = "lora", recover_steps: int = 80, search_retain: float | None = None,
                 seed: int = 0, device: str = "cpu",
                 overrides: list[str] | None = None) -> PruneRecipe:
    """The ``prune`` recipe configuration ``lmedit prune`` runs, validated before any model
    loads (a task file is read and split here). ``data``: ``arithmetic`` or a task file of any kind.
    An existing ``out`` must be an unfinished or finished run of the same settings (it resumes)."""
    out = Path(out) if out is not None else Path("checkpoints") / "prune"
    raw = {"recipe": "prune", "name": out.name or "prune", "model": model, "seed": seed, "device": device,
           "prune": {"method": method, "units": list(units), "retain": retain,
                     **({"search_retain": search_retain} if search_retain is not None else {}),
                     "max_guard_increase": max_guard_increase},
           "recover": {"method": recover, "steps": recover_steps}, "baselines": list(baselines)}
    if data != "arithmetic":
        if not str(data).endswith((".jsonl", ".csv")):
            raise UserError(f"--data {data!r}: prune keeps the built-in arithmetic task or a .jsonl/.csv task file")
        raw["data"] = {"file": str(data), "test_file": str(test_file) if test_file else None, "delimiter": delimiter}
    elif test_file is not None or delimiter is not None:
        raise UserError("--test and --delimiter are for a task file (--data FILE)")
    cfg = validate(apply_overrides(raw, overrides or []), "prune")
    if out.exists() and (not out.is_dir() or any(out.iterdir())) and not (out / "steps" / "recipe.sha256").is_file():
        raise UserError(f"{out} already exists and is not an lmedit run directory; choose a new output directory")
    return cfg


def prune(model: str = "smollm2-135m", out="checkpoints/prune", log=print, **settings) -> dict:
    """Python entry point of ``lmedit prune``: run (or resume) the search and return the summary."""
    _, result = run_config(prune_config(model=model, out=out, **settings), log=log, out=out)
    return result["summary"]
