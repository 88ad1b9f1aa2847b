"""The command line's frame: the click group and command classes (repeated options refused, user errors
as one line), output (--json, notes, records) and the options every model command shares."""

from __future__ import annotations

import functools
import json
import os
import sys

import click

from editor.errors import UserError, one_line
from editor.events import emit
from editor.model.store import DEFAULT_MODEL


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
            _error(one_line(str(exc)))
            ctx.exit(2)
        except click.UsageError as exc:
            _usage_error(exc)
        except OSError as exc:  # a full disk outside the atomic writers (which say it themselves)
            from editor.io import disk_full, too_long

            error = too_long(exc)  # a name (model, data, recipe) no file system can hold
            if error is not None:
                _error(error)
                ctx.exit(2)
            if not disk_full(exc):
                raise
            _error(f"{exc.strerror} while writing {exc.filename or 'an output'}; earlier outputs are as they were; "
                   "free space and run again")
            ctx.exit(2)

    def make_context(self, *args, **kwargs):
        try:
            return super().make_context(*args, **kwargs)
        except click.UsageError as exc:  # the top level's own arguments
            _usage_error(exc)


def _info(message: str) -> None:
    """A progress note (\"loading ...\"): on a terminal, or when LMEDIT_VERBOSE=1; never in the way of
    a script reading stderr for the one error line."""
    if os.environ.get("LMEDIT_QUIET") != "1" and (sys.stderr.isatty() or os.environ.get("LMEDIT_VERBOSE") == "1"):
        click.echo(message, err=True)


def _log(message: str) -> None:
    """A run's progress lines (steps, rounds) on stderr, unless `lmedit --quiet`."""
    if os.environ.get("LMEDIT_QUIET") != "1":
        click.echo(message, err=True)


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
    _error(f"{where}{one_line(exc.format_message())}")
    sys.exit(2)


def _error(line: str) -> None:
    """The one error line: on stderr, and as the run's error event (editor/events.py)."""
    click.echo(f"Error: {line}", err=True)
    emit("error", line=line)


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
        from editor.model.names import check_device, parse_max_memory

        check_device(device)
        parse_max_memory(max_memory)  # a malformed limit fails before anything loads
        if max_memory and device != "auto":
            raise UserError("--max-memory needs --device auto (accelerate places and offloads the model)")

        def load(name: str | None = None):
            from editor.model.loading import load_model  # torch loads here, after the checks above
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
        params = click.get_current_context().params
        if executor != "ray" and ray_address is not None:
            raise UserError("--ray-address needs --executor ray (the local executor joins no cluster)")

        def make(batch_size: int):
            from editor.attribution.sharded import scorer_for  # torch loads here, after the command's checks
            from editor.distributed import ModelSpec, check_ray
            from editor.errors import work_begins
            from editor.model.names import check_model_name

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
        os.environ["TQDM_DISABLE"] = "1"  # read by every progress bar, ours and the libraries'
        os.environ["LMEDIT_QUIET"] = "1"
