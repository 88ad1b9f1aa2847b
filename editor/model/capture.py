"""Capture activations at chosen positions in one forward pass, with hooks only.

No transformers file is patched and the model is never copied. Hooks keep only the chosen positions
(by default the last real token of each row, right under left or right padding) and are removed
when the pass ends, also when it raises.

Capture points, each ``[batch, (position,) layer, ...]``:

* ``resid_pre``   layer input (residual stream before the layer)
* ``attn_out``    output of the attention output projection (sum of head outputs + bias)
* ``resid_mid``   residual stream the MLP reads (layer input for parallel-residual families)
* ``mlp_out``     output of the MLP output projection (sum of neuron contributions + bias)
* ``resid_post``  layer output
* ``head_out``    ``[.., layer, head, d_model]``: each head's slice of the projection input times
                  its weight slice; excludes the projection bias and any post-attention norm
* ``attn_z``      ``[.., layer, heads * head_dim]``: input of the attention output projection
                  (each head's attention-weighted values; feature ``h*head_dim + j`` is an
                  attention value neuron)
* ``neuron_coef`` ``[.., layer, d_ffn]``: input of the MLP output projection (``act(gate) * up``
                  for gated MLPs, ``act(fc_in x)`` otherwise)
* ``attn_probs``  ``[.., layer, head, key_position]``: attention of the chosen query positions
                  (needs ``attn_implementation="eager"``)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import torch
from torch import nn

from editor.errors import UserError
from editor.model.arch import Arch, weight_in_slice

POINTS: tuple[str, ...] = (
    "resid_pre", "attn_out", "resid_mid", "mlp_out", "resid_post", "head_out", "attn_z", "neuron_coef", "attn_probs",
)


def last_token_positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last real token of each row, for left or right padding alike."""
    length = attention_mask.shape[1]
    return length - 1 - attention_mask.long().flip(1).argmax(dim=1)


def encode(tokenizer, prompts: Sequence[str], device: torch.device | str = "cpu", padding_side: str | None = None) -> dict:
    """Tokenise a batch with padding; returns ``input_ids`` and ``attention_mask`` on ``device``."""
    if padding_side is not None:
        tokenizer.padding_side = padding_side
    batch = tokenizer(list(prompts), return_tensors="pt", padding=True)
    return {"input_ids": batch["input_ids"].to(device), "attention_mask": batch["attention_mask"].to(device)}


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Positions counted over real tokens: 0 at each row's first real token, whatever the padding.
    Models with absolute position embeddings (GPT-2) otherwise give different results for the same
    prompt under left and right padding. The one place position ids are computed."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def with_position_ids(model: nn.Module, inputs: dict) -> dict:
    """``inputs`` with :func:`position_ids` added where the model's forward takes them."""
    if "position_ids" in inputs or inputs.get("attention_mask") is None:
        return inputs
    import inspect

    if "position_ids" not in inspect.signature(model.forward).parameters:
        return inputs
    return {**inputs, "position_ids": position_ids(inputs["attention_mask"])}


