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
estimate beside it; ``patch_auto(estimator=patch_atp_star)`` confirms the largest exactly.

The QK fix, for ``queries`` and ``keys``: a query or key moves its head's attention pattern through
a softmax, which saturates, so its linear estimate can be far off (a key that takes all of a head's
attention when patched has a near-zero gradient where the pattern is already peaked). Instead the
patched pattern ``A'`` is computed exactly (one forward per layer with every query or key of that layer
patched at once: heads do not share queries, and a key group only moves its own heads' patterns; by
position, one copy of the batch per position) and only the rest is linear:
``sum dM/dA . (A' - A)`` over the entries of the site's heads. GradDrop then applies to that estimate.
Heads' outputs and later activations need no such fix: a head output's exact ``source - target``
difference already contains its pattern's change.

Cost: the attribution pass plus one backward per layer (each reaching only the layers below the
dropped one), and for queries and keys one patched forward per layer; stated by
:func:`editor.attribution.patch_estimates.cost`.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager

import torch

from editor.attribution.gradient import gradients_only_for
from editor.attribution.patch_metrics import differentiable, read_metric
from editor.attribution.patch_estimates import attributions, target_graph
from editor.attribution.patching import (_batches, _check_positions, _first_key, _last_logits, _patched,
                                         _result, _source_run, prepare, sites)
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


QK_UNITS = ("queries", "keys")


@contextmanager
def _patterns(arch: Arch, store: dict[int, torch.Tensor]):
    """Keep every layer's attention pattern ``[batch, heads, query, key]`` for one forward pass (the
    probabilities the attention module returns, which its output is computed from)."""
    handles = [arch.attn(l).register_forward_hook(lambda m, a, out, l=l: store.__setitem__(l, out[1]))
               for l in range(arch.n_layers)]
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@torch.no_grad()
def patched_patterns(model, arch: Arch, unit: str, target: dict, source: dict[int, torch.Tensor],
                     positions: int | None, keep_last: bool) -> dict[int, torch.Tensor]:
    """Per layer ``[copies, batch, heads, query, key]``: layer ``l``'s exact attention pattern with every
    query (or key) of ``l`` taken from the source run; one copy (every position) or one per position
    ``-P..-1``. Layers above ``l`` see a changed input; only layer ``l``'s pattern is read. Kept in the
    pattern's own dtype: layers x copies x batch x heads x tokens^2 values, so long prompts want a
    smaller batch."""
    where = [None] if positions is None else list(range(-positions, 0))
    rep = {k: v.repeat(len(where), *([1] * (v.dim() - 1))) for k, v in target.items()}
    out = {}
    for layer in range(arch.n_layers):
        store: dict[int, torch.Tensor] = {}
        with _patched(arch, unit, layer, [(None, p) for p in where], source[layer]), _patterns(arch, store):
            _last_logits(model, rep, keep_last)
        a = store[layer]
        out[layer] = a.view(len(where), -1, *a.shape[1:])
    return out


def qk_attributions(arch: Arch, unit: str, patched: dict[int, torch.Tensor], patterns: list[torch.Tensor],
                    grads) -> torch.Tensor:
    """The QK-fixed estimate of every site of ``len(grads)`` layers, ``[pairs, sites]`` in :func:`sites`'
    order: ``dM/dA . (A' - A)`` summed over the site's heads (a key group: all the heads reading it)."""
    per_layer = []
    for l, g in enumerate(grads):
        change = patched[l].double() - patterns[l].detach().double().unsqueeze(0)  # [copies, n, heads, q, k]
        copies, n = change.shape[:2]
        if g is None:
            by_head = change.new_zeros(copies, n, arch.n_heads)
        else:
            by_head = (change * g.double().unsqueeze(0)).sum((-1, -2))
        if unit == "keys":
            by_head = by_head.view(copies, n, arch.n_kv_heads, arch.heads_per_group).sum(-1)
        per_layer.append(by_head.permute(1, 2, 0).reshape(n, -1))
    return torch.cat(per_layer, 1)


def patch_atp_star(model, tokenizer, examples: list[Example], unit: str = "heads", direction: str = "noising",
                   positions: int | None = None, batch_size: int = 16, progress: bool = True,
                   ablation: str = "corrupt", seed: int = 0, metric: str | None = None) -> ComponentScores:
    """Attribution patching (signed ``effect``/``normalised`` columns) plus the GradDrop magnitude of
    every site (``atp_star``: divided by the clean - corrupt gap like ``normalised``), which ranks.
    ``vectors["dropped"]``: ``[layers, sites]`` mean ``c_l`` over the pairs."""
    arch = Arch(model)
    pairs = prepare(model, tokenizer, examples, unit, direction, ablation, seed, batch_size, metric)
    differentiable(pairs)
    _check_positions(pairs, positions)
    n_sites, n_layers = len(sites(arch, unit, positions)), arch.n_layers
    per_layer = n_sites // n_layers
    keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
    gate = _Gate()
    target_m, source_m, effects = [], [], []
    dropped = torch.zeros(n_layers, n_sites, dtype=torch.float64)
    bar = progress_bar(len(pairs.answer), f"AtP* {unit} ({direction})", "pair", progress)
    qk = unit in QK_UNITS
    with gradients_only_for(model):
        for target, source, answer, wrong in _batches(model, tokenizer, pairs, batch_size, direction):
            src, src_logits = _source_run(model, arch, unit, source, keep_last, pairs)
            patched = patched_patterns(model, arch, unit, target, src, positions, keep_last) if qk else None
            patterns: dict[int, torch.Tensor] = {}
            try:
                with target_graph(model, arch, unit, target, answer, wrong, keep_last, _droppable(arch, gate),
                                  *([_patterns(arch, patterns)] if qk else []), kind=pairs.metric) as (m, acts):
                    nodes = [patterns[l] for l in range(n_layers)] if qk else acts

                    def estimate(grads):
                        if qk:
                            return qk_attributions(arch, unit, patched, nodes, grads).cpu()
                        return attributions(arch, unit, positions, src, acts[:len(grads)], grads).cpu()

                    plain = estimate(torch.autograd.grad(m.sum(), nodes, retain_graph=True, allow_unused=True))
                    for l in range(n_layers):
                        # Dropping layer l changes the gradient of sites at or below it only.
                        gate.layer = l
                        below = torch.autograd.grad(m.sum(), nodes[:l + 1], retain_graph=l < n_layers - 1,
                                                    allow_unused=True)
                        est = plain.clone()
                        est[:, :(l + 1) * per_layer] = estimate(below)
                        dropped[l] += est.sum(0)
            finally:
                gate.layer = None
            effects.append(plain)
            target_m.append(m.detach().cpu())
            source_m.append(read_metric(src_logits, answer, wrong, pairs.metric).cpu())
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
    if qk:
        result.meta["qk_fix"] = "the patched attention pattern computed exactly; the effect column is its estimate"
    return result
