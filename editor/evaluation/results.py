"""Evaluation results: measures with intervals, per-model evaluations, before/after comparisons."""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from editor.events import artifact
from editor.io import write_json_atomic, write_text_atomic
from editor.tables import format_table, markdown_table


@dataclass
class Measure:
    """One number with its 95% interval and sample count.

    ``per_unit`` holds the value of each unit (token, prompt, profession) so two models evaluated on
    the same units can be compared pairwise; ``statistic`` says how units combine (mean, or exp of
    the mean for perplexity) and ``block`` how many consecutive units the bootstrap keeps together.
    """

    value: float
    low: float
    high: float
    n: int
    unit: str
    better: str  # "higher", "lower" or "zero"
    per_unit: list[float] | None = None
    statistic: str = "mean"
    block: int = 1

    def cell(self, digits: int = 3) -> str:
        return f"{_num(self.value, digits)} [{_num(self.low, digits)}, {_num(self.high, digits)}]"


@dataclass
class Change:
    """after - before on the same units, with a paired bootstrap interval."""

    value: float
    low: float
    high: float
    n: int

    @property
    def significant(self) -> bool:
        return not (self.low <= 0 <= self.high) if not math.isnan(self.low) else False

    def cell(self, digits: int = 3) -> str:
        mark = " *" if self.significant else ""
        return f"{_num(self.value, digits, sign=True)} [{_num(self.low, digits, True)}, {_num(self.high, digits, True)}]{mark}"


@dataclass
class TaskResult:
    task: str
    config: dict
    measures: dict[str, Measure]
    seconds: float
    details: dict = field(default_factory=dict)


@dataclass
class Evaluation:
    """Every task's measures for one model."""

    model: str
    tasks: dict[str, TaskResult]
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict) -> "Evaluation":
        tasks = {name: TaskResult(t["task"], t["config"], {k: Measure(**m) for k, m in t["measures"].items()},
                                  t["seconds"], t.get("details", {})) for name, t in data["tasks"].items()}
        return cls(data["model"], tasks, data.get("meta", {}))

    def rows(self) -> list[dict]:
        return [{"task": name, "metric": key, "n": m.n, "unit": m.unit, "value": m.cell()}
                for name, t in self.tasks.items() for key, m in t.measures.items()]

    def table(self) -> str:
        return format_table(self.rows(), ["task", "metric", "n", "unit", "value"])

    def markdown(self) -> str:
        head = f"# Evaluation of `{self.model}`\n\nValues are followed by their 95% interval.\n\n"
        return head + markdown_table(self.rows(), ["task", "metric", "n", "unit", "value"]) + "\n"

    def save(self, out: str | Path, stem: str = "evaluation") -> dict[str, Path]:
        return _save(out, stem, self.to_json(), self.markdown())


@dataclass
class Comparison:
    """Two evaluations on the same units (a base model before and an edited one after)."""

    before: Evaluation
    after: Evaluation
    changes: dict[str, dict[str, Change]]

    def to_json(self) -> dict:
        return {"before": self.before.to_json(), "after": self.after.to_json(),
                "changes": {t: {k: asdict(c) for k, c in cs.items()} for t, cs in self.changes.items()}}

    def rows(self) -> list[dict]:
        rows = []
        for name, task in self.after.tasks.items():
            for key, after in task.measures.items():
                before = self.before.tasks.get(name, None)
                b = before.measures.get(key) if before else None
                change = self.changes.get(name, {}).get(key)
                rows.append({"task": name, "metric": key, "n": after.n, "better": after.better,
                             "before": b.cell() if b else "-", "after": after.cell(),
                             "change": change.cell() if change else "-"})
        return rows

    COLUMNS = ["task", "metric", "n", "better", "before", "after", "change"]

    def table(self) -> str:
        return format_table(self.rows(), self.COLUMNS)

    def markdown(self) -> str:
        head = (f"# `{self.after.model}` against `{self.before.model}`\n\n"
                "Values are followed by their 95% interval; a change marked * has a paired 95% interval "
                "that excludes zero.\n\n")
        return head + markdown_table(self.rows(), self.COLUMNS) + "\n"

    def save(self, out: str | Path, stem: str = "evaluation") -> dict[str, Path]:
        return _save(out, stem, self.to_json(), self.markdown())


def _save(out, stem, data, markdown) -> dict[str, Path]:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md"}
    write_json_atomic(paths["json"], data)
    write_text_atomic(paths["md"], markdown)
    for path in paths.values():
        artifact(path, "results")
    return paths


def load_result(path: str | Path) -> Evaluation | Comparison:
    data = json.loads(Path(path).read_text())
    if "changes" in data:
        changes = {t: {k: Change(**c) for k, c in cs.items()} for t, cs in data["changes"].items()}
        return Comparison(Evaluation.from_json(data["before"]), Evaluation.from_json(data["after"]), changes)
    return Evaluation.from_json(data)


def _num(x: float, digits: int, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "nan"
    return f"{x:+.{digits}f}" if sign else f"{x:.{digits}f}"
