"""Apply an edit plan: in place on the weights (reversibly), or as hooks on projection inputs.

This is the one place where heads and neurons are zeroed or scaled. Both routes act on the INPUT
features of an output projection (head ``h`` = features ``h*head_dim:(h+1)*head_dim`` of the
attention output projection; neuron ``k`` = feature ``k`` of the MLP output projection), so a
weight edit and the hook intervention give the same logits. Zeroing slices of a projection's
OUTPUT, a common bug, is impossible here by construction.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Iterator

import torch
from torch import nn

from editor.edit.plan import EditPlan
from editor.model import offload
from editor.model.arch import Arch, in_features, input_dim
from editor.model.units import Units


@dataclass
class ProjectionEdit:
    """Factors for some input features of one output projection."""

    name: str  # "layer 3 attention output" etc., for messages
    proj: nn.Module
    features: torch.Tensor  # long, input-feature indices
    factors: torch.Tensor  # float32, same length


def resolve(arch: Arch, plan: EditPlan) -> list[ProjectionEdit]:
    """Group a plan's factors by projection: each head or neuron scales its coefficient part in the
    unit table (a head's input features of the attention output projection, a neuron's of the MLP's)."""
    units = Units(arch)
    grouped: dict[tuple[str, int], tuple[list[int], list[float]]] = {}
    for (kind, layer, index), factor in sorted(plan.factors(arch.n_layers, arch.n_heads, arch.d_ffn).items()):
        if kind == "head":
            arch.head_slice(index)  # the range check, with the user's words
        cols = units[kind].coefficient.features([index]).tolist()
        feats, facs = grouped.setdefault((kind, layer), ([], []))
        feats.extend(cols)
        facs.extend([factor] * len(cols))
    edits = []
    for (kind, layer), (feats, facs) in grouped.items():
        edits.append(ProjectionEdit(
            name=f"layer {layer} {'attention' if kind == 'head' else 'MLP'} output projection",
            proj=arch.layer_module(layer, units[kind].coefficient.module), features=torch.tensor(feats, dtype=torch.long),
            factors=torch.tensor(facs, dtype=torch.float32)))
    return edits


class AppliedEdits:
    """Handle to edits made in place; ``restore()`` writes the saved slices back bitwise.

    Only the touched slices are saved, never a copy of the model. Usable as a context manager.
    """

    def __init__(self) -> None:
        self._saved: list[tuple[nn.Module, int, torch.Tensor, torch.Tensor]] = []
        self.n_features = 0

    def _record(self, proj: nn.Module, dim: int, idx: torch.Tensor, original: torch.Tensor) -> None:
        self._saved.append((proj, dim, idx, original))
        self.n_features += idx.numel()

    @property
    def active(self) -> bool:
        return bool(self._saved)

    def restore(self) -> None:
        with torch.no_grad():
            for proj, dim, idx, original in reversed(self._saved):
                _set_slices(proj, offload.read(proj), dim, idx, original)
        self._saved.clear()

    def __enter__(self) -> "AppliedEdits":
        return self

    def __exit__(self, *exc) -> None:
        self.restore()


def apply_plan(model: nn.Module, plan: EditPlan) -> AppliedEdits:
    """Scale the plan's heads and neurons in the weights of ``model``, in place."""
    arch = Arch(model)
    handle = AppliedEdits()
    try:
        with torch.no_grad():
            for edit in resolve(arch, plan):
                weight = offload.read(edit.proj)  # an offloaded weight: its stored values
                dim = input_dim(edit.proj)
                idx = edit.features.to(weight.device)
                original = weight.index_select(dim, idx)  # a copy of just these slices
                shape = (-1, 1) if dim == 0 else (1, -1)
                _set_slices(edit.proj, weight, dim, idx,
                            original * edit.factors.to(weight.device, weight.dtype).view(shape))
                handle._record(edit.proj, dim, idx, original)
    except BaseException:
        handle.restore()  # never leave a half-applied plan behind
        raise
    return handle


def _set_slices(proj: nn.Module, weight: torch.Tensor, dim: int, idx: torch.Tensor, values: torch.Tensor) -> None:
    """Write ``values`` into the ``idx`` slices of ``proj``'s weight, whose values ``weight`` are
    (``offload.read(proj)``): in place when it is in memory; an offloaded weight's values are
    changed and written back to its store (never a silent no-op)."""
    if not offload.is_offloaded(proj.weight):
        weight.index_copy_(dim, idx, values)
        return
    stored = weight.clone()
    stored.index_copy_(dim, idx.to(stored.device), values.to(stored.device, stored.dtype))
    offload.write(proj, "weight", stored)


@contextmanager
def intervene(model: nn.Module, plan: EditPlan) -> Iterator[None]:
    """The same edits as hooks that scale the projections' inputs; weights stay untouched."""
    arch = Arch(model)
    handles = []
    try:
        for edit in resolve(arch, plan):
            scale = torch.ones(in_features(edit.proj), dtype=torch.float32)
            scale[edit.features] = edit.factors

            def hook(module, args, kwargs, scale=scale):
                x = args[0] if args else kwargs["input"]
                x = x * scale.to(x.device, x.dtype)
                return ((x,) + tuple(args[1:]), kwargs) if args else (args, {**kwargs, "input": x})

            handles.append(edit.proj.register_forward_pre_hook(hook, with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()
