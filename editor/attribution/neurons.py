"""Neuron importance: log-probability increase of every FFN neuron and attention value neuron.

Score of neuron k in layer l (docs/methods.md): ``logp(w | x + m_k f_k) - logp(w | x)`` with ``x`` the
residual the sublayer reads (``x_mid`` for FFN neurons, ``x_in`` for attention value neurons),
``m_k`` the coefficient (input of the output projection) and ``f_k`` its value vector.

The exact fast path. With the final-norm scale frozen, candidate logits are linear:
``z(x + m f_k) = z(x) + (m / sigma) u_k`` with ``u_k = W_U (g * f_k)`` independent of the prompt
(docs/methods.md), so one ``[neurons, vocab]`` product per layer serves every prompt. What remains
per (prompt, neuron) is ``log E_p[exp(a u_k)]`` under the base softmax ``p``. Pruning the vocabulary
by a logit margin does not help on small models (the whole logit range of SmolLM2 is under 40
nats, so every token survives); instead the expectation is expanded in ``a``: the moments
``E_p[u_k^j]`` are matrix products shared by all neurons, and the Taylor remainder is bounded by
``D^n e^D / n!`` with ``D = |a| max_v |u_kv|``. Pairs whose bound exceeds ``tol`` (a few percent,
mostly in the last layer) are summed over the whole vocabulary. ``tol=None`` sums every pair.
"""

from __future__ import annotations

import math

import torch

from editor.attribution.common import prompt_batches
from editor.model.capture import model_device
from editor.progress import progress_bar
from editor.attribution.heads import _aggregate
from editor.attribution.readout import Readout
from editor.attribution.results import ComponentScores
from editor.model.arch import Arch, weight_in_slice
from editor.model.capture import Captured, capture
from editor.tasks.examples import Example

KINDS = {"mlp": "neuron", "attn": "attn_neuron"}
CHUNK_ELEMENTS = 1 << 24  # elements of one [neurons, tokens] block in the log-sum-exp


def _points(arch: Arch, kind: str) -> list[str]:
    if kind == "mlp":
        return ["resid_mid", "neuron_coef", "resid_post"] + (["mlp_out"] if arch.spec.mlp_post_norm else [])
    return ["resid_pre", "attn_z", "resid_post"] + (["attn_out"] if arch.spec.attn_post_norm else [])


def _layer_terms(arch: Arch, readout: Readout, got, kind: str, layer: int):
    """(base residual [B, d], value vectors [F, d], per-prompt coefficient scale a [B, F])."""
    if kind == "mlp":
        base, coef, proj = got.resid_mid[:, layer], got.neuron_coef[:, layer], arch.mlp_out(layer)
    else:
        base, coef, proj = got.resid_pre[:, layer], got.attn_z[:, layer], arch.attn_out(layer)
    values = weight_in_slice(proj, slice(None)).detach().float()  # [F, d]
    a = coef.float()
    gain, inv_post = readout.contribution_scale(kind, layer)
    if gain is not None:  # contribution passes through a post norm with frozen scale
        values = values * gain
        a = a * inv_post[:, None]
    return base.float(), values, a


