"""Bias probes of the user's own for the gender-debias recipe: a contrast file whose ``answer`` is
the stereotyped completion and ``corrupt_answer`` the anti-stereotyped one ("The engineer said
that" -> " he" against " she"). Its rows are split (seeded, whole groups) into the recipe's choose /
validate / test shares; the choose rows join the gradient methods' and FASP's bias objective, and
the probes' bias (mean log p(answer) - log p(corrupt_answer)) must fall on validation, beside the
built-in directions, for a setting to qualify. CNA, LEACE and the DAMA-style projection fit on the
built-in prompts only (they need gender labels or paired subjects, which a probe does not have)."""

from __future__ import annotations

from functools import lru_cache

from editor.errors import UserError
from editor.tasks.examples import Example
from editor.tasks.kinds import read_task, split_rows

SPLITS = ("choose", "validate", "test")


def check_probes(path: str, where: str) -> None:
    """Refused before any model loads: not a contrast file, or a row without a corrupt answer."""
    task = read_task(path)
    if task.kind != "contrast" or any("corrupt_answer" not in (e.meta or {}) for e in task.rows):
        raise UserError(f"{where}: {path} should be a contrast file whose every row has 'prompt', 'answer' "
                        "(the stereotyped completion) and 'corrupt_answer' (the anti-stereotyped one)")


@lru_cache(maxsize=8)
def probe_splits(path: str, fractions: tuple[float, ...], seed: int) -> dict[str, list[Example]]:
    rows = read_task(path).rows
    return split_rows(rows, dict(zip(SPLITS, fractions)), seed, f"probes {path}")


def probe_objective(rows: list[Example]) -> tuple[list[Example], list[float]]:
    """Rows and weights whose weighted log-probability sum is the mean stereotype preference."""
    examples, weights = [], []
    for e in rows:
        examples += [Example(e.prompt, e.answer), Example(e.prompt, e.meta["corrupt_answer"])]
        weights += [1 / len(rows), -1 / len(rows)]
    return examples, weights
