"""The smallest set of heads whose joint removal cuts a task's accuracy: greedy or beam search.

Single-head scores miss heads that back each other up: in a model that is good at a task no single
head matters much, but a small group does. The search grows a set one head at a time, re-scoring
on the model with the set already removed (a head's importance changes once its partners are gone):

1. zero the current set; gradient attribution ranks every remaining head (one backward pass);
2. the best ``candidates`` of them are ablated exactly, each added to the set in turn, on the SEARCH
   prompts; the ``beam`` best sets (lowest accuracy, then lowest gold log-probability) go on;
3. stop when the search accuracy is at or below ``(1 - target_drop) x`` the base's, or at ``max_size``.

The set is then judged on HELD-OUT prompts it never saw: accuracy as the set grows (the drop curve),
the same for random sets of each size (several seeds), and its specificity: what removing it does to
a control task and to the guard text. Accuracy is top-1 of the answer's first token.
"""

from __future__ import annotations

import random
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from editor.attribution.common import prompt_batches
from editor.model.capture import model_device
from editor.attribution.gradient import gradient_scores, top_heads
from editor.attribution.heads import head_ablation_scan
from editor.edit.plan import EditPlan
from editor.edit.weights import apply_plan
from editor.errors import UserError
from editor.io import write_json_atomic, write_text_atomic
from editor.model.arch import Arch
from editor.tasks.examples import Example

Head = tuple[int, int]


@dataclass
class Point:
    size: int
    head: str
    search_acc: float
    heldout_acc: float


@dataclass
class Circuit:
    heads: list[str]
    curve: list[Point]
    random: list[dict]  # {"size", "seed", "heldout_acc"}
    base: dict  # search_acc, heldout_acc
    target_acc: float  # on the search prompts
    reached: bool  # the held-out accuracy of the final set is at or below the target fraction of its base
    specificity: dict = field(default_factory=dict)
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {**asdict(self), "curve": [asdict(p) for p in self.curve]}

    def random_mean(self, size: int) -> float | None:
        values = [r["heldout_acc"] for r in self.random if r["size"] == size]
        return sum(values) / len(values) if values else None

    def table(self) -> str:
        from editor.tables import format_table

        rows = [{"size": 0, "head": "-", "search acc": f"{self.base['search_acc']:.3f}",
                 "held-out acc": f"{self.base['heldout_acc']:.3f}", "random sets": "-"}]
        for p in self.curve:
            r = self.random_mean(p.size)
            rows.append({"size": p.size, "head": p.head, "search acc": f"{p.search_acc:.3f}",
                         "held-out acc": f"{p.heldout_acc:.3f}", "random sets": "-" if r is None else f"{r:.3f}"})
        return format_table(rows, ["size", "head", "search acc", "held-out acc", "random sets"], right=True)

    def save(self, out: Path, stem: str = "circuit") -> dict[str, Path]:
        paths = {"json": write_json_atomic(out / f"{stem}.json", self.to_json())}
        lines = ["size,head,search_acc,heldout_acc,random_mean"] + [
            f"{p.size},{p.head},{p.search_acc},{p.heldout_acc},{self.random_mean(p.size) or ''}" for p in self.curve]
        paths["csv"] = write_text_atomic(out / f"{stem}.csv", "\n".join(lines) + "\n")
        paths["png"] = _figure(self, out / f"{stem}.png")
        return paths


@torch.no_grad()
def accuracy(model, tokenizer, examples: list[Example], heads: list[Head] = (), batch_size: int = 16) -> tuple[float, float]:
    """Top-1 accuracy and mean gold log-probability (answer's first token) with ``heads`` zeroed."""
    ok, logp = [], []
    plan = EditPlan().zero("head", list(heads)) if heads else EditPlan()
    with apply_plan(model, plan):
        for batch in prompt_batches(tokenizer, examples, batch_size, model_device(model), "accuracy", False):
            logits = model(**batch.inputs, use_cache=False).logits[:, -1].float()
            gold = batch.targets(logits, "gold")
            ok.append((logits.argmax(-1) == gold).float().cpu())
            logp.append(logits.log_softmax(-1).gather(-1, gold[:, None]).squeeze(-1).cpu())
    return float(torch.cat(ok).mean()), float(torch.cat(logp).mean())


def _step(model, tokenizer, search, chosen: list[Head], candidates: int, batch_size: int) -> list[tuple[Head, float, float]]:
    """Re-score with ``chosen`` removed, then ablate the best new candidates exactly: (head, acc, logp)."""
    with apply_plan(model, EditPlan().zero("head", chosen) if chosen else EditPlan()):
        estimate = gradient_scores(model, tokenizer, search, "head", batch_size, progress=False)
        pool = [h for h in top_heads(estimate, len(chosen) + candidates) if h not in chosen][:candidates]
        scan = head_ablation_scan(model, tokenizer, search, batch_size, progress=False, heads=pool)
    return [(h, float(scan.columns["ablated_acc"][h]), float(scan.meta["base_logp"] - scan.columns["logp_drop"][h]))
            for h in pool]


