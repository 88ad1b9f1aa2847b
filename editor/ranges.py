"""Index lists written by users: ``20-29``, ``3,5,7``, ``0-3,6``."""

from __future__ import annotations

from editor.errors import UserError


def parse_ranges(text: str, what: str, example: str) -> list[int]:
    """Inclusive ranges and single indices, comma-separated; a bad item names ``what`` and shows ``example``."""
    out: list[int] = []
    for part in str(text).split(","):
        lo, sep, hi = part.strip().partition("-")
        if not lo.isdigit() or (sep and not hi.isdigit()):
            raise UserError(f"bad {what} {text!r}: write {example}")
        out.extend(range(int(lo), int(hi) + 1) if sep else [int(lo)])
    return out
