"""Save an edited model as an ordinary Hugging Face checkpoint with a manifest, and check its reload.

The directory holds safetensors weights, config, tokenizer and ``edit_manifest.json`` (source model
and the sha256 of its weights, the plan, the scores that chose it, package version, time). It is
written to a temporary directory beside the target and renamed, so an interrupted save never leaves
half a checkpoint. ``AutoModelForCausalLM.from_pretrained(out)`` loads it with none of our code.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

from editor.events import artifact
from editor.edit.plan import EditPlan
from editor.errors import UserError
from editor.faults import crash_point
from editor.io import atomic_directory, write_json_atomic
from editor.model.capture import model_device
from editor.model.store import sha256_file

MANIFEST = "edit_manifest.json"
MANIFEST_FORMAT = "lmedit-checkpoint"
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def weight_files_sha256(path: str | Path) -> dict[str, str]:
    """sha256 of each weight file of a model directory (or of a single weight file)."""
    path = Path(path)
    files = [path] if path.is_file() else sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES)
    return {p.name: sha256_file(p) for p in files}


def tensor_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Name -> shape of every tensor in a checkpoint directory's safetensors files (headers only)."""
    from safetensors import safe_open

    shapes = {}
    for file in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(file), "pt") as f:
            shapes.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    return shapes


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over parameter names and bytes, for sources without local weight files (hub cache)."""
    import hashlib

    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def describe_source(loaded) -> dict:
    """Manifest entry for the model an edit started from (a ``LoadedModel``)."""
    source = {"model": loaded.name, "kind": loaded.kind, "path": str(loaded.path) if loaded.path else None,
              "family": loaded.arch.model_type, "dtype": str(loaded.model.dtype).removeprefix("torch.")}
    if loaded.path is not None:
        source["weights_sha256"] = weight_files_sha256(loaded.path)
    else:
        source["state_dict_sha256"] = state_dict_sha256(loaded.model)
    store_info = loaded.info.get("store")
    if store_info:
        source["store_origin"] = store_info
    return source


def _check_saveable(model: nn.Module) -> None:
    if getattr(model, "peft_config", None):
        raise UserError("this model carries peft adapters; call merge_and_unload() before saving a checkpoint")
    if getattr(model.config, "quantization_config", None) is not None:
        raise UserError("this model is quantised and cannot be saved as plain safetensors; load it de-quantised")


def is_checkpoint(path: Path) -> bool:
    """A directory holding the manifest only ``save_checkpoint`` writes."""
    try:
        return read_manifest(path).get("format") == MANIFEST_FORMAT
    except UserError:
        return False


def check_checkpoint_out(out: str | Path, force: bool) -> Path:
    """Before any work: ``out`` is free, or ``force`` is given and ``out`` is an lmedit checkpoint
    (or an empty directory); a user's folder is never replaced (``editor.io.check_output``)."""
    from editor.io import check_output

    return check_output(out, force, is_checkpoint, "an lmedit checkpoint")


def save_checkpoint(
    model: nn.Module,
    tokenizer,
    out: str | Path,
    plan: EditPlan | None = None,
    source: dict | None = None,
    scores: dict | list | None = None,
    force: bool = False,
    extra: dict | None = None,
) -> Path:
    """Write ``model`` (already edited in place) to ``out`` atomically and return the path."""
    from editor import __version__

    out = check_checkpoint_out(out, force)
    _check_saveable(model)
    with atomic_directory(out, ours=is_checkpoint, what="an lmedit checkpoint") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        crash_point("checkpoint.write")  # the crash tests kill here: weights half-way to a checkpoint
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        manifest = {
            "format": MANIFEST_FORMAT,
            "lmedit_version": __version__,
            "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "source": source or {},
            "plan": (plan or EditPlan()).to_json(),
            "scores": scores,
            "weights_sha256": weight_files_sha256(tmp),
            **(extra or {}),
        }
        write_json_atomic(tmp / MANIFEST, manifest)
        (tmp / "README.md").write_text(model_card(manifest, out.name), encoding="utf-8")
    artifact(out, "checkpoint")
    return out


def model_card(manifest: dict, name: str) -> str:
    """A Hugging Face model card (``README.md``) from the manifest: what the model came from, what was
    changed and why, the results the recipe recorded, and how to load it (``hf upload`` shows it)."""
    from editor.tables import markdown_table

    source = manifest.get("source") or {}
    base = source.get("model", "an unnamed model")
    lines = ["---", "library_name: transformers", "tags: [lmedit]", "---", "",
             f"# {name}: an edited {base}", "",
             f"Written by lmedit {manifest.get('lmedit_version')} on {manifest.get('created')} from `{base}` "
             f"({source.get('family', 'unknown family')}). It is an ordinary checkpoint:", "",
             "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
             f'model = AutoModelForCausalLM.from_pretrained("{name}")',
             f'tokenizer = AutoTokenizer.from_pretrained("{name}")', "```", "", "## What changed", ""]
    plan = EditPlan.from_json(manifest["plan"]) if manifest.get("plan") else EditPlan()
    if plan.note:
        lines += [plan.note, ""]
    if plan.edits:
        edits = plan.summary().splitlines()
        lines += [f"{len(edits)} edits: " + ", ".join(edits[:20]) + (", ..." if len(edits) > 20 else ""), ""]
    prune = manifest.get("prune")
    if prune:
        before, after = prune["parameters_before"], prune["parameters_after"]
        lines += [f"Pruned for a task ({prune['method']} scores): parameters {before['total']:,} -> {after['total']:,}, "
                  f"non-embedding {before['non_embedding']:,} -> {after['non_embedding']:,}. Removed: "
                  f"`{json.dumps(prune['removed'])[:400]}`.", ""]
    for key, title in (("prune", "Results (held-out test prompts)"), ("debias", "Results (test split)")):
        rows = (manifest.get(key) or {}).get("results" if key == "prune" else "test")
        if rows:
            columns = list(dict.fromkeys(c for r in rows for c in r if not isinstance(r[c], (dict, list))))
            lines += [f"## {title}", "", markdown_table(rows, columns), ""]
    verdict = (manifest.get("debias") or {}).get("verdict")
    if verdict:
        lines += [verdict, ""]
    hashes = source.get("weights_sha256") or source.get("state_dict_sha256")
    lines += ["## Provenance", "", f"Base weights sha256: `{json.dumps(hashes)}`.",
              f"This checkpoint's weights: `{json.dumps(manifest.get('weights_sha256'))}`.",
              "Everything else (plan, scores, settings) is in `edit_manifest.json`.", ""]
    return "\n".join(lines)


