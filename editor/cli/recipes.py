"""`lmedit recipes`, `lmedit run` and `lmedit prune`."""

from __future__ import annotations

import json
from pathlib import Path

import click

from editor.model.store import DEFAULT_MODEL
from editor.cli.core import LmeditGroup, SEED, _log, main
from editor.cli.options import _DELIMITER, RegistryChoice, _delimiter, _renamed, score_methods


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
@click.option("--method", type=RegistryChoice(score_methods),
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
              help="Any other prune recipe value, e.g. data.n_test=1000 (repeatable).")
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
    from editor.recipes.prune_command import prune_config
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
