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
* ``taylor`` -- LLM-Pruner's element-wise first-order Taylor importance (Ma et al. 2023):
  ``sum |w * dL/dw|`` over the unit's weights. Not a default baseline (``--baselines taylor``).

Each method is one function registered with :func:`score_method`; the weights a unit owns come from
the unit table (:mod:`editor.model.units`).

For ``magnitude`` and ``wanda`` a layer's score is the sum of its remaining units' scores (the search
scores the shrunk model; on a zeroed one, removed units would still count their unzeroed input rows).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from editor.edit.shrink import Removal, kept_indices
from editor.model.capture import model_device
from editor.attribution.gradient import gold_logprob, gradient_effects, gradients_only_for, teacher_forced
from editor.evaluation.scoring import pad_token_id
from editor.model.arch import Arch, weight_in_slice, weight_out_rows
from editor.model.units import Part, Units
from editor.model.capture import token_batch
from editor.tasks.examples import Example

UNITS = ("neurons", "heads", "layers")


@dataclass
class UnitScores:
    neurons: torch.Tensor  # [layers, d_ffn]
    groups: torch.Tensor  # [layers, key/value groups]
    layers: torch.Tensor  # [layers]


@dataclass(frozen=True)
class ScoreMethod:
    """A registered way to score units: ``score(model, tokenizer, examples, batch_size, seed, progress)``."""

    name: str
    score: Callable[..., UnitScores]
    layers_only: bool  # scores layers alone (the search then moves layers only)
    default_baseline: bool  # compared with attribution by default (the prune recipe's ``baselines``)


SCORE_METHODS: dict[str, ScoreMethod] = {}


def score_method(name: str, *, layers_only: bool = False, default_baseline: bool = True):
    """Register a scoring function under ``name``: the CLI's choices, the recipe schema and the
    default baselines are read from the registry, so a new method is this decorator on one function."""
    def register(fn: Callable[..., UnitScores]) -> Callable[..., UnitScores]:
        SCORE_METHODS[name] = ScoreMethod(name, fn, layers_only, default_baseline)
        return fn
    return register


def _groups_from_heads(arch: Arch, per_head: torch.Tensor) -> torch.Tensor:
    """``[..., heads]`` -> ``[..., groups]`` by summing the query heads of each key/value group."""
    return per_head.reshape(*per_head.shape[:-1], arch.n_kv_heads, arch.heads_per_group).sum(-1)


@score_method("attribution", default_baseline=False)
def attribution_scores(model, tokenizer, examples: list[Example], batch_size: int = 16, seed: int = 0,
                       progress: bool = True) -> UnitScores:
    arch = Arch(model)
    fx = gradient_effects(model, tokenizer, examples, batch_size, progress)
    return UnitScores(fx.neurons.abs().mean(0), _groups_from_heads(arch, fx.heads).abs().mean(0),
                      fx.layers.abs().mean(0))


