"""Errors a user can cause (bad model name, bad plan, bad file): the CLI prints them in one line."""


class UserError(ValueError):
    """A mistake in the user's input; the CLI prints the message and exits with status 2.

    A ``ValueError``, so library users can catch it as the standard "bad argument value" error."""
