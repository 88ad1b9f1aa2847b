"""What a job is: a request checked exactly as the CLI checks it, and the CLI command that runs it.

A job is never a second implementation of anything: a recipe job runs ``lmedit run`` on the
validated recipe, a command job runs the same ``lmedit`` command a user would type. Validation uses
the same code (the recipe schema; click's own option parsing), so a request the CLI would refuse is
refused here with the same one-line message, before anything is queued. The service decides where
a job writes (its run directory under the service home): ``out`` and ``force`` are not options a
request may set, and a recipe's ``out:`` is ignored.
"""

from __future__ import annotations

import copy
import sys
import tempfile
from pathlib import Path

import click
import yaml

from editor.errors import UserError, one_line

# Commands a job may run: the words after `lmedit`, and where the service points their output.
# A rerun after a service restart writes the same output again: --force where the command has it
# (prune resumes its run directory instead).
COMMANDS = {
    "prune": ("--out", ".", False),
    "attribute heads": ("--out", ".", True),
    "attribute neurons": ("--out", ".", True),
    "attribute circuit": ("--out", ".", True),
    "attribute cna": ("--out", ".", True),
    "attribute patch": ("--out", ".", True),
    "evaluate": ("--out", ".", True),
    "edit": ("--out", "checkpoint", True),
    "export gguf": ("--out", "model.gguf", True),
}
RESERVED = {"out", "force", "fresh", "json", "help"}
MAX_RECIPE_CHARS = 200_000


def validate(body: object) -> dict:
    """A request body -> the job spec stored and run, or UserError (one line) when the CLI would refuse it."""
    if not isinstance(body, dict):
        raise UserError("the request body must be a JSON object with 'recipe' or 'command'")
    unknown = set(body) - {"recipe", "set", "command", "options", "resources"}
    if unknown:
        raise UserError(f"unknown request field(s): {', '.join(sorted(unknown))}; known: recipe, set, command, "
                        "options, resources")
    if ("recipe" in body) == ("command" in body):
        raise UserError("give exactly one of 'recipe' (a packaged name or YAML text) and 'command'")
    resources = _resources(body.get("resources", {}))
    if "set" in body and "command" in body:
        raise UserError("'set' goes with 'recipe'; a command takes 'options'")
    try:
        spec = _recipe(body["recipe"], body.get("set", {})) if "recipe" in body \
            else _command(body["command"], body.get("options", {}))
    except OSError as exc:  # as the CLI says it (editor.cli.LmeditGroup)
        from editor.io import too_long

        error = too_long(exc)
        if error is None:
            raise
        raise error from None
    spec["resources"] = resources
    return spec


def _resources(value: object) -> dict:
    if not isinstance(value, dict) or set(value) - {"cpus", "gpus"}:
        raise UserError("'resources' is an object with 'cpus' and/or 'gpus' (numbers)")
    out = {"cpus": 1, "gpus": 0}
    for key, v in value.items():
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v <= 1024:
            raise UserError(f"resources.{key} must be a number from 0 to 1024")
        out[key] = v
    return out


def _override(raw: dict, values: object) -> dict:
    """The request's ``set``: text values are parsed as on the command line (``--set k=0.9``), JSON
    numbers, lists and booleans are taken as they are."""
    from editor.settings import apply_overrides, set_value

    if not isinstance(values, dict):
        raise UserError("'set' is an object of setting paths to values, e.g. {\"prune.retain\": 0.9}")
    for key, value in values.items():
        if not key.strip():
            raise UserError(f"bad override {key!r}: a setting path, e.g. prune.retain")
        if isinstance(value, str):
            apply_overrides(raw, [f"{key}={value}"])
        else:
            set_value(raw, key.strip(), value)
    return raw


