"""The fixed English text of the capability guard: the terms of the Apache License 2.0.

Every install of ours carries it: transformers, peft, datasets, evaluate, safetensors and
huggingface_hub ship it in their wheel metadata. Copies differ only in whitespace, so the text is
normalised (paragraphs kept, runs of spaces collapsed) and pinned by its SHA-256.
"""

from __future__ import annotations

import hashlib
import random
from functools import lru_cache
from importlib import metadata

from editor.errors import UserError
from editor.tasks.examples import Example

GUARD_SHA256 = "cb8e560ab845849728af7ebd09363ec43204b507c5cdc6876967aa43d2e12197"
_START, _END = "TERMS AND CONDITIONS FOR USE, REPRODUCTION, AND DISTRIBUTION", "END OF TERMS AND CONDITIONS"
_CARRIERS = ("transformers", "peft", "datasets", "evaluate", "safetensors", "huggingface_hub")


def normalise(text: str) -> str | None:
    """The terms section with paragraphs separated by one blank line and single spaces inside."""
    i, j = text.find(_START), text.find(_END)
    if i < 0 or j < i:
        return None
    paragraphs, current = [], []
    for line in text[i:j + len(_END)].splitlines():
        words = line.split()
        if words:
            current.extend(words)
        elif current:
            paragraphs.append(" ".join(current))
            current = []
    if current:
        paragraphs.append(" ".join(current))
    return "\n\n".join(paragraphs)


@lru_cache(maxsize=1)
def guard_text() -> str:
    """The pinned text, read from the first installed dependency whose copy matches the hash."""
    seen = []
    for name in _CARRIERS:
        try:
            dist = metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        for file in dist.files or []:
            if "LICENSE" not in file.name.upper():
                continue
            try:
                text = normalise(file.read_text())
            except (OSError, UnicodeDecodeError):
                continue
            if text is None:
                continue
            digest = hashlib.sha256(text.encode()).hexdigest()
            if digest == GUARD_SHA256:
                return text
            seen.append(f"{name}:{file.name} ({digest[:12]})")
    raise UserError("cannot find the guard text (the Apache License 2.0 terms shipped with transformers and "
                    f"other dependencies) with SHA-256 {GUARD_SHA256[:12]}...; looked at: {', '.join(seen) or 'none'}")


def guard_windows(tokenizer, n: int = 64, length: int = 48, seed: int = 0) -> list[Example]:
    """``n`` next-token examples cut from the guard text: ``length`` tokens of context, the next token
    as the answer. An ablation scan over them measures the guard's next-token log-likelihood."""
    ids = tokenizer(guard_text())["input_ids"]
    rng = random.Random(seed)
    ends = sorted(rng.sample(range(length, len(ids) - 1), min(n, len(ids) - 1 - length)))
    return [Example(tokenizer.decode(ids[e - length:e]), tokenizer.decode(ids[e:e + 1])) for e in ends]
