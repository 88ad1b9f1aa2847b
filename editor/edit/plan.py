"""Edit plans: which heads and neurons to zero, scale or keep, as data that serialises to JSON.

A head is written ``L.H`` (layer, head) and a neuron ``L.N`` (layer, FFN neuron), 0-based. A plan
is an ordered list of edits; edits on the same component compose by multiplying their factors.

JSON form::

    {"format": "lmedit-plan", "version": 1, "note": "...",
     "edits": [{"op": "zero_head", "target": "3.1"},
               {"op": "scale_neuron", "target": "20.771", "factor": 0.5},
               {"op": "keep_only_neurons", "layers": [17, 29], "keep": ["17.5", "20.771"]}]}

``layers`` of a keep-only edit is an inclusive range.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Literal

from editor.errors import UserError
from editor.ranges import is_index

Kind = Literal["head", "neuron"]
KINDS: tuple[str, ...] = ("head", "neuron")
PLAN_FORMAT = "lmedit-plan"
PLAN_VERSION = 1


def parse_component(text: str, kind: str = "component") -> tuple[int, int]:
    """``"20.771"`` -> ``(20, 771)``; a clear error for anything else."""
    parts = str(text).strip().split(".")
    if len(parts) != 2 or not all(is_index(p) for p in parts):
        raise UserError(f"bad {kind} {text!r}: write LAYER.INDEX with non-negative integers, e.g. 3.1")
    return int(parts[0]), int(parts[1])


def format_component(layer: int, index: int) -> str:
    return f"{layer}.{index}"


@dataclass(frozen=True)
class Edit:
    """Multiply one head's or neuron's contribution by ``factor`` (0 zeroes it)."""

    kind: Kind
    layer: int
    index: int
    factor: float = 0.0

    @property
    def target(self) -> str:
        return format_component(self.layer, self.index)

    def to_json(self) -> dict:
        if self.factor == 0.0:
            return {"op": f"zero_{self.kind}", "target": self.target}
        return {"op": f"scale_{self.kind}", "target": self.target, "factor": self.factor}


@dataclass(frozen=True)
class KeepOnly:
    """Zero every ``kind`` component in layers ``first..last`` (inclusive) except those in ``keep``."""

    kind: Kind
    first: int
    last: int
    keep: frozenset[tuple[int, int]] = field(default_factory=frozenset)

    def to_json(self) -> dict:
        return {"op": f"keep_only_{self.kind}s", "layers": [self.first, self.last],
                "keep": [format_component(l, i) for l, i in sorted(self.keep)]}


_OP_KEYS = {
    "zero_head": {"op", "target"}, "zero_neuron": {"op", "target"},
    "scale_head": {"op", "target", "factor"}, "scale_neuron": {"op", "target", "factor"},
    "keep_only_heads": {"op", "layers", "keep"}, "keep_only_neurons": {"op", "layers", "keep"},
}


def _edit_from_json(item: dict, where: str) -> Edit | KeepOnly:
    if not isinstance(item, dict) or "op" not in item:
        raise UserError(f"{where}: each edit must be an object with an 'op'")
    op = item["op"]
    if op not in _OP_KEYS:
        raise UserError(f"{where}: unknown op {op!r}; known: {', '.join(_OP_KEYS)}")
    unknown = set(item) - _OP_KEYS[op]
    missing = _OP_KEYS[op] - set(item)
    if unknown:
        raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for op {op}")
    if missing:
        raise UserError(f"{where}: op {op} needs key(s) {', '.join(sorted(missing))}")
    kind = "head" if "head" in op else "neuron"
    if op.startswith("keep_only"):
        layers = item["layers"]
        if not (isinstance(layers, list) and len(layers) == 2 and all(isinstance(x, int) for x in layers)
                and 0 <= layers[0] <= layers[1]):
            raise UserError(f"{where}: 'layers' must be [first, last] with 0 <= first <= last")
        keep = frozenset(parse_component(c, kind) for c in item["keep"])
        return KeepOnly(kind, layers[0], layers[1], keep)
    if not isinstance(item["target"], str):  # the JSON number 3.10 would silently become head 3.1
        raise UserError(f"{where}: 'target' must be a string like \"3.1\", got {json.dumps(item['target'])}")
    layer, index = parse_component(item["target"], kind)
    factor = 0.0 if op.startswith("zero") else item["factor"]
    if isinstance(factor, bool) or not isinstance(factor, (int, float)):
        raise UserError(f"{where}: 'factor' must be a number")
    return Edit(kind, layer, index, check_factor(factor, where))


def check_factor(factor: float, where: str = "scale factor") -> float:
    """A finite number: NaN or infinity would be written into the weights and the manifest."""
    if not math.isfinite(factor):
        raise UserError(f"{where}: the factor must be a finite number, got {factor}")
    return float(factor)


@dataclass
class EditPlan:
    """An ordered list of edits, applicable to any model with compatible shapes."""

    edits: list[Edit | KeepOnly] = field(default_factory=list)
    note: str = ""
    # The components edited so far, kept as edits are appended: a prune's zeroed form holds thousands
    # of neurons, and a duplicate check that scanned the list per component would be quadratic.
    _seen: set = field(default_factory=set, init=False, repr=False, compare=False)
    _seen_upto: int = field(default=0, init=False, repr=False, compare=False)

    # Building ---------------------------------------------------------------------------------
    def zero(self, kind: Kind, components: Iterable[str | tuple[int, int]]) -> "EditPlan":
        return self.scale(kind, components, 0.0)

    def scale(self, kind: Kind, components: Iterable[str | tuple[int, int]], factor: float) -> "EditPlan":
        factor = check_factor(factor)
        for c in components:
            layer, index = parse_component(c, kind) if isinstance(c, str) else c
            self.add(Edit(kind, layer, index, factor))
        return self

    def add(self, edit: Edit | KeepOnly) -> "EditPlan":
        """Append ``edit``; a head or neuron edited twice is an error (recorded twice, or the
        second silently compounding the first, is never what was meant)."""
        if isinstance(edit, Edit) and (edit.kind, edit.layer, edit.index) in self._targets():
            raise UserError(f"{edit.kind} {edit.target} is edited twice; give each component once")
        self.edits.append(edit)
        return self

    def _targets(self) -> set:
        """(kind, layer, index) of every single-component edit so far (``edits`` may also have been
        given whole or appended to directly: what is new since the last call is read, a shorter list
        starts over)."""
        if self._seen_upto > len(self.edits):
            self._seen, self._seen_upto = set(), 0
        for e in self.edits[self._seen_upto:]:
            if isinstance(e, Edit):
                self._seen.add((e.kind, e.layer, e.index))
        self._seen_upto = len(self.edits)
        return self._seen

    def keep_only(self, kind: Kind, first: int, last: int, keep: Iterable[str | tuple[int, int]]) -> "EditPlan":
        parsed = frozenset(parse_component(c, kind) if isinstance(c, str) else tuple(c) for c in keep)
        self.edits.append(KeepOnly(kind, first, last, parsed))
        return self

    def __len__(self) -> int:
        return len(self.edits)

    # Resolution -------------------------------------------------------------------------------
    def check_config(self, config) -> None:
        """Every component of the plan exists in a model of this config (layers, heads, neurons),
        checked before the weights load; the same check :meth:`factors` makes on the loaded model."""
        from editor.model.arch import config_dimensions

        dims = config_dimensions(config)
        if dims is not None:
            n_layers, n_heads, width = dims
            self.factors(n_layers, n_heads, lambda _layer: width)

    def factors(self, n_layers: int, n_heads: int, ffn_width) -> dict[tuple[str, int, int], float]:
        """``{(kind, layer, index): factor}`` after expanding keep-only edits and composing repeats.

        ``ffn_width`` is a callable ``layer -> number of neurons``. Components a plan leaves at
        factor 1 are dropped, so a plan never touches weights it does not change.
        """
        out: dict[tuple[str, int, int], float] = {}

        def check(kind: str, layer: int, index: int) -> None:
            if not 0 <= layer < n_layers:
                raise UserError(f"{kind} {layer}.{index}: layer out of range (model has {n_layers} layers)")
            size = n_heads if kind == "head" else ffn_width(layer)
            if not 0 <= index < size:
                raise UserError(f"{kind} {layer}.{index}: index out of range (layer has {size} {kind}s)")

        for edit in self.edits:
            if isinstance(edit, Edit):
                check(edit.kind, edit.layer, edit.index)
                key = (edit.kind, edit.layer, edit.index)
                out[key] = out.get(key, 1.0) * edit.factor
            else:
                for layer, index in edit.keep:
                    check(edit.kind, layer, index)
                    if not edit.first <= layer <= edit.last:
                        raise UserError(f"keep-only {edit.kind} {layer}.{index} lies outside layers "
                                        f"{edit.first}-{edit.last}")
                check(edit.kind, edit.last, 0)
                for layer in range(edit.first, edit.last + 1):
                    size = n_heads if edit.kind == "head" else ffn_width(layer)
                    for index in range(size):
                        if (layer, index) not in edit.keep:
                            out[(edit.kind, layer, index)] = 0.0
        return {k: v for k, v in out.items() if v != 1.0}

    # Serialisation ------------------------------------------------------------------------------
    def to_json(self) -> dict:
        return {"format": PLAN_FORMAT, "version": PLAN_VERSION, "note": self.note,
                "edits": [e.to_json() for e in self.edits]}

    @classmethod
    def from_json(cls, data: dict, where: str = "plan") -> "EditPlan":
        if not isinstance(data, dict):
            raise UserError(f"{where}: a plan is a JSON object with an 'edits' list")
        unknown = set(data) - {"format", "version", "note", "edits"}
        if unknown:
            raise UserError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}")
        if data.get("format", PLAN_FORMAT) != PLAN_FORMAT or data.get("version", PLAN_VERSION) != PLAN_VERSION:
            raise UserError(f"{where}: not an {PLAN_FORMAT} version {PLAN_VERSION} file")
        if not isinstance(data.get("edits"), list):
            raise UserError(f"{where}: 'edits' must be a list")
        plan = cls(note=str(data.get("note", "")))
        for i, item in enumerate(data["edits"]):
            plan.add(_edit_from_json(item, f"{where}: edit {i}"))
        return plan

    def save(self, path: str | Path) -> None:
        from editor.io import write_json_atomic

        write_json_atomic(path, self.to_json())

    @classmethod
    def load(cls, path: str | Path) -> "EditPlan":
        from editor.io import read_json

        return cls.from_json(read_json(path, "plan file"), where=str(path))

    def summary(self) -> str:
        """One line per edit, as a user would write it."""
        lines = []
        for e in self.edits:
            if isinstance(e, Edit):
                lines.append(f"{'zero' if e.factor == 0 else f'scale x{e.factor:g}'} {e.kind} {e.target}")
            else:
                lines.append(f"keep only {len(e.keep)} {e.kind}s in layers {e.first}-{e.last}")
        return "\n".join(lines) if lines else "(empty plan)"
