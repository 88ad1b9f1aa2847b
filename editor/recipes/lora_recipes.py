"""Recipes ``lora-compare`` (one adapter per layer group: accuracy gain and coefficient increase
against layer) and ``prune-then-lora`` (keep-only pruning chosen by CNA between base and LoRA, then a
new LoRA on the pruned model, against random pruning of the same size)."""

from __future__ import annotations

import dataclasses
from typing import ClassVar
from dataclasses import dataclass, field

from editor.attribution.cna import cna
from editor.attribution.neurons import neuron_logprob_increase
from editor.attribution.results import ComponentScores
from editor.edit.plan import EditPlan
from editor.edit.weights import apply_plan
from editor.errors import UserError
from editor.evaluation.results import Measure
from editor.lora.compare import average_shifts, coefficient_shift, exact_match, token_accuracy
from editor.lora.train import Adapter, LoraSettings, save_adapter, trained_adapter
from editor.tasks.arithmetic import split_arithmetic
from editor.recipes.common import Common, layer_range, neurons_in, random_components
from editor.plots import bar_plot, line_plot
from editor.recipes.report import Report, removed_neuron_rows
from editor.recipes.run import Run


@dataclass
class Data:
    digits: int = 2
    n_train: int = 1000
    n_eval: int = 100  # held-out prompts for accuracy (no operation/operand pair shared with training)
    n_compare: int = 24  # held-out prompts the CNA comparison runs on


def _settings(cfg, layers: list[int]) -> LoraSettings:
    return LoraSettings(layers=layers, **dataclasses.asdict(cfg.lora), digits=cfg.data.digits, n_train=cfg.data.n_train,
                        n_eval=cfg.data.n_eval, seed=cfg.seed)


def _measure_json(m) -> dict:
    return dataclasses.asdict(m) | {"per_unit": None}


def _cell(m: dict) -> str:
    """A stored measure (its JSON) as Measure.cell writes it: "value [low, high]"."""
    return Measure(**m).cell()


# lora-compare -----------------------------------------------------------------------------------
@dataclass
class LoraCompare(Common):
    RAY: ClassVar[bool] = False
    RAY_WHY: ClassVar[str] = "CNA compares a LoRA model in memory with its base"
    layer_groups: list[list[int]] = field(default_factory=lambda: [[i] for i in range(0, 30, 3)])
    compare_layers: list[int] | None = None  # [first, last] of the neurons compared; null: all layers
    lora: Adapter = field(default_factory=lambda: Adapter(steps=80))
    data: Data = field(default_factory=Data)

    def check(self, where: str) -> None:
        super().check(where)
        if not self.layer_groups or any(not g for g in self.layer_groups):
            raise UserError(f"{where}.layer_groups: a list of non-empty layer lists, e.g. [[0], [3], [6]]")


