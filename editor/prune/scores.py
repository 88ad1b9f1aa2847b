"""How important each prunable unit is, by method; lower scores are removed first.

Every method scores the same units on the same calibration prompts, so the search compares only
the ordering:

* ``attribution`` -- gradient attribution (:mod:`editor.attribution.gradient`): the mean over
  prompts of |estimated change of the gold log-probability| when the unit is zeroed (a first-order
  Taylor importance; Molchanov et al. 2019). A group's estimate is the sum of its query heads'.
* ``magnitude`` -- the L2 norm of the unit's weights (rows it writes, columns it reads).
* ``wanda`` -- structured Wanda (Sun et al. 2023; per unit as in FLAP, An et al. 2024): the sum over
  the unit's weights of ``|W_ij| * ||X_j||``, with ``||X_j||`` the norm of input feature ``j`` over
  every calibration token.
* ``block-influence`` -- ShortGPT (Men et al. 2024): ``1 - mean cos(layer input, layer output)``
  over calibration tokens; layers only.
* ``random`` -- uniform random scores, a fresh draw per round.

For ``magnitude`` and ``wanda`` a layer's score is the sum of its remaining units' scores (the search
scores the shrunk model; on a zeroed one, removed units would still count their unzeroed input rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from editor.edit.shrink import Removal, kept_indices
from editor.model.capture import model_device
from editor.attribution.gradient import gradient_effects
from editor.evaluation.scoring import pad_rows, pad_token_id
from editor.model.arch import Arch, weight_in_slice, weight_out_rows
from editor.model.capture import with_position_ids
from editor.tasks.examples import Example

METHODS = ("attribution", "magnitude", "wanda", "random", "block-influence")
UNITS = ("neurons", "heads", "layers")
LAYER_ONLY = ("block-influence",)


@dataclass
class UnitScores:
    neurons: torch.Tensor  # [layers, d_ffn]
    groups: torch.Tensor  # [layers, key/value groups]
    layers: torch.Tensor  # [layers]


def _groups_from_heads(arch: Arch, per_head: torch.Tensor) -> torch.Tensor:
    """``[..., heads]`` -> ``[..., groups]`` by summing the query heads of each key/value group."""
    return per_head.reshape(*per_head.shape[:-1], arch.n_kv_heads, arch.heads_per_group).sum(-1)


def attribution_scores(model, tokenizer, examples: list[Example], batch_size: int, progress: bool) -> UnitScores:
    arch = Arch(model)
    fx = gradient_effects(model, tokenizer, examples, batch_size, progress)
    return UnitScores(fx.neurons.abs().mean(0), _groups_from_heads(arch, fx.heads).abs().mean(0),
                      fx.layers.abs().mean(0))


def _qkv(arch: Arch, layer: int) -> list[nn.Module] | None:
    q, k, v = (arch.layer_module(layer, p) for p in arch.spec.attn_qkv)
    return None if q is k else [q, k, v]


def _group_rows(arch: Arch, group: int) -> tuple[slice, slice]:
    """Output rows of the query projection (the group's heads) and of the key/value projections."""
    heads = arch.group_heads(group)
    return (slice(heads[0] * arch.head_dim, (heads[-1] + 1) * arch.head_dim),
            slice(group * arch.head_dim, (group + 1) * arch.head_dim))


@torch.no_grad()
def _weighted_unit_sums(arch: Arch, layer: int, power: float, norms: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per neuron and per group: ``sum |W|^power`` (magnitude) or ``sum |W_ij| ||X_j||`` (wanda)."""
    def term(w_rows: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:  # [out, in] -> per out row
        w = w_rows.abs().float()
        return (w * x[None, :]).sum(1) if x is not None else w.pow(power).sum(1)

    def feats(w_in: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:  # [n_in, out] -> per input feature
        w = w_in.abs().float()
        return (w.sum(1) * x) if x is not None else w.pow(power).sum(1)

    n = norms or {}
    neurons = sum(term(weight_out_rows(m), n.get(("mlp_in", layer))) for m in arch.mlp_in(layer))
    neurons = neurons + feats(weight_in_slice(arch.mlp_out(layer), slice(None)), n.get(("mlp_out", layer)))
    per_col = feats(weight_in_slice(arch.attn_out(layer), slice(None)), n.get(("attn_out", layer)))
    groups = per_col.view(arch.n_kv_heads, -1).sum(1)
    qkv = _qkv(arch, layer)
    if qkv is not None:
        x = n.get(("attn_in", layer))
        rows = [term(weight_out_rows(m), x) for m in qkv]
        for g in range(arch.n_kv_heads):
            q_rows, kv_rows = _group_rows(arch, g)
            groups[g] += rows[0][q_rows].sum() + rows[1][kv_rows].sum() + rows[2][kv_rows].sum()
    return neurons, groups


def magnitude_scores(model) -> UnitScores:
    arch = Arch(model)
    parts = [_weighted_unit_sums(arch, l, 2.0, None) for l in range(arch.n_layers)]
    neurons = torch.stack([p[0] for p in parts]).sqrt()
    groups = torch.stack([p[1] for p in parts]).sqrt()
    return UnitScores(neurons, groups, neurons.sum(1) + groups.sum(1))


class _InputNorms:
    """Hooks summing the squares of each input feature over real tokens, and block in/out cosines."""

    def __init__(self, arch: Arch):
        self.arch, self.sq, self.cos, self.tokens, self.mask, self.handles = arch, {}, {}, 0, None, []

    def _add(self, key, x: torch.Tensor) -> None:
        x = x.detach().float() * self.mask[..., None]
        self.sq[key] = self.sq.get(key, 0) + x.pow(2).sum((0, 1))

    def __enter__(self):
        arch = self.arch
        for l in range(arch.n_layers):
            qkv = _qkv(arch, l)
            points = [("mlp_in", arch.mlp_in(l)[0]), ("mlp_out", arch.mlp_out(l)), ("attn_out", arch.attn_out(l))]
            if qkv is not None:
                points.append(("attn_in", qkv[0]))
            for name, module in points:
                self.handles.append(module.register_forward_pre_hook(
                    lambda m, a, k, key=(name, l): self._add(key, a[0] if a else next(iter(k.values()))),
                    with_kwargs=True))
            self.handles.append(arch.layers[l].register_forward_hook(
                lambda m, a, k, o, l=l: self._block(l, a[0] if a else k["hidden_states"],
                                                    o[0] if isinstance(o, tuple) else o), with_kwargs=True))
        return self

    def _block(self, layer: int, x: torch.Tensor, y: torch.Tensor) -> None:
        cos = torch.nn.functional.cosine_similarity(x.float(), y.float(), dim=-1) * self.mask
        self.cos[layer] = self.cos.get(layer, 0) + cos.sum()

    def __exit__(self, *exc):
        for h in self.handles:
            h.remove()


@torch.no_grad()
def _calibrate(model, tokenizer, examples: list[Example], batch_size: int) -> _InputNorms:
    arch = Arch(model)
    rows = [tokenizer(e.prompt + (e.answer or ""))["input_ids"] for e in examples]
    device, pad = model_device(model), pad_token_id(tokenizer)
    with _InputNorms(arch) as rec:
        for start in range(0, len(rows), batch_size):
            inputs = with_position_ids(model, pad_rows(rows[start:start + batch_size], pad, "left", device))
            rec.mask = inputs["attention_mask"].float()
            rec.tokens += int(rec.mask.sum())
            model(**inputs, use_cache=False, logits_to_keep=1)
    return rec


def wanda_scores(model, tokenizer, examples: list[Example], batch_size: int) -> UnitScores:
    arch = Arch(model)
    rec = _calibrate(model, tokenizer, examples, batch_size)
    norms = {k: v.sqrt() for k, v in rec.sq.items()}
    parts = [_weighted_unit_sums(arch, l, 1.0, norms) for l in range(arch.n_layers)]
    neurons, groups = torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
    return UnitScores(neurons, groups, neurons.sum(1) + groups.sum(1))


def block_influence_scores(model, tokenizer, examples: list[Example], batch_size: int) -> UnitScores:
    arch = Arch(model)
    rec = _calibrate(model, tokenizer, examples, batch_size)
    layers = torch.tensor([1 - float(rec.cos[l]) / rec.tokens for l in range(arch.n_layers)])
    return UnitScores(torch.zeros(arch.n_layers, arch.d_ffn(0)), torch.zeros(arch.n_layers, arch.n_kv_heads), layers)


def random_scores(model, seed: int) -> UnitScores:
    arch = Arch(model)
    gen = torch.Generator().manual_seed(seed)
    return UnitScores(torch.rand(arch.n_layers, arch.d_ffn(0), generator=gen),
                      torch.rand(arch.n_layers, arch.n_kv_heads, generator=gen), torch.rand(arch.n_layers, generator=gen))


def on_original(small: UnitScores, arch: Arch, removal: Removal) -> UnitScores:
    """Scores of the model shrunk by ``removal`` placed at the ORIGINAL model's indices (``arch``);
    removed units score +inf (the search never proposes them again)."""
    inf = float("inf")
    out = UnitScores(torch.full((arch.n_layers, arch.d_ffn(0)), inf, dtype=small.neurons.dtype),
                     torch.full((arch.n_layers, arch.n_kv_heads), inf, dtype=small.groups.dtype),
                     torch.full((arch.n_layers,), inf, dtype=small.layers.dtype))
    heads_kept = small.groups.shape[1] == arch.n_kv_heads  # families that zero heads instead keep them all
    for i, layer in enumerate(removal.kept_layers(arch.n_layers)):
        out.neurons[layer, kept_indices(arch.d_ffn(0), removal.neurons.get(layer, []))] = small.neurons[i]
        groups = kept_indices(arch.n_kv_heads, [] if heads_kept else removal.groups.get(layer, []))
        out.groups[layer, groups] = small.groups[i]
        out.layers[layer] = small.layers[i]
    return out


def unit_scores(method: str, model, tokenizer, examples: list[Example], batch_size: int = 16, seed: int = 0,
                progress: bool = True) -> UnitScores:
    if method == "attribution":
        return attribution_scores(model, tokenizer, examples, batch_size, progress)
    if method == "magnitude":
        return magnitude_scores(model)
    if method == "wanda":
        return wanda_scores(model, tokenizer, examples, batch_size)
    if method == "block-influence":
        return block_influence_scores(model, tokenizer, examples, batch_size)
    if method == "random":
        return random_scores(model, seed)
    raise ValueError(f"unknown pruning method {method!r}")