def read_manifest(path: str | Path) -> dict:
    file = Path(path) / MANIFEST
    if not file.is_file():
        raise UserError(f"{path} has no {MANIFEST}; it was not written by lmedit")
    from editor.io import read_json

    manifest = read_json(file, "manifest")
    if not isinstance(manifest, dict):
        raise UserError(f"{file}: a manifest is a JSON object, got {type(manifest).__name__}")
    return manifest


REQUIRED = ("format", "source", "plan", "weights_sha256")


class ManifestMismatch(UserError):
    """The checkpoint's files are not the ones its manifest records: a failed verification (exit 1),
    not a usage error."""


def checked_manifest(path: str | Path) -> dict:
    """The manifest of checkpoint ``path`` after checking every claim it makes about its own files:
    each field verification needs is there, and every weight file is the one it records (same names,
    same sha256), so a manifest that lies about its files is caught before anything is rebuilt."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a checkpoint directory")
    manifest = read_manifest(path)
    missing = [k for k in REQUIRED if k not in manifest]
    if missing:
        raise UserError(f"{path / MANIFEST} lacks {', '.join(missing)}: not a complete lmedit manifest")
    if manifest["format"] != MANIFEST_FORMAT:
        raise UserError(f"{path / MANIFEST} has format {manifest['format']!r}, not {MANIFEST_FORMAT!r}")
    recorded = manifest["weights_sha256"]
    if not isinstance(recorded, dict) or not recorded:
        raise UserError(f"{path / MANIFEST}: weights_sha256 should map weight file names to sha256 values")
    actual = weight_files_sha256(path)
    for name in sorted(set(recorded) | set(actual)):
        if name not in actual:
            raise ManifestMismatch(f"{path}: the manifest records {name}, which is missing")
        if name not in recorded:
            raise ManifestMismatch(f"{path}: {name} is not recorded in the manifest")
        if actual[name] != recorded[name]:
            raise ManifestMismatch(f"{path}: {name} does not match the manifest's sha256 (changed after it was written)")
    return manifest


# Reload check --------------------------------------------------------------------------------

# Runs in a fresh interpreter that imports only torch, transformers and safetensors: the proof that
# the checkpoint needs none of our code.
_PLAIN_RELOAD = r"""
import sys, torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM
ckpt, io_dir, dtype, attn = sys.argv[1:5]
batch = load_file(io_dir + "/inputs.safetensors")
model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=getattr(torch, dtype), attn_implementation=attn)
model.eval()
with torch.no_grad():
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
assert not any(m == "editor" or m.startswith("editor.") for m in sys.modules), "lmedit code was imported"
save_file({"logits": logits.float().contiguous()}, io_dir + "/logits.safetensors")
"""


def plain_reload_logits(path: str | Path, inputs: dict, dtype: torch.dtype = torch.float32,
                        attn_implementation: str = "eager") -> torch.Tensor:
    """Logits of ``path`` loaded by plain transformers in a separate Python process."""
    from safetensors.torch import load_file, save_file

    with tempfile.TemporaryDirectory(prefix="lmedit-reload-") as io_dir:
        save_file({k: v.detach().cpu().contiguous() for k, v in inputs.items()}, f"{io_dir}/inputs.safetensors")
        env = {**os.environ, "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1"}
        proc = subprocess.run(
            [sys.executable, "-I", "-c", _PLAIN_RELOAD, str(path), io_dir, str(dtype).removeprefix("torch."),
             attn_implementation],
            capture_output=True, text=True, env=env,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"plain transformers could not reload {path}:\n{proc.stderr[-2000:]}")
        return load_file(f"{io_dir}/logits.safetensors")["logits"]


@torch.no_grad()
def reload_difference(model: nn.Module, path: str | Path, inputs: dict) -> float:
    """Max |logit difference| between the in-memory ``model`` and ``path`` reloaded by plain transformers."""
    attn = getattr(model.config, "_attn_implementation", None) or "eager"
    mine = model(**{k: v.to(model_device(model)) for k, v in inputs.items()}).logits.float().cpu()
    theirs = plain_reload_logits(path, inputs, dtype=model.dtype, attn_implementation=attn)
    mask = inputs["attention_mask"].bool().cpu()
    return (mine - theirs)[mask].abs().max().item()


def base_model_of(checkpoint: str | Path) -> str | None:
    """What to load as the unedited base of an lmedit checkpoint, from its manifest (None if unknown)."""
    path = Path(checkpoint)
    if not (path / MANIFEST).is_file():
        return None
    source = read_manifest(path).get("source") or {}
    if source.get("kind") in ("alias", "hub"):
        return source.get("model")
    local = source.get("path")
    if local and Path(local).exists():
        return local
    if source.get("model"):
        raise UserError(f"the base of {checkpoint} ({local or source['model']}) is not on this machine; "
                        "pass --against BASE")
    return None
