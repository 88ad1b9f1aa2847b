"""Project components to the vocabulary: which tokens a neuron or head pushes up (and down)."""

from __future__ import annotations

import torch

from editor.attribution.readout import norm_weight
from editor.model import offload
from editor.model.arch import Arch, weight_in_slice


@torch.no_grad()
def project(arch: Arch, tokenizer, vector: torch.Tensor, k: int = 10) -> dict[str, list[str]]:
    """Top and bottom ``k`` tokens of ``W_U (g * v)`` for a residual-stream direction ``v``."""
    v = vector.float()
    if arch.spec.norm == "layernorm":
        v = v - v.mean()
    z = offload.read(arch.unembed).float() @ (v * norm_weight(arch, arch.final_norm))
    top, bottom = z.topk(k).indices.tolist(), (-z).topk(k).indices.tolist()
    decode = lambda ids: [tokenizer.decode([i]) for i in ids]  # noqa: E731
    return {"top": decode(top), "bottom": decode(bottom)}


def neuron_tokens(arch: Arch, tokenizer, layer: int, index: int, kind: str = "neuron", k: int = 10) -> dict:
    """Tokens promoted by an FFN neuron's value vector (or an attention value neuron's W_O row)."""
    proj = arch.mlp_out(layer) if kind == "neuron" else arch.attn_out(layer)
    return project(arch, tokenizer, weight_in_slice(proj, index)[0], k)


def head_tokens(arch: Arch, tokenizer, mean_output: torch.Tensor, k: int = 10) -> dict:
    """Tokens promoted by a head's mean output vector (its output depends on the input)."""
    return project(arch, tokenizer, mean_output, k)


def leading_tokens(arch: Arch, tokenizer, scores, top: int, k: int = 6) -> dict[str, list[str]]:
    """The tokens each of the ``top`` leading components of ``scores`` promotes (heads: through their
    mean output, which static head scores keep; neurons: their value vector)."""
    out = {}
    for rec in scores.ranked(top):
        if scores.kind == "head":
            toks = head_tokens(arch, tokenizer, scores.vectors["mean_output"][rec["layer"], rec["index"]], k)
        else:
            toks = neuron_tokens(arch, tokenizer, rec["layer"], rec["index"], kind=scores.kind, k=k)
        out[rec[scores.kind]] = toks["top"]
    return out
