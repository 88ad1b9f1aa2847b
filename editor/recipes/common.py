"""What every recipe shares: common settings, cached evaluation steps, random component choices."""

from __future__ import annotations

from contextlib import nullcontext

import random
from dataclasses import dataclass
from typing import ClassVar, Literal

from editor.attribution.results import ComponentScores
from editor.edit.checkpoint import describe_source, save_checkpoint
from editor.edit.plan import EditPlan
from editor.edit.weights import apply_plan
from editor.errors import UserError
from editor.evaluation.harness import evaluate_model
from editor.evaluation.results import Evaluation
from editor.recipes.run import Run

RecipeKind = Literal["prune", "arithmetic-keep-only", "gender-debias", "icl-heads", "lora-compare", "prune-then-lora"]


# The settings every model-computing step reads (for a step's cache key: see Run.key).
MODEL_SETTINGS = ("recipe", "model", "device", "dtype", "batch_size")


@dataclass
class Common:
    """Keys every recipe has. ``out`` defaults to ``checkpoints/<name>``."""

    recipe: RecipeKind
    name: str
    model: str = "smollm2-135m"
    seed: int = 0
    batch_size: int = 16
    device: str = "cpu"
    dtype: Literal["auto", "float32", "float16", "bfloat16"] = "auto"
    out: str | None = None
    # Recipes whose attribution goes through Run.scorer can shard it over Ray; the others say why not.
    RAY: ClassVar[bool] = True
    RAY_WHY: ClassVar[str] = ""
    # Where attribution steps run: this process, or Ray workers (the scores are the same either way).
    executor: Literal["local", "ray"] = "local"
    ray_address: str | None = None  # a Ray cluster; none: start a local Ray instance
    workers: int = 2
    threads: int = 1  # torch threads per Ray worker

    def check(self, where: str) -> None:
        from editor.model.names import check_device

        if (not self.name or "/" in self.name or "\\" in self.name or self.name.startswith(".")
                or len(self.name) > 100 or not self.name.isprintable()):
            raise UserError(f"{where}.name: a plain directory name of at most 100 printable characters, "
                            f"got {self.name[:40]!r}{'...' if len(self.name) > 40 else ''}")
        check_device(self.device, f"{where}.device")
        if self.batch_size < 1:
            raise UserError(f"{where}.batch_size: must be >= 1")
        if not 1 <= self.workers <= 4096 or not 1 <= self.threads <= 1024:
            raise UserError(f"{where}: workers 1-4096 and threads 1-1024, got {self.workers} and {self.threads}")
        if self.executor == "ray":
            if not self.RAY:
                raise UserError(f"{where}.executor: ray is not available for this recipe ({self.RAY_WHY}); "
                                "use executor: local")
            from editor.distributed import check_ray

            check_ray()


def evaluation_step(run: Run, name: str, tasks: dict, plan: EditPlan | None = None,
                    reference: Evaluation | None = None, reads=None, uses=None, modify=None) -> Evaluation:
    """Evaluate the run's model (with ``plan`` applied, then restored) as a cached step (``reads``
    and ``uses``: its cache key, see ``Run.key``). ``modify``: ``model -> context manager`` that
    changes the model for the evaluation and puts it back (a folded projection, a merged LoRA),
    called only when the step runs.

    Without ``reference`` the model counts as its own reference (top-1 agreement 1 on the guard).
    """
    def compute():
        lm = run.model
        edits = apply_plan(lm.model, plan) if plan is not None and plan.edits else None
        try:
            with modify(lm.model) if modify else nullcontext():
                ev = evaluate_model(lm.model, lm.tokenizer, tasks, f"{run.recipe['model']} [{name}]",
                                    run.recipe["batch_size"], progress=True,
                                    reference=reference, self_reference=reference is None)
        finally:
            if edits is not None:
                edits.restore()
        return ev.to_json()

    return Evaluation.from_json(run.step(name, compute, reads=reads, uses=uses))


def scores_step(run: Run, name: str, fn) -> ComponentScores:
    """A cached attribution step; the full score matrices are kept and also written as JSON/CSV/PNG."""
    def compute():
        scores = fn()
        scores.save(run.path("attribution"), name)
        return scores.to_json(top=50)

    return ComponentScores.from_json(run.step(name, compute))


def checkpoint_step(run: Run, plan: EditPlan, scores, enabled: bool = True, extra: dict | None = None,
                    modify=None) -> str | None:
    """Save the run's model with ``plan`` applied (and changed by ``modify``, as in
    :func:`evaluation_step`) to ``<run>/checkpoint`` as a cached step; its path."""
    def compute():
        if not enabled:
            return {"path": None}
        lm = run.model
        with apply_plan(lm.model, plan), (modify(lm.model) if modify else nullcontext()):
            path = save_checkpoint(lm.model, lm.tokenizer, run.path("checkpoint"), plan, describe_source(lm),
                                   scores=scores, force=True, extra={"recipe": run.recipe, **(extra or {})})
        return {"path": str(path)}

    return run.step("checkpoint", compute)["path"]


def random_components(total: list[str], k: int, seed: int) -> list[str]:
    return random.Random(seed).sample(total, k)


def all_heads(n_layers: int, n_heads: int) -> list[str]:
    return [f"{l}.{h}" for l in range(n_layers) for h in range(n_heads)]


def neurons_in(layers: list[int], width: int) -> list[str]:
    return [f"{l}.{i}" for l in layers for i in range(width)]


def layer_range(pair: list[int], n_layers: int, where: str) -> list[int]:
    if len(pair) != 2 or not 0 <= pair[0] <= pair[1] < n_layers:
        raise UserError(f"{where}: [first, last] with 0 <= first <= last < {n_layers}, got {pair}")
    return list(range(pair[0], pair[1] + 1))

