"""`lmedit attribute circuit`, `neurons` and `cna`."""

from __future__ import annotations

import click

from editor.errors import UserError
from editor.ranges import MAX_PROMPTS
from editor.cli.core import _components, _info, _model_name, _record, _say, executor_options, json_option, model_options
from editor.cli.options import _Outputs, _check_plan, _control, _examples, _layers_of, _out_dir, _report, data_options
from editor.cli.attribute import _state_plan, attribute


@attribute.command("circuit")
@json_option
@model_options
@data_options
@click.option("--heldout", type=click.IntRange(1, MAX_PROMPTS), default=None,
              help="Held-out prompts that judge the set (never searched on) [default: as many as --n].")
@click.option("--target-drop", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5,
              show_default=True, help="Cut accuracy by this fraction of the base's (0.5: to half).")
@click.option("--beam", type=click.IntRange(1, 64), default=1, show_default=True, help="1: greedy; more: beam search.")
@click.option("--candidates", type=click.IntRange(1, 4096), default=8, show_default=True,
              help="Heads ablated exactly per step (the best by gradient re-scoring).")
@click.option("--max-size", type=click.IntRange(1, 4096), default=40, show_default=True)
@click.option("--random-seeds", type=click.IntRange(0, 100), default=3, show_default=True,
              help="Random sets of each size, the baseline curve.")
@click.option("--control", metavar="DATA",
              help="Unrelated task for specificity [default: icl for arithmetic, else arithmetic].")
def attribute_circuit(load, data, n_prompts, seed, target, top, batch_size, out, force, heldout, target_drop, beam,
                      candidates, max_size, random_seeds, control):
    """Smallest set of heads whose joint removal cuts held-out accuracy by --target-drop."""
    from editor.attribution.circuit import circuit_search, set_specificity
    from editor.tasks.guard import guard_windows
    from editor.attribution.costs import circuit_plan

    if not 0 < target_drop < 1:  # NaN passes click's range check
        raise UserError(f"--target-drop must be between 0 and 1 (0.5: accuracy to half), got {target_drop}")
    search, held = _split(data, n_prompts, heldout or n_prompts, seed)
    control_name, control_examples = _control(data, control, n_prompts, seed)
    out = _out_dir(out)
    outputs = _Outputs(out, ["circuit"], force)
    loaded = load()
    _state_plan(lambda dims: circuit_plan(dims[0], dims[1], len(search), len(held), batch_size, candidates, max_size,
                                          beam, random_seeds))
    with outputs:
        found = circuit_search(loaded.model, loaded.tokenizer, search, held, target_drop, beam, candidates, max_size,
                               random_seeds, seed, batch_size, log=_info)
        heads = [tuple(map(int, h.split("."))) for h in found.heads]
        found.specificity = set_specificity(loaded.model, loaded.tokenizer, heads, held, control_examples,
                                            guard_windows(loaded.tokenizer, n_prompts, seed=seed), batch_size)
        found.meta.update({"model": loaded.name, "data": data, "control": control_name})
        _say(found.table())
        sp = found.specificity
        _say(f"set of {len(heads)}: held-out accuracy {found.base['heldout_acc']:.3f} -> "
                   f"{sp['task']['acc_after']:.3f} ({'target reached' if found.reached else 'target NOT reached'}); "
                   f"log-prob drop: task {sp['task']['logp_drop']:.3f}, {control_name} {sp['control']['logp_drop']:.3f}, "
                   f"guard {sp['guard']['logp_drop']:.3f} nats (specificity {sp['specificity']:.3f})")
        paths = found.save(outputs.claim())
    _say("wrote " + ", ".join(str(p) for p in paths.values()))
    _record("circuit", found.to_json())
    _record("files", {k: str(v) for k, v in paths.items()})


def _split(data: str, n: int, heldout: int, seed: int):
    """Search and held-out prompts from one source, no prompt in both. A file smaller than
    ``n + heldout`` rows is split in that proportion (seeded, whole ``group``s at a time), so the
    defaults scale with the file."""
    from editor.tasks.kinds import split_rows

    if data.endswith((".jsonl", ".csv")):
        rows = _examples(data, n + heldout, seed)
        sets = split_rows(rows, {"search": n, "heldout": heldout}, seed, data)
        return sets["search"], sets["heldout"]
    examples = _examples(data, n + heldout, seed)
    search = examples[:n]
    seen = {e.prompt for e in search}
    held = [e for e in examples[n:] if e.prompt not in seen]
    if not held:
        raise UserError(f"{data} has no prompts left for held-out after {n} search prompts; lower --n")
    return search, held


@attribute.command("neurons")
@json_option
@model_options
@executor_options
@data_options
@click.option("--kind", type=click.Choice(["mlp", "attn"]), default="mlp", show_default=True,
              help="mlp: FFN neurons; attn: attention value neurons (head dimensions, index = head*head_dim + j).")
