"""`lmedit evaluate`."""

from __future__ import annotations

from pathlib import Path

import click

from editor.errors import UserError
from editor.ranges import MAX_PROMPTS
from editor.cli.core import (
    MAX_BATCH, _info, _log, _model_name, _record, _say, executor_options, json_option, main, model_options)
from editor.cli.options import _DELIMITER, _Outputs, _delimiter, _model_stem, _renamed


# evaluate ---------------------------------------------------------------------------------------
def _settings(items: tuple[str, ...]) -> dict[str, str]:
    from editor.settings import split_assignment

    return dict(split_assignment(item, "arithmetic.digits=2", "TASK.KEY=VALUE") for item in items)


@main.command("evaluate")
@json_option
@model_options
@executor_options
@click.option("--data", "data", multiple=True, metavar="NAME_OR_FILE",
              help="A task (repeatable): built-in arithmetic, gender, pronoun, icl, guard (or several, comma-"
                   "separated); a .jsonl/.csv file of any task kind (docs/tasks.md), reported under the file's "
                   "name; or a shipped benchmark: crows-pairs-gender, winobias, stereoset-gender [default: every "
                   "built-in task].")
@click.option("--tasks", hidden=True, expose_value=False, callback=_renamed("--tasks", "--data (repeatable)"))
@_DELIMITER
@click.option("--against", metavar="BASE",
              help="Compare with this model [default: the base named in the checkpoint's manifest, if any].")
@click.option("--alone", is_flag=True, help="Evaluate only --model, even when its manifest names a base.")
@click.option("--n", type=click.IntRange(1, MAX_PROMPTS), default=None,
              help="Prompts per task: every task that draws a number of them (arithmetic, icl, your files' first N "
                   "rows); TASK.n in --set wins [default: each task's own].")
@click.option("--set", "settings", multiple=True, metavar="TASK.KEY=VALUE",
              help="Task setting, e.g. arithmetic.digits=2, icl.n=200, gender.templates=0-3 (repeatable).")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=32, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory for evaluation.json/.md [default: checkpoints/eval/<model>].")
@click.option("--force", is_flag=True, help="Overwrite an evaluation already in --out.")
@click.option("--quiet", hidden=True, is_flag=True, expose_value=False,
              callback=lambda ctx, p, v: _renamed("evaluate --quiet", "lmedit --quiet evaluate")(ctx, p, v or None))
def evaluate_cmd(load, scorer_for, executor, data, against, alone, n, settings, batch_size, out, force):
    """Evaluate a model on tasks, or an edited checkpoint against its base, with 95% intervals."""
    from editor.edit.checkpoint import base_model_of
    from editor.evaluation.harness import configs, evaluate_against, evaluate_model, file_configs, split_data

    model = _model_name()
    delimiter = _delimiter()
    names, data_files = split_data(list(data))
    if delimiter is not None and not data_files:
        raise UserError("--delimiter goes with --data FILE (built-in tasks write their own answers)")
    task_configs = configs(names, _settings(settings), n)
    task_configs |= file_configs(list(data_files), delimiter, names, n)
    if against and alone:
        raise UserError("--against and --alone exclude each other")
    base = None if alone else (against or base_model_of(model))
    from editor.model.names import check_model_name

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
            result = evaluate_on_ray(scorer.pool, model, base, task_configs, batch_size, True)
        finally:
            close()
    elif base:
        result = evaluate_against(load, model, base, task_configs, batch_size, True, _info)
    else:
        loaded = load()
        result = evaluate_model(loaded.model, loaded.tokenizer, task_configs, model, batch_size, True, log=_info,
                                note=_log)
    _say(result.table())
    with outputs:
        paths = result.save(outputs.claim())
    _say("wrote " + ", ".join(str(p) for p in paths.values()))
    _record("evaluation", result.to_json())
    _record("files", {k: str(v) for k, v in paths.items()})