def run_lora_compare(run: Run, cfg: LoraCompare) -> dict:
    groups = ["_".join(map(str, g)) for g in cfg.layer_groups]
    run.plan(["base_accuracy", "base_exact_match", "base_scores", *[f"lora_L{g}" for g in groups], "report"])
    settings0 = _settings(cfg, cfg.layer_groups[0])
    train, held = split_arithmetic(settings0.n_train, settings0.n_eval, settings0.digits, settings0.seed)
    compare_ex = held[:cfg.data.n_compare]
    base = run.step("base_accuracy", lambda: _measure_json(token_accuracy(run.model.model, run.model.tokenizer, held)))
    base_exact = run.step("base_exact_match",
                          lambda: _measure_json(exact_match(run.model.model, run.model.tokenizer, held)))

    def compare_layers():
        n_layers = run.model.arch.n_layers
        return layer_range(cfg.compare_layers, n_layers, "compare_layers") if cfg.compare_layers else list(range(n_layers))

    def base_scores():
        # The base side of every adapter's CNA is the same: score it once.
        lm = run.model
        scores = neuron_logprob_increase(lm.model, lm.tokenizer, compare_ex, layers=compare_layers(), target="gold",
                                         batch_size=cfg.batch_size)
        return {"scores": scores.to_json(top=0),
                "accuracy": _measure_json(token_accuracy(lm.model, lm.tokenizer, compare_ex))}

    base_cached = run.step("base_scores", base_scores)
    results = []
    for layers, name in zip(cfg.layer_groups, groups):
        def one(layers=layers, name=name):
            lm = run.model
            with trained_adapter(lm.model, lm.tokenizer, _settings(cfg, layers), train) as (peft_model, result):
                save_adapter(peft_model, run.path("adapters", f"L{name}"))
                acc = token_accuracy(peft_model, lm.tokenizer, held)
                exact = exact_match(peft_model, lm.tokenizer, held)
                shift = coefficient_shift(None, peft_model, lm.tokenizer, compare_ex, compare_layers(),
                                          batch_size=cfg.batch_size,
                                          base_scores=ComponentScores.from_json(base_cached["scores"]),
                                          base_accuracy=Measure(**base_cached["accuracy"]))
            shift.save(run.path("compare"), f"L{name}")
            return {"layers": layers, "loss_first": result.losses[0], "loss_last": result.losses[-1],
                    "accuracy": _measure_json(acc), "exact_match": _measure_json(exact), "rows": shift.rows}

        results.append(run.step(f"lora_L{name}", one))
    rows = []
    for r in results:
        averages = {a["top"]: a for a in average_shifts(r["rows"])}
        rows.append({"layers": ",".join(map(str, r["layers"])), "accuracy": round(r["accuracy"]["value"], 4),
                     "accuracy_95": [round(r["accuracy"]["low"], 4), round(r["accuracy"]["high"], 4)],
                     "gain": round(r["accuracy"]["value"] - base["value"], 4),
                     "exact_match": _cell(r["exact_match"]),
                     **{f"coef_change_top{n}": round(averages[n]["relative_increase"], 3) for n in (10, 50)},
                     **{f"abs_coef_change_top{n}": round(averages[n]["magnitude_change"], 3) for n in (10, 50)},
                     "loss": f"{r['loss_first']:.2f}->{r['loss_last']:.2f}"})
    summary = {"base_accuracy": base["value"], "base_accuracy_95": [round(base["low"], 4), round(base["high"], 4)],
               "base_exact_match": _cell(base_exact), "rows": rows}
    report = run.step("report", lambda: _report_compare(run, cfg, summary, results))
    summary["headline"] = report.get("headline")  # printed first by lmedit run
    return summary


def _report_compare(run, cfg, summary, results) -> dict:
    rep = Report(f"lora-compare: {cfg.model}")
    best = max(summary["rows"], key=lambda r: r["gain"])
    rep.headline(f"{len(summary['rows'])} LoRA adapters, one per layer group: held-out token accuracy base "
                 f"{summary['base_accuracy']:.3f} {summary['base_accuracy_95']} (exact match {summary['base_exact_match']}); "
                 f"best layers {best['layers']} "
                 f"{best['accuracy']:.3f} {best['accuracy_95']} (gain {best['gain']:+.3f}; exact match {best['exact_match']}); the mean coefficient "
                 f"of its top 10 CNA neurons changes by {best['coef_change_top10']:+.0%}.")
    rep.paragraph(f"One LoRA adapter (rank {cfg.lora.rank}, {', '.join(cfg.lora.targets)}, {cfg.lora.steps} steps) per "
                  f"layer group, trained on {cfg.data.n_train} {cfg.data.digits}-digit arithmetic prompts; token accuracy "
                  f"on {cfg.data.n_eval} held-out prompts (base {summary['base_accuracy']:.3f}); CNA between the LoRA "
                  f"model and the base on {cfg.data.n_compare} held-out prompts. coef_change_topN: relative change "
                  "of the mean coefficient of the top N CNA neurons, (LoRA - base) / |base|; abs_coef_change_topN: "
                  "the same for the mean |coefficient|.")
    rep.table(summary["rows"], list(summary["rows"][0]))
    xs = [sum(r["layers"]) / len(r["layers"]) for r in results]
    accuracy = [r["accuracy"] for r in results]
    rep.image(line_plot({"LoRA": (xs, [a["value"] for a in accuracy])}, "adapter layer", "held-out token accuracy",
                        "accuracy against the adapter's layer",
                        errors={"LoRA": ([a["low"] for a in accuracy], [a["high"] for a in accuracy])},
                        hlines={"base": summary["base_accuracy"]}),
              "Held-out token accuracy of each adapter (bars: 95% Wilson intervals) against the base's (dashed)")
    rep.image(line_plot({f"{kind}, top {n}": (xs, [r[f"{key}_top{n}"] for r in summary["rows"]])
                         for n in (10, 50) for kind, key in (("mean", "coef_change"), ("|mean|", "abs_coef_change"))},
                        "adapter layer", "relative change, LoRA vs base",
                        "coefficients of the top CNA neurons"),
              "Relative change of the mean coefficient and of the mean |coefficient| of the top 10 and top 50 "
              "CNA neurons against the adapter's layer")
    rep.heading("Top CNA neurons of each adapter")
    for r in results:
        rep.heading(f"layers {r['layers']}", level=3)
        rep.table(r["rows"][:10], list(r["rows"][0]))
    return rep.finish(run)


