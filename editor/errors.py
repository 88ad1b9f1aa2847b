"""Errors a user can cause (bad model name, bad plan, bad file): the CLI prints them in one line."""


class UserError(Exception):
    """A mistake in the user's input; the CLI prints the message and exits with status 2."""
