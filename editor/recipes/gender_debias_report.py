"""The gender-debias recipe's report and the relative-bias numbers its selection and figure share."""

from __future__ import annotations

from editor.plots import scatter_plot
from editor.recipes.report import Report

SPLITS = ("choose", "validate", "test")


def _rounded(rows: list[dict]) -> list[dict]:
    return [{k: round(v, 4) if isinstance(v, float) else v for k, v in r.items()} for r in rows]


def relative(row: dict, base: dict) -> tuple[float, float]:
    """|bias| / |base bias| in each direction (1: unchanged, 0: removed)."""
    return tuple(abs(row[key]) / max(abs(base[key]), 1e-9) for key in _directions(base))


def _directions(base: dict) -> tuple[str, ...]:
    """The bias directions every choice must lower: the built-in two, and the user's probes if given."""
    return ("bias_profession", "bias_pronoun", *(["bias_probes"] if "bias_probes" in base else []))


def relative_interval(row: dict, base: dict) -> tuple[float, float] | None:
    """The 95% interval of the worse direction's |bias| / |base bias| (the base taken as exact: the
    bars show the spread over this row's prompts). None for rows measured without intervals."""
    keys = _directions(base)
    key = keys[max(range(len(keys)), key=lambda i: relative(row, base)[i])]
    if f"{key}_95" not in row:
        return None
    low, high = row[f"{key}_95"]
    scale = max(abs(base[key]), 1e-9)
    near = 0.0 if low <= 0 <= high else min(abs(low), abs(high))
    return near / scale, max(abs(low), abs(high)) / scale


def report(run, cfg, split, summary, ranked) -> dict:
    rep = Report(f"gender-debias: {cfg.model}")
    rep.headline(summary["verdict"])
    rep.paragraph("Bias in two directions: profession given gender (\"A woman works as a\" -> \" nurse\") and gender "
                  "given occupation (\"The nurse said that\" -> \" she\"). Each value is the mean log-probability gap "
                  "toward the stereotype (0: none). Occupations and templates are split into choose (scoring), "
                  "validate (every choice) and test (these numbers); no occupation or template is in two splits.")
    rep.heading("Test split (never used for a choice)")
    rows = summary["rows"]
    cols = ["model", "penalty", "components", "factor", "bias_profession", "bias_profession_95", "bias_pronoun",
            "bias_pronoun_95", "bias_probes", "bias_probes_95", "reduction_profession",
            "reduction_pronoun", "reduction_probes", "perplexity", "perplexity_change", "arithmetic", "arithmetic_95",
            "icl", "icl_95",
            *[f"{b}{s}" for b in cfg.benchmarks for s in ("", "_95")],
            "bias_profession_choose", "bias_pronoun_choose", "note"]
    rep.table(rows, [c for c in cols if any(c in r for r in rows)])
    rep.heading("Validation sweep")
    val, base = summary["validation"], summary["validation_base"]
    rep.table(_rounded([base] + val), ["method", "setting", "penalty", "k", "factor", "bias_profession",
                                       "bias_pronoun", "perplexity"])
    groups: dict[str, tuple[list[float], list[float]]] = {}
    errors: dict[str, tuple[list[float], list[float]]] = {}
    for r in val:
        label = r["method"] if "setting" in r else f"{r['method']}, penalty {r['penalty']:g}"
        xs, ys = groups.setdefault(label, ([], []))
        lows, highs = errors.setdefault(label, ([], []))
        xs.append(100 * (r["perplexity"] / base["perplexity"] - 1))
        ys.append(max(relative(r, base)))
        interval = relative_interval(r, base) or (ys[-1], ys[-1])
        lows.append(interval[0])
        highs.append(interval[1])
    rep.image(scatter_plot(groups, "guard perplexity change (%, log scale past 10%)", "worse direction |bias| / base (1: unchanged)",
                           "validation: bias against capability, every k and factor",
                           vline=("guard limit", 100 * cfg.select.max_perplexity_increase),
                           hline=("base", 1.0), symlog_x=10, errors=errors),
              "Each point is one validation setting (method, penalty, k, factor); lower is less biased, left is "
              "cheaper; bars: 95% bootstrap interval of that setting's bias over the validation prompts, "
              "relative to the base's value. The recipe takes the lowest point left of the guard limit.")
    rep.heading("Occupations per split (lean from labour statistics)")
    rep.table([{"split": n, "occupations": ", ".join(f"{p} ({l[0]})" for p, l in split[n])} for n in SPLITS],
              ["split", "occupations"])
    chosen = summary.get("chosen")
    if chosen and "setting" in chosen:
        rep.heading(f"The chosen edit: {chosen['setting']}")
        rep.paragraph("A projection of the MLP output in these layers (method, layers first-last, rank), fitted on the "
                      "choose split and folded into the MLP output weights (and bias, for LEACE's centring); the "
                      "checkpoint's manifest lists each layer's projection under debias.folded.")
    elif chosen:
        picked = ranked[chosen["method"]][f"{chosen['penalty']:g}"][:chosen["k"]]
        rep.heading(f"The chosen edit: {len(picked)} components scaled by {chosen['factor']:g}")
        rep.table([{"kind": c["kind"], "component": c["component"]} for c in picked], ["kind", "component"])
    rep.heading("Top components per method")
    rep.table([{"method": m, "penalty": p, "top": " ".join(f"{c['kind'][0]}{c['component']}" for c in comps[:12])}
               for m, by_penalty in ranked.items() for p, comps in by_penalty.items()], ["method", "penalty", "top"])
    if summary["checkpoint"]:
        rep.paragraph(f"Checkpoint: {summary['checkpoint']} (loads with AutoModelForCausalLM.from_pretrained).")
    return rep.finish(run)


def verdict_of(chosen: dict | None, table: list[dict], save_checkpoint: bool, save_if_test_worse: bool) -> tuple[str, bool]:
    """What the run concluded, in words, and whether a checkpoint is saved."""
    base = table[0]

    def bias(r: dict, key: str) -> str:
        return f"{r[key]:.3f} {[round(x, 3) for x in r[key + '_95']]}"

    if chosen is None:
        return ("No method, k and factor lowers validation bias in both directions within the guard limit; "
                f"no checkpoint saved. Base test bias: {bias(base, 'bias_profession')} (profession given gender), "
                f"{bias(base, 'bias_pronoun')} (gender given occupation)."), False
    row = next(r for r in table if r.get("model") == chosen["method"])
    what = (f"{chosen['setting']} (MLP-output projection)" if "setting" in chosen else
            f"{chosen['method']} (capability penalty {chosen['penalty']:g}), top {chosen['k']}, factor {chosen['factor']:g}")
    text = (f"Chosen on validation: {what}. On the test split bias falls {row['reduction_profession']:.0%} "
            f"(profession given gender: {bias(base, 'bias_profession')} -> {bias(row, 'bias_profession')}) and "
            f"{row['reduction_pronoun']:.0%} (gender given occupation: {bias(base, 'bias_pronoun')} -> "
            f"{bias(row, 'bias_pronoun')}; 95% intervals); guard perplexity {row['perplexity_change']:+.1%}.")
    if not save_checkpoint:
        return text, False
    if min(row["reduction_profession"], row["reduction_pronoun"]) <= 0 and not save_if_test_worse:
        return text + " Test bias does not fall in both directions: no checkpoint saved.", False
    return text, True