def circuit_search(model, tokenizer, search: list[Example], heldout: list[Example], target_drop: float = 0.5,
                   beam: int = 1, candidates: int = 8, max_size: int = 40, random_seeds: int = 3, seed: int = 0,
                   batch_size: int = 16, log=lambda _m: None) -> Circuit:
    """Find the set (see the module docstring) and judge it on ``heldout``."""
    if not 0 < target_drop < 1:
        raise UserError(f"target drop must be between 0 and 1 (0.5: accuracy to half), got {target_drop}")
    arch = Arch(model)
    base_search, _ = accuracy(model, tokenizer, search, batch_size=batch_size)
    base_heldout, _ = accuracy(model, tokenizer, heldout, batch_size=batch_size)
    if base_search == 0:
        raise UserError("the model gets none of the search prompts right; there is no accuracy to cut")
    target = (1 - target_drop) * base_search
    beams: list[tuple[list[Head], float, float]] = [([], base_search, 0.0)]
    while len(beams[0][0]) < max_size and beams[0][1] > target:
        options, seen = [], set()
        for chosen, _, _ in beams:
            for head, acc, logp in _step(model, tokenizer, search, chosen, candidates, batch_size):
                key = frozenset(chosen + [head])
                if key not in seen:
                    seen.add(key)
                    options.append((chosen + [head], acc, logp))
        if not options:
            break
        beams = sorted(options, key=lambda o: (o[1], o[2]))[:beam]
        log(f"  {len(beams[0][0])} heads: search accuracy {beams[0][1]:.3f} (target {target:.3f})")
    chosen = beams[0][0]
    curve = []
    for size in range(1, len(chosen) + 1):
        s_acc, _ = accuracy(model, tokenizer, search, chosen[:size], batch_size)
        h_acc, _ = accuracy(model, tokenizer, heldout, chosen[:size], batch_size)
        curve.append(Point(size, f"{chosen[size - 1][0]}.{chosen[size - 1][1]}", s_acc, h_acc))
    every = [(l, h) for l in range(arch.n_layers) for h in range(arch.n_heads)]
    randoms = []
    for size in _random_sizes(len(chosen)):
        for s in range(random_seeds):
            heads = random.Random(seed * 1000 + s).sample(every, size)
            randoms.append({"size": size, "seed": s, "heldout_acc": accuracy(model, tokenizer, heldout, heads, batch_size)[0]})
    final = curve[-1].heldout_acc if curve else base_heldout
    return Circuit(heads=[p.head for p in curve], curve=curve, random=randoms,
                   base={"search_acc": base_search, "heldout_acc": base_heldout}, target_acc=target,
                   reached=bool(curve) and final <= (1 - target_drop) * base_heldout,
                   meta={"target_drop": target_drop, "beam": beam, "candidates": candidates, "max_size": max_size,
                         "search_prompts": len(search), "heldout_prompts": len(heldout), "seed": seed})


def _random_sizes(n: int) -> list[int]:
    """1, 2, 4, 8, ... and n itself: enough points to draw the random curve beside the found one."""
    sizes, k = [], 1
    while k < n:
        sizes.append(k)
        k *= 2
    return sizes + [n] if n else []


def set_specificity(model, tokenizer, heads: list[Head], task: list[Example], control: list[Example],
                    guard: list[Example], batch_size: int = 16) -> dict:
    """What removing the whole set does to the task, a control task and the guard text (exact)."""
    out = {}
    for name, examples in (("task", task), ("control", control), ("guard", guard)):
        base_acc, base_logp = accuracy(model, tokenizer, examples, batch_size=batch_size)
        acc, logp = accuracy(model, tokenizer, examples, heads, batch_size)
        out[name] = {"acc_before": base_acc, "acc_after": acc, "logp_drop": base_logp - logp}
    out["specificity"] = out["task"]["logp_drop"] - max(out["control"]["logp_drop"], out["guard"]["logp_drop"])
    return out


def _figure(circuit: Circuit, path: Path) -> Path:
    from editor.plots import line_plot, save_png

    sizes = sorted({r["size"] for r in circuit.random})
    base = circuit.base["heldout_acc"]
    series = {"found set": ([0] + [p.size for p in circuit.curve], [base] + [p.heldout_acc for p in circuit.curve]),
              "random sets (mean)": ([0] + sizes, [base] + [circuit.random_mean(s) for s in sizes])}
    target = (1 - circuit.meta["target_drop"]) * base
    png = line_plot(series, "heads removed", "held-out accuracy", "joint removal: found set vs random sets",
                    hlines={"target": target})
    return save_png(png, path)
