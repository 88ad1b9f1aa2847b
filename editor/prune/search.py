"""The pruning search: remove as much as the task allows, one validated round at a time.

Each round re-scores the units on the model as pruned so far (a head's importance changes once its
neighbours are gone; scored on the shrunk copy, like the validations below), then proposes one move
per unit kind still active:

* neurons: the ``step`` lowest-scoring remaining neurons of EVERY kept layer (a uniform width is
  what a transformers config can hold);
* heads: the lowest-scoring remaining key/value group (with its query heads) of every kept layer;
* layers: the lowest-scoring remaining layer.

Each proposal is measured on the VALIDATION prompts (never the test prompts) in its shrunk form
(:func:`editor.edit.shrink.shrink`, equal to the zeroed model to float precision and tested so; a
half-pruned model validates in half the time, and a shrink costs ~0.3 s). Proposals that keep validation
accuracy >= ``retain`` x the base's (and the guard perplexity within its limit, when one is set)
qualify; the one losing the least accuracy per removed parameter is taken. A validation stops as soon
as its move is certain to fail (:class:`editor.evaluation.kinds.Validation`; the trace then records
the best accuracy the move could still have had, with ``val_bound``), and a move that fails validation
is not measured on the guard: neither changes a decision. A failed neuron move
halves its step until the step falls below ``min_neuron_step``; a failed head move retires heads; a
rejected layer is never proposed again, and layers retire after ``layer_tries`` rejections (every
method's layer ranking is imperfect: on the default model the single most removable layer is not
the lowest-ranked by either gradient attribution or block influence). The search ends when no kind is active. Everything is seeded and deterministic.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import torch

from editor.edit.shrink import Removal, removed_parameters, shrink, zeroed
from editor.evaluation.kinds import EPS, validation_score
from editor.evaluation.scoring import score_text
from editor.model.arch import Arch
from editor.prune.scores import UnitScores, on_original, unit_scores
from editor.tasks.examples import Example
from editor.tasks.guard import guard_text


@dataclass
class SearchSettings:
    method: str = "attribution"
    units: list[str] = field(default_factory=lambda: ["neurons", "heads", "layers"])
    retain: float = 0.95
    max_guard_increase: float | None = None  # e.g. 0.5: guard perplexity at most 1.5x the base's
    neuron_step: float = 0.125  # first neuron move: this fraction of the FFN width per layer
    min_neuron_step: float = 0.015625  # smallest neuron move before neurons retire
    layer_tries: int = 4  # layers retire after this many rejected layers (scores rank layers imperfectly)
    max_rounds: int = 60
    batch_size: int = 16
    seed: int = 0
    kind: str = "completion"  # the task kind of the validation rows (editor.tasks.kinds)


def guard_perplexity(model, tokenizer) -> float:
    nll = score_text(model, tokenizer, guard_text(), progress=False).nll
    return math.exp(sum(nll) / len(nll))


def measure(model, tokenizer, examples: list[Example], batch_size: int, guard: bool, kind: str = "completion",
            floor: float | None = None) -> dict:
    """The validation score of ``examples`` (``val_accuracy``: accuracy for answers and choices,
    1 / perplexity for text; higher is better for every kind) and, with ``guard``, the guard perplexity.
    With ``floor``, a score certain to end below it stops early (``val_bound``) and skips the guard."""
    got = validation_score(model, tokenizer, kind, examples, batch_size, floor)
    out = {"val_accuracy": got.value, **({} if got.exact else {"val_bound": True})}
    if guard and (floor is None or got.value >= floor - EPS):
        out["guard_perplexity"] = guard_perplexity(model, tokenizer)
    return out


@contextmanager
def _without(model, removal: Removal, shrunk: bool) -> Iterator:
    """``model`` without ``removal``: a shrunk copy (fast), or ``model`` itself zeroed in place (the
    reference the tests tie the search to)."""
    if shrunk and removal != Removal():
        yield shrink(model, removal)[0]
    else:
        with zeroed(model, removal):
            yield model


def measure_removal(model, tokenizer, removal: Removal, examples: list[Example], batch_size: int, guard: bool,
                    shrunk: bool = True, kind: str = "completion", floor: float | None = None,
                    early: bool = True) -> dict:
    """:func:`measure` of ``model`` without ``removal``; ``early`` False scores every row (the
    reference the tests tie the early verdicts to)."""
    with _without(model, removal, shrunk) as pruned:
        return measure(pruned, tokenizer, examples, batch_size, guard, kind, floor if early else None)


def _lowest(values: torch.Tensor, exclude: set[int], k: int) -> list[int]:
    order = [int(i) for i in torch.argsort(values.float(), stable=True) if int(i) not in exclude]
    return sorted(order[:k])


def propose(kind: str, arch: Arch, current: Removal, scores: UnitScores, step: int,
            rejected: list[int] = ()) -> Removal | None:
    """``current`` plus one move of ``kind``; None when the kind has nothing left to give. Layers
    rejected earlier are not proposed again (removing more never makes them removable)."""
    kept = current.kept_layers(arch.n_layers)
    if kind == "layers":
        layer = _lowest(scores.layers, set(current.layers) | set(rejected), 1)
        if len(kept) <= 1 or not layer:
            return None
        return current.merged(Removal(layers=layer))
    what, width = ((current.neurons, arch.d_ffn(0)) if kind == "neurons" else (current.groups, arch.n_kv_heads))
    left = width - len(what.get(kept[0], []))
    step = min(step, left - 1)
    if step < 1:
        return None
    table = scores.neurons if kind == "neurons" else scores.groups
    move = {l: _lowest(table[l], set(what.get(l, [])), step) for l in kept}
    return current.merged(Removal(neurons=move) if kind == "neurons" else Removal(groups=move))


@dataclass
class SearchState:
    """What a round leaves for the next: the removal so far, the active kinds' steps, the accuracy,
    and the layers whose removal failed validation."""

    removal: Removal
    steps: dict[str, int]  # active kind -> step (neurons per layer; 1 for heads and layers)
    val_accuracy: float
    guard_perplexity: float | None = None
    rejected_layers: list[int] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"removal": self.removal.to_json(), "steps": self.steps, "val_accuracy": self.val_accuracy,
                "guard_perplexity": self.guard_perplexity, "rejected_layers": self.rejected_layers}

    @classmethod
    def from_json(cls, data: dict) -> "SearchState":
        return cls(Removal.from_json(data["removal"]), dict(data["steps"]), data["val_accuracy"],
                   data.get("guard_perplexity"), list(data.get("rejected_layers", [])))


def initial_state(arch: Arch, settings: SearchSettings, base: dict) -> SearchState:
    steps = {}
    for kind in settings.units:
        if kind == "neurons":
            steps[kind] = max(1, round(settings.neuron_step * arch.d_ffn(0)))
        elif kind == "heads" and arch.n_kv_heads > 1:
            steps[kind] = 1
        elif kind == "layers":
            steps[kind] = 1
    return SearchState(Removal(), steps, base["val_accuracy"], base.get("guard_perplexity"))


def scores_without(model, tokenizer, removal: Removal, method: str, examples: list[Example], batch_size: int,
                   seed: int, progress: bool, shrunk: bool = True) -> UnitScores:
    """Unit scores of ``model`` without ``removal``, at the original indices: computed on the shrunk
    copy (fast; removed units score +inf), or in place on the zeroed model (the reference the tests
    tie it to). Random scores need no model and are drawn at the original shape either way."""
    shrunk = shrunk and method != "random" and removal != Removal()
    with _without(model, removal, shrunk) as pruned:
        scores = unit_scores(method, pruned, tokenizer, examples, batch_size, seed=seed, progress=progress)
    return on_original(scores, Arch(model), removal) if shrunk else scores


def _scores(model, tokenizer, state: SearchState, settings: SearchSettings, score_examples: list[Example],
            round_index: int, progress: bool, memo: dict | None) -> UnitScores:
    """The units' scores on the model as pruned so far. A round after one that took nothing sees the
    same model, so a deterministic method's scores are reused from ``memo`` (random draws afresh)."""
    seed = settings.seed * 1000 + round_index
    key = (settings.method, repr(state.removal.to_json()), seed if settings.method == "random" else None)
    if memo is not None and key in memo:
        return memo[key]
    scores = scores_without(model, tokenizer, state.removal, settings.method, score_examples, settings.batch_size,
                            seed, progress)
    if memo is not None:
        memo.clear()  # one model's scores at a time
        memo[key] = scores
    return scores


