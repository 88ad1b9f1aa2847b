"""General English text apart from the guard: what a pruned model may train on to stay a language
model, and a held-out part to measure that on.

The text is the prose of the Python language reference as the standard library's ``pydoc_data``
carries it (paragraphs of 200+ characters; code, grammar and headings dropped), shipped as
``data/general.txt`` (Python Software Foundation License Version 2; see docs/tasks.md). It shares
nothing with the guard text (the Apache License terms), so a model recovered on it is still
measured on text it never saw. Every fifth paragraph is held out.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from editor.errors import UserError
from editor.tasks.examples import Example

GENERAL_SHA256 = "53f10099f55e2af05c2955ccc3ad6397f3df52d697befab7bb80b6a76356b20d"
PATH = Path(__file__).parent / "data" / "general.txt"
HELD_OUT_EVERY = 5


@lru_cache(maxsize=1)
def paragraphs() -> tuple[str, ...]:
    data = PATH.read_bytes()
    if hashlib.sha256(data).hexdigest() != GENERAL_SHA256:
        raise UserError(f"{PATH} is not the text lmedit shipped (sha256 differs); reinstall lmedit")
    return tuple(p for p in data.decode().split("\n\n") if p.strip())


def general_rows(split: str) -> list[Example]:
    """Text rows of the ``train`` or ``heldout`` paragraphs."""
    if split not in ("train", "heldout"):
        raise ValueError(split)
    keep = (lambda i: i % HELD_OUT_EVERY == HELD_OUT_EVERY - 1) if split == "heldout" else \
        (lambda i: i % HELD_OUT_EVERY != HELD_OUT_EVERY - 1)
    return [Example(p, None, {"kind": "text", "source": "general"}) for i, p in enumerate(paragraphs()) if keep(i)]
