"""Index lists written by users: ``20-29``, ``3,5,7``, ``0-3,6``."""

from __future__ import annotations

import re

from editor.errors import UserError

# Indices are ASCII digits only: str.isdigit() also accepts superscripts and other scripts' digits.
_NUMBER = re.compile(r"[0-9]+")
# No model has this many layers, heads or neurons in one place; larger ranges are typos, and
# expanding them would exhaust memory before any check could run.
MAX_INDEX = 1_000_000
# Prompt counts beyond this are typos that would exhaust memory, not experiments.
MAX_PROMPTS = 100_000


def is_index(text: str) -> bool:
    """A non-negative integer written in ASCII digits."""
    return _NUMBER.fullmatch(text) is not None


def parse_ranges(text: str, what: str, example: str) -> list[int]:
    """Inclusive ranges and single indices, comma-separated; a bad item names ``what`` and shows ``example``."""
    out: list[int] = []
    for part in str(text).split(","):
        lo, sep, hi = part.strip().partition("-")
        if not is_index(lo) or (sep and not is_index(hi)):
            raise UserError(f"bad {what} {text!r}: write {example}")
        first, last = int(lo), int(hi) if sep else int(lo)
        if last > MAX_INDEX:
            raise UserError(f"bad {what} {text!r}: {last} is beyond any model's size")
        if first > last:
            raise UserError(f"bad {what} {text!r}: the range {first}-{last} runs backwards; write {last}-{first}")
        out.extend(range(first, last + 1))
    return out