@torch.no_grad()
def _weighted_unit_sums(units: Units, layer: int, power: float, norms: dict | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Per neuron and per group, over every weight the unit table gives it: ``sum |W|^power``
    (magnitude) or ``sum |W_ij| ||X_j||`` (wanda; ``norms[(module, layer)]`` the norms of that
    module's input features)."""
    n = norms or {}

    def per_feature(part: Part) -> torch.Tensor:  # one sum per owned feature on the part's side
        module = units.module(layer, part)
        w = (weight_out_rows(module) if part.side == "out" else weight_in_slice(module, slice(None))).abs().float()
        x = n.get((part.module, layer))
        if x is None:
            return w.pow(power).sum(1)
        return (w * x[None, :]).sum(1) if part.side == "out" else w.sum(1) * x

    return units.per_unit("neuron", per_feature), units.per_unit("group", per_feature)


@score_method("random")
def random_scores(model, tokenizer=None, examples=None, batch_size: int = 16, seed: int = 0,
                  progress: bool = True) -> UnitScores:
    """Uniform random scores, a fresh draw per seed (the search passes its round)."""
    arch = Arch(model)
    gen = torch.Generator().manual_seed(seed)
    return UnitScores(torch.rand(arch.n_layers, arch.d_ffn(0), generator=gen),
                      torch.rand(arch.n_layers, arch.n_kv_heads, generator=gen), torch.rand(arch.n_layers, generator=gen))


@score_method("magnitude")
def magnitude_scores(model, tokenizer=None, examples=None, batch_size: int = 16, seed: int = 0,
                     progress: bool = True) -> UnitScores:
    arch = Arch(model)
    units = Units(arch)
    parts = [_weighted_unit_sums(units, l, 2.0, None) for l in range(arch.n_layers)]
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
            for path in Units(arch).module_paths():  # the inputs of every projection a unit owns features of
                self.handles.append(arch.layer_module(l, path).register_forward_pre_hook(
                    lambda m, a, k, key=(path, l): self._add(key, a[0] if a else next(iter(k.values()))),
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
            inputs = token_batch(model, rows[start:start + batch_size], pad, device)
            rec.mask = inputs["attention_mask"].float()
            rec.tokens += int(rec.mask.sum())
            model(**inputs, use_cache=False, logits_to_keep=1)
    return rec


@score_method("wanda")
def wanda_scores(model, tokenizer, examples: list[Example], batch_size: int = 16, seed: int = 0,
                 progress: bool = True) -> UnitScores:
    arch = Arch(model)
    rec = _calibrate(model, tokenizer, examples, batch_size)
    norms = {k: v.sqrt() for k, v in rec.sq.items()}
    units = Units(arch)
    parts = [_weighted_unit_sums(units, l, 1.0, norms) for l in range(arch.n_layers)]
    neurons, groups = torch.stack([p[0] for p in parts]), torch.stack([p[1] for p in parts])
    return UnitScores(neurons, groups, neurons.sum(1) + groups.sum(1))


@score_method("block-influence", layers_only=True)
def block_influence_scores(model, tokenizer, examples: list[Example], batch_size: int = 16, seed: int = 0,
                           progress: bool = True) -> UnitScores:
    arch = Arch(model)
    rec = _calibrate(model, tokenizer, examples, batch_size)
    layers = torch.tensor([1 - float(rec.cos[l]) / rec.tokens for l in range(arch.n_layers)])
    return UnitScores(torch.zeros(arch.n_layers, arch.d_ffn(0)), torch.zeros(arch.n_layers, arch.n_kv_heads), layers)


@score_method("taylor", default_baseline=False)
def taylor_scores(model, tokenizer, examples: list[Example], batch_size: int = 16, seed: int = 0,
                  progress: bool = True) -> UnitScores:
    """LLM-Pruner's first-order Taylor importance (Ma et al. 2023, element-wise): the sum over every
    weight the unit table gives a unit of ``|w * dL/dw|``, with ``L`` minus the summed log-probability
    of the calibration prompts' gold answers. Unlike ``attribution`` (the change of that metric when
    the unit's activation is zeroed, per prompt) it scores weights, with gradients summed over all
    prompts before the product. A layer scores the sum of its units; biases are left out as in
    ``magnitude``."""
    arch = Arch(model)
    units = Units(arch)
    modules = {(path, l): arch.layer_module(l, path) for l in range(arch.n_layers) for path in units.module_paths()}
    weights = [m.weight for m in modules.values()]
    grads = [torch.zeros_like(w, dtype=torch.float32) for w in weights]
    rows, answers = teacher_forced(tokenizer, examples)
    device, pad = model_device(model), pad_token_id(tokenizer)
    with gradients_only_for(model, weights), torch.enable_grad():
        for start in range(0, len(rows), batch_size):
            inputs = token_batch(model, rows[start:start + batch_size], pad, device)
            loss = -gold_logprob(model, inputs, answers[start:start + batch_size]).sum()
            for total, g in zip(grads, torch.autograd.grad(loss, weights)):
                total += g.float()
    product = {key: (m.weight.detach().float() * g).abs() for (key, m), g in zip(modules.items(), grads)}

    def sums(kind: str, layer: int) -> torch.Tensor:  # per owned feature: |w * g| summed over the other side
        return units.per_unit(kind, lambda part: product[(part.module, layer)].sum(
            1 - part.dim(modules[(part.module, layer)])))

    neurons = torch.stack([sums("neuron", l) for l in range(arch.n_layers)])
    groups = torch.stack([sums("group", l) for l in range(arch.n_layers)])
    return UnitScores(neurons, groups, neurons.sum(1) + groups.sum(1))


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
    if method not in SCORE_METHODS:
        raise ValueError(f"unknown pruning method {method!r}")
    return SCORE_METHODS[method].score(model, tokenizer, examples, batch_size, seed, progress)


METHODS: tuple[str, ...] = tuple(SCORE_METHODS)
LAYER_ONLY: tuple[str, ...] = tuple(n for n, m in SCORE_METHODS.items() if m.layers_only)
DEFAULT_BASELINES: tuple[str, ...] = tuple(n for n, m in SCORE_METHODS.items() if m.default_baseline)
