"""Neuron importance: log-probability increase of every FFN neuron and attention value neuron.

Score of neuron k in layer l (REFERENCE.md 1): ``logp(w | x + m_k f_k) - logp(w | x)`` with ``x`` the
residual the sublayer reads (``x_mid`` for FFN neurons, ``x_in`` for attention value neurons),
``m_k`` the coefficient (input of the output projection) and ``f_k`` its value vector.

The exact fast path (REFERENCE.md 7): with the final-norm scale frozen, candidate logits are linear,
``z(x + m f) = z(x) + (m / sigma) u_k`` with ``u_k = W_U (g * f_k)`` independent of the prompt. The
log-sum-exp is decided by tokens near the top, and token v can move by at most
``|m / sigma| * ||W_U[v]|| * ||g * f_k||`` (Cauchy-Schwarz). Tokens that cannot come within
``margin`` (default 40 nats) of the top are skipped: they change the log-sum-exp by less than
``vocab * e^-margin`` (about 2e-13 for the default model). ``u_k`` is only computed for tokens that
survive for some prompt of the batch. ``margin=None`` computes the full vocabulary.
"""

from __future__ import annotations

import torch

from editor.attribution.common import model_device, progress_bar, prompt_batches
from editor.attribution.heads import _aggregate
from editor.attribution.readout import Readout
from editor.attribution.results import ComponentScores
from editor.model.arch import Arch, weight_in_slice
from editor.model.capture import capture
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
                       targets: torch.Tensor, margin: float | None) -> tuple[torch.Tensor, float]:
    """``[B, F]`` scores and the mean number of vocabulary tokens kept per prompt."""
    W_U = readout.W_U
    V = W_U.shape[0]
    a = a / readout.sigma[:, None]  # candidate pre-logits = z0 + a[b, k] * u_k
    D = readout.direction(values)  # [F, d]
    z0 = readout.pre_logits(base)  # [B, V]
    zc0 = readout.cap(z0)
    lse0 = torch.logsumexp(zc0, dim=-1)
    rows = torch.arange(len(targets), device=z0.device)
    if margin is None:
        keep = torch.ones_like(zc0, dtype=torch.bool)
    else:
        s = D.norm(dim=-1)  # [F]
        r = W_U.norm(dim=-1)  # [V]
        eps = (a.abs() * s).amax(dim=1)  # [B]: largest possible shift per unit token norm
        top = zc0.argmax(dim=-1)
        lower = zc0[rows, top] - eps * r[top]  # the top token alone keeps the LSE above this
        keep = zc0 + eps[:, None] * r >= (lower - margin)[:, None]
    keep[rows, targets] = True
    union = keep.any(dim=0).nonzero().squeeze(1)  # tokens some prompt needs
    U = D @ W_U[union].T  # [F, |S|]
    position = torch.full((V,), -1, dtype=torch.long, device=z0.device)
    position[union] = torch.arange(len(union), device=z0.device)
    scores = torch.empty_like(a)
    chunk = max(1, CHUNK_ELEMENTS // max(1, len(union)))
    for b in range(len(targets)):
        cols = position[keep[b].nonzero().squeeze(1)]
        tokens = union[cols]
        t = int(targets[b])
        ut = U[:, position[t]]  # [F]
        zt_new = readout.cap(z0[b, t] + a[b] * ut)
        for k0 in range(0, U.shape[0], chunk):
            k1 = k0 + chunk
            Z = readout.cap(z0[b, tokens][None, :] + a[b, k0:k1, None] * U[k0:k1][:, cols])
            lse_new = torch.logsumexp(Z, dim=-1)
            scores[b, k0:k1] = (zt_new[k0:k1] - lse_new) - (zc0[b, t] - lse0[b])
    return scores, float(keep.sum(1).float().mean())


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
                            margin: float | None = 40.0, method: str = "fast", progress: bool = True) -> ComponentScores:
    """Score every FFN neuron (``kind="mlp"``) or attention value neuron (``kind="attn"``) of ``layers``.

    Returns mean/std/top-k counts of the score over prompts and ``coef_mean``, the mean coefficient.
    ``method="reference"`` runs the slow vector-by-vector computation (tests and benchmarks).
    """
    arch = Arch(model)
    layers = list(range(arch.n_layers)) if layers is None else list(layers)
    width = arch.d_ffn() if kind == "mlp" else arch.n_heads * arch.head_dim
    n = len(examples)
    scores = torch.zeros(n, arch.n_layers, width)
    coefs = torch.zeros(n, arch.n_layers, width)
    kept = []
    for batch in prompt_batches(tokenizer, examples, batch_size, model_device(model), f"{KINDS[kind]} scores", progress):
        got = capture(model, batch.inputs, what=_points(arch, kind))
        targets = batch.targets(got.logits, target)
        readout = Readout(arch, got.resid_post[:, -1], attn_out=got.tensors.get("attn_out"),
                          mlp_out=got.tensors.get("mlp_out"))
        rows = slice(batch.start, batch.start + len(batch.examples))
        bar = progress_bar(len(layers), "layers", "layer", enabled=progress and len(layers) > 1)
        for layer in layers:
            base, values, a = _layer_terms(arch, readout, got, kind, layer)
            if method == "reference":
                s = _scores_vector_by_vector(readout, base, values, a, targets)
            else:
                s, k = _scores_exact_fast(readout, base, values, a, targets, margin)
                kept.append(k)
            scores[rows, layer] = s.cpu()
            coefs[rows, layer] = (got.neuron_coef if kind == "mlp" else got.attn_z)[:, layer].float().cpu()
            bar.update(1)
        bar.close()
    sel = torch.tensor(layers)
    result = _aggregate(scores[:, sel], KINDS[kind], "logprob_increase", topk,
                        {"target": target, "prompts": n, "margin": margin, "method": method})
    # keep the layer axis complete: unscored layers are zeros and say so in meta
    for name, col in list(result.columns.items()):
        full = torch.zeros(arch.n_layers, width)
        full[sel] = col
        result.columns[name] = full
    full_coef = torch.zeros(arch.n_layers, width)
    full_coef[sel] = coefs[:, sel].mean(0)
    result.columns["coef_mean"] = full_coef
    result.meta.update({"layers": layers, "head_dim": arch.head_dim if kind == "attn" else None,
                        "mean_tokens_kept": (sum(kept) / len(kept)) if kept else None, "vocab": arch.vocab_size})
    return result

