"""What an attribution command will do, said before it starts: how many forward and backward passes
over how many batches, so a user can tell a 20-second run from a 20-minute one before waiting."""

from __future__ import annotations


def _batches(prompts: int, batch_size: int) -> int:
    return -(-prompts // batch_size)


def heads_plan(layers: int, heads: int, method: str, prompts: int, batch_size: int, top: int,
               specificity: bool) -> str:
    """``attribute heads``: the passes of one method (see :func:`editor.cli` ``attribute heads``)."""
    b = _batches(prompts, batch_size)
    candidates = min(3 * top, layers * heads)
    plans = {
        "gradient": f"{b} batch(es) x (1 forward + 1 backward)",
        "static": f"{b} batch(es) x 1 forward",
        "ablation": f"{b} batch(es) x (1 + {layers} forward passes, each over {heads} copies of the batch)",
        "auto": f"{b} batch(es) x (1 forward + 1 backward), then the exact ablation of {candidates} heads: "
                f"{b} batch(es) x (1 + at most {min(layers, candidates)} forward passes over a layer's candidates)",
    }
    plan = plans[method]
    if specificity and method != "static":
        plan += "; the drops again on as many control prompts and guard windows (about twice the above)"
    return f"{layers * heads} heads, {prompts} prompts, {method}: {plan}"


def _neuron_passes(layers: int, width: int, kind: str, method: str, prompts: int, batch_size: int,
                   scored: list[int] | None) -> str:
    b = _batches(prompts, batch_size)
    n_layers = len(set(scored)) if scored else layers
    what = f"{n_layers * width} FFN neurons" if kind == "mlp" else f"the attention value neurons of {n_layers} layers"
    if method == "gradient":
        return f"{what}, {prompts} prompts, gradient: {b} batch(es) x (1 forward + 1 backward)"
    return (f"{what}, {prompts} prompts, logprob: {b} batch(es) x 1 forward, then per layer one "
            f"[neurons x vocabulary] product shared by the prompts")


def neurons_plan(layers: int, width: int, kind: str, method: str, prompts: int, batch_size: int,
                 scored: list[int] | None, query: bool) -> str:
    """``attribute neurons``: the scoring passes (and the query's, if asked)."""
    plan = _neuron_passes(layers, width, kind, method, prompts, batch_size, scored)
    return plan + (f"; --query: {_batches(prompts, batch_size)} more forward batch(es)" if query else "")


def cna_plan(layers: int, width: int, kind: str, prompts: int, batch_size: int, scored: list[int] | None,
             condition_b: str) -> str:
    """``attribute cna``: the log-probability scoring twice, once per condition."""
    return f"2 conditions (B: {condition_b}) x " + _neuron_passes(layers, width, kind, "logprob", prompts,
                                                                   batch_size, scored)


def circuit_plan(layers: int, heads: int, search: int, heldout: int, batch_size: int, candidates: int,
                 max_size: int, beam: int, random_seeds: int) -> str:
    """``attribute circuit``: each added head costs a gradient re-scoring and the exact ablation of the
    candidates per beam; the size is found by the search, so the plan gives the most it can take."""
    b, h = _batches(search, batch_size), _batches(heldout, batch_size)
    per_step = (f"{beam} beam(s) x {b} search batch(es) x (1 forward + 1 backward, then 1 + at most "
                f"{min(candidates, layers)} forward passes over the {candidates} candidates)")
    return (f"{layers * heads} heads, {search} search + {heldout} held-out prompts: at most {max_size} steps of "
            f"{per_step}; then the curve and {random_seeds} random set(s) per size on {h} held-out batch(es), "
            f"and the specificity on the task, control and guard")
