"""AtP* (Kramár, Lieberum, Shah and Nanda 2024): attribution patching with its cancellation failure fixed.

Attribution patching scores a site by ``(source - target) . dM/da``. The gradient adds up every path
from the site to the metric; when two paths carry opposite effects (a head's direct effect on the
logits and its effect through a later head that compensates), they cancel in the gradient while
the real patch, which is not linear, is far from zero: a false negative. GradDrop repeats the
backward pass once per layer ``l`` with the gradient through layer ``l``'s attention and MLP
removed (the gradient crosses layer ``l`` along the residual stream only), giving ``L`` estimates
``c_l`` of every site, and scores the site by ``sum_l |c_l| / (L - 1)``: when paths cancel, the layers
that carry one of them break the tie. ``c_l`` is exactly the first-order effect of the patch with
layer ``l``'s contribution held at its target value (tied by a test to that exact patch).

The score is a magnitude (it loses the sign), so AtP* ranks sites by it and leaves the signed
attribution-patching estimate beside it; ``patch_auto(estimator="atp*")`` confirms the largest
exactly. The paper's other fix, recomputing the attention softmax exactly, concerns query and key
nodes (a patch that moves a head's own pattern); the units patched here are a head's output (its
pattern's change is part of the exact ``source - target`` difference) and later activations, so it
does not apply to them.

Cost: the attribution pass plus one backward per layer (each reaching only the layers below the
dropped one), stated by :func:`editor.attribution.patching.cost`.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch

from editor.attribution.gradient import _frozen
from editor.attribution.patch_estimates import attributions, target_graph
from editor.attribution.patching import (_batches, _check_positions, _first_key, _result, _source_run, metric,
                                         prepare, sites)
from editor.attribution.results import ComponentScores
from editor.model.arch import Arch
from editor.progress import progress_bar
from editor.tasks.examples import Example


class _Gate:
    """Which layer the current backward pass drops (None: none)."""

    layer: int | None = None


class _Bypass(torch.autograd.Function):
    """A decoder layer's output, unchanged in the forward pass. Backward: normally the gradient enters
    the layer's computation (which includes its residual path); when the gate names this layer it goes
    straight to the layer's input instead, as if attention and MLP were absent."""

    @staticmethod
    def forward(ctx, layer_in, layer_out, gate, layer):
        ctx.gate, ctx.layer = gate, layer
        return layer_out.clone()

    @staticmethod
    def backward(ctx, grad):
        if ctx.gate.layer == ctx.layer:
            return grad, None, None, None
        return None, grad, None, None


@contextmanager
def _droppable(arch: Arch, gate: _Gate):
    """Route every decoder layer's output through :class:`_Bypass` for one forward pass."""
    inputs: dict[int, torch.Tensor] = {}

    def keep(layer):
        def pre(module, args, kwargs):
            inputs[layer] = args[0] if args else kwargs[_first_key(kwargs)]

        def post(module, args, kwargs, output):
            first = output[0] if isinstance(output, tuple) else output
            new = _Bypass.apply(inputs[layer], first, gate, layer)
            return (new, *output[1:]) if isinstance(output, tuple) else new
        return pre, post

    handles = []
    for layer, block in enumerate(arch.layers):
        pre, post = keep(layer)
        handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
        handles.append(block.register_forward_hook(post, with_kwargs=True))
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def patch_atp_star(model, tokenizer, examples: list[Example], unit: str = "heads", direction: str = "noising",
                   positions: int | None = None, batch_size: int = 16, progress: bool = True,
                   ablation: str = "corrupt", seed: int = 0) -> ComponentScores:
    """Attribution patching (signed ``effect``/``normalised`` columns) plus the GradDrop magnitude of
    every site (``atp_star``: divided by the clean - corrupt gap like ``normalised``), which ranks.
    ``vectors["dropped"]``: ``[layers, sites]`` mean ``c_l`` over the pairs."""
    arch = Arch(model)
    pairs = prepare(model, tokenizer, examples, unit, direction, ablation, seed, batch_size)
    _check_positions(pairs, positions)
    n_sites, n_layers = len(sites(arch, unit, positions)), arch.n_layers
    per_layer = n_sites // n_layers
    keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
    gate = _Gate()
    target_m, source_m, effects = [], [], []
    dropped = torch.zeros(n_layers, n_sites, dtype=torch.float64)
    bar = progress_bar(len(pairs.answer), f"AtP* {unit} ({direction})", "pair", progress)
    with _frozen(model):
        for target, source, answer, wrong in _batches(model, tokenizer, pairs, batch_size, direction):
            src, src_logits = _source_run(model, arch, unit, source, keep_last, pairs)
            try:
                with target_graph(model, arch, unit, target, answer, wrong, keep_last,
                                  _droppable(arch, gate)) as (m, acts):
                    grads = torch.autograd.grad(m.sum(), acts, retain_graph=True, allow_unused=True)
                    plain = attributions(arch, unit, positions, src, acts, grads).cpu()
                    for l in range(n_layers):
                        # Dropping layer l changes the gradient of sites at or below it only.
                        gate.layer = l
                        below = torch.autograd.grad(m.sum(), acts[:l + 1], retain_graph=l < n_layers - 1,
                                                    allow_unused=True)
                        est = plain.clone()
                        est[:, :(l + 1) * per_layer] = attributions(arch, unit, positions, src, acts[:l + 1],
                                                                    below).cpu()
                        dropped[l] += est.sum(0)
            finally:
                gate.layer = None
            effects.append(plain)
            target_m.append(m.detach().cpu())
            source_m.append(metric(src_logits, answer, wrong).cpu())
            bar.update(answer.shape[0])
    bar.close()
    dropped /= len(pairs.answer)
    result = _result(arch, unit, direction, positions, "atp*", pairs, torch.cat(target_m), torch.cat(source_m),
                     torch.cat(effects), tokenizer)
    magnitude = dropped.abs().sum(0) / max(n_layers - 1, 1)
    gap = abs(result.meta["gap"] or 0.0) or 1.0  # mean / zero ablation: no gap, the raw magnitude
    result.columns = {"atp_star": (magnitude / gap).view(n_layers, per_layer), **result.columns}
    result.primary = "atp_star"
    result.vectors["dropped"] = dropped
    return result