@torch.no_grad()
def _scores_exact_fast(readout: Readout, base: torch.Tensor, values: torch.Tensor, a: torch.Tensor,
                       targets: torch.Tensor, tol: float | None, order: int = 6) -> tuple[torch.Tensor, float]:
    """``[B, F]`` scores and the fraction of (prompt, neuron) pairs that needed the full sum.

    Score = ``a u_kw - log E_p[exp(a u_k)]`` with ``p`` the base softmax (``a`` includes 1/sigma).
    The expectation is a Taylor series in ``a`` whose moments ``E_p[u_k^j]`` are matrix products
    shared by all prompts; the remainder is bounded by ``D^n e^D / n!`` with ``D = |a| max_v |u_kv|``.
    Pairs whose bound exceeds ``tol`` (and every pair under a logit soft-cap, which is not
    polynomial) are summed over the whole vocabulary instead.
    """
    a = a / readout.sigma[:, None]
    D = readout.direction(values)  # [F, d]
    U = D @ readout.W_U.T  # [F, V]: u_k for every neuron, independent of the prompt
    z0 = readout.pre_logits(base)  # [B, V]
    zc0 = readout.cap(z0)
    lse0 = torch.logsumexp(zc0, dim=-1)
    rows = torch.arange(len(targets), device=z0.device)
    target_shift = a * U[:, targets].T  # [B, F]: a * u_{k, w_b} (exact when there is no soft-cap)
    exact = torch.ones_like(a, dtype=torch.bool)
    scores = torch.empty_like(a)
    if tol is not None and readout.softcap is None:
        p = torch.softmax(zc0, dim=-1)  # [B, V]
        delta = a.abs() * U.abs().amax(dim=1)  # [B, F]: largest |shift| of any token
        series = torch.ones_like(a, dtype=torch.float64)
        power = torch.ones_like(U)
        for j in range(1, order):
            power = power * U
            series += (a.double() ** j / math.factorial(j)) * (p @ power.T).double()
        remainder = delta.double() ** order * torch.exp(delta.double()) / math.factorial(order)
        exact = remainder * torch.exp(delta.double()) > tol
        scores = (target_shift.double() - torch.log(series)).float()
    else:
        target_shift = readout.cap(z0[rows, targets][:, None] + target_shift) - zc0[rows, targets][:, None]
    pairs = exact.nonzero()
    chunk = max(1, CHUNK_ELEMENTS // U.shape[1])
    for i in range(0, len(pairs), chunk):
        b, k = pairs[i:i + chunk].unbind(1)
        Z = readout.cap(z0[b] + a[b, k, None] * U[k])  # [n, V]
        scores[b, k] = target_shift[b, k] - (torch.logsumexp(Z, dim=-1) - lse0[b])
    return scores, float(exact.float().mean())


@torch.no_grad()
def _scores_vector_by_vector(readout: Readout, base, values, a, targets, chunk: int = 256) -> torch.Tensor:
    """Obviously correct reference: build each candidate vector, project it, take log-softmax."""
    scores = torch.empty_like(a)
    for b in range(len(targets)):
        base_lp = readout.logprob(base[b], targets[b], prompt=b)
        for k0 in range(0, values.shape[0], chunk):
            vecs = base[b] + a[b, k0:k0 + chunk, None] * values[k0:k0 + chunk]  # [n, d]: x + m_k f_k
            scores[b, k0:k0 + chunk] = readout.logprob(vecs, targets[b], prompt=b) - base_lp
    return scores


@torch.no_grad()
def neuron_logprob_increase(model, tokenizer, examples: list[Example], kind: str = "mlp", target: str = "auto",
                            batch_size: int = 16, topk: int = 10, layers: list[int] | None = None,
                            tol: float | None = 1e-6, method: str = "fast", group_size: int = 256,
                            progress: bool = True) -> ComponentScores:
    """Score every FFN neuron (``kind="mlp"``) or attention value neuron (``kind="attn"``) of ``layers``.

    Returns mean/std/top-k counts of the score over prompts and ``coef_mean``, the mean coefficient.
    Prompts are captured in groups of ``group_size``; per layer, one vocabulary projection serves the
    whole group. ``method="reference"`` runs the slow vector-by-vector computation.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {list(KINDS)}")
    arch = Arch(model)
    layers = list(range(arch.n_layers)) if layers is None else list(layers)
    for layer in layers:
        arch.check_layer(layer)
    width = arch.d_ffn() if kind == "mlp" else arch.n_heads * arch.head_dim
    coef_point = "neuron_coef" if kind == "mlp" else "attn_z"
    n = len(examples)
    scores = torch.zeros(n, len(layers), width)
    coefs = torch.zeros(n, len(layers), width)
    exact_fraction = []
    for g0 in range(0, n, group_size):
        group = examples[g0:g0 + group_size]
        got, targets = _capture_group(model, tokenizer, group, arch, kind, layers, target, batch_size, progress)
        readout = Readout(arch, got["resid_post"][:, -1], attn_out=got.get("attn_out"), mlp_out=got.get("mlp_out"))
        view = Captured(positions=None, layers=layers, tensors=got)
        bar = progress_bar(len(layers), f"{KINDS[kind]} scores", "layer", enabled=progress)
        for i, layer in enumerate(layers):
            base, values, a = _layer_terms(arch, readout, view, kind, layer)
            if method == "reference":
                s = _scores_vector_by_vector(readout, base, values, a, targets)
            else:
                s, frac = _scores_exact_fast(readout, base, values, a, targets, tol)
                exact_fraction.append(frac)
            scores[g0:g0 + len(group), i] = s.cpu()
            coefs[g0:g0 + len(group), i] = got[coef_point][:, layer].float().cpu()
            bar.update(1)
        bar.close()
    result = _aggregate(scores, KINDS[kind], "logprob_increase", topk,
                        {"target": target, "prompts": n, "tol": tol, "method": method})
    # keep the layer axis complete (unscored layers are zeros; meta["layers"] says which were scored)
    sel = torch.tensor(layers)
    local = result.vectors["topk_index"]  # flat over the scored layers -> flat over all layers
    result.vectors["topk_index"] = sel[local // width] * width + local % width
    for name, col in list(result.columns.items()) + [("coef_mean", coefs.mean(0))]:
        full = torch.zeros(arch.n_layers, width)
        full[sel] = col
        result.columns[name] = full
    result.meta.update({"layers": layers, "head_dim": arch.head_dim if kind == "attn" else None,
                        "exact_sum_fraction": (sum(exact_fraction) / len(exact_fraction)) if exact_fraction else None})
    return result


def _capture_group(model, tokenizer, examples, arch, kind, layers, target, batch_size, progress):
    """Capture what the scores need for a group of prompts; all tensors concatenated over prompts."""
    parts: dict[str, list[torch.Tensor]] = {}
    targets = []
    for batch in prompt_batches(tokenizer, examples, batch_size, model_device(model), "capture", progress):
        got = capture(model, batch.inputs, what=_points(arch, kind))
        targets.append(batch.targets(got.logits, target))
        for name, tensor in got.tensors.items():
            parts.setdefault(name, []).append(tensor)
    return {name: torch.cat(ts) for name, ts in parts.items()}, torch.cat(targets)

