"""Structured removal: take whole layers, key/value groups and FFN neurons out of a model for real.

Zeroed weights are neither smaller nor faster; removed rows and columns are. A :class:`Removal`
names the units, and the same removal has two forms that must agree to float precision:

* :func:`zeroed` -- in memory, reversible: the removed heads and neurons zeroed through
  :func:`editor.edit.weights.apply_plan` and the removed layers skipped by a hook. The pruning
  search works on this form.
* :func:`shrink` -- a new, smaller model: sliced weights, a config with the new sizes and
  renumbered layers. Plain ``from_pretrained`` loads what it saves.

Units (the architecture table says where each lives):

* an FFN neuron ``k`` is output feature ``k`` of every MLP input projection (gate and up rows, or
  ``fc_in``) and input feature ``k`` of the MLP output projection;
* a key/value group ``g`` is key/value head ``g`` (rows of the key and value projections) with every
  query head that reads it (rows of the query projection, columns of the attention output
  projection); without grouped-query attention a group is one head;
* a layer is a whole decoder block.

transformers configs hold one FFN width and one head count for all layers, so a removal must take
the same number of neurons (and of groups) from every layer it keeps. Families whose config derives
``head_dim`` from the hidden size (GPT-2, GPT-J, GPT-NeoX: ``heads_shrinkable`` is false in the
table) cannot drop heads physically; :func:`shrink` zeroes their heads instead and says so.
"""

from __future__ import annotations

import copy
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import torch
from torch import nn

from editor.edit.plan import EditPlan
from editor.edit.weights import apply_plan
from editor.errors import UserError
from editor.model.arch import Arch, input_dim
from editor.model.units import Units


@dataclass
class Removal:
    """Units to remove, indexed in the ORIGINAL model: layers, and per kept layer groups and neurons."""

    layers: list[int] = field(default_factory=list)
    groups: dict[int, list[int]] = field(default_factory=dict)  # layer -> key/value groups
    neurons: dict[int, list[int]] = field(default_factory=dict)  # layer -> FFN neurons

    # Views ------------------------------------------------------------------------------------
    def kept_layers(self, n_layers: int) -> list[int]:
        return [l for l in range(n_layers) if l not in set(self.layers)]

    def count(self, what: dict[int, list[int]], n_layers: int) -> int:
        """The number of units removed per kept layer (raises if layers differ)."""
        counts = {len(what.get(l, [])) for l in self.kept_layers(n_layers)}
        if len(counts) > 1:
            raise UserError("a physical shrink needs the same number of units removed from every kept layer "
                            f"(transformers configs have one width for all layers); got counts {sorted(counts)}")
        return counts.pop() if counts else 0

    def check(self, arch: Arch) -> None:
        """Indices in range, something left in every layer, uniform counts."""
        for layer in self.layers:
            arch.check_layer(layer)
        if len(set(self.layers)) >= arch.n_layers:
            raise UserError("a removal must keep at least one layer")
        for name, what, size in (("key/value group", self.groups, arch.n_kv_heads), ("neuron", self.neurons, None)):
            for layer, items in what.items():
                arch.check_layer(layer)
                width = size if size is not None else arch.d_ffn(layer)
                if any(not 0 <= i < width for i in items) or len(set(items)) != len(items):
                    raise UserError(f"layer {layer}: {name} indices must be distinct and in 0-{width - 1}")
                if len(items) >= width:
                    raise UserError(f"layer {layer}: a removal must keep at least one {name}")
            self.count(what, arch.n_layers)

    def zero_plan(self, arch: Arch) -> EditPlan:
        """The heads of removed groups and the removed neurons, zeroed (kept layers only)."""
        plan = EditPlan(note="structured removal, zeroed form")
        kept = set(self.kept_layers(arch.n_layers))
        plan.zero("head", [(l, h) for l, gs in sorted(self.groups.items()) if l in kept
                           for g in gs for h in arch.group_heads(g)])
        plan.zero("neuron", [(l, k) for l, ks in sorted(self.neurons.items()) if l in kept for k in ks])
        return plan

    def merged(self, other: "Removal") -> "Removal":
        out = Removal(sorted(set(self.layers) | set(other.layers)), {}, {})
        for mine, theirs, target in ((self.groups, other.groups, out.groups), (self.neurons, other.neurons, out.neurons)):
            for layer in set(mine) | set(theirs):
                target[layer] = sorted(set(mine.get(layer, [])) | set(theirs.get(layer, [])))
        return out

    # JSON ---------------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"layers": sorted(self.layers),
                "groups": {str(l): sorted(v) for l, v in sorted(self.groups.items()) if v},
                "neurons": {str(l): sorted(v) for l, v in sorted(self.neurons.items()) if v}}

    @classmethod
    def from_json(cls, data: dict) -> "Removal":
        return cls([int(l) for l in data.get("layers", [])],
                   {int(l): [int(i) for i in v] for l, v in data.get("groups", {}).items()},
                   {int(l): [int(i) for i in v] for l, v in data.get("neurons", {}).items()})


