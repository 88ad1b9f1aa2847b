"""Progress and noise on the terminal: one place decides what a user sees while work runs.

A leaf module (every layer may import it): bars only on a terminal, so logs get no escape codes;
transformers' own loading chatter silenced."""

from __future__ import annotations

import logging
import os
import sys

from tqdm.auto import tqdm

from editor.events import Progress


class _Bar:
    """A tqdm bar that also reports its state as progress events (editor/events.py), shown or not."""

    def __init__(self, bar: tqdm, events: Progress):
        self.bar, self.events = bar, events

    def update(self, n: int = 1) -> None:
        self.bar.update(n)
        self.events.update(n)

    def __getattr__(self, name: str):
        return getattr(self.bar, name)


def progress_bar(total: int, desc: str, unit: str = "it", enabled: bool = True):
    """A bar on stderr; none when disabled or when stderr is not a terminal (no escape codes in logs).
    Its progress goes to the run's events either way (a service job's page shows it)."""
    off = not enabled or os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true", "yes")
    bar = tqdm(total=total, desc=desc, unit=unit, disable=True if off else None, file=sys.stderr, leave=False,
               dynamic_ncols=True)
    return _Bar(bar, Progress(desc, total, unit))


def quiet_transformers() -> None:
    # Loading reports (unused keys, GGUF progress) are noise for a CLI user; errors still raise.
    import transformers

    transformers.logging.set_verbosity_error()
    logging.getLogger("transformers").setLevel(logging.ERROR)
    if not sys.stderr.isatty() or os.environ.get("TQDM_DISABLE"):  # no bars (escape codes) in logs
        transformers.utils.logging.disable_progress_bar()
