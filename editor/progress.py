"""Progress and noise on the terminal: one place decides what a user sees while work runs.

A leaf module (every layer may import it): bars only on a terminal, so logs get no escape codes;
transformers' own loading chatter silenced."""

from __future__ import annotations

import logging
import os
import sys

from tqdm.auto import tqdm


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True):
    """A bar on stderr; none when disabled or when stderr is not a terminal (no escape codes in logs)."""
    off = not enabled or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    return tqdm(total=total, desc=desc, unit=unit, disable=True if off else None, file=sys.stderr, leave=False,
                dynamic_ncols=True)


def quiet_transformers() -> None:
    # Loading reports (unused keys, GGUF progress) are noise for a CLI user; errors still raise.
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if not sys.stderr.isatty() or os.environ.get("TQDM_DISABLE"):  # no bars (escape codes) in logs
        transformers.utils.logging.disable_progress_bar()