def _recipe(recipe: object, values: object) -> dict:
    from editor.model.names import check_model_name
    from editor.recipes import validate as validate_recipe
    from editor.recipes.library import packaged
    from editor.settings import parse_yaml, read_yaml

    if not isinstance(recipe, str) or not recipe.strip():
        raise UserError("'recipe' is a packaged recipe name or the text of a recipe (YAML)")
    if len(recipe) > MAX_RECIPE_CHARS:
        raise UserError(f"the recipe text is longer than {MAX_RECIPE_CHARS} characters")
    names = packaged()
    if "\n" in recipe or ":" in recipe:
        raw, where, name = parse_yaml(recipe, "recipe"), "recipe", "(inline)"
    elif recipe in names:
        raw, where, name = read_yaml(names[recipe].path), f"{recipe}.yaml", recipe
    else:
        raise UserError(f"unknown recipe {recipe!r}; packaged: {', '.join(sorted(names))} (or send the YAML text)")
    raw = _override(copy.deepcopy(raw), values)
    cfg = validate_recipe(raw, where)
    check_model_name(cfg.model)
    raw.pop("out", None)
    return {"kind": "recipe", "recipe": name, "recipe_kind": cfg.recipe, "config": raw}


def _argv(cmd: click.Command, options: object) -> list[str]:
    """{"retain": 0.9, "units": ["neurons", "heads"], "specificity": false} -> CLI arguments, each
    option looked up in the command's own definition: an unknown one is an error, and ``false``
    of an on/off flag is its ``--no-`` form (never silently dropped)."""
    if not isinstance(options, dict):
        raise UserError("'options' is an object of option names to values, e.g. {\"model\": \"smollm2-135m\"}")
    flags = {opt: p for p in cmd.params if isinstance(p, click.Option) for opt in (*p.opts, *p.secondary_opts)}
    arguments = {p.name.replace("_", "-"): p for p in cmd.params if isinstance(p, click.Argument)}
    argv, positional = [], {}
    for key, value in options.items():
        if not isinstance(key, str) or not key.replace("-", "_").replace("_", "").isalnum():
            raise UserError(f"bad option name {key!r}")
        name = key.replace("_", "-").lstrip("-")
        if name in arguments:  # a command's argument (export gguf MODEL), named like an option
            if not isinstance(value, (str, int, float)) or isinstance(value, bool):
                raise UserError(f"{name!r}: expected a string")
            positional[name] = str(value)
            continue
        if name in RESERVED:
            raise UserError(f"option {name!r} is set by the service (each job writes to its own run directory)")
        flag = f"--{name}"
        param = flags.get(flag)
        if param is None:
            raise UserError(f"unknown option {name!r} for this command")
        if param.is_flag and not isinstance(value, bool):
            raise UserError(f"option {name!r} is a switch: true or false")
        if value is True:
            argv.append(flag)
        elif value is False:
            if param.secondary_opts and flag in param.opts:
                argv.append(param.secondary_opts[0])
            elif param.secondary_opts:
                argv.append(param.opts[0])
            elif param.default:
                raise UserError(f"option {name!r} cannot be false")
        elif value is None:
            continue
        elif isinstance(value, list):
            for v in value:
                argv += [flag, str(v)]
        elif isinstance(value, (str, int, float)):
            argv += [flag, str(value)]
        else:
            raise UserError(f"option {name!r}: expected a string, number, true or a list")
    missing = [n for n in arguments if n not in positional]
    if missing:
        raise UserError(f"missing {', '.join(repr(n) for n in missing)} (an argument of this command)")
    return [positional[n] for n in arguments] + argv


def _lookup(command: str) -> tuple[click.Command, click.Context]:
    """The click command ``command`` names (``attribute heads``) and its parent context."""
    from editor.cli import main

    cmd, ctx = main, click.Context(main, info_name="lmedit")
    for word in command.split():
        cmd = cmd.get_command(ctx, word)
        ctx = click.Context(cmd, info_name=word, parent=ctx)
    return cmd, ctx


def split_command(words: list[str]) -> tuple[str, list[str]] | None:
    """``["attribute", "heads", "--n", "16"]`` -> ("attribute heads", ["--n", "16"]), or None when the
    words do not start with a command a job may run."""
    for size in (2, 1):
        if len(words) >= size and " ".join(words[:size]) in COMMANDS:
            return " ".join(words[:size]), list(words[size:])
    return None


