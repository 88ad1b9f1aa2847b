"""FASP for the gender-debias recipe: attention heads pruned for fairness (Zayed et al., AAAI 2024).

Each head is removed in turn (exact zero ablation) and two things are measured on the choose split:
the change of the stereotype contrast (the recipe's bias, both directions) and the change of the
loss on plain sentences. FASP first protects the heads most important for performance (the share
``gamma`` with the largest loss increase), then prunes, among the rest, the heads whose removal lowers
the bias most. ``gamma`` and the number of heads are chosen on validation as every method's settings are.
"""

from __future__ import annotations

import torch

from editor.edit.plan import EditPlan
from editor.edit.weights import apply_plan
from editor.evaluation.scoring import score_continuations
from editor.model.arch import Arch
from editor.progress import progress_bar
from editor.tasks.examples import Example, fit_to_tokenizer


def weighted_logprob(model, tokenizer, examples: list[Example], weights: list[float], batch_size: int) -> float:
    """sum_i weights[i] * log p(answer_i | prompt_i), whole answers."""
    rows = fit_to_tokenizer(tokenizer, examples)
    scored = score_continuations(model, tokenizer, [e.prompt for e in rows], [e.answer for e in rows], batch_size,
                                 progress=False)
    return float(sum(w * s.total for w, s in zip(weights, scored)))


@torch.no_grad()
def head_effects(model, tokenizer, bias: tuple[list[Example], list[float]],
                 capability: tuple[list[Example], list[float]], batch_size: int,
                 progress: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """(bias change, loss change) of zeroing each head alone: layers x heads each. ``capability``'s
    weighted sum is the mean loss itself (weights -1/n on log-probabilities)."""
    arch = Arch(model)
    base = (weighted_logprob(model, tokenizer, *bias, batch_size), weighted_logprob(model, tokenizer, *capability, batch_size))
    bias_change, loss_change = torch.zeros(arch.n_layers, arch.n_heads), torch.zeros(arch.n_layers, arch.n_heads)
    bar = progress_bar(arch.n_layers * arch.n_heads, "FASP: one head at a time", "head", progress)
    for layer in range(arch.n_layers):
        for head in range(arch.n_heads):
            with apply_plan(model, EditPlan().zero("head", [(layer, head)])):
                bias_change[layer, head] = weighted_logprob(model, tokenizer, *bias, batch_size) - base[0]
                loss_change[layer, head] = weighted_logprob(model, tokenizer, *capability, batch_size) - base[1]
            bar.update(1)
    bar.close()
    return bias_change, loss_change


def rankings(bias_change: torch.Tensor, loss_change: torch.Tensor, layers: list[int], gammas: list[float],
             k: int) -> dict[str, list[dict]]:
    """gamma -> up to ``k`` heads, most bias-lowering first, none of the ``gamma`` share of the
    editable heads whose removal costs the most loss."""
    heads = [(l, h) for l in layers for h in range(bias_change.shape[1])]
    by_loss = sorted(heads, key=lambda lh: (-float(loss_change[lh]), lh))
    out = {}
    for gamma in gammas:
        protected = set(by_loss[:round(gamma * len(heads))])
        ranked = sorted((lh for lh in heads if lh not in protected), key=lambda lh: (float(bias_change[lh]), lh))
        out[f"{gamma:g}"] = [{"kind": "head", "component": f"{l}.{h}", "estimate": float(bias_change[l, h]),
                              "loss_change": float(loss_change[l, h])} for l, h in ranked[:k]]
    return out
