"""Errors a user can cause (bad model name, bad plan, bad file): the CLI prints them in one line."""


class UserError(ValueError):
    """A mistake in the user's input; the CLI prints the message and exits with status 2.

    A ``ValueError``, so library users can catch it as the standard "bad argument value" error."""


def one_line(text: str, limit: int = 500) -> str:
    """Messages are one line (newlines and NUL bytes of user input folded) of bounded length: the
    CLI's error line and the service's 422 detail alike."""
    text = " ".join(text.replace("\0", "\\0").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


# Validation without work -----------------------------------------------------------------------
# The service answers a bad job request with the CLI's own one-line error before queueing it. Every
# command checks its input before it loads a model or opens a run (the CLI's rule), so running the
# command with VALIDATING set and stopping at the first of those points validates it completely
# without doing any of its work.

from contextlib import contextmanager  # noqa: E402
from contextvars import ContextVar  # noqa: E402

VALIDATING: ContextVar[bool] = ContextVar("lmedit_validating", default=False)


class Validated(Exception):
    """Raised where work would begin while only validating: everything before it was checked."""


def work_begins() -> None:
    """Call where a command's real work starts (a model load, a run directory, a Ray cluster)."""
    if VALIDATING.get():
        raise Validated()


@contextmanager
def validating():
    token = VALIDATING.set(True)
    try:
        yield
    finally:
        VALIDATING.reset(token)