def options_from_argv(command: str, argv: list[str]) -> dict:
    """A command line's options as a request's ``options`` (the inverse of what a worker runs): each
    option looked up in the command's own definition; a repeated option becomes a list; the
    service's own (--out, --force, --json) are refused, since each job writes where the service says."""
    cmd, _ = _lookup(command)
    flags = {o: p for p in cmd.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)}
    arguments = [p for p in cmd.params if isinstance(p, click.Argument)]
    options: dict = {}
    tokens, position = list(argv), 0
    while tokens:
        token = tokens.pop(0)
        name, eq, inline = token.partition("=") if token.startswith("--") else (token, "", "")
        param = flags.get(name)
        if param is None:
            if token.startswith("-") or position >= len(arguments):
                raise UserError(f"lmedit {command}: no such option {token!r}")
            options[arguments[position].name.replace("_", "-")] = token
            position += 1
            continue
        key = max(param.opts, key=len)[2:]
        if key in RESERVED or param.name == "as_json":
            raise UserError(f"{name} is set by the service (each job writes to its own run directory)")
        if param.is_flag:
            value = name in param.opts
        elif eq:
            value = inline
        elif tokens:
            value = tokens.pop(0)
        else:
            raise UserError(f"lmedit {command}: {name} requires an argument")
        if param.multiple:
            options.setdefault(key, []).append(value)
        else:
            options[key] = [options[key], value] if key in options else value  # twice: the CLI's own error
    return options


def _command(command: object, options: object) -> dict:
    """Parse the options with the command's own click definition: the CLI's checks and messages."""
    from editor.model.names import check_model_name

    if command not in COMMANDS:
        raise UserError(f"unknown command {command!r}; one of: {', '.join(COMMANDS)}")
    words = command.split()
    out_flag, out_name, _ = COMMANDS[command]
    cmd, ctx = _lookup(command)
    argv = _argv(cmd, options)
    with tempfile.TemporaryDirectory() as scratch:  # where the output would go: empty, so ours to check
        args = argv + [out_flag, str(Path(scratch) / out_name)]
        try:
            parsed = cmd.make_context(words[-1], list(args), parent=ctx.parent)
            model = parsed.params.get("model")
            if isinstance(model, str):
                check_model_name(model)
            _run_until_work(parsed)
        except click.exceptions.ClickException as exc:  # worded as the CLI words it (editor.cli._usage_error)
            where = f"{exc.ctx.command_path}: " if getattr(exc, "ctx", None) is not None else ""
            raise UserError(where + one_line(exc.format_message())) from None
    return {"kind": "command", "command": command, "argv": argv}


def _run_until_work(ctx: click.Context) -> None:
    """Run the command itself until its work would begin (a model load, a run, Ray): every check
    the CLI makes of its input runs here, in the CLI's code, with the CLI's messages; nothing is
    loaded or written (editor.errors.validating)."""
    from editor.errors import Validated, validating

    with validating(), ctx:
        try:
            ctx.command.invoke(ctx)
        except Validated:
            pass


def worker_argv(spec: dict, job_dir: Path) -> list[str]:
    """The command line of a job's worker process (run with ``job_dir/run`` as its working output)."""
    run = job_dir / "run"
    if spec["kind"] == "recipe":
        return [sys.executable, "-m", "editor", "run", str(job_dir / "recipe.yaml"), "--out", str(run), "--json"]
    out_flag, out_name, force = COMMANDS[spec["command"]]
    return [sys.executable, "-m", "editor", *spec["command"].split(), *spec["argv"], out_flag, str(run / out_name),
            *(["--force"] if force else [])]


def prepare(spec: dict, job_dir: Path) -> None:
    """Files a worker reads: the recipe as validated."""
    from editor.io import write_text_atomic

    job_dir.mkdir(parents=True, exist_ok=True)
    (job_dir / "run").mkdir(exist_ok=True)
    if spec["kind"] == "recipe":
        write_text_atomic(job_dir / "recipe.yaml", yaml.safe_dump(spec["config"], sort_keys=False))
