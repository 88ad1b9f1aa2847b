"""lmedit: attribution-driven editing and pruning of Hugging Face causal language models."""

__version__ = "0.1.0"

from editor.errors import UserError
from editor.model.arch import ARCHITECTURES, Arch, ArchSpec
from editor.model.loading import LoadedModel, load_model
from editor.model.capture import Captured, capture
from editor.edit.plan import Edit, EditPlan, parse_component
from editor.edit.weights import AppliedEdits, apply_plan
from editor.edit.checkpoint import save_checkpoint

__all__ = [
    "__version__", "UserError", "ARCHITECTURES", "Arch", "ArchSpec", "LoadedModel", "load_model",
    "Captured", "capture", "Edit", "EditPlan", "parse_component", "AppliedEdits", "apply_plan",
    "save_checkpoint",
]
