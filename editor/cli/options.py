"""Options and helpers of the commands that read data: --layers, --delimiter, the data options, output
folders written whole or not at all, the printed and saved report of a ranking, specificity."""

from __future__ import annotations

import functools
from pathlib import Path

import click

from editor.errors import UserError
from editor.io import check_writable_directory
from editor.ranges import MAX_PROMPTS
from editor.cli.core import MAX_BATCH, SEED, _log, _model_name, _record, _say


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


class RegistryChoice(click.Choice):
    """A choice among the names of a registry (score methods, task kinds), read when first needed:
    the registry's module imports torch, which the CLI loads only for the commands that use it."""

    def __init__(self, names) -> None:
        self._names, self.case_sensitive = names, True

    @property
    def choices(self) -> tuple[str, ...]:
        return tuple(self._names())

    @choices.setter
    def choices(self, value) -> None:
        raise AttributeError("a registry's choices are its names")


def score_methods() -> tuple[str, ...]:
    from editor.prune.scores import METHODS

    return METHODS


# attribute --------------------------------------------------------------------------------------
def _layers(text: str | None) -> list[int] | None:
    from editor.ranges import parse_ranges

    if text is None:
        return None
    if not text.strip():
        raise UserError("--layers is empty; write e.g. 20-29 or 3,5,7 (or leave it out for all layers)")
    return parse_ranges(text, "--layers", "e.g. 20-29 or 3,5,7")


def _config(model: str | None = None) -> dict | None:
    """The model's config.json, read without its weights or torch (None where that needs the weights)."""
    from editor.model.store import config_json

    return config_json(model or _model_name())


def _dimensions(model: str | None = None) -> tuple[int, int, int] | None:
    """(layers, heads, FFN width) from the model's config alone, or None where that needs the weights."""
    from editor.model.arch import config_dimensions

    config = _config(model)
    return config_dimensions(config) if config is not None else None


def _check_plan(plan, model: str | None = None) -> None:
    """An edit plan's components held against the model's config ("head 99.99" refused in well under
    a second instead of after the load); left to the load where the config needs the weights."""
    config = _config(model)
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
    from editor.tasks import load_examples

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