def search_round(model, tokenizer, state: SearchState, settings: SearchSettings, base: dict,
                 score_examples: list[Example], val_examples: list[Example], round_index: int,
                 progress: bool = True, memo: dict | None = None) -> tuple[SearchState, dict]:
    """One round: re-score, propose, validate, take the best qualifying move. Returns (state, trace row)."""
    arch = Arch(model)
    guard = settings.max_guard_increase is not None
    floor = settings.retain * base["val_accuracy"]
    scores = _scores(model, tokenizer, state, settings, score_examples, round_index, progress, memo)
    already = removed_parameters(arch, state.removal)
    tried, best = [], None
    for kind in sorted(state.steps):
        candidate = propose(kind, arch, state.removal, scores, state.steps[kind], state.rejected_layers)
        if candidate is None:
            tried.append({"kind": kind, "step": state.steps[kind], "result": "nothing left"})
            continue
        got = measure_removal(model, tokenizer, candidate, val_examples, settings.batch_size, guard,
                              kind=settings.kind, floor=floor)
        gained = removed_parameters(arch, candidate) - already
        ok = got["val_accuracy"] >= floor - EPS
        if ok and guard:
            ok = got["guard_perplexity"] <= base["guard_perplexity"] * (1 + settings.max_guard_increase)
        cost = (state.val_accuracy - got["val_accuracy"]) / max(gained, 1)
        layers = sorted(set(candidate.layers) - set(state.removal.layers))
        tried.append({"kind": kind, "step": state.steps[kind], "parameters": gained, **got, "qualifies": ok,
                      **({"layer": layers[0]} if layers else {})})
        if ok and (best is None or (cost, -gained) < (best[0], -best[2])):
            best = (cost, kind, gained, candidate, got)
    steps, rejected = dict(state.steps), list(state.rejected_layers)
    for row in tried:
        if row.get("qualifies") or (best and row["kind"] == best[1]):
            continue
        kind = row["kind"]
        if kind == "layers" and "layer" in row:
            rejected.append(row["layer"])
            if len(rejected) < settings.layer_tries:
                continue
        if kind == "neurons" and row.get("result") != "nothing left":
            smaller = steps[kind] // 2
            if smaller >= max(1, round(settings.min_neuron_step * arch.d_ffn(0))):
                steps[kind] = smaller
                continue
        steps.pop(kind)
    if best is None:
        new = SearchState(state.removal, steps, state.val_accuracy, state.guard_perplexity, rejected)
        return new, {"round": round_index, "taken": None, "tried": tried,
                     "removed_parameters": already, "val_accuracy": state.val_accuracy}
    _, kind, gained, candidate, got = best
    new = SearchState(candidate, steps, got["val_accuracy"], got.get("guard_perplexity"), rejected)
    return new, {"round": round_index, "taken": kind, "tried": tried, "removed_parameters": already + gained,
                 "val_accuracy": got["val_accuracy"], "guard_perplexity": got.get("guard_perplexity")}


