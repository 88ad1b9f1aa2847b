"""The unit table: which slices of which tensors each structural unit owns, described once.

Every operation on a unit reads this description (as Torch-Pruning's dependency groups are read by
its pruners): zeroing a head or neuron (:mod:`editor.edit.weights`, through the unit's
``coefficient`` part), physical removal (:mod:`editor.edit.shrink`), parameter counts, and the
magnitude, Wanda and Taylor scores (:mod:`editor.prune.scores`). The table is derived from the
architecture table, so a new family needs no entry here.

Unit kinds, per layer:

* ``neuron`` ``k``: output feature ``k`` of every MLP input projection (gate and up, or ``fc_in``;
  weight row and bias entry) and input feature ``k`` of the MLP output projection;
* ``head`` ``h``: its query rows (where the query projection is a module of its own) and its input
  features of the attention output projection; its keys and values are shared with the other heads
  of its group, so a head alone owns none;
* ``group`` ``g`` (key/value group): key/value head ``g`` (rows of the key and value projections)
  with every query head that reads it (transformers' ``repeat_kv`` puts them side by side, so a
  group is one contiguous block of the query rows and of the output projection's input); without
  grouped-query attention a group is one head;
* a ``layer`` is the whole decoder block (no slices: it goes whole).

Where Q, K and V are one fused module (GPT-2, GPT-NeoX), heads and groups own only their input
features of the output projection: the fused rows interleave differently per family and those
families cannot drop heads physically anyway (``heads_shrinkable`` is false).

Each part is a contiguous block per unit: unit ``i`` owns features ``[i * width, (i + 1) * width)``
of its side of the module.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from editor.model.arch import Arch, input_dim

KINDS = ("neuron", "head", "group")


@dataclass(frozen=True)
class Part:
    """The features one unit owns in one projection of its layer."""

    module: str  # path below ``layers.N`` (architecture table)
    side: str  # "out": output features (weight rows of a Linear, and the bias entries); "in": input features
    width: int  # features per unit

    def features(self, units) -> torch.Tensor:
        """The feature indices ``units`` own here (long tensor, in the order given)."""
        units = torch.as_tensor(list(units), dtype=torch.long)
        return (units[:, None] * self.width + torch.arange(self.width)).reshape(-1)

    def dim(self, module: nn.Module) -> int:
        """The weight dimension this part slices (orientation by type, as the architecture table says)."""
        d_in = input_dim(module)
        return d_in if self.side == "in" else 1 - d_in


@dataclass(frozen=True)
class UnitKind:
    """One kind of unit: how many a layer has and every part each one owns."""

    name: str
    count: int  # per layer (layer 0's; a shrunk model's config holds one width for all layers)
    parts: tuple[Part, ...]
    coefficient: Part  # what an edit scales: the unit's input features of the output projection

    def kept(self, removed) -> torch.Tensor:
        gone = set(removed)
        return torch.tensor([i for i in range(self.count) if i not in gone], dtype=torch.long)


class Units:
    """The unit table of one model."""

    def __init__(self, arch: Arch):
        self.arch = arch
        spec, d = arch.spec, arch.head_dim
        q, k, v = spec.attn_qkv
        fused = q == k
        self.fused_qkv = fused
        out_cols = Part(spec.attn_out, "in", d)
        head_parts = (out_cols,) if fused else (Part(q, "out", d), out_cols)
        group_width = arch.heads_per_group * d
        group_parts = ((Part(spec.attn_out, "in", group_width),) if fused else
                       (Part(q, "out", group_width), Part(k, "out", d), Part(v, "out", d),
                        Part(spec.attn_out, "in", group_width)))
        neuron_out = Part(spec.mlp_out, "in", 1)
        self.kinds: dict[str, UnitKind] = {
            "neuron": UnitKind("neuron", arch.d_ffn(0), tuple(Part(p, "out", 1) for p in spec.mlp_in) + (neuron_out,),
                               neuron_out),
            "head": UnitKind("head", arch.n_heads, head_parts, out_cols),
            "group": UnitKind("group", arch.n_kv_heads, group_parts, group_parts[-1]),
        }

    def __getitem__(self, kind: str) -> UnitKind:
        return self.kinds[kind]

    def module(self, layer: int, part: Part) -> nn.Module:
        return self.arch.layer_module(layer, part.module)

    def module_paths(self) -> list[str]:
        """Every projection a neuron or key/value group owns features of, once each."""
        return list(dict.fromkeys(p.module for kind in ("neuron", "group") for p in self[kind].parts))

    def per_unit(self, kind: str, per_feature) -> torch.Tensor:
        """``[count]``: the sum over a unit's parts of ``per_feature(part)`` (one value per owned
        feature of the part's module, on its side), grouped into units."""
        table = self[kind]
        return sum(per_feature(part).view(table.count, part.width).sum(1) for part in table.parts)

    def parameters_per_unit(self, kind: str) -> int:
        """Parameters one unit owns (layer 0's shapes): its weight slices, and its bias entries on the
        output side."""
        total = 0
        for part in self[kind].parts:
            module = self.module(0, part)
            weight = module.weight
            per_feature = weight.numel() // weight.shape[part.dim(module)]
            total += part.width * per_feature
            bias = getattr(module, "bias", None)
            if part.side == "out" and bias is not None:
                total += part.width
        return total

    def layer_parameters(self, layer: int = 0) -> int:
        return sum(p.numel() for p in self.arch.layers[layer].parameters())
