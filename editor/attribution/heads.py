"""Attention-head importance: static log-probability increase and exact ablation scans.

* ``head_logprob_increase``: ``logp(w | x_in^l + o_{l,h}) - logp(w | x_in^l)`` (docs/methods.md), one
  forward pass per batch plus a projection of (heads + 1) vectors per layer. It measures a head's
  DIRECT effect only: a fast prefilter.
* ``head_ablation_scan``: zero each head (at the input of the output projection) and measure the
  drop of accuracy and of the target's log-probability. Exact. The fast path reuses the clean pass:
  layers below the zeroed head are replaced by their cached output, the heads of one layer run as
  one batch, and only the last position is projected to the vocabulary.
* ``head_ablation_scan_naive``: the obvious full rerun per head; the reference for tests and benchmarks.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch

from editor.attribution.common import prompt_batches
from editor.model.capture import model_device
from editor.progress import progress_bar
from editor.attribution.readout import Readout
from editor.attribution.results import ComponentScores
from editor.edit.plan import EditPlan
from editor.edit.weights import intervene
from editor.model.arch import Arch, in_features
from editor.model.capture import capture, with_position_ids
from editor.tasks.examples import Example


@torch.no_grad()
def head_logprob_increase(model, tokenizer, examples: list[Example], target: str = "auto", batch_size: int = 16,
                          topk: int = 10, progress: bool = True) -> ComponentScores:
    """Static score of every head on every prompt, aggregated over prompts."""
    arch = Arch(model)
    points = ["resid_pre", "head_out", "resid_post"] + (["attn_out"] if arch.spec.attn_post_norm else [])
    per_prompt = []
    output_sum = torch.zeros(arch.n_layers, arch.n_heads, arch.d_model)
    for batch in prompt_batches(tokenizer, examples, batch_size, model_device(model), "head scores", progress):
        got = capture(model, batch.inputs, what=points)
        targets = batch.targets(got.logits, target)
        readout = Readout(arch, got.resid_post[:, -1], attn_out=got.tensors.get("attn_out"))
        scores = torch.empty(len(batch.examples), arch.n_layers, arch.n_heads)
        for layer in range(arch.n_layers):
            base = got.resid_pre[:, layer].float()
            contrib = readout.to_residual("attn", layer, got.head_out[:, layer])  # [B, H, d]
            vectors = torch.cat([base[:, None], base[:, None] + contrib], dim=1)
            logp = readout.logprob(vectors, targets)  # [B, H + 1]
            scores[:, layer] = (logp[:, 1:] - logp[:, :1]).cpu()
        per_prompt.append(scores)
        output_sum += got.head_out.float().sum(0).cpu()
    scores = torch.cat(per_prompt)  # [N, L, H]
    result = _aggregate(scores, "head", "logprob_increase", topk, {"target": target, "prompts": len(examples)})
    result.vectors["mean_output"] = output_sum / len(examples)  # for projecting heads to the vocabulary
    return result


def _aggregate(scores: torch.Tensor, kind: str, method: str, topk: int, meta: dict) -> ComponentScores:
    """Mean, std and top-k counts over prompts of ``[N, L, I]`` per-prompt scores."""
    n = scores.shape[0]
    flat = scores.reshape(n, -1)
    k = min(topk, flat.shape[1])
    counts = torch.zeros(flat.shape[1])
    best = flat.topk(k, dim=1)
    counts.scatter_add_(0, best.indices.flatten(), torch.ones(n * k))
    return ComponentScores(
        kind=kind, method=method, primary="mean",
        columns={"mean": scores.mean(0), "std": scores.std(0, unbiased=False),
                 f"top{k}_count": counts.view(scores.shape[1:])},
        meta={**meta, "topk": k},
        # each prompt's top k (flat indices), so results over disjoint layer sets merge their counts exactly
        vectors={"topk_values": best.values, "topk_index": best.indices},
    )


# Ablation scans --------------------------------------------------------------------------------

def _last_logprobs(logits: torch.Tensor, gold: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(-1, gold[:, None]).squeeze(-1), (logits.argmax(-1) == gold).float()


def _scan_result(base_lp, base_ok, abl_lp, abl_ok, meta) -> ComponentScores:
    """``abl_*``: ``[N, L, H]``; drops are base minus ablated, averaged over prompts."""
    return ComponentScores(
        kind="head", method="ablation", primary="logp_drop",
        columns={"logp_drop": (base_lp[:, None, None] - abl_lp).mean(0),
                 "acc_drop": (base_ok[:, None, None] - abl_ok).mean(0),
                 "ablated_acc": abl_ok.mean(0)},
        meta={**meta, "base_acc": float(base_ok.mean()), "base_logp": float(base_lp.mean())},
    )


@torch.no_grad()
def head_ablation_scan_naive(model, tokenizer, examples: list[Example], batch_size: int = 16,
                             heads: list[tuple[int, int]] | None = None, progress: bool = True) -> ComponentScores:
    """Reference scan: one full forward pass of the batch per zeroed head (``heads``: a subset; others NaN)."""
    arch = Arch(model)
    base_lp, base_ok, abl_lp, abl_ok = [], [], [], []
    for batch in prompt_batches(tokenizer, examples, batch_size, model_device(model), "ablation (naive)", progress):
        inputs = with_position_ids(model, batch.inputs)
        clean = model(**inputs, use_cache=False).logits[:, -1]
        gold = batch.targets(clean, "auto")
        lp, ok = _last_logprobs(clean, gold)
        b_lp = torch.full((len(gold), arch.n_layers, arch.n_heads), float("nan"))
        b_ok = torch.full_like(b_lp, float("nan"))
        for layer, head in heads or [(l, h) for l in range(arch.n_layers) for h in range(arch.n_heads)]:
            with intervene(model, EditPlan().zero("head", [(layer, head)])):
                logits = model(**inputs, use_cache=False).logits[:, -1]
            b_lp[:, layer, head], b_ok[:, layer, head] = (t.cpu() for t in _last_logprobs(logits, gold))
        base_lp.append(lp.cpu()), base_ok.append(ok.cpu()), abl_lp.append(b_lp), abl_ok.append(b_ok)
    return _scan_result(torch.cat(base_lp), torch.cat(base_ok), torch.cat(abl_lp), torch.cat(abl_ok),
                        {"prompts": len(examples), "scan": "naive"})


@contextmanager
def layer_inputs(arch: Arch):
    """While inside, every forward records each decoder layer's input hidden state
    (``cached[layer]``) and whether a layer returns a tuple (``is_tuple[0]``): what
    :func:`resume_at` needs to rerun the model from any layer."""
    cached: dict[int, torch.Tensor] = {}
    is_tuple: list[bool] = []

    def keep(args, kwargs, layer):
        cached[layer] = args[0] if args else kwargs["hidden_states"]

    handles = [arch.layers[l].register_forward_pre_hook(lambda m, a, k, l=l: keep(a, k, l), with_kwargs=True)
               for l in range(arch.n_layers)]
    handles.append(arch.layers[0].register_forward_hook(lambda m, a, out: is_tuple.append(isinstance(out, tuple))))
    try:
        yield cached, is_tuple
    finally:
        for h in handles:
            h.remove()


@contextmanager
def resume_at(arch: Arch, layer: int, hidden: torch.Tensor, output_is_tuple: bool):
    """Make layers below ``layer`` return ``hidden`` (the cached input of ``layer``) without computing.

    Only the instance's ``forward`` is replaced, so every family's own model code still builds
    masks and position embeddings; it is restored on exit.
    """
    stubs = []
    result = (hidden,) if output_is_tuple else hidden

    def stub(*args, **kwargs):
        return result

    try:
        for below in range(layer):
            block = arch.layers[below]
            stubs.append((block, block.__dict__.get("forward")))  # accelerate's offload wrapper, if any
            block.forward = stub
        yield
    finally:
        for block, own in stubs:
            if own is None:
                del block.forward
            else:
                block.forward = own


@contextmanager
def zero_one_head_per_copy(arch: Arch, layer: int, heads: list[int], batch: int):
    """Copy ``i`` of the replicated batch has head ``heads[i]`` of ``layer`` zeroed (projection input)."""
    proj = arch.attn_out(layer)
    mask = torch.ones(len(heads), 1, 1, in_features(proj))
    for i, head in enumerate(heads):
        mask[i, 0, 0, arch.head_slice(head)] = 0.0  # the head's columns, as the architecture table lays them out

    def hook(module, args):
        x = args[0]
        shaped = x.view(len(heads), batch, x.shape[1], x.shape[-1])
        return ((shaped * mask.to(x.device, x.dtype)).view_as(x),) + tuple(args[1:])

    handle = proj.register_forward_pre_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@torch.no_grad()
def head_ablation_scan(model, tokenizer, examples: list[Example], batch_size: int = 16, heads_per_pass: int | None = None,
                       progress: bool = True, heads: list[tuple[int, int]] | None = None) -> ComponentScores:
    """Exact zero-ablation scan of every head; same numbers as the naive scan, less work.

    ``heads``: scan only these (the exact confirmation of gradient candidates); the others are NaN,
    so such a result is for the caller to merge, not to save."""
    arch = Arch(model)
    heads_per_pass = heads_per_pass or arch.n_heads
    wanted = {l: sorted(h for ll, h in heads if ll == l) for l, _ in heads} if heads is not None else \
        {l: list(range(arch.n_heads)) for l in range(arch.n_layers)}
    keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
    base_lp, base_ok, abl_lp, abl_ok = [], [], [], []
    for batch in prompt_batches(tokenizer, examples, batch_size, model_device(model), "ablation scan", progress):
        inputs = with_position_ids(model, batch.inputs)
        n = inputs["input_ids"].shape[0]
        with layer_inputs(arch) as (cached, is_tuple):
            clean = model(**inputs, use_cache=False).logits[:, -1]
        gold = batch.targets(clean, "auto")
        lp, ok = _last_logprobs(clean, gold)
        b_lp = torch.full((n, arch.n_layers, arch.n_heads), float("nan"))
        b_ok = torch.full_like(b_lp, float("nan"))
        bar = progress_bar(len(wanted), "layers", "layer", enabled=progress)
        for layer in sorted(wanted):
            for first in range(0, len(wanted[layer]), heads_per_pass):
                group = wanted[layer][first:first + heads_per_pass]
                r = len(group)
                rep = {k: v.repeat(r, *([1] * (v.dim() - 1))) for k, v in inputs.items()}
                hidden = cached[layer].repeat(r, 1, 1)
                with resume_at(arch, layer, hidden, is_tuple[0]), zero_one_head_per_copy(arch, layer, group, n):
                    extra = {"logits_to_keep": 1} if keep_last else {}
                    logits = model(**rep, use_cache=False, **extra).logits[:, -1]
                a_lp, a_ok = _last_logprobs(logits, gold.repeat(r))
                b_lp[:, layer, group] = a_lp.view(r, n).T.cpu()
                b_ok[:, layer, group] = a_ok.view(r, n).T.cpu()
            bar.update(1)
        bar.close()
        base_lp.append(lp.cpu()), base_ok.append(ok.cpu()), abl_lp.append(b_lp), abl_ok.append(b_ok)
    return _scan_result(torch.cat(base_lp), torch.cat(base_ok), torch.cat(abl_lp), torch.cat(abl_ok),
                        {"prompts": len(examples), "scan": "fast"})
