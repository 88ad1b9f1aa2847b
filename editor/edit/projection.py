"""Projections of an MLP's output, folded into its weights, so concept erasure (LEACE) and DAMA's
nullspace projection ship as ordinary checkpoints.

A projection maps the output ``y`` of layer ``l``'s MLP to ``y - A B^T (y - mean)`` (``A``, ``B``:
d x r; ``mean`` None for a projection through the origin). Since ``y = W h + b`` is affine in the
neuron coefficients ``h``, the edited MLP is the same MLP with

    W' = W - A (B^T W)        b' = b - A B^T (b - mean)

(``b`` = 0 for a projection without a bias). A constant left over (``A B^T mean`` with no bias to
hold it) needs a bias: the family's table names the config flag that adds MLP biases
(``ArchSpec.mlp_bias_attr``), and the fold turns it on with zero biases elsewhere; a family without
one is refused rather than shipped without the constant. The same map as forward hooks
(:func:`intervene`) is the exact reference the fold is tested against.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from editor.errors import UserError
from editor.model.arch import Arch, input_dim


@dataclass
class Projection:
    layer: int
    a: torch.Tensor  # d x r
    b: torch.Tensor  # d x r
    mean: torch.Tensor | None = None  # d; None: through the origin
    method: str = ""

    def __call__(self, y: torch.Tensor) -> torch.Tensor:
        a, b = self.a.to(y.device, torch.float32), self.b.to(y.device, torch.float32)
        shifted = y.float() if self.mean is None else y.float() - self.mean.to(y.device, torch.float32)
        return (y.float() - (shifted @ b) @ a.T).to(y.dtype)

    def describe(self) -> dict:
        return {"layer": self.layer, "site": "MLP output", "rank": int(self.a.shape[1]),
                "affine": self.mean is not None, "method": self.method}


@contextmanager
def intervene(model: nn.Module, projections: list[Projection]) -> Iterator[None]:
    """The projections as forward hooks on each MLP output projection; weights untouched."""
    arch = Arch(model)
    handles = [arch.mlp_out(p.layer).register_forward_hook(lambda _m, _i, out, p=p: p(out)) for p in projections]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class Folded:
    """Handle to projections folded in place; ``restore()`` puts every weight, bias and config flag back."""

    def __init__(self, model: nn.Module):
        self.model = model
        self._weights: list[tuple[nn.Module, torch.Tensor]] = []
        self._biases: list[tuple[nn.Module, torch.Tensor | None]] = []
        self._flag: tuple[str, object] | None = None

    def restore(self) -> None:
        with torch.no_grad():
            for module, weight in reversed(self._weights):
                module.weight.copy_(weight)
            for module, bias in reversed(self._biases):
                if bias is None:
                    module.bias = None
                else:
                    module.bias.copy_(bias)
        if self._flag is not None:
            setattr(self.model.config, *self._flag)
        self._weights, self._biases, self._flag = [], [], None

    def __enter__(self) -> "Folded":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def fold(model: nn.Module, projections: list[Projection]) -> Folded:
    """Fold ``projections`` into the MLP output weights (and biases) of ``model``, in place."""
    arch = Arch(model)
    handle = Folded(arch.model)
    try:
        with torch.no_grad():
            if any(p.mean is not None and arch.mlp_out(p.layer).bias is None for p in projections):
                _add_mlp_biases(arch, handle)
            for p in projections:
                _fold_one(arch.mlp_out(p.layer), p, handle)
    except BaseException:
        handle.restore()
        raise
    return handle


def _fold_one(proj: nn.Module, p: Projection, handle: Folded) -> None:
    w = proj.weight
    handle._weights.append((proj, w.detach().clone()))
    a, b = p.a.to(w.device, torch.float32), p.b.to(w.device, torch.float32)
    if input_dim(proj) == 1:  # Linear: [out, in]
        new = w.float() - a @ (b.T @ w.float())
    else:  # Conv1D: [in, out]
        new = w.float() - (w.float() @ b) @ a.T
    w.copy_(new.to(w.dtype))
    if proj.bias is not None:
        handle._biases.append((proj, proj.bias.detach().clone()))
        proj.bias.copy_(p(proj.bias.detach()[None])[0])


def _add_mlp_biases(arch: Arch, handle: Folded) -> None:
    """Turn on the family's MLP-bias flag with zero biases, so the saved config loads them."""
    flag = arch.spec.mlp_bias_attr
    if flag is None:
        raise UserError(f"an affine projection (LEACE) needs a bias on the MLP output, which {arch.model_type} "
                        "models cannot have; use a projection through the origin (dama) for this family")
    handle._flag = (flag, getattr(arch.config, flag, False))
    for layer in range(arch.n_layers):
        for module in (*arch.mlp_in(layer), arch.mlp_out(layer)):
            if module.bias is None:
                handle._biases.append((module, None))
                out = module.weight.shape[0] if input_dim(module) == 1 else module.weight.shape[1]
                module.bias = nn.Parameter(torch.zeros(out, dtype=module.weight.dtype, device=module.weight.device))
    setattr(arch.config, flag, True)
