"""lmedit: attribution-driven editing and pruning of Hugging Face causal language models.

The public API is imported lazily so that ``lmedit --help`` does not pay for importing torch.
"""

from importlib import import_module

__version__ = "0.1.0"

_API = {
    "UserError": "editor.errors",
    "ARCHITECTURES": "editor.model.arch", "Arch": "editor.model.arch", "ArchSpec": "editor.model.arch",
    "LoadedModel": "editor.model.loading", "load_model": "editor.model.loading",
    "Captured": "editor.model.capture", "capture": "editor.model.capture", "encode": "editor.model.capture",
    "Edit": "editor.edit.plan", "KeepOnly": "editor.edit.plan", "EditPlan": "editor.edit.plan",
    "parse_component": "editor.edit.plan",
    "AppliedEdits": "editor.edit.weights", "apply_plan": "editor.edit.weights", "intervene": "editor.edit.weights",
    "save_checkpoint": "editor.edit.checkpoint", "describe_source": "editor.edit.checkpoint",
    "reload_difference": "editor.edit.checkpoint",
    "evaluate_model": "editor.evaluation.harness", "evaluate_against": "editor.evaluation.harness",
    "compare": "editor.evaluation.harness", "configs": "editor.evaluation.harness",
    "Evaluation": "editor.evaluation.results", "Comparison": "editor.evaluation.results",
    "load_recipe": "editor.recipes", "run_recipe": "editor.recipes",
    "patch_exact": "editor.attribution.patching", "patch_gradient": "editor.attribution.patch_estimates",
    "patch_auto": "editor.attribution.patch_estimates", "patch_atp_star": "editor.attribution.atpstar",
    "LoraSettings": "editor.lora.train", "train_lora": "editor.lora.train", "coefficient_shift": "editor.lora.compare",
}

__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(import_module(_API[name]), name)
    raise AttributeError(f"module 'editor' has no attribute {name!r}")