# prune-then-lora --------------------------------------------------------------------------------
@dataclass
class PruneThenLora(Common):
    RAY: ClassVar[bool] = False
    RAY_WHY: ClassVar[str] = "CNA compares a LoRA model in memory with its base"
    lora_layers: list[int] = field(default_factory=lambda: [3])
    prune_layers: list[int] = field(default_factory=lambda: [15, 29])  # [first, last] deep FFN layers
    keep_fraction: float = 0.05
    random_seeds: list[int] = field(default_factory=lambda: [1, 2])
    lora: Adapter = field(default_factory=lambda: Adapter(steps=80))
    data: Data = field(default_factory=Data)

    def check(self, where: str) -> None:
        super().check(where)
        if not 0 < self.keep_fraction < 1:
            raise UserError(f"{where}.keep_fraction: in (0, 1), got {self.keep_fraction}")


def run_prune_then_lora(run: Run, cfg: PruneThenLora) -> dict:
    seeds = list(dict.fromkeys(cfg.random_seeds))
    run.plan(["base_accuracy", "base_exact_match", "cna_lora_vs_base", "cna_pruned", *[f"random{s}_pruned" for s in seeds], "report"])
    settings = _settings(cfg, cfg.lora_layers)
    train, held = split_arithmetic(settings.n_train, settings.n_eval, settings.digits, settings.seed)
    compare_ex = held[:cfg.data.n_compare]
    base = run.step("base_accuracy", lambda: _measure_json(token_accuracy(run.model.model, run.model.tokenizer, held)))
    base_exact = run.step("base_exact_match",
                          lambda: _measure_json(exact_match(run.model.model, run.model.tokenizer, held)))

    def choose():
        lm = run.model
        layers = layer_range(cfg.prune_layers, lm.arch.n_layers, "prune_layers")
        with trained_adapter(lm.model, lm.tokenizer, settings, train) as (peft_model, result):
            acc = token_accuracy(peft_model, lm.tokenizer, held)
            exact = exact_match(peft_model, lm.tokenizer, held)
            scores = cna(peft_model, lm.tokenizer, compare_ex, context_b=peft_model.disable_adapter, layers=layers,
                         target="gold", batch_size=cfg.batch_size)
        ranked = scores.ranked_names(layers)
        n_keep = max(1, round(cfg.keep_fraction * len(ranked)))
        return {"layers": layers, "keep": ranked[:n_keep], "width": scores.shape[1],
                "lora_accuracy": _measure_json(acc), "lora_exact_match": _measure_json(exact),
                "loss_last": result.losses[-1]}

    chosen = run.step("cna_lora_vs_base", choose)
    layers, width, n_keep = chosen["layers"], chosen["width"], len(chosen["keep"])

    def pruned_then_lora(keep: list[str], note: str):
        def compute():
            lm = run.model
            plan = EditPlan(note=note).keep_only("neuron", layers[0], layers[-1], keep)
            with apply_plan(lm.model, plan):
                pruned = token_accuracy(lm.model, lm.tokenizer, held)
                pruned_exact = exact_match(lm.model, lm.tokenizer, held)
                with trained_adapter(lm.model, lm.tokenizer, settings, train) as (peft_model, result):
                    after = token_accuracy(peft_model, lm.tokenizer, held)
                    after_exact = exact_match(peft_model, lm.tokenizer, held)
            return {"pruned": _measure_json(pruned), "pruned_lora": _measure_json(after),
                    "pruned_exact_match": _measure_json(pruned_exact),
                    "pruned_lora_exact_match": _measure_json(after_exact), "loss_last": result.losses[-1]}
        return compute

    cna_run = run.step("cna_pruned", pruned_then_lora(chosen["keep"], f"keep the top {n_keep} CNA neurons"))
    randoms = {s: run.step(f"random{s}_pruned", pruned_then_lora(
        random_components(neurons_in(layers, width), n_keep, s), f"keep {n_keep} random neurons, seed {s}"))
        for s in seeds}
    def row(model: str, m: dict, exact: dict) -> dict:
        return {"model": model, "accuracy": round(m["value"], 4), "accuracy_95": [round(m["low"], 4), round(m["high"], 4)],
                "exact_match": _cell(exact)}

    rows = [row("base", base, base_exact),
            row(f"base + LoRA (layers {cfg.lora_layers})", chosen["lora_accuracy"], chosen["lora_exact_match"]),
            row("CNA keep-only pruned", cna_run["pruned"], cna_run["pruned_exact_match"]),
            row("CNA keep-only pruned + new LoRA", cna_run["pruned_lora"], cna_run["pruned_lora_exact_match"])]
    for s, r in randoms.items():
        rows += [row(f"random pruned (seed {s})", r["pruned"], r["pruned_exact_match"]),
                 row(f"random pruned (seed {s}) + new LoRA", r["pruned_lora"], r["pruned_lora_exact_match"])]
    summary = {"kept": n_keep, "of": len(layers) * width, "layers": [layers[0], layers[-1]], "rows": rows,
               "kept_neurons": chosen["keep"]}
    report = run.step("report", lambda: _report_prune(run, cfg, summary, cna_run, randoms))
    summary["headline"] = report.get("headline")  # printed first by lmedit run
    return summary


