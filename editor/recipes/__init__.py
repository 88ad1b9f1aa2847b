"""YAML recipes: whole pipelines (score, edit, evaluate, report) as one command, ``lmedit run``."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Callable

from editor.errors import UserError
from editor.settings import apply_overrides, from_dict, read_yaml


def _kinds() -> dict:
    from editor.recipes import arithmetic_keep_only, gender_debias, icl_heads, lora_recipes
    from editor.recipes import prune as prune_recipe

    return {"prune": (prune_recipe.PruneRecipe, prune_recipe.run),
            "arithmetic-keep-only": (arithmetic_keep_only.ArithmeticKeepOnly, arithmetic_keep_only.run),
            "gender-debias": (gender_debias.GenderDebias, gender_debias.run),
            "icl-heads": (icl_heads.IclHeads, icl_heads.run),
            "lora-compare": (lora_recipes.LoraCompare, lora_recipes.run_lora_compare),
            "prune-then-lora": (lora_recipes.PruneThenLora, lora_recipes.run_prune_then_lora)}


def validate(raw: dict, where: str):
    """A recipe mapping checked against its kind's schema; returns the config dataclass."""
    from editor.recipes.run import RENAMED

    kinds = _kinds()
    kind = raw.get("recipe")
    if kind in RENAMED:  # an earlier name: the same recipe
        raw, kind = {**raw, "recipe": RENAMED[kind]}, RENAMED[kind]
    if kind not in kinds:
        raise UserError(f"{where}: 'recipe' must be one of {', '.join(kinds)}, got {kind!r}")
    return from_dict(kinds[kind][0], raw, where=where)


def load_recipe(path: str | Path, overrides: list[str] | tuple[str, ...] = ()):
    """Read, override (``key.sub=value``) and validate a recipe (a file, or the name of a packaged
    recipe: see :mod:`editor.recipes.library`); returns its config dataclass."""
    from editor.recipes.library import resolve

    path = resolve(path)
    return validate(apply_overrides(read_yaml(path), list(overrides)), path.name)


def run_recipe(path: str | Path, overrides=(), fresh: bool = False, log: Callable[[str], None] = print,
               out: str | Path | None = None) -> tuple[Path, dict]:
    """Run (or resume) a recipe; returns the run directory and the recipe's summary."""
    return run_config(load_recipe(path, overrides), fresh, log, out)


def run_config(cfg, fresh: bool = False, log: Callable[[str], None] = print,
               out: str | Path | None = None) -> tuple[Path, dict]:
    """Run (or resume) a validated recipe configuration (see :func:`validate`)."""
    from editor.model.loading import load_model
    from editor.recipes.run import Run

    from editor.errors import work_begins
    from editor.io import check_writable_directory
    from editor.model.names import check_model_name

    resolved = dataclasses.asdict(cfg)
    target = Path(out or cfg.out or Path("checkpoints") / cfg.name)
    check_model_name(cfg.model)  # before the run directory exists
    check_writable_directory(target)
    work_begins()

    def load():
        log(f"loading {cfg.model} ...")
        return load_model(cfg.model, device=cfg.device, dtype=cfg.dtype)

    run = Run.open(target, resolved, fresh=fresh, log=log, load=load)
    try:
        summary = _kinds()[cfg.recipe][1](run, cfg)
    finally:
        run.close()
    return target, {"summary": summary, "steps": [dataclasses.asdict(s) for s in run.steps]}
