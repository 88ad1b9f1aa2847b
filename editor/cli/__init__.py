"""``lmedit``: the command line, a thin layer over the Python API. One module per command group;
importing the package registers every command on :data:`main`."""

from editor.cli.core import main
from editor.cli import attribute, attribute_search, evaluate, lora, models, recipes, service  # noqa: F401

__all__ = ["main"]
