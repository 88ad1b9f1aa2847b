"""Reading a residual-stream vector out as log-probabilities, with the final norm's scale frozen.

docs/methods.md, section 1: ``logits(v) = W_U (g * v / sigma)`` where ``sigma`` is the final norm's
scale of the ORIGINAL final hidden state at the read position; candidates are not re-normalised.
For LayerNorm families the candidate is mean-centred and the norm's bias dropped; Gemma's RMSNorm
multiplies by ``1 + weight``; a final-logit soft-cap (Gemma 2/3) is applied to the logits.

Gemma 2/3 also normalise the attention and MLP outputs before the residual add. A head's or neuron's
contribution to the residual therefore passes through that post norm; we freeze its scale too (the
scale of the original attention / MLP output at the read position), so contributions stay additive.
"""

from __future__ import annotations

import torch
from torch import nn

from editor.model import offload
from editor.model.arch import Arch


def norm_weight(arch: Arch, norm: nn.Module) -> torch.Tensor:
    """The effective elementwise gain of a norm (``1 + weight`` for Gemma)."""
    w = offload.read(norm).detach().float()
    return 1.0 + w if arch.spec.norm == "rms_plus_one" else w


def norm_scale(arch: Arch, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The denominator the norm divides ``x`` by (RMS, or standard deviation for LayerNorm)."""
    x = x.float()
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps", None) or 1e-6
    if arch.spec.norm == "layernorm":
        return torch.sqrt(x.var(-1, unbiased=False) + eps)
    return torch.sqrt(x.pow(2).mean(-1) + eps)


class Readout:
    """Frozen-denominator readout for one batch of prompts.

    ``final_hidden``: ``[B, d]`` original final hidden state at the read position. Optional
    ``attn_out`` / ``mlp_out``: ``[B, L, d]`` originals, needed only for families with post norms.
    """

    def __init__(self, arch: Arch, final_hidden: torch.Tensor, attn_out: torch.Tensor | None = None,
                 mlp_out: torch.Tensor | None = None):
        self.arch = arch
        unembed = arch.unembed
        self.W_U = offload.read(unembed).detach().float()  # [V, d]
        self.b_U = None if getattr(unembed, "bias", None) is None else offload.read(unembed, "bias").detach().float()
        self.gain = norm_weight(arch, arch.final_norm)  # [d]
        self.sigma = norm_scale(arch, arch.final_norm, final_hidden)  # [B]
        self.softcap = arch.logit_softcap
        self._originals = {"attn": attn_out, "mlp": mlp_out}
        self._post_sigma: dict[str, torch.Tensor] = {}

    def post_sigma(self, kind: str) -> torch.Tensor:
        """``[B, L]`` frozen scale of the post norm of ``kind`` ("attn" or "mlp")."""
        if kind not in self._post_sigma:
            path = self.arch.spec.attn_post_norm if kind == "attn" else self.arch.spec.mlp_post_norm
            original = self._originals[kind]
            if original is None:
                raise ValueError(f"{self.arch.model_type} normalises sublayer outputs ({path}): "
                                 f"pass the original {kind} outputs")
            self._post_sigma[kind] = norm_scale(self.arch, self.arch.layers[0].get_submodule(path), original)
        return self._post_sigma[kind]

    # Residual contributions -------------------------------------------------------------------
    def post_gain(self, kind: str, layer: int) -> torch.Tensor | None:
        """Gain of the post norm of ``kind`` ("attn" or "mlp") in ``layer``, or None."""
        path = self.arch.spec.attn_post_norm if kind == "attn" else self.arch.spec.mlp_post_norm
        return None if path is None else norm_weight(self.arch, self.arch.layers[layer].get_submodule(path))

    def contribution_scale(self, kind: str, layer: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """(gain ``[d]``, per-prompt 1/sigma ``[B]``) mapping a sublayer output to its residual contribution."""
        gain = self.post_gain(kind, layer)
        if gain is None:
            return None, None
        return gain, 1.0 / self.post_sigma(kind)[:, layer]

    def to_residual(self, kind: str, layer: int, vectors: torch.Tensor) -> torch.Tensor:
        """Contribution to the residual of sublayer-output vectors ``[B, ..., d]`` (frozen post norm)."""
        gain, inv = self.contribution_scale(kind, layer)
        if gain is None:
            return vectors.float()
        shape = (-1,) + (1,) * (vectors.dim() - 1)
        return vectors.float() * gain * inv.view(shape)

    # Logits -----------------------------------------------------------------------------------
    def direction(self, vectors: torch.Tensor) -> torch.Tensor:
        """``g * center(v)``: what the unembedding sees before division by sigma."""
        v = vectors.float()
        if self.arch.spec.norm == "layernorm":
            v = v - v.mean(-1, keepdim=True)
        return v * self.gain

    def pre_logits(self, vectors: torch.Tensor, prompt: int | None = None) -> torch.Tensor:
        """Logits before any soft-cap; linear in the vectors.

        Row b of ``vectors`` uses prompt b's sigma, or every vector uses prompt ``prompt``'s.
        """
        if prompt is None:
            sigma = self.sigma.view((-1,) + (1,) * (vectors.dim() - 1))
        else:
            sigma = self.sigma[prompt]
        z = (self.direction(vectors) / sigma) @ self.W_U.T
        return z if self.b_U is None else z + self.b_U

    def logits(self, vectors: torch.Tensor, prompt: int | None = None) -> torch.Tensor:
        """``[B, ..., d]`` candidate residual vectors -> ``[B, ..., V]``."""
        return self.cap(self.pre_logits(vectors, prompt))

    def cap(self, z: torch.Tensor) -> torch.Tensor:
        return z if self.softcap is None else self.softcap * torch.tanh(z / self.softcap)

    def logprob(self, vectors: torch.Tensor, targets: torch.Tensor, prompt: int | None = None) -> torch.Tensor:
        """log p(target | v) for ``[B, ..., d]`` vectors and ``[B]`` target ids -> ``[B, ...]``.

        With ``prompt``, ``vectors`` is ``[..., d]`` and ``targets`` one id, all for that prompt.
        """
        z = self.logits(vectors, prompt)
        if prompt is not None:
            return z[..., int(targets)] - torch.logsumexp(z, dim=-1)
        idx = targets.view((-1,) + (1,) * (z.dim() - 1)).expand(*z.shape[:-1], 1)
        return z.gather(-1, idx).squeeze(-1) - torch.logsumexp(z, dim=-1)