def _report_prune(run, cfg, summary, cna_run, randoms) -> dict:
    rep = Report(f"prune-then-lora: {cfg.model}")
    rows = {r["model"]: r for r in summary["rows"]}
    cna_row, cna_lora = rows["CNA keep-only pruned"], rows["CNA keep-only pruned + new LoRA"]
    rep.headline(f"Kept {summary['kept']} of {summary['of']} FFN neurons (CNA): held-out token accuracy base "
                 f"{summary['rows'][0]['accuracy']:.3f} {summary['rows'][0]['accuracy_95']}, pruned "
                 f"{cna_row['accuracy']:.3f} {cna_row['accuracy_95']}, pruned + new LoRA {cna_lora['accuracy']:.3f} "
                 f"{cna_lora['accuracy_95']}; random pruning of the same size in the table.")
    rep.paragraph(f"Keep-only pruning of layers {summary['layers'][0]}-{summary['layers'][1]}: {summary['kept']} of "
                  f"{summary['of']} FFN neurons kept, chosen by CNA between a LoRA model (layers {cfg.lora_layers}) and "
                  "the base, or at random; then a new LoRA on the pruned model. Teacher-forced token accuracy and greedy exact match on "
                  f"{cfg.data.n_eval} held-out {cfg.data.digits}-digit prompts.")
    rep.table(summary["rows"], ["model", "accuracy", "accuracy_95", "exact_match"])
    measures = {"CNA pruned": [cna_run["pruned"]], "CNA pruned + LoRA": [cna_run["pruned_lora"]],
                "random pruned": [r["pruned"] for r in randoms.values()],
                "random pruned + LoRA": [r["pruned_lora"] for r in randoms.values()]}
    groups = {g: [m["value"] for m in ms] for g, ms in measures.items()}
    errors = {g: ([m["low"] for m in ms], [m["high"] for m in ms]) for g, ms in measures.items()}
    rep.image(bar_plot(groups, "held-out token accuracy", "prune then LoRA: CNA vs random", errors=errors),
              "Accuracy after pruning and after a new LoRA, CNA-chosen vs random neurons (dots: seeds; bars "
              "through them: 95% Wilson intervals)")
    rep.heading("What was removed (CNA keep-only)")
    first, last = summary["layers"]
    rep.table(removed_neuron_rows(range(first, last + 1), summary["of"] // (last - first + 1),
                                  summary["kept_neurons"]), ["layer", "removed"])
    return rep.finish(run)
