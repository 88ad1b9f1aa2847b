"""Tasks shipped as data files: public benchmarks, addressed by name wherever a task file is taken
(``--data crows-pairs-gender``). Each is a file of the task interface (``editor.tasks.kinds``) under
``editor/tasks/data``; where it comes from and its licence are in ``editor/tasks/data/BENCHMARKS.md``,
and ``editor/tasks/data/build_bias.py`` rebuilds it from the source repositories."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

DATA = Path(__file__).parent / "data"


@dataclass(frozen=True)
class Shipped:
    file: str
    summary: str


SHIPPED: dict[str, Shipped] = {
    "crows-pairs-gender": Shipped("crows-pairs-gender.jsonl",
                                  "CrowS-Pairs, gender: 262 sentence pairs, the stereotype against the same sentence "
                                  "about the other gender (CC BY-SA 4.0)"),
    "winobias": Shipped("winobias.jsonl",
                        "WinoBias test sentences, types 1 and 2: 792 pro- against anti-stereotypical pronoun "
                        "choices (MIT)"),
    "stereoset-gender": Shipped("stereoset-gender.jsonl",
                                "StereoSet intrasentence, gender: 253 contexts with a stereotype, an anti-stereotype "
                                "and an unrelated completion (CC BY-SA 4.0)"),
}


def resolve(spec: str | Path) -> Path:
    """The file a ``--data`` value names: a shipped task's file for its name (unless a file of that
    name exists here: the user's own file wins), else the path as given."""
    path = Path(spec)
    if str(spec) in SHIPPED and not path.exists():
        return DATA / SHIPPED[str(spec)].file
    return path


def is_shipped(spec: str | Path) -> bool:
    return str(spec) in SHIPPED