# The zeroed form ---------------------------------------------------------------------------------
@contextmanager
def skip_layers(model: nn.Module, layers: list[int]) -> Iterator[None]:
    """Make decoder blocks ``layers`` pass their input hidden state through unchanged (hooks)."""
    arch = Arch(model)

    def hook(module, args, kwargs, output):
        hidden = args[0] if args else kwargs["hidden_states"]
        return (hidden,) + tuple(output[1:]) if isinstance(output, tuple) else hidden

    handles = [arch.layers[l].register_forward_hook(hook, with_kwargs=True) for l in layers]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


@contextmanager
def zeroed(model: nn.Module, removal: Removal) -> Iterator[None]:
    """``model`` behaving as if ``removal`` were shrunk out of it; weights restored bitwise on exit."""
    arch = Arch(model)
    removal.check(arch)
    with apply_plan(model, removal.zero_plan(arch)), skip_layers(model, removal.layers):
        yield


# Sizes --------------------------------------------------------------------------------------------
def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def unit_parameters(arch: Arch) -> dict[str, int]:
    """Parameters one neuron and one key/value group own in a layer (layer 0's shapes), and a layer's."""
    units = Units(arch)
    return {"neuron": units.parameters_per_unit("neuron"), "group": units.parameters_per_unit("group"),
            "layer": units.layer_parameters(0)}


def removed_parameters(arch: Arch, removal: Removal) -> int:
    """Parameters a physical shrink takes out (zeroed-only heads count zero)."""
    sizes = unit_parameters(arch)
    kept = removal.kept_layers(arch.n_layers)
    total = sum(_numel(arch.layers[l]) for l in set(removal.layers))
    total += sum(len(removal.neurons.get(l, [])) for l in kept) * sizes["neuron"]
    if arch.spec.heads_shrinkable:
        total += sum(len(removal.groups.get(l, [])) for l in kept) * sizes["group"]
    return total


def parameter_counts(model: nn.Module) -> dict[str, int]:
    """Total parameters and those outside the token embedding and the unembedding."""
    arch = Arch(model)
    seen, total = set(), 0
    for p in arch.model.parameters():
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    embedding = {id(p): p.numel() for m in (arch.model.get_submodule(arch.spec.embed), arch.unembed)
                 for p in m.parameters()}
    return {"total": total, "non_embedding": total - sum(embedding.values())}


# The physical form ----------------------------------------------------------------------------------
def kept_indices(size: int, removed: list[int]) -> torch.Tensor:
    gone = set(removed)
    return torch.tensor([i for i in range(size) if i not in gone], dtype=torch.long)


def _layer_rules(arch: Arch, layer: int, removal: Removal, shrink_heads: bool) -> dict[str, tuple[str, torch.Tensor]]:
    """``{module path: (side, kept indices)}`` from the unit table: side "out" keeps output features,
    "in" input features, "zero_in" zeroes the complement of the kept input features (heads of families
    that cannot shrink them: only their output-projection columns, which silences them)."""
    units, rules = Units(arch), {}
    for kind, removed in (("neuron", removal.neurons.get(layer, [])), ("group", removal.groups.get(layer, []))):
        if not removed:
            continue
        table = units[kind]
        kept = table.kept(removed)
        for part in table.parts:
            if kind == "group" and not shrink_heads:
                if part == table.coefficient:
                    rules[part.module] = ("zero_in", part.features(kept))
            else:
                rules[part.module] = (part.side, part.features(kept))
    return rules


