"""Recipe ``icl-heads``: find in-context heads, show the collapse when they are cut, reduce label bias.

Heads are scored on foo/bar classification prompts: the static log-probability increase, and (the
ranking) gradient attribution whose best candidates are confirmed by exact ablation (``cut.rank_by:
auto``; ``ablation`` scans every head exactly, ``static`` ranks by the direct effect). Zeroing the top ~1-5% is compared with zeroing as many random heads (several seeds).
Rescaling the in-context heads' outputs is the label-bias reduction; its majority-label and recency
bias are reported before and after. Scoring and evaluation use disjoint halves of the sentence pool.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from editor.attribution.confirm import auto_head_scores
from editor.attribution.vocab import head_tokens
from editor.edit.plan import EditPlan
from editor.errors import UserError
from editor.evaluation.harness import GuardConfig, IclConfig, compare
from editor.recipes.common import Common, all_heads, evaluation_step, random_components, scores_step
from editor.plots import bar_plot
from editor.recipes.report import Report
from editor.recipes.run import Run
from editor.tasks import icl


@dataclass
class Data:
    n_score: int = 16  # prompts the heads are scored on
    n_eval: int = 60  # queries per evaluation setting (balanced, imbalanced, natural labels)
    k: int = 2  # demonstrations per label
    pool: str = "builtin"  # the sentence pool: builtin, a .jsonl/.csv file, or a datasets name


@dataclass
class Cut:
    rank_by: Literal["auto", "ablation", "static"] = "auto"  # auto: gradient + exact ablation of the best
    fractions: list[float] = field(default_factory=lambda: [0.01, 0.05])  # share of all heads zeroed
    random_seeds: list[int] = field(default_factory=lambda: [1, 2, 3])


@dataclass
class Rescale:
    fraction: float = 0.01  # the in-context heads: this share of all heads, best ranked
    factors: list[float] = field(default_factory=lambda: [0.5, 1.5])


@dataclass
class IclHeads(Common):
    data: Data = field(default_factory=Data)
    cut: Cut = field(default_factory=Cut)
    rescale: Rescale = field(default_factory=Rescale)

    def check(self, where: str) -> None:
        super().check(where)
        for f in self.cut.fractions + [self.rescale.fraction]:
            if not 0 < f < 1:
                raise UserError(f"{where}: head fractions must be in (0, 1), got {f}")


def run(run: Run, cfg: IclHeads) -> dict:
    fractions = sorted(set(cfg.cut.fractions))
    factors = list(dict.fromkeys(cfg.rescale.factors))
    run.plan(["static_scores", "ablation_scores", "evaluate_base", *[f"cut_{f:g}" for f in fractions],
              *[f"rescale_{x:g}" for x in factors], "report"])
    score_pool, eval_pool = icl.split_pool(icl.load_pool(cfg.data.pool), cfg.seed)
    examples = icl.build(score_pool, cfg.data.n_score, cfg.data.k, icl.UNRELATED_LABELS, seed=cfg.seed)
    def static_scores():  # run.scorer: here, or sharded over Ray workers (executor: ray)
        lm = run.model
        scores = run.scorer.static(examples, target="gold")
        mean_output = scores.vectors["mean_output"]  # not serialised: keep each head's top tokens instead
        scores.meta["top_tokens"] = {f"{l}.{h}": head_tokens(lm.arch, lm.tokenizer, mean_output[l, h], k=6)["top"]
                                     for l in range(mean_output.shape[0]) for h in range(mean_output.shape[1])}
        return scores

    static = scores_step(run, "static_scores", static_scores)
    n_layers, n_heads = static.shape
    total = n_layers * n_heads
    most = max(max(1, round(f * total)) for f in fractions + [cfg.rescale.fraction])

    def ablation_scores():  # auto: exact for the best 3x `most` gradient candidates, which rank first
        if cfg.cut.rank_by == "auto":
            return auto_head_scores(None, None, examples, top=most, scorer=run.scorer)
        return run.scorer.scan(examples)

    ablation = scores_step(run, "ablation_scores", ablation_scores)
    ranking = static if cfg.cut.rank_by == "static" else ablation
    ranked = ranking.top_components(total)
    tasks = {"icl": IclConfig(n=cfg.data.n_eval, k=cfg.data.k, pool=eval_pool, seed=cfg.seed + 1),
             "guard": GuardConfig()}
    base = evaluation_step(run, "evaluate_base", tasks)

    cuts = []
    for f in fractions:
        n = max(1, round(f * total))

        def cut(n=n, f=f):
            top = evaluation_step(run, f"cut_{f:g}_top", tasks, EditPlan(note=f"top {n} heads").zero("head", ranked[:n]),
                                  reference=base)
            rand = [evaluation_step(run, f"cut_{f:g}_random{s}", tasks,
                                    EditPlan(note=f"random {n} heads, seed {s}").zero(
                                        "head", random_components(all_heads(n_layers, n_heads), n, s)), reference=base)
                    for s in cfg.cut.random_seeds]
            acc = [ev.tasks["icl"].measures["accuracy"].value for ev in rand]
            return {"fraction": f, "heads": n, "zeroed": ranked[:n],
                    "accuracy_top": top.tasks["icl"].measures["accuracy"].value, "accuracy_random": acc,
                    "accuracy_top_95": top.tasks["icl"].measures["accuracy"].cell(),
                    "accuracy_random_95": [ev.tasks["icl"].measures["accuracy"].cell() for ev in rand]}

        cuts.append(run.step(f"cut_{f:g}", cut))

    n_icl = max(1, round(cfg.rescale.fraction * total))
    rescaled = {}
    for x in factors:
        plan = EditPlan(note=f"rescale the top {n_icl} in-context heads by {x}").scale("head", ranked[:n_icl], x)
        rescaled[x] = evaluation_step(run, f"rescale_{x:g}", tasks, plan, reference=base)
    comparisons = {x: compare(base, ev, cfg.seed) for x, ev in rescaled.items()}
    for x, c in comparisons.items():
        c.save(run.out, f"evaluation_rescale_{x:g}")
    summary = _summary(base, cuts, rescaled, n_icl)
    report = run.step("report", lambda: _report(run, cfg, static, ablation, ranked, cuts, comparisons, summary))
    summary["headline"] = report.get("headline")  # printed first by lmedit run
    return summary


def _summary(base, cuts, rescaled, n_icl) -> dict:
    acc0 = base.tasks["icl"].measures["accuracy"]
    rows = [{"edit": "none", "heads": 0, "accuracy": round(acc0.value, 4), "accuracy_95": acc0.cell(),
             "random_heads_accuracy_95": "-"}]
    for c in cuts:
        rows.append({"edit": f"zero top {c['fraction']:.0%}", "heads": c["heads"], "accuracy": round(c["accuracy_top"], 4),
                     "accuracy_95": c["accuracy_top_95"],
                     "random_heads_accuracy_95": " / ".join(c["accuracy_random_95"])})
    bias = [{"edit": "none", **_biases(base)}] + [{"edit": f"scale top {n_icl} heads x{x:g}", **_biases(ev)}
                                                  for x, ev in rescaled.items()]
    return {"rows": rows, "bias_rows": bias, "in_context_heads": n_icl}


def _biases(ev) -> dict:
    m = ev.tasks["icl"].measures
    return {"accuracy": round(m["accuracy"].value, 4), "majority_label_bias": round(m["majority_label_bias"].value, 4),
            "recency_bias": round(m["recency_bias"].value, 4),
            "perplexity": round(ev.tasks["guard"].measures["perplexity"].value, 3),
            **{f"{k}_95": m[k].cell() for k in ("accuracy", "majority_label_bias", "recency_bias")},
            "perplexity_95": ev.tasks["guard"].measures["perplexity"].cell()}


def _interval(cell: str) -> tuple[float, float]:
    """"0.5 [0.3, 0.7]" (a stored measure cell) -> (0.3, 0.7)."""
    low, high = cell[cell.index("[") + 1:cell.index("]")].split(",")
    return float(low), float(high)


def _report(run, cfg, static, ablation, ranked, cuts, comparisons, summary) -> dict:
    from editor.plots import heatmap

    rep = Report(f"icl-heads: {cfg.model}")
    base, big = summary["rows"][0], summary["rows"][-1]
    rep.headline(f"Zeroing the top {big['heads']} in-context heads ({cfg.cut.rank_by} ranking) moves foo/bar accuracy "
                 f"{base['accuracy_95']} -> {big['accuracy_95']}; as many random heads: "
                 f"{big['random_heads_accuracy_95']} (95% intervals, {cfg.data.n_eval} held-out queries).")
    rep.paragraph(f"Heads scored on {cfg.data.n_score} foo/bar prompts ({cfg.data.k} demonstrations per label) from one "
                  f"half of the sentence pool; evaluated on {cfg.data.n_eval} queries per setting from the other half. "
                  f"Ranking: {cfg.cut.rank_by}.")
    rep.heading("Accuracy when in-context heads are zeroed, against random heads")
    rep.table(summary["rows"], list(summary["rows"][0]))
    groups = {"none": [summary["rows"][0]["accuracy"]]}
    cells = {"none": [summary["rows"][0]["accuracy_95"]]}
    for c in cuts:
        groups[f"top {c['heads']}"] = [c["accuracy_top"]]
        cells[f"top {c['heads']}"] = [c["accuracy_top_95"]]
        groups[f"random {c['heads']}"] = c["accuracy_random"]
        cells[f"random {c['heads']}"] = c["accuracy_random_95"]
    errors = {g: ([_interval(t)[0] for t in ts], [_interval(t)[1] for t in ts]) for g, ts in cells.items()}
    rep.image(bar_plot(groups, "in-context accuracy (foo/bar)", "zeroing top vs random heads", errors=errors),
              "foo/bar accuracy after zeroing the top heads and as many random heads (dots: seeds; bars through "
              "them: 95% intervals)")
    rep.table([{"edit": f"zero top {c['fraction']:.0%}", "heads zeroed": ", ".join(c["zeroed"])} for c in cuts]
              + [{"edit": f"rescale (x{', x'.join(f'{x:g}' for x in comparisons)})",
                  "heads zeroed": "rescaled: " + ", ".join(ranked[:summary["in_context_heads"]])}],
              ["edit", "heads zeroed"])
    rep.heading("Label-bias reduction: rescaled in-context heads")
    rep.table(summary["bias_rows"], list(summary["bias_rows"][0]))
    for x, c in comparisons.items():
        rep.heading(f"Before and after scaling by {x:g}", level=3)
        rep.comparison(c)
    for scores, name in ((ablation, "ablation_scores"), (static, "static_scores")):
        png = heatmap(scores.columns[scores.primary], run.path("attribution", f"{name}.png"),
                      title=f"{scores.method}: {scores.primary}")
        rep.image(png, f"Head scores ({scores.method}, {scores.primary}), layers x heads")
    rep.heading("Top heads")
    rows = []
    for name in ranked[:8]:
        layer, head = map(int, name.split("."))
        rows.append({"head": name, "logp_drop": round(float(ablation.columns["logp_drop"][layer, head]), 4),
                     "acc_drop": round(float(ablation.columns["acc_drop"][layer, head]), 4),
                     "static": round(float(static.columns["mean"][layer, head]), 4),
                     "top tokens (mean output)": " ".join(static.meta["top_tokens"][name])})
    rep.table(rows, list(rows[0]))
    return rep.finish(run)
