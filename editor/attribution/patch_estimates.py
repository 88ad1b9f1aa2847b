"""Attribution patching (Nanda 2023; Syed et al. 2023): ``(a_source - a_target) . dM/da`` for every
site of :mod:`editor.attribution.patching` from one backward pass, tied by tests to the derivative of
the exact patch; ``auto``, the estimate confirmed by exact patches; and what a run will cost.
"""

from __future__ import annotations

import inspect
from contextlib import ExitStack, contextmanager

import torch

from editor.attribution.gradient import gradients_only_for
from editor.attribution.patch_metrics import differentiable, read_metric
from editor.attribution.patching import (_batches, _check_positions, _last_logits, _recorded, _result, _source_run,
                                         patch_exact, prepare, site_features, sites)
from editor.attribution.results import ComponentScores
from editor.model.arch import Arch
from editor.progress import progress_bar
from editor.tasks.examples import Example


@contextmanager
def target_graph(model, arch: Arch, unit: str, target: dict, answer: torch.Tensor, wrong: torch.Tensor | None,
                 keep_last: bool, *hooks, kind: str | None = None):
    """One target forward inside the autograd graph (``hooks``: further context managers around it):
    yields the metric per row and ``unit``'s activation of every layer, which carry gradients because
    the embedding output is made to require them (the caller freezes the parameters)."""
    store: dict[int, torch.Tensor] = {}
    handle = arch.model.get_submodule(arch.spec.embed).register_forward_hook(
        lambda m, a, out: out.requires_grad_(True))
    try:
        with _recorded(arch, unit, store), ExitStack() as stack, torch.enable_grad():
            for hook in hooks:
                stack.enter_context(hook)
            m = read_metric(_last_logits(model, target, keep_last), answer, wrong, kind)
            yield m, [store[l] for l in range(arch.n_layers)]
    finally:
        handle.remove()


def patch_gradient(model, tokenizer, examples: list[Example], unit: str = "heads", direction: str = "noising",
                   positions: int | None = None, batch_size: int = 16, progress: bool = True,
                   ablation: str = "corrupt", seed: int = 0, metric: str | None = None) -> ComponentScores:
    """Attribution patching: the first-order estimate of every exact patch, from one backward pass per batch."""
    arch = Arch(model)
    pairs = prepare(model, tokenizer, examples, unit, direction, ablation, seed, batch_size, metric)
    differentiable(pairs)
    _check_positions(pairs, positions)
    sites(arch, unit, positions)  # an unknown unit or a whole-stream resid patch: one line, before any pass
    keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
    target_m, source_m, effects = [], [], []
    bar = progress_bar(len(pairs.answer), f"attribution patching {unit} ({direction})", "pair", progress)
    with gradients_only_for(model):
        for target, source, answer, wrong in _batches(model, tokenizer, pairs, batch_size, direction):
            src, src_logits = _source_run(model, arch, unit, source, keep_last, pairs)
            with target_graph(model, arch, unit, target, answer, wrong, keep_last, kind=pairs.metric) as (m, acts):
                grads = torch.autograd.grad(m.sum(), acts, allow_unused=True)
            effects.append(attributions(arch, unit, positions, src, acts, grads).cpu())
            target_m.append(m.detach().cpu())
            source_m.append(read_metric(src_logits, answer, wrong, pairs.metric).cpu())
            bar.update(answer.shape[0])
    bar.close()
    return _result(arch, unit, direction, positions, "gradient", pairs, torch.cat(target_m), torch.cat(source_m),
                   torch.cat(effects), tokenizer)


