"""FASP for the gender-debias recipe: attention heads pruned for fairness (Zayed et al., AAAI 2024).

Each head is removed in turn (exact zero ablation) and two things are measured on the choose split:
the change of the stereotype contrast (the recipe's bias, both directions) and the change of the
loss on plain sentences. FASP first protects the heads most important for performance (the share
``gamma`` with the largest loss increase), then prunes, among the rest, the heads whose removal lowers
the bias most. ``gamma`` and the number of heads are chosen on validation as every method's settings are.
"""

from __future__ import annotations

import torch

from editor.attribution.gradient import gold_logprob, teacher_forced
from editor.attribution.heads import layer_inputs, resume_at, zero_one_head_per_copy
from editor.edit.plan import EditPlan
from editor.edit.weights import apply_plan
from editor.evaluation.scoring import pad_token_id, score_continuations
from editor.model.arch import Arch
from editor.model.capture import model_device, token_batch
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
    weighted sum is the mean loss itself (weights -1/n on log-probabilities).

    Each batch runs once clean, keeping every layer's input; then per layer one pass over
    ``heads`` copies of the batch, copy ``i`` with head ``i`` zeroed, started at that layer (the
    layers below are unchanged): about half the work of a full forward per head, the same numbers
    as :func:`head_effects_reference` (tested)."""
    arch = Arch(model)
    bar = progress_bar(2 * arch.n_layers, "FASP: every head, one layer at a time", "layer", progress)
    bias_change = _weighted_head_changes(model, tokenizer, *bias, batch_size, bar)
    loss_change = _weighted_head_changes(model, tokenizer, *capability, batch_size, bar)
    bar.close()
    return bias_change, loss_change


def _weighted_head_changes(model, tokenizer, examples: list[Example], weights: list[float], batch_size: int,
                           bar) -> torch.Tensor:
    """[layers, heads]: the change of sum_i weights[i] * log p(answer_i | prompt_i) with each head zeroed."""
    arch = Arch(model)
    rows, answers = teacher_forced(tokenizer, examples)
    device, pad, heads = model_device(model), pad_token_id(tokenizer), list(range(arch.n_heads))
    out = torch.zeros(arch.n_layers, arch.n_heads, dtype=torch.float64)
    batches = []
    for start in range(0, len(rows), batch_size):
        inputs = token_batch(model, rows[start:start + batch_size], pad, device)
        with layer_inputs(arch) as (cached, is_tuple):
            clean = gold_logprob(model, inputs, answers[start:start + batch_size])
        w = torch.tensor(weights[start:start + batch_size], dtype=torch.float64)
        batches.append((inputs, answers[start:start + batch_size], w, clean.double().cpu(), cached, is_tuple[0]))
    for layer in range(arch.n_layers):
        for inputs, ans, w, clean, cached, is_tuple in batches:
            n, r = len(ans), len(heads)
            rep = {k: v.repeat(r, *([1] * (v.dim() - 1))) for k, v in inputs.items()}
            with resume_at(arch, layer, cached[layer].repeat(r, 1, 1), is_tuple), \
                    zero_one_head_per_copy(arch, layer, heads, n):
                ablated = gold_logprob(model, rep, ans * r).double().cpu().view(r, n)
            out[layer] += (ablated - clean[None]) @ w
        bar.update(1)
    return out.float()


@torch.no_grad()
def head_effects_reference(model, tokenizer, bias: tuple[list[Example], list[float]],
                           capability: tuple[list[Example], list[float]], batch_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`head_effects` the plain way: every head zeroed in the weights in turn, both sets scored
    by full forwards."""
    arch = Arch(model)
    base = (weighted_logprob(model, tokenizer, *bias, batch_size), weighted_logprob(model, tokenizer, *capability, batch_size))
    bias_change, loss_change = torch.zeros(arch.n_layers, arch.n_heads), torch.zeros(arch.n_layers, arch.n_heads)
    for layer in range(arch.n_layers):
        for head in range(arch.n_heads):
            with apply_plan(model, EditPlan().zero("head", [(layer, head)])):
                bias_change[layer, head] = weighted_logprob(model, tokenizer, *bias, batch_size) - base[0]
                loss_change[layer, head] = weighted_logprob(model, tokenizer, *capability, batch_size) - base[1]
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