def run_search(model, tokenizer, settings: SearchSettings, score_examples: list[Example],
               val_examples: list[Example], base: dict,
               step: Callable[[str, Callable[[], dict]], dict] | None = None,
               log: Callable[[str], None] = print,
               progress: bool = True) -> tuple[SearchState, list[dict], list[Removal]]:
    """Rounds until no kind is active. ``step(name, fn)`` caches each round (a recipe Run's step), so
    an interrupted search resumes after its last finished round. Returns the final state, the trace
    and the removal after each taken round (what a recovery that fails can fall back to)."""
    arch = Arch(model)
    step = step or (lambda name, fn: fn())
    state = initial_state(arch, settings, base)
    trace, accepted, memo = [], [], {}
    for index in range(1, settings.max_rounds + 1):
        if not state.steps:
            break

        def compute(state=state, index=index):
            new, row = search_round(model, tokenizer, state, settings, base, score_examples, val_examples, index,
                                    progress, memo)
            return {"state": new.to_json(), "trace": row}

        result = step(f"{settings.method}_round_{index:02d}", compute)
        state = SearchState.from_json(result["state"])
        trace.append(result["trace"])
        row = result["trace"]
        if row["taken"]:
            accepted.append(state.removal)
        log(f"  round {index}: {row['taken'] or 'no move qualifies'}; removed {row['removed_parameters']:,} "
            f"parameters; validation accuracy {row['val_accuracy']:.3f}")
    return state, trace, accepted
