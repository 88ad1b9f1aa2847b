"""Typed attribution results: ranked records, JSON, CSV and a layers x heads heatmap."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from editor.events import artifact
from editor.io import write_text_atomic
from editor.plots import heatmap

# Kinds patched position by position whose index holds a head (or a query or key) and a position:
# ``index = head * positions + (position + positions)``.
INDEXED_POSITIONS = ("head_position", "query_position", "key_position")


@dataclass
class ComponentScores:
    """Scores of every head or neuron: ``columns[name]`` is a ``[layers, per_layer]`` tensor.

    ``primary`` names the column that ranks components (descending). Components are named ``L.I``.
    """

    kind: str  # "head", "neuron" (FFN) or "attn_neuron" (attention value neuron: head dimension)
    method: str
    primary: str
    columns: dict[str, torch.Tensor]
    meta: dict = field(default_factory=dict)
    vectors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)  # not serialised

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.columns[self.primary].shape)  # type: ignore[return-value]

    def name(self, flat: int) -> str:
        per = self.shape[1]
        return f"{flat // per}.{flat % per}"

    def ranked(self, top: int | None = None, by: str | None = None, absolute: bool = False) -> list[dict]:
        """Records ``{"component", "layer", "index", "rank", <columns>}`` best first."""
        key = self.columns[by or self.primary].flatten()
        order = self._tiered(torch.argsort(key.abs() if absolute else key, descending=True, stable=True), by)
        if top is not None:
            order = order[:top]
        flat = {name: col.flatten() for name, col in self.columns.items()}
        per = self.shape[1]
        out = []
        for rank, i in enumerate(order.tolist(), 1):
            rec = {"rank": rank, self.kind: self.label(i // per, i % per), "layer": i // per, "index": i % per}
            rec.update({name: round(float(col[i]), 7) for name, col in flat.items()})
            out.append(rec)
        return out

    def label(self, layer: int, index: int) -> str:
        """``L.I``; by position (patching): ``L@-p`` (p tokens from the prompt's end), or ``L.H@-p`` for a
        head at a position (``index`` = head * positions + position offset)."""
        if self.kind in INDEXED_POSITIONS:
            p = len(self.meta["positions"])
            return f"{layer}.{index // p}@{index % p - p}"
        if self.kind.endswith("_position"):
            return f"{layer}@{index - self.shape[1]}"
        return f"{layer}.{index}"

    def _tiered(self, order: torch.Tensor, by: str | None = None) -> torch.Tensor:
        """Rows measured exactly (an ``exact`` column of 1s) rank before estimated ones when ranking
        by the primary column; the order within each tier is kept."""
        if "exact" not in self.columns or by not in (None, self.primary):
            return order
        exact = self.columns["exact"].flatten()[order]
        return order[torch.argsort(exact, descending=True, stable=True)]

    def ranked_names(self, layers: list[int] | None = None) -> list[str]:
        """Component names best first by the primary column, over ``layers`` only when given
        (unscored layers hold zeros and must not compete)."""
        column = self.columns[self.primary] if layers is None else self.columns[self.primary][layers]
        rows = list(range(column.shape[0])) if layers is None else layers
        width = column.shape[1]
        order = column.flatten().argsort(descending=True, stable=True)
        if layers is None:
            order = self._tiered(order)
        return [f"{rows[i // width]}.{i % width}" for i in order.tolist()]

    def top_components(self, k: int, by: str | None = None) -> list[str]:
        return [r[self.kind] for r in self.ranked(k, by)]

    def to_json(self, top: int | None = 50) -> dict:
        return {
            "kind": self.kind, "method": self.method, "primary": self.primary, "shape": list(self.shape),
            "meta": self.meta, "top": self.ranked(top),
            "columns": {name: col.tolist() for name, col in self.columns.items()},
        }

    @classmethod
    def from_json(cls, data: dict) -> "ComponentScores":
        return cls(kind=data["kind"], method=data["method"], primary=data["primary"],
                   columns={k: torch.tensor(v) for k, v in data["columns"].items()}, meta=data.get("meta", {}))

    def to_csv(self) -> str:
        rows = self.ranked()
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
        return buf.getvalue()

    def save(self, out_dir: str | Path, stem: str | None = None, top: int = 50) -> dict[str, Path]:
        """Write ``<stem>.json``, ``<stem>.csv`` and, for heads, ``<stem>.png``; return the paths."""
        out_dir = Path(out_dir)
        stem = stem or f"{self.kind}_{self.method}"
        paths = {
            "json": write_text_atomic(out_dir / f"{stem}.json", json.dumps(self.to_json(top), indent=1) + "\n"),
            "csv": write_text_atomic(out_dir / f"{stem}.csv", self.to_csv()),
        }
        if self.kind == "head":
            paths["png"] = heatmap(self.columns[self.primary], out_dir / f"{stem}.png",
                                   title=f"{self.method}: {self.primary}")
        elif self.kind.endswith("_position") and "positions" in self.meta:
            matrix = self.columns[self.primary]
            rows = None
            if self.kind in INDEXED_POSITIONS:  # one row per head: [layers * heads, positions]
                matrix = matrix.reshape(-1, len(self.meta["positions"]))
                heads = matrix.shape[0] // self.shape[0]
                rows = [f"{r // heads}.{r % heads}" for r in range(matrix.shape[0])]
            paths["png"] = heatmap(matrix, out_dir / f"{stem}.png", title=f"{self.method} ({self.kind}): {self.primary}",
                                   xlabel="position", xticklabels=self.meta["positions"], yticklabels=rows)
        for path in paths.values():
            artifact(path, "results")
        return paths

    def table(self, top: int = 10) -> str:
        """A readable ranked table for the terminal."""
        from editor.tables import format_table

        cell = lambda c, v: ("yes" if v else "estimate") if c == "exact" else f"{v:.4g}"  # noqa: E731
        rows = [{"rank": rank, self.kind: r[self.kind], **{c: cell(c, r[c]) for c in self.columns}}
                for rank, r in enumerate(self.ranked(top), 1)]
        return format_table(rows, ["rank", self.kind, *self.columns], right=True)
