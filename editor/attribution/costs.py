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