def pad_rows(rows: list[list[int]], pad_id: int, side: str, device) -> dict:
    """Token rows padded to one width on ``side``, with their attention mask."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - len(row), width) if side == "left" else slice(0, len(row))
        ids[i, span] = torch.tensor(row)
        mask[i, span] = 1
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def token_batch(model: nn.Module, rows: list[list[int]], pad_id: int, device, side: str = "left") -> dict:
    """The one batch builder for token rows: padded (left by default, so every row's last token is
    at the end), with its mask and position ids; what scoring, attribution, pruning scores and
    patching feed the model."""
    return with_position_ids(model, pad_rows(rows, pad_id, side, device))


@dataclass
class Captured:
    """What one pass captured. Position dimension present only when positions were given as 2-D."""

    positions: torch.Tensor
    layers: list[int]
    logits: torch.Tensor | None = None  # [batch, (position,) vocab]
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)

    def __getattr__(self, name: str) -> torch.Tensor:
        tensors = self.__dict__.get("tensors", {})
        if name in tensors:
            return tensors[name]
        if name in POINTS:
            raise AttributeError(f"{name!r} was not captured; pass it in `what`")
        raise AttributeError(name)


def _gather(x: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """``x[b, positions[b, p]]`` -> ``[batch, P, ...]``."""
    rows = torch.arange(x.shape[0], device=x.device)[:, None]
    return x[rows, positions.to(x.device)]


def _first(output):
    return output[0] if isinstance(output, tuple) else output


class _Hooks:
    """Registers the hooks for one pass and stores what they see, per layer."""

    def __init__(self, arch: Arch, what: set[str], layers: list[int], positions: torch.Tensor):
        self.arch, self.what, self.layers, self.positions = arch, what, layers, positions
        self.store: dict[str, dict[int, torch.Tensor]] = {p: {} for p in what}
        self.handles: list = []

    def _keep(self, point: str, layer: int, x: torch.Tensor) -> None:
        self.store[point][layer] = _gather(x, self.positions).detach()

    def register(self) -> None:
        arch, want = self.arch, self.what
        for layer in self.layers:
            block = arch.layers[layer]
            if "resid_pre" in want or ("resid_mid" in want and arch.spec.mlp_norm is None):
                def pre(mod, args, kwargs, layer=layer):
                    x = args[0] if args else kwargs["hidden_states"]
                    if "resid_pre" in want:
                        self._keep("resid_pre", layer, x)
                    if "resid_mid" in want and arch.spec.mlp_norm is None:
                        self._keep("resid_mid", layer, x)  # the MLP reads the layer input (parallel)
                self.handles.append(block.register_forward_pre_hook(pre, with_kwargs=True))
            if "resid_post" in want:
                self.handles.append(block.register_forward_hook(
                    lambda mod, args, out, layer=layer: self._keep("resid_post", layer, _first(out))))
            if "resid_mid" in want and arch.spec.mlp_norm is not None:
                self.handles.append(arch.mlp_norm(layer).register_forward_pre_hook(
                    lambda mod, args, layer=layer: self._keep("resid_mid", layer, args[0])))
            o_proj, down = arch.attn_out(layer), arch.mlp_out(layer)
            if "attn_out" in want:
                self.handles.append(o_proj.register_forward_hook(
                    lambda mod, args, out, layer=layer: self._keep("attn_out", layer, out)))
            if "attn_z" in want:
                self.handles.append(o_proj.register_forward_pre_hook(
                    lambda mod, args, layer=layer: self._keep("attn_z", layer, args[0])))
            if "head_out" in want:
                self.handles.append(o_proj.register_forward_pre_hook(self._head_hook(layer, o_proj)))
            if "mlp_out" in want:
                self.handles.append(down.register_forward_hook(
                    lambda mod, args, out, layer=layer: self._keep("mlp_out", layer, out)))
            if "neuron_coef" in want:
                self.handles.append(down.register_forward_pre_hook(
                    lambda mod, args, layer=layer: self._keep("neuron_coef", layer, args[0])))
            if "attn_probs" in want:
                self.handles.append(arch.attn(layer).register_forward_hook(self._probs_hook(layer)))

    def _head_hook(self, layer: int, proj: nn.Module):
        arch = self.arch

        def hook(mod, args):
            z = _gather(args[0], self.positions)  # [B, P, H*dh]
            w = weight_in_slice(proj, slice(0, arch.n_heads * arch.head_dim))  # [H*dh, d_model]
            z = z.reshape(*z.shape[:2], arch.n_heads, arch.head_dim)
            w = w.reshape(arch.n_heads, arch.head_dim, w.shape[-1]).to(z.dtype)
            self.store["head_out"][layer] = torch.einsum("bphd,hdo->bpho", z, w).detach()
        return hook

    def _probs_hook(self, layer: int):
        def hook(mod, args, out):
            probs = out[1] if isinstance(out, tuple) and len(out) > 1 else None
            if probs is None:
                raise UserError("attention probabilities are not returned by this attention implementation; "
                                "load the model with attn_implementation='eager'")
            # [B, H, Tq, Tk] -> [B, P, H, Tk] at the chosen query positions
            self._keep("attn_probs", layer, probs.transpose(1, 2))
        return hook

    def remove(self) -> None:
        for h in self.handles:
            h.remove()
        self.handles.clear()

    def stacked(self, point: str) -> torch.Tensor:
        return torch.stack([self.store[point][layer] for layer in self.layers], dim=2)


@torch.no_grad()
def capture(
    model: nn.Module,
    inputs: dict,
    what: Iterable[str] = POINTS,
    positions: torch.Tensor | None = None,
    layers: Iterable[int] | None = None,
) -> Captured:
    """Run ``model`` once on ``inputs`` (``input_ids``, ``attention_mask``) and capture ``what``.

    ``positions``: ``[batch]`` (one position per row) or ``[batch, P]``; default the last real token.
    ``layers``: subset of layers to capture (default all); the layer dimension follows its order.
    """
    arch = Arch(model)
    what = set(what)
    unknown = what - set(POINTS)
    if unknown:
        raise UserError(f"unknown capture point(s) {', '.join(sorted(unknown))}; known: {', '.join(POINTS)}")
    layers = list(range(arch.n_layers)) if layers is None else [int(l) for l in layers]
    for layer in layers:
        arch.check_layer(layer)
    mask = inputs.get("attention_mask")
    if mask is None:
        mask = torch.ones_like(inputs["input_ids"])
    if positions is None:
        positions = last_token_positions(mask)
    squeeze = positions.dim() == 1
    pos2d = positions[:, None] if squeeze else positions

    hooks = _Hooks(arch, what, layers, pos2d)
    try:
        hooks.register()
        out = model(**with_position_ids(model, inputs), use_cache=False)
    finally:
        hooks.remove()
    logits = _gather(out.logits, pos2d)
    tensors = {p: hooks.stacked(p) for p in what}
    if squeeze:
        logits = logits[:, 0]
        tensors = {p: t[:, 0] for p, t in tensors.items()}
    return Captured(positions=positions, layers=layers, logits=logits, tensors=tensors)


def model_device(model) -> torch.device:
    """Where inputs go: the first parameter in memory (offloaded ones sit on the meta device and are
    brought to the execution device by accelerate's hooks)."""
    for param in model.parameters():
        if param.device.type != "meta":
            return param.device
    return torch.device("cpu")