def patch_auto(model, tokenizer, examples: list[Example], unit: str = "heads", direction: str = "noising",
               positions: int | None = None, batch_size: int = 16, confirm: int = 30,
               progress: bool = True, estimator=None, ablation: str = "corrupt", seed: int = 0,
               metric: str | None = None) -> ComponentScores:
    """An estimate for every site (``estimator``: :func:`patch_gradient` by default, or AtP*'s
    ``patch_atp_star``), then the exact patch of the ``confirm`` sites the estimate ranks highest by
    magnitude (a component the linear estimate gets wrong usually still has a large estimate: on IOI
    the default model's fourth most important head has the wrong sign but the 14th largest
    magnitude). Confirmed rows carry ``exact`` = 1 and rank first."""
    estimate = (estimator or patch_gradient)(model, tokenizer, examples, unit, direction, positions, batch_size,
                                             progress=progress, ablation=ablation, seed=seed, metric=metric)
    size = estimate.columns[estimate.primary if estimate.primary != "normalised" else "effect"].flatten()
    picked = torch.argsort(size.abs(), descending=True, stable=True)[:confirm].tolist()
    exact = patch_exact(model, tokenizer, examples, unit, direction, positions, batch_size, progress=progress,
                        only=picked, ablation=ablation, seed=seed, metric=metric)
    done = ~torch.isnan(exact.columns["effect"])
    columns = {name: torch.where(done, exact.columns[name], col) if name in exact.columns else col
               for name, col in estimate.columns.items()}
    columns["exact"] = done.double()
    per_pair = torch.where(torch.isnan(exact.vectors["per_pair"]), estimate.vectors["per_pair"],
                           exact.vectors["per_pair"])
    return ComponentScores(kind=exact.kind, method="patch_auto", primary="normalised", columns=columns,
                           meta={**exact.meta, "confirmed": len(picked), "estimator": estimate.method},
                           vectors={"per_pair": per_pair})


def cost(arch: Arch, unit: str, method: str, n_pairs: int, positions: int | None = None, batch_size: int = 16,
         confirm: int = 30, ablation: str = "corrupt") -> str:
    """What a patching run will do, said before it starts: sites, and forward/backward passes (each a
    batch of up to ``batch_size`` pairs, or that many times the sites patched together)."""
    per_layer = len(sites(arch, unit, positions)) // arch.n_layers
    batches = -(-n_pairs // batch_size)
    exact_passes = arch.n_layers * -(-per_layer // min(32, per_layer))
    total = per_layer * arch.n_layers
    if method == "exact":
        line = (f"{total} sites: {batches} batch(es) x ({exact_passes} patched + 2 clean) forward passes, "
                f"each over up to {min(32, per_layer)} copies of the batch")
        return line + (f"; first {batches} forward pass(es) for the mean activations" if ablation == "mean" else "")
    backward = "1 backward" if method != "atp*" else \
        f"1 + {arch.n_layers} backward, one per dropped layer reaching only the layers below it"
    line = f"{total} sites: {batches} batch(es) x (2 forward + {backward})"
    if method == "atp*" and unit in ("queries", "keys"):
        line += (f", and {arch.n_layers} patched forward passes per batch (over {positions or 1} copies) for the "
                 "exact attention patterns (the QK fix)")
    if method == "auto":
        line += f", then the exact patch of {min(confirm, total)} sites (at most {min(confirm, total) * batches} " \
                "patched forward passes, sites of one layer batched together)"
    if ablation == "mean":
        line += f"; first {batches} forward pass(es) for the mean activations"
    return line


def attributions(arch: Arch, unit: str, positions: int | None, source: dict[int, torch.Tensor],
                 acts: list[torch.Tensor], grads) -> torch.Tensor:
    """``(source - target) . gradient`` of every site, ``[pairs, sites]`` in :func:`sites`' order; a layer
    whose activations got no gradient (None) contributes zeros."""
    return torch.cat([_layer_sums(arch, unit, positions, source[l], acts[l], g)
                      for l, g in enumerate(grads)], 1)


def _layer_sums(arch: Arch, unit: str, positions: int | None, source: torch.Tensor, act: torch.Tensor,
                grad: torch.Tensor | None) -> torch.Tensor:
    """One layer's sites: the per-feature products summed over each site's features (a head's
    head_dim, one neuron, the whole vector; a query's or key's features of a fused projection) and
    over every position or one position each."""
    index = site_features(arch, unit, act.shape[-1]).to(act.device)
    per = index.shape[0]
    n, length = act.shape[:2]
    if grad is None:
        return torch.zeros(n, per * (positions or 1), dtype=torch.float64, device=act.device)
    change = ((source.double() - act.detach().double()) * grad.double())[..., index].sum(-1)
    if positions is None:
        return change.sum(1)
    return change[:, -positions:].transpose(1, 2).reshape(n, per * positions)
