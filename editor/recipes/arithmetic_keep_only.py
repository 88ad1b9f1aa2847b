"""Recipe ``arithmetic-keep-only``: the CNA paper's ANALYSIS of attributed components (are they sufficient?).

Keep-only pruning (the CNA paper's protocol): in a layer range keep the top neurons and zero the
rest; and/or zero the least important heads. Evaluated on held-out arithmetic prompts (disjoint
from the scoring prompts) and the capability guard, against the same amount of random pruning.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Literal

from editor.edit.plan import EditPlan
from editor.errors import UserError
from editor.evaluation.harness import ArithmeticConfig, GuardConfig, compare
from editor.evaluation.results import Evaluation
from editor.io import write_text_atomic
from editor.recipes.common import (Common, all_heads, checkpoint_step, evaluation_step, layer_range, neurons_in,
                                   random_components, scores_step)
from editor.plots import bar_plot
from editor.recipes.report import Report, removed_neuron_rows
from editor.recipes.run import Run
from editor.tasks import arithmetic
from editor.tasks.examples import Example


@dataclass
class Data:
    n_score: int = 32
    n_eval: int = 100
    digits: int = 1
    ops: str = "+-*/"


@dataclass
class Heads:
    method: Literal["ablation", "static"] = "ablation"
    zero_fraction: float = 0.1  # zero this fraction of heads, least important first (0: no head pruning)


@dataclass
class Neurons:
    method: Literal["attribution", "cna"] = "attribution"  # cna: model vs model with the top head zeroed
    layers: list[int] = field(default_factory=lambda: [20, 29])  # [first, last], inclusive
    keep_fraction: float = 0.05  # keep this fraction of the range's neurons, zero the rest (1: none pruned)


@dataclass
class ArithmeticKeepOnly(Common):
    data: Data = field(default_factory=Data)
    heads: Heads = field(default_factory=Heads)
    neurons: Neurons = field(default_factory=Neurons)
    random_seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    save_checkpoint: bool = True

    def check(self, where: str) -> None:
        super().check(where)
        if not 0 <= self.heads.zero_fraction < 1:
            raise UserError(f"{where}.heads.zero_fraction: in [0, 1), got {self.heads.zero_fraction}")
        if not 0 < self.neurons.keep_fraction <= 1:
            raise UserError(f"{where}.neurons.keep_fraction: in (0, 1], got {self.neurons.keep_fraction}")
        if self.data.n_score < 1 or self.data.n_eval < 1:
            raise UserError(f"{where}.data: n_score and n_eval must be >= 1")


STEPS = ["data", "head_scores", "neuron_scores", "evaluate_base", "evaluate_pruned", "random_pruning",
         "checkpoint", "report"]


def _data(cfg: ArithmeticKeepOnly) -> dict:
    score = arithmetic.generate(cfg.data.n_score, cfg.data.digits, cfg.data.ops, cfg.seed)
    seen = {(e.meta["op"], e.meta["a"], e.meta["b"]) for e in score}
    pool = arithmetic.generate(cfg.data.n_eval * 4 + 64, cfg.data.digits, cfg.data.ops, cfg.seed + 7919)
    held_out = [e for e in pool if (e.meta["op"], e.meta["a"], e.meta["b"]) not in seen][:cfg.data.n_eval]
    if len(held_out) < cfg.data.n_eval:
        raise UserError(f"only {len(held_out)} arithmetic prompts differ from the scoring prompts; "
                        "lower data.n_eval or use more digits")
    return {"score": [e.to_json() for e in score], "eval": [e.to_json() for e in held_out]}


def _examples(records: list[dict]) -> list[Example]:
    return [Example(r["prompt"], r.get("answer"), r.get("meta")) for r in records]


def run(run: Run, cfg: ArithmeticKeepOnly) -> dict:
    run.plan(STEPS)
    data = run.step("data", lambda: _data(cfg))
    score_ex = _examples(data["score"])
    eval_file = run.path("data", "eval.jsonl")  # a copy for the reader; the harness gets the prompts in memory
    write_text_atomic(eval_file, "".join(json.dumps({"prompt": r["prompt"], "answer": r["answer"], **r["meta"]}) + "\n"
                                         for r in data["eval"]))

    def head_scores():  # run.scorer: here, or sharded over Ray workers (executor: ray)
        if cfg.heads.method == "ablation":
            return run.scorer.scan(score_ex)
        return run.scorer.static(score_ex, target="gold")

    heads = scores_step(run, "head_scores", head_scores)
    ranked_heads = heads.top_components(heads.shape[0] * heads.shape[1])  # most important first
    top_head = ranked_heads[0]

    def neuron_scores():
        lm = run.model
        layers = layer_range(cfg.neurons.layers, lm.arch.n_layers, "neurons.layers")
        if cfg.neurons.method == "cna":
            return run.scorer.cna(score_ex, ablate=EditPlan().zero("head", [top_head]), layers=layers, target="gold")
        return run.scorer.neurons(score_ex, target="gold", layers=layers)

    neurons = scores_step(run, "neuron_scores", neuron_scores)
    n_layers, n_heads = heads.shape
    layers = layer_range(cfg.neurons.layers, n_layers, "neurons.layers")
    width = neurons.shape[1]
    order = neurons.ranked_names(layers)
    n_keep = max(1, round(cfg.neurons.keep_fraction * len(order)))
    keep = order[:n_keep]
    n_zero_heads = round(cfg.heads.zero_fraction * n_layers * n_heads)
    zero_heads = ranked_heads[::-1][:n_zero_heads]

    def plan_for(kept: list[str], heads_zeroed: list[str], note: str) -> EditPlan:
        plan = EditPlan(note=note)
        if cfg.neurons.keep_fraction < 1:
            plan.keep_only("neuron", layers[0], layers[-1], kept)
        if heads_zeroed:
            plan.zero("head", heads_zeroed)
        return plan

    plan = plan_for(keep, zero_heads, f"arithmetic-keep-only: keep top {n_keep} neurons of layers {layers[0]}-{layers[-1]} "
                                      f"({cfg.neurons.method}), zero {n_zero_heads} least important heads ({cfg.heads.method})")
    plan.save(run.path("plan.json"))
    tasks = {"arithmetic": ArithmeticConfig(n=cfg.data.n_eval, examples=_examples(data["eval"])), "guard": GuardConfig()}
    base = evaluation_step(run, "evaluate_base", tasks)
    pruned = evaluation_step(run, "evaluate_pruned", tasks, plan, reference=base)

    def random_pruning():
        out = {}
        for seed in cfg.random_seeds:
            kept = random_components(neurons_in(layers, width), n_keep, seed)
            zeroed = random_components(all_heads(n_layers, n_heads), n_zero_heads, seed)
            ev = evaluation_step(run, f"random_seed{seed}", tasks, plan_for(kept, zeroed, f"random seed {seed}"),
                                 reference=base)
            out[str(seed)] = ev.to_json()
        return out

    randoms = {s: Evaluation.from_json(e) for s, e in run.step("random_pruning", random_pruning).items()}
    comparison = compare(base, pruned, cfg.seed)
    comparison.save(run.out, "evaluation")

    checkpoint = checkpoint_step(run, plan, {"heads": heads.ranked(20), "neurons": neurons.ranked(20)},
                                 cfg.save_checkpoint)
    summary = _summary(base, pruned, randoms, n_keep, n_zero_heads, len(order))
    report = run.step("report", lambda: _report(
        run, cfg, heads, neurons, comparison, randoms, summary, checkpoint, layers, width, keep, zero_heads))
    summary["headline"] = report.get("headline")  # printed first by lmedit run
    return summary


def _removed(layers: list[int], width: int, keep: list[str], zero_heads: list[str]) -> list[dict]:
    """Every removed component, one row per layer: the FFN neurons outside the kept set (as index
    ranges), then the zeroed heads."""
    rows = removed_neuron_rows(layers, width, keep)
    if zero_heads:
        rows.append({"layer": "heads", "removed": f"{len(zero_heads)} heads zeroed: {' '.join(zero_heads)}"})
    return rows


def _metric(ev, task, key):
    return ev.tasks[task].measures[key].value


def _summary(base, pruned, randoms, n_keep, n_zero_heads, n_range) -> dict:
    rows = {"base": base, "pruned (attribution)": pruned, **{f"random seed {s}": e for s, e in randoms.items()}}
    return {
        "kept_neurons": n_keep, "neurons_in_range": n_range, "zeroed_heads": n_zero_heads,
        "rows": [{"model": name, "token_accuracy": round(_metric(e, "arithmetic", "token_accuracy"), 4),
                  "exact_match": round(_metric(e, "arithmetic", "exact_match"), 4),
                  "perplexity": round(_metric(e, "guard", "perplexity"), 3)} for name, e in rows.items()],
    }


def _report(run, cfg, heads, neurons, comparison, randoms, summary, checkpoint, layers, width, keep,
            zero_heads) -> dict:
    from editor.plots import heatmap
    from editor.attribution.vocab import neuron_tokens

    rep = Report(f"arithmetic-keep-only: {cfg.model}")
    before, after = (comparison.before.tasks["arithmetic"].measures, comparison.after.tasks["arithmetic"].measures)
    random_acc = [r["token_accuracy"] for r in summary["rows"][2:]]
    rep.headline(f"Kept {summary['kept_neurons']} of {summary['neurons_in_range']} FFN neurons in layers "
                 f"{layers[0]}-{layers[-1]} ({cfg.neurons.method}) and zeroed {summary['zeroed_heads']} heads: "
                 f"held-out token accuracy {before['token_accuracy'].cell()} -> {after['token_accuracy'].cell()}, "
                 f"exact match {before['exact_match'].cell()} -> {after['exact_match'].cell()}"
                 + (f"; random pruning of the same size {min(random_acc):.3f}-{max(random_acc):.3f} "
                    f"({len(random_acc)} seeds)" if random_acc else "") + ". An analysis (are the attributed "
                 "neurons sufficient?), not a smaller model: prune makes one.")
    rep.paragraph(f"Scored on {cfg.data.n_score} arithmetic prompts; evaluated on {cfg.data.n_eval} held-out prompts "
                  f"and the guard text. Kept {summary['kept_neurons']} of {summary['neurons_in_range']} FFN neurons "
                  f"in layers {layers[0]}-{layers[-1]} ({cfg.neurons.method}); zeroed {summary['zeroed_heads']} "
                  f"heads ({cfg.heads.method}, least important first).")
    rep.heading("Before and after pruning")
    rep.comparison(comparison)
    rep.heading("Against random pruning of the same size (every measure, 95% intervals)")
    rep.evaluations({"base": comparison.before, "pruned (attribution)": comparison.after,
                     **{f"random seed {s}": e for s, e in randoms.items()}})
    measured = {"base": [comparison.before], "attribution": [comparison.after], "random": list(randoms.values())}
    token = {g: [e.tasks["arithmetic"].measures["token_accuracy"] for e in evs] for g, evs in measured.items()}
    groups = {g: [m.value for m in ms] for g, ms in token.items()}
    errors = {g: ([m.low for m in ms], [m.high for m in ms]) for g, ms in token.items()}
    rep.image(bar_plot(groups, "teacher-forced token accuracy", "held-out arithmetic", errors=errors),
              "Token accuracy: base, attribution-chosen pruning, random pruning (dots: seeds; bars through them: "
              "95% intervals)")
    rep.heading("What was removed")
    rep.table(_removed(layers, width, keep, zero_heads), ["layer", "removed"])
    png = heatmap(heads.columns[heads.primary], run.path("attribution", "head_scores.png"),
                  title=f"heads: {heads.method} {heads.primary}")
    rep.image(png, f"Head scores ({heads.method}, {heads.primary}), layers x heads")
    rep.heading("Top neurons and the tokens they promote")
    lm = run.model
    rows = []
    for name in neurons.ranked_names(layers)[:10]:
        layer, index = map(int, name.split("."))
        toks = neuron_tokens(lm.arch, lm.tokenizer, layer, index, k=6)
        rows.append({"neuron": name, neurons.primary: round(float(neurons.columns[neurons.primary][layer, index]), 5),
                     "top tokens": " ".join(toks["top"])})
    rep.table(rows, ["neuron", neurons.primary, "top tokens"])
    rep.heading("Top heads")
    rep.table(heads.ranked(10), ["rank", "head", *heads.columns])
    if checkpoint:
        rep.paragraph(f"Checkpoint: {checkpoint} (loads with AutoModelForCausalLM.from_pretrained).")
    return rep.finish(run)
