"""Recipe ``gender-debias``: CNA between woman and man prompts, zero (or rescale) the top neurons.

Neurons are chosen on some templates and professions and the bias is also measured on the others
(held out). A sweep over k (number of neurons) shows the trade-off with the capability guard; the
checkpoint is saved with the chosen k.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass, field

from editor.attribution.cna import cna
from editor.attribution.vocab import neuron_tokens
from editor.edit.plan import EditPlan
from editor.errors import UserError
from editor.evaluation.harness import GenderConfig, GuardConfig, compare, parse_indices
from editor.io import write_text_atomic
from editor.recipes.common import Common, checkpoint_step, evaluation_step, layer_range, scores_step
from editor.recipes.report import Report, layer_counts_plot, line_plot
from editor.recipes.run import Run
from editor.tasks import gender
from editor.tasks.examples import Example


@dataclass
class Split:
    choose_templates: str | int = "0-3"  # templates whose prompts choose the neurons
    eval_templates: str | int = "4-7"  # held-out templates for the evaluation
    choose_fraction: float = 0.5  # share of each lean's professions used to choose; the rest are held out


@dataclass
class Edit:
    layers: list[int] | None = None  # [first, last] to score; null = every layer
    ks: list[int] = field(default_factory=lambda: [5, 10, 20, 50, 100])
    factor: float = 0.0  # 0 zeroes the neurons; another value rescales them
    choose_k: int | None = None  # null: the k with the smallest |bias| on the choice set within the guard limit
    max_perplexity_increase: float = 0.05  # relative guard perplexity increase allowed when choosing k


@dataclass
class GenderDebias(Common):
    split: Split = field(default_factory=Split)
    edit: Edit = field(default_factory=Edit)
    save_checkpoint: bool = True

    def check(self, where: str) -> None:
        super().check(where)
        if not self.edit.ks or any(k < 1 for k in self.edit.ks):
            raise UserError(f"{where}.edit.ks: a non-empty list of positive integers")
        if self.edit.choose_k is not None and self.edit.choose_k not in self.edit.ks:
            raise UserError(f"{where}.edit.choose_k: must be one of edit.ks {self.edit.ks}")
        if not 0 < self.split.choose_fraction < 1:
            raise UserError(f"{where}.split.choose_fraction: in (0, 1)")
        for key in ("choose_templates", "eval_templates"):
            setattr(self.split, key, str(getattr(self.split, key)))
            parse_indices(getattr(self.split, key), len(gender.TEMPLATES), f"{where}.split.{key}")


def _split(cfg: GenderDebias) -> dict:
    rng = random.Random(cfg.seed)
    choose, held = [], []
    for lean in gender.GENDERS:
        profs = [p for p, side in gender.default_professions() if side == lean]
        rng.shuffle(profs)
        cut = max(1, round(cfg.split.choose_fraction * len(profs)))
        choose += [(p, lean) for p in profs[:cut]]
        held += [(p, lean) for p in profs[cut:]]
    return {"choose": choose, "held_out": held}


def _paired_prompts(templates: list[str], professions: list[tuple[str, str]]) -> tuple[list[Example], list[Example]]:
    """Condition A: the gender each profession leans to; B: the other gender; same template and answer."""
    a, b = [], []
    for t in templates:
        for prof, lean in professions:
            other = "man" if lean == "woman" else "woman"
            a.append(Example(t.format(g=lean), f" {prof}"))
            b.append(Example(t.format(g=other), f" {prof}"))
    return a, b


def _write_professions(path, professions) -> str:
    write_text_atomic(path, "".join(json.dumps({"profession": p, "lean": lean}) + "\n" for p, lean in professions))
    return str(path)


def run(run: Run, cfg: GenderDebias) -> dict:
    ks = sorted(set(cfg.edit.ks))
    run.plan(["split", "cna", "evaluate_base", *[f"k{k}" for k in ks], "checkpoint", "report"])
    split = run.step("split", lambda: _split(cfg))
    choose = [tuple(x) for x in split["choose"]]
    held = [tuple(x) for x in split["held_out"]]
    choose_templates = [gender.TEMPLATES[i] for i in parse_indices(cfg.split.choose_templates, len(gender.TEMPLATES))]

    def scores():
        lm = run.model
        layers = layer_range(cfg.edit.layers, lm.arch.n_layers, "edit.layers") if cfg.edit.layers else None
        a, b = _paired_prompts(choose_templates, choose)
        return cna(lm.model, lm.tokenizer, a, examples_b=b, layers=layers, target="gold", batch_size=cfg.batch_size)

    neurons = scores_step(run, "cna", scores)
    layers = neurons.meta["a"]["layers"]
    order = neurons.ranked_names(layers)
    choose_file = _write_professions(run.path("data", "choose.jsonl"), choose)
    held_file = _write_professions(run.path("data", "held_out.jsonl"), held)
    t_choose, t_eval = cfg.split.choose_templates, cfg.split.eval_templates
    tasks = {  # "gender" = both held out; the others show which half of the generalisation holds
        "gender": GenderConfig(templates=t_eval, professions=held_file),
        "gender@new_templates": GenderConfig(templates=t_eval, professions=choose_file),
        "gender@new_professions": GenderConfig(templates=t_choose, professions=held_file),
        "gender@choice": GenderConfig(templates=t_choose, professions=choose_file),
        "guard": GuardConfig(),
    }
    base = evaluation_step(run, "evaluate_base", tasks)

    def plan_for(k: int) -> EditPlan:
        return EditPlan(note=f"gender-debias: top {k} CNA neurons (woman vs man prompts), factor {cfg.edit.factor}"
                        ).scale("neuron", order[:k], cfg.edit.factor)

    sweep = {k: evaluation_step(run, f"k{k}", tasks, plan_for(k), reference=base) for k in ks}
    rows = [_row("base", 0, base, base)] + [_row(f"top {k}", k, ev, base) for k, ev in sweep.items()]
    chosen = cfg.edit.choose_k or _choose(rows[1:], cfg.edit.max_perplexity_increase)
    plan = plan_for(chosen)
    plan.save(run.path("plan.json"))
    comparison = compare(base, sweep[chosen], cfg.seed)
    comparison.save(run.out, "evaluation")

    checkpoint = checkpoint_step(run, plan, neurons.ranked(max(ks)), cfg.save_checkpoint)
    summary = {"chosen_k": chosen, "choice_professions": len(choose), "rows": rows}
    run.step("report", lambda: _report(run, cfg, neurons, order, comparison, summary, checkpoint))
    return summary


def _row(name: str, k: int, ev, base) -> dict:
    m = {t: ev.tasks[t].measures for t in ev.tasks}
    ppl, ppl0 = m["guard"]["perplexity"].value, base.tasks["guard"].measures["perplexity"].value
    return {"model": name, "k": k, "bias_held_out": round(m["gender"]["bias"].value, 4),
            "bias_new_templates": round(m["gender@new_templates"]["bias"].value, 4),
            "bias_new_professions": round(m["gender@new_professions"]["bias"].value, 4),
            "bias_choice_set": round(m["gender@choice"]["bias"].value, 4), "perplexity": round(ppl, 3),
            "perplexity_change": round(ppl / ppl0 - 1, 4),
            "top1_agreement": round(m["guard"]["top1_agreement"].value, 4)}


def _choose(rows: list[dict], limit: float) -> int:
    allowed = [r for r in rows if r["perplexity_change"] <= limit] or rows[:1]
    return min(allowed, key=lambda r: (abs(r["bias_choice_set"]), r["k"]))["k"]


def _report(run, cfg, neurons, order, comparison, summary, checkpoint) -> dict:
    rep = Report(f"gender-debias: {cfg.model}")
    rows = summary["rows"]
    rep.paragraph(f"CNA between prompts with the gender each profession leans to and the other gender "
                  f"(templates {cfg.split.choose_templates}, {summary['choice_professions']} "
                  f"professions). The top k neurons are scaled by {cfg.edit.factor}. Bias is measured on held-out "
                  f"templates {cfg.split.eval_templates} with held-out professions (both new), with either one new, and on "
                  f"the choice set. "
                  f"Chosen k = {summary['chosen_k']}.")
    rep.heading(f"Before and after (k = {summary['chosen_k']})")
    rep.comparison(comparison)
    rep.heading("k sweep")
    rep.table(rows, list(rows[0]))
    ks = [r["k"] for r in rows]
    rep.image(line_plot({"bias, templates and professions held out": (ks, [r["bias_held_out"] for r in rows]),
                         "bias, new templates": (ks, [r["bias_new_templates"] for r in rows]),
                         "bias, new professions": (ks, [r["bias_new_professions"] for r in rows]),
                         "bias, choice set": (ks, [r["bias_choice_set"] for r in rows]),
                         "perplexity change": (ks, [r["perplexity_change"] for r in rows])},
                        "neurons edited (k)", "nats / relative change", "bias and capability against k"),
              "Bias (held-out and choice set) and relative guard perplexity change against k (k = 0: base)")
    top = order[:max(r["k"] for r in rows)]
    rep.image(layer_counts_plot(top, neurons.shape[0], f"layers of the top {len(top)} CNA neurons"),
              f"Where the top {len(top)} CNA neurons (largest k of the sweep) sit")
    rep.heading("Top CNA neurons and the tokens they promote")
    lm = run.model
    table = []
    for name in order[:12]:
        layer, index = map(int, name.split("."))
        toks = neuron_tokens(lm.arch, lm.tokenizer, layer, index, k=6)
        table.append({"neuron": name, **{c: round(float(neurons.columns[c][layer, index]), 5) for c in neurons.columns},
                      "top tokens": " ".join(toks["top"])})
    rep.table(table, list(table[0]))
    if checkpoint:
        rep.paragraph(f"Checkpoint: {checkpoint} (loads with AutoModelForCausalLM.from_pretrained).")
    rep.write(run.path("report.html"))
    return {"report": str(run.path("report.html"))}