def _slice(module: nn.Module, param: str, tensor: torch.Tensor, side: str, keep: torch.Tensor) -> torch.Tensor:
    if param != "weight":  # a bias follows the output features; input-side edits leave it alone
        return tensor[keep].clone() if side == "out" else tensor.clone()
    in_dim = input_dim(module)
    dim = in_dim if side in ("in", "zero_in") else 1 - in_dim
    if side == "zero_in":
        out = torch.zeros_like(tensor)
        out.index_copy_(dim, keep, tensor.index_select(dim, keep))
        return out
    return tensor.index_select(dim, keep).clone()


def shrink(model: nn.Module, removal: Removal) -> tuple[nn.Module, list[str]]:
    """A new model without the removed units, and notes on what could only be zeroed.

    Its logits equal those of ``model`` under :func:`zeroed` with the same removal (tested on every
    family of the architecture table). ``model`` itself is not changed.
    """
    from transformers import AutoModelForCausalLM
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights

    from editor.model.offload import require_in_memory

    require_in_memory(model, "shrinking")
    arch = Arch(model)
    removal.check(arch)
    spec, config = arch.spec, copy.deepcopy(arch.config)
    n_neurons = removal.count(removal.neurons, arch.n_layers)
    n_groups = removal.count(removal.groups, arch.n_layers)
    notes = []
    shrink_heads = spec.heads_shrinkable
    if n_groups and not shrink_heads:
        notes.append(f"{arch.model_type}: heads cannot be removed physically (its config derives head_dim from "
                     "the hidden size); the removed heads are zeroed in the checkpoint instead")
    kept = removal.kept_layers(arch.n_layers)
    prefix = spec.layers + "."
    state = {}
    rules = {l: _layer_rules(arch, l, removal, shrink_heads) for l in kept}
    for key, tensor in arch.model.state_dict().items():
        if not key.startswith(prefix):
            state[key] = tensor
            continue
        index, _, path = key[len(prefix):].partition(".")
        layer = int(index)
        if layer not in rules:
            continue
        module_path, _, param = path.rpartition(".")
        rule = rules[layer].get(module_path)
        if rule is not None:
            tensor = _slice(arch.layer_module(layer, module_path), param, tensor, *rule)
        state[f"{prefix}{kept.index(layer)}.{path}"] = tensor
    config.num_hidden_layers = len(kept)
    if isinstance(getattr(config, "layer_types", None), list) and len(config.layer_types) == arch.n_layers:
        config.layer_types = [config.layer_types[l] for l in kept]
    if n_neurons:
        setattr(config, spec.ffn_width_attr, arch.d_ffn(0) - n_neurons)
    if n_groups and shrink_heads:
        config.head_dim = arch.head_dim
        config.num_key_value_heads = arch.n_kv_heads - n_groups
        config.num_attention_heads = (arch.n_kv_heads - n_groups) * arch.heads_per_group
    with no_init_weights():  # every weight is loaded next: random init would be wasted (the search shrinks each proposal)
        new = AutoModelForCausalLM.from_config(config, attn_implementation=arch.config._attn_implementation,
                                               dtype=next(arch.model.parameters()).dtype)
    new.tie_weights()  # skipping init also skips the tying post_init does: an untied copy would add the embedding again
    missing, unexpected = new.load_state_dict(state, strict=False)
    missing = [k for k in missing if k not in _tied_keys(new)]
    if missing or unexpected:
        raise RuntimeError(f"shrink produced a state dict that does not fit the new config: missing {missing[:4]}, "
                           f"unexpected {unexpected[:4]}")
    return new.to(next(arch.model.parameters()).device).eval(), notes


def _tied_keys(model: nn.Module) -> set[str]:
    """Parameter names that are the same tensor as another (tied embeddings appear under both)."""
    seen: dict[int, str] = {}
    tied = set()
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in seen:
            tied.add(name)
        seen.setdefault(id(p), name)
    return tied