@click.option("--layers", help="Layers to score, e.g. 20-29 or 3,5,7 [default: all].")
@click.option("--query/--no-query", default=False, help="Also score query neurons (lower FFN neurons) for the top 10 value neurons.")
@click.option("--method", type=click.Choice(["logprob", "gradient"]), default="logprob", show_default=True,
              help="logprob: log-probability increase (direct effect, paper); gradient: first-order effect of "
                   "zeroing each FFN neuron on the answer, through every later layer (--kind mlp).")
def attribute_neurons(load, scorer_for, executor, data, n_prompts, seed, target, top, batch_size, out, force, kind,
                      layers, query, method):
    """Score every neuron; write JSON and CSV."""
    layer_list = _layers_of(layers)  # config only, before torch loads
    import torch

    from editor.attribution.costs import neurons_plan
    from editor.attribution.neurons import KINDS
    from editor.attribution.query import query_neurons

    if method == "gradient" and kind != "mlp":
        raise UserError("--method gradient scores FFN neurons (--kind mlp); attention value neurons use logprob")
    if query and executor == "ray":
        raise UserError("--query runs in one process; leave out --executor ray")
    examples = _examples(data, n_prompts, seed)
    if method == "gradient" and any(not e.answer for e in examples):
        raise UserError("gradient attribution needs an answer for every prompt")
    out = _out_dir(out)
    stem = f"{KINDS[kind]}s_{method}"
    outputs = _Outputs(out, [stem] + (["neurons_query"] if query else []), force)
    scorer, close = scorer_for(batch_size)
    _state_plan(lambda dims: neurons_plan(dims[0], dims[2], kind, method, len(examples), batch_size,
                                          layer_list, query))
    with outputs:
        try:
            if method == "gradient":
                scores = scorer.gradient(examples, "neuron")
                if layer_list is not None:  # unscored layers hold zeros, as with logprob
                    keep = sorted(set(layer_list))
                    if keep[-1] >= scores.shape[0]:
                        raise UserError(f"--layers: layer {keep[-1]} is out of range (the model has {scores.shape[0]} layers)")
                    for name, column in scores.columns.items():
                        masked = torch.zeros_like(column)
                        masked[keep] = column[keep]
                        scores.columns[name] = masked
            else:
                scores = scorer.neurons(examples, kind=kind, target=target, layers=layer_list)
            scores.meta.update({"model": _model_name(), "data": data, "executor": executor})
            _report(scores, outputs, stem, top, scorer, tokens=True)
            if query:
                q = query_neurons(scorer.model, scorer.tokenizer, examples, scores, batch_size=batch_size)
                _say("\nquery neurons:")
                _report(q, outputs, "neurons_query", top)
        finally:
            close()


@attribute.command("cna")
@json_option
@model_options
@executor_options
@data_options
@click.option("--kind", type=click.Choice(["mlp", "attn"]), default="mlp", show_default=True)
@click.option("--layers", help="Layers to score, e.g. 17-29 [default: all].")
@click.option("--data-b", help="Condition B: prompts aligned pair by pair with --data (same count).")
@click.option("--ablate-heads", metavar="L.H,...", help="Condition B: the same model with these heads zeroed.")
@click.option("--model-b", help="Condition B: a second model of the same architecture.")
def attribute_cna(load, scorer_for, executor, data, n_prompts, seed, target, top, batch_size, out, force, kind, layers,
                  data_b, ablate_heads, model_b):
    """Comparative Neuron Analysis between two conditions, ranked by the importance difference."""
    from editor.edit.plan import EditPlan
    from editor.model.names import check_model_name

    if sum(x is not None for x in (data_b, ablate_heads, model_b)) != 1:
        raise UserError("give exactly one of --data-b, --ablate-heads, --model-b")
    kwargs = dict(kind=kind, target=target, layers=_layers_of(layers))  # config only, before torch loads
    if ablate_heads is not None:
        kwargs["ablate"] = EditPlan().zero("head", _components(ablate_heads, "head"))
        _check_plan(kwargs["ablate"])
    from editor.attribution.costs import cna_plan
    from editor.attribution.neurons import KINDS

    examples = _examples(data, n_prompts, seed)
    if data_b is not None:
        kwargs["examples_b"] = _examples(data_b, n_prompts, seed)
    if model_b is not None:
        check_model_name(model_b)
    out = _out_dir(out)
    outputs = _Outputs(out, [f"{KINDS[kind]}s_cna"], force)
    scorer, close = scorer_for(batch_size)
    _state_plan(lambda dims: cna_plan(dims[0], dims[2], kind, len(examples), batch_size, kwargs["layers"],
                                      "a second model" if model_b else "heads zeroed" if ablate_heads else "paired prompts"))
    with outputs:
        try:
            # Condition B's model loads with every setting of the first (device, dtype, memory, remote code).
            scores = scorer.cna(examples, model_b=model_b, load=load, **kwargs)
            scores.meta.update({"model": _model_name(), "data": data, "data_b": data_b, "model_b": model_b,
                                "executor": executor})
            _report(scores, outputs, f"{scores.kind}s_cna", top, scorer, tokens=True)
        finally:
            close()
