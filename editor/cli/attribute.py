"""`lmedit attribute` and its `heads` and `patch` commands."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from editor.errors import UserError
from editor.ranges import MAX_PROMPTS
from editor.cli.core import (
    LmeditGroup, MAX_BATCH, SEED, _log, _model_name, _say, executor_options, json_option, main, model_options)
from editor.cli.options import (
    _DELIMITER, _Outputs, _control, _dimensions, _examples, _out_dir, _report, data_options, specificity_options)


@main.group(cls=LmeditGroup)
def attribute():
    """Find the heads and neurons behind a behaviour (gradient + exact ablation, circuits, CNA)."""


@attribute.command("heads")
@json_option
@model_options
@executor_options
@data_options
@click.option("--method", type=click.Choice(["auto", "gradient", "static", "ablation", "both"]), default="auto",
              show_default=True,
              help="auto: gradient for every head, exact ablation of the best 3x --top (exact rows marked); "
                   "gradient: first-order estimate only; static: direct effect (paper); ablation: zero each head "
                   "(exact, slow); both: static and ablation.")
@specificity_options
def attribute_heads(load, scorer_for, executor, data, n_prompts, seed, target, top, batch_size, out, force, method,
                    control, specificity):
    """Score every attention head; write JSON, CSV and a layers x heads heatmap PNG."""
    import torch

    from editor.attribution.confirm import add_specificity, auto_head_scores
    from editor.attribution.costs import heads_plan

    examples = _examples(data, n_prompts, seed)
    methods = ["static", "ablation"] if method == "both" else [method]
    if any(not e.answer for e in examples):  # said before the model loads
        if method in ("gradient", "auto"):
            raise UserError("gradient attribution needs an answer for every prompt")
        if target == "gold":
            raise UserError("target 'gold' needs an answer for every prompt; score the model's own top-1 token "
                            "instead (target 'top1')")
    sized = min(n_prompts, len(examples))  # the control set and the guard as large as the task, no larger
    control_name, control_examples = _control(data, control, sized, seed) if specificity else (None, None)
    out = _out_dir(out)
    outputs = _Outputs(out, [f"heads_{m}" for m in methods], force)
    scorer, close = scorer_for(batch_size)
    _state_plan(lambda dims: [heads_plan(dims[0], dims[1], m, len(examples), batch_size, top, specificity)
                              for m in methods])
    with outputs:
        try:
            for m in methods:
                if m == "static":
                    scores = scorer.static(examples, target)
                elif m == "ablation":
                    scores = scorer.scan(examples)
                    scores.columns["exact"] = torch.ones(scores.shape)
                    _say(f"accuracy without ablation: {scores.meta['base_acc']:.3f}")
                elif m == "gradient":
                    scores = scorer.gradient(examples, "head")
                else:
                    scores = auto_head_scores(None, None, examples, top=top, scorer=scorer)
                    _say(f"accuracy without ablation: {scores.meta['base_acc']:.3f}; exact ablation of the "
                         f"{scores.meta['confirmed']} best gradient candidates (rows marked exact)")
                if specificity and m != "static":
                    add_specificity(scores, None, None, control_examples, scorer.guard(sized, seed), scorer=scorer)
                    scores.meta["control"] = control_name
                scores.meta.update({"model": _model_name(), "data": data, "executor": executor})
                _report(scores, outputs, f"heads_{m}", top, scorer, tokens=(m == "static"))
        finally:
            close()


def _state_plan(describe) -> None:
    """Say the passes ahead (``describe(dims)``: a line or lines) from the config alone, once the model
    has loaded (so that a refusal stays the only line); skipped where the config needs the weights."""
    dims = _dimensions()
    if dims is not None:
        lines = describe(dims)
        for line in [lines] if isinstance(lines, str) else lines:
            _log("scoring " + line)


@attribute.command("patch")
@json_option
@model_options
@click.option("--data", "-d", default="ioi", show_default=True,
              help="Contrast pairs: the built-in ioi task or a .jsonl/.csv file with prompt, answer, corrupt_prompt "
                   "(same length in tokens) and optionally corrupt_answer (then the metric is the logit difference).")
@click.option("--n", "n_prompts", type=click.IntRange(1, MAX_PROMPTS), default=32, show_default=True,
              help="Number of pairs (built-in tasks generate this many; files are truncated).")
@_DELIMITER
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--units", type=click.Choice(["heads", "neurons", "attn", "mlp", "resid", "queries", "keys"]),
              default="heads", show_default=True,
              help="heads: each head's output; neurons: each FFN neuron (use the auto or gradient method: there are "
                   "many); attn / mlp: each layer's attention / MLP output; resid: the residual stream at each "
                   "layer's input (by position); queries / keys: each head's query, each key/value group's key.")
@click.option("--direction", type=click.Choice(["noising", "denoising"]), default="noising", show_default=True,
              help="noising: patch corrupt activations into the clean run; denoising: clean into the corrupt run.")
@click.option("--method", type=click.Choice(["auto", "exact", "gradient", "atp*"]), default="auto", show_default=True,
              help="auto: attribution patching for every site, then the exact patch of the 3x --top largest "
                   "(rows marked exact); exact: one patched forward per site; gradient: attribution patching only; "
                   "atp*: attribution patching ranked by its GradDrop magnitude (one more backward per layer), with "
                   "the attention pattern of queries and keys computed exactly (the QK fix).")
@click.option("--ablation", type=click.Choice(["corrupt", "resample", "mean", "zero"]), default="corrupt",
              show_default=True,
              help="What replaces an activation: its value on the row's corrupt_prompt; on another prompt of the same "
                   "length (resample); its mean over the prompts (mean); zeros (zero). Only corrupt needs contrast pairs.")
@click.option("--metric", type=click.Choice(["logit_difference", "answer_logprob", "accuracy"]), default=None,
              help="What a patch is measured by, at the last prompt position: logit(answer) - logit(corrupt_answer), "
                   "log p(answer), or whether the answer is the top token (exact only) [default: the logit "
                   "difference where every row has a corrupt_answer, else answer_logprob].")
@click.option("--positions", type=click.IntRange(1, 4096),
              help="Patch position by position over the last N prompt tokens (a layers x positions table).")
@click.option("--top", type=click.IntRange(1, 100_000), default=20, show_default=True, help="Rows to print and rank.")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=16, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory [default: checkpoints/attribution/<model>].")
@click.option("--force", is_flag=True, help="Overwrite results of the same name already in --out.")
def attribute_patch(load, data, n_prompts, seed, units, direction, method, ablation, metric, positions, top,
                    batch_size, out, force):
    """Activation patching from counterfactual prompts (or mean, resample and zero ablation): how much
    of the clean - corrupt difference each head, layer output or position carries (docs/methods.md)."""
    from editor.attribution.ablations import paired
    from editor.attribution.atpstar import patch_atp_star
    from editor.attribution.patch_estimates import cost, patch_auto, patch_gradient
    from editor.attribution.patching import check_metric, contrast_pairs, patch_exact
    from editor.model.arch import Arch
    from editor.errors import work_begins

    if units == "resid" and positions is None:
        raise UserError("--units resid patches the residual stream position by position: give --positions N")
    if ablation in ("mean", "zero") and direction == "denoising":
        raise UserError(f"--ablation {ablation} replaces activations of the clean run: use --direction noising")
    examples = _examples(data, n_prompts, seed)
    missing = next((i for i, e in enumerate(examples, 1) if "corrupt_prompt" not in (e.meta or {})), None)
    if missing is not None and ablation == "corrupt":
        raise UserError(f"--data {data}: row {missing} has no 'corrupt_prompt'; patching needs contrast pairs "
                        "(the built-in ioi task, or a file of prompt, answer, corrupt_prompt)")
    if metric == "accuracy" and method != "exact":
        raise UserError("--metric accuracy is a step function of the logits, with no gradient: use --method exact")
    check_metric(metric, examples)
    stem = (f"patch_{units}{'_positions' if positions else ''}_{direction}_{method.replace('*', 'star')}"
            + ("" if ablation == "corrupt" else f"_{ablation}"))
    outputs = _Outputs(_out_dir(out), [stem], force)
    work_begins()
    loaded = load()
    contrast_pairs(loaded.tokenizer, paired(loaded.tokenizer, examples, ablation, seed))  # one line, before any pass
    _log(f"patching {units} ({direction}, {method}): "
         + cost(Arch(loaded.model), units, method, len(examples), positions, batch_size, 3 * top, ablation))
    run = {"exact": patch_exact, "gradient": patch_gradient, "atp*": patch_atp_star,
           "auto": functools.partial(patch_auto, confirm=3 * top)}[method]
    with outputs:
        scores = run(loaded.model, loaded.tokenizer, examples, units, direction, positions, batch_size=batch_size,
                     ablation=ablation, seed=seed, metric=metric)
        scores.meta.update({"model": _model_name(), "data": data})
        if scores.meta["gap"] is None:
            _say(f"{scores.meta['metric']}: clean {scores.meta['clean_metric']:.3f} ({scores.meta['pairs']} prompts); "
                 f"normalised = drop of the metric when the component is {ablation}-ablated")
        else:
            _say(f"{scores.meta['metric']}: clean {scores.meta['clean_metric']:.3f}, "
                 f"{'resampled' if ablation == 'resample' else 'corrupt'} {scores.meta['corrupt_metric']:.3f} "
                 f"({scores.meta['pairs']} pairs); normalised = share of the gap "
                 f"{'destroyed' if direction == 'noising' else 'restored'} by patching the component")
        _report(scores, outputs, stem, top)
