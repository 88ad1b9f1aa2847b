"""The evaluation harness: each task turns batched model scores into metric-module inputs.

Tasks are configured by small dataclasses (``--set task.key=value`` on the command line); metrics
are local ``evaluate`` modules in ``editor/evaluation/metrics``, loaded with ``evaluate.load(path)``.
"""

from __future__ import annotations

import dataclasses
import typing
import gc
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Callable

from editor.errors import UserError
from editor.ranges import MAX_PROMPTS
from editor.ranges import parse_ranges
from editor.evaluation.results import Change, Comparison, Evaluation, TaskResult
from editor.evaluation.scoring import score_text
from editor.tasks import arithmetic, gender, icl
from editor.tasks.examples import Example, fit_to_tokenizer, read_file
from editor.tasks.guard import GUARD_SHA256, guard_text
from editor.tasks.shipped import SHIPPED, is_shipped
from editor.evaluation.common import Context, _completion_result, _measure, _recorded, load_metric
from editor.evaluation.kinds import FileConfig, run_file, task_name

# Task configurations ------------------------------------------------------------------------------
@dataclass
class ArithmeticConfig:
    n: int = 200
    digits: int = 1
    ops: str = "+-*/"
    operands: str = "numerals"
    shots: int = 0
    seed: int = 0
    data: str | None = None  # a local .jsonl/.csv file instead of generated prompts
    # Prompts in memory (a recipe's own split) instead of generated or file prompts; recorded by count.
    examples: list[Example] | None = field(default=None, repr=False)

    def check(self, where: str) -> None:
        _within(where, "n", self.n, 1, MAX_PROMPTS)
        _within(where, "digits", self.digits, 1, 3)
        _within(where, "shots", self.shots, 0, 64)
        if not self.ops or set(self.ops) - set("+-*/"):
            raise UserError(f"{where}.ops: one or more of + - * /, got {self.ops!r}")
        if self.operands not in ("numerals", "words"):
            raise UserError(f"{where}.operands: numerals or words, got {self.operands!r}")
        if self.data is not None and not Path(self.data).is_file():
            raise UserError(f"{where}.data: no such file {self.data}")


def _within(where: str, key: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise UserError(f"{where}.{key}: {low}-{high}, got {value}")


def _templates(where: str, text: str, count: int) -> None:
    from editor.ranges import parse_ranges

    if str(text) != "all":
        bad = [i for i in parse_ranges(text, f"{where}.templates", "all, 0-3 or 0,2,5") if i >= count]
        if bad:
            raise UserError(f"{where}.templates: there are {count} templates (0-{count - 1}), got {bad[0]}")


@dataclass
class GenderConfig:
    templates: str = "all"  # "all" or template indices, e.g. "0-3" or "0,2,5"
    professions: str | None = None  # a .csv/.jsonl file with profession,lean; default: the gender-editing paper's lists
    seed: int = 0

    def check(self, where: str) -> None:
        from editor.tasks.gender import TEMPLATES

        _templates(where, self.templates, len(TEMPLATES))


@dataclass
class PronounConfig:
    templates: str = "all"  # "all" or pronoun template indices
    professions: str | None = None  # a .csv/.jsonl file with profession,lean; default: the labour-statistics list
    seed: int = 0

    def check(self, where: str) -> None:
        from editor.tasks.gender import PRONOUN_TEMPLATES

        _templates(where, self.templates, len(PRONOUN_TEMPLATES))


@dataclass
class IclConfig:
    n: int = 100
    k: int = 2
    order: str = "random"
    data: str = "builtin"
    seed: int = 0
    # A labelled pool in memory (a recipe's own held-out half) instead of ``data``; recorded by size.
    pool: icl.Pool | None = field(default=None, repr=False)

    def check(self, where: str) -> None:
        _within(where, "n", self.n, 1, MAX_PROMPTS)
        _within(where, "k", self.k, 1, 64)


@dataclass
class GuardConfig:
    window: int = 256
    block: int = 32  # tokens the bootstrap keeps together

    def check(self, where: str) -> None:
        _within(where, "window", self.window, 2, 1_000_000)
        _within(where, "block", self.block, 1, 1_000_000)


# Arithmetic ---------------------------------------------------------------------------------------
def run_arithmetic(ctx: Context, cfg: ArithmeticConfig) -> TaskResult:
    if cfg.examples is not None:
        examples = list(cfg.examples)[:cfg.n]
        if any(e.answer is None for e in examples):
            raise UserError("every arithmetic example needs an answer")
    elif cfg.data:
        examples = read_file(cfg.data)[:cfg.n]
        if any(e.answer is None for e in examples):
            raise UserError(f"{cfg.data}: every arithmetic example needs an 'answer'")
    else:
        examples = arithmetic.generate(cfg.n, cfg.digits, cfg.ops, cfg.seed, cfg.operands, cfg.shots)
    return _completion_result(ctx, examples, "arithmetic", _recorded(cfg))


# Gender -------------------------------------------------------------------------------------------
def parse_indices(text: str, size: int, what: str = "indices") -> list[int]:
    """``all`` or index ranges (``0-3``, ``0,2,5``), each below ``size``."""
    if text == "all":
        return list(range(size))
    out = parse_ranges(text, what, "all, 0-3 or 0,2,5")
    if not out or any(i >= size for i in out):
        raise UserError(f"{what} {text!r}: indices must be in 0..{size - 1}")
    return out


def run_gender(ctx: Context, cfg: GenderConfig) -> TaskResult:
    """Profession given gender: "A woman works as a" -> " nurse" against "A man works as a" -> " nurse"."""
    templates = [gender.TEMPLATES[i] for i in parse_indices(cfg.templates, len(gender.TEMPLATES), "gender templates")]
    professions = gender.read_professions(cfg.professions) if cfg.professions else gender.default_professions()
    return _bias_result(ctx, gender.build(templates, professions), "gender", cfg, templates)


def run_pronoun(ctx: Context, cfg: PronounConfig) -> TaskResult:
    """Gender given occupation: "The nurse said that" -> " she" against " he"."""
    templates = [gender.PRONOUN_TEMPLATES[i]
                 for i in parse_indices(cfg.templates, len(gender.PRONOUN_TEMPLATES), "pronoun templates")]
    professions = gender.read_professions(cfg.professions) if cfg.professions else gender.occupations()
    return _bias_result(ctx, gender.build_pronouns(templates, professions), "pronoun", cfg, templates)


def _bias_result(ctx: Context, examples: list[Example], name: str, cfg, templates: list[str]) -> TaskResult:
    """Both directions share the measure: per (template, occupation) the log-probability of the
    woman-side and man-side answer, gaps signed toward the occupation's lean, bootstrap over occupations."""
    scored = ctx.continuations(examples, name)
    rows: dict[tuple, dict] = {}
    for e, s in zip(examples, scored):
        rows.setdefault((e.meta["template"], e.meta["profession"]), {"lean": e.meta["lean"]})[e.meta["gender"]] = s.total
    keys = list(rows)
    inputs = {"profession": [k[1] for k in keys], "lean": [rows[k]["lean"] for k in keys],
              "logprob_woman": [rows[k]["woman"] for k in keys], "logprob_man": [rows[k]["man"] for k in keys]}
    r = load_metric("gender_bias").compute(**inputs, seed=cfg.seed)
    gaps = gender.profession_gaps(**inputs)
    measures = {}
    for key, keep in (("bias", None), ("bias_woman_leaning", "woman"), ("bias_man_leaning", "man")):
        per = [g for side, g in gaps.values() if keep in (None, side)]
        measures[key] = _measure(r, key, "profession", "zero", per)
    details = {"gap_by_profession": {p: g for p, (_, g) in gaps.items()}, "templates": templates}
    return TaskResult(name, dataclasses.asdict(cfg), measures, 0.0, details)


# In-context learning ------------------------------------------------------------------------------
def _icl_predictions(ctx: Context, examples: list[Example], desc: str) -> list[int]:
    """Index of the candidate label with the highest total log-probability, per prompt."""
    prompts, conts = [], []
    for e in examples:
        for c in e.meta["candidates"]:
            prompts.append(e.prompt)
            conts.append(c)
    probe = [Example(p, c) for p, c in zip(prompts, conts)]
    scored = ctx.continuations(fit_to_tokenizer(ctx.tokenizer, probe), desc)
    out, i = [], 0
    for e in examples:
        k = len(e.meta["candidates"])
        totals = [s.total for s in scored[i:i + k]]
        out.append(max(range(k), key=totals.__getitem__))
        i += k
    return out


def run_icl(ctx: Context, cfg: IclConfig) -> TaskResult:
    pool = cfg.pool if cfg.pool is not None else icl.load_pool(cfg.data)
    sets = {
        "unrelated": icl.build(pool, cfg.n, cfg.k, icl.UNRELATED_LABELS, "balanced", cfg.order, cfg.seed),
        "imbalanced": icl.build(pool, cfg.n, cfg.k, icl.UNRELATED_LABELS, "imbalanced", cfg.order, cfg.seed + 1),
        "natural": icl.build(pool, cfg.n, cfg.k, None, "balanced", cfg.order, cfg.seed + 2),
    }
    metric, measures = load_metric("label_bias"), {}
    for name, examples in sets.items():
        preds = _icl_predictions(ctx, examples, f"icl: {name}")
        gold = [e.meta["gold"] for e in examples]
        majority = [e.meta["majority"] for e in examples]
        last = [e.meta["last"] if name != "imbalanced" else -1 for e in examples]
        r = metric.compute(predictions=preds, references=gold, majority=majority, last=last)
        if name == "unrelated":
            measures["accuracy"] = _measure(r, "accuracy", "prompt", "higher", [float(p == g) for p, g in zip(preds, gold)])
            measures["recency_bias"] = _measure(r, "recency_bias", "prompt", "zero",
                                                [float(p == m) - float(g == m) for p, g, m in zip(preds, gold, last)])
        elif name == "imbalanced":
            measures["majority_label_bias"] = _measure(r, "majority_label_bias", "prompt", "zero",
                                                       [float(p == m) - float(g == m) for p, g, m in zip(preds, gold, majority)])
        else:
            measures["accuracy_natural_labels"] = _measure(r, "accuracy", "prompt", "higher",
                                                           [float(p == g) for p, g in zip(preds, gold)])
    details = {"labels": {"unrelated": list(icl.UNRELATED_LABELS), "natural": list(pool.classes)},
               "example_prompt": sets["unrelated"][0].prompt}
    return TaskResult("icl", _recorded(cfg), measures, 0.0, details)


# Capability guard ---------------------------------------------------------------------------------
def run_guard(ctx: Context, cfg: GuardConfig) -> TaskResult:
    scores = score_text(ctx.model, ctx.tokenizer, guard_text(), cfg.window, progress=ctx.progress)
    interval = load_metric("mean_interval")
    r = interval.compute(values=scores.nll, statistic="exp_mean", block_size=cfg.block)
    measures = {"perplexity": _measure(r, None, "token", "lower", scores.nll, statistic="exp_mean", block=cfg.block)}
    reference = None
    if ctx.self_reference:
        reference = scores.top1
    elif ctx.reference is not None and "guard" in ctx.reference.tasks:
        reference = ctx.reference.tasks["guard"].details.get("top1")
    if reference is not None:
        if len(reference) != len(scores.top1):
            raise UserError("the reference model read the guard text as a different number of tokens; "
                            "agreement needs the same tokenizer")
        agree = [float(a == b) for a, b in zip(scores.top1, reference)]
        r = interval.compute(values=agree, block_size=cfg.block)
        measures["top1_agreement"] = _measure(r, None, "token", "higher", agree, block=cfg.block)
    details = {"top1": scores.top1, "text_sha256": GUARD_SHA256}
    return TaskResult("guard", dataclasses.asdict(cfg), measures, 0.0, details)


@dataclass(frozen=True)
class Task:
    config: type
    run: Callable[[Context, object], TaskResult]
    summary: str


TASKS: dict[str, Task] = {
    "arithmetic": Task(ArithmeticConfig, run_arithmetic, "teacher-forced answer-token accuracy and greedy exact match"),
    "gender": Task(GenderConfig, run_gender, "log-probability gap of professions toward their stereotyped gender"),
    "pronoun": Task(PronounConfig, run_pronoun, "log-probability gap of the pronoun of an occupation's stereotyped gender"),
    "icl": Task(IclConfig, run_icl, "in-context classification: accuracy, majority-label and recency bias"),
    "guard": Task(GuardConfig, run_guard, "perplexity and top-1 agreement on a fixed English text"),
}
# A user's file: run under the file's own name (file_configs), so it is found by its configuration's
# type, not by a name in TASKS; its rows' kind picks the scorer (editor.evaluation.kinds).
FILE_TASK = Task(FileConfig, run_file, "a .jsonl/.csv file of any task kind (docs/tasks.md)")


DEFAULT_TASKS = "arithmetic,gender,pronoun,icl,guard"  # `lmedit evaluate` without --data


def parse_tasks(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in TASKS]
    if unknown or not names:
        raise UserError(f"unknown task(s) {', '.join(unknown) or '(none)'}; choose from {', '.join(TASKS)} "
                        "(a file of your own: --data FILE)")
    return list(dict.fromkeys(names))


def split_data(values: list[str]) -> tuple[list[str], list[str]]:
    """``--data`` values -> (built-in task names, files or shipped benchmarks). A value naming built-in
    tasks (``arithmetic`` or ``arithmetic,guard``) is those; any other value is a file's path or a
    shipped benchmark's name. No values: every built-in task."""
    names, files = ([], []) if values else (parse_tasks(DEFAULT_TASKS), [])
    for value in values:
        if any(p.strip() in TASKS for p in value.split(",")):
            names += parse_tasks(value)  # built-in names, with any unknown one named
        elif not value.lower().endswith((".jsonl", ".csv")) and not is_shipped(value) and not Path(value).exists():
            raise UserError(f"unknown task {value!r}: choose a built-in task ({', '.join(TASKS)}), a shipped "
                            f"benchmark ({', '.join(SHIPPED)}) or a .jsonl/.csv task file")
        else:
            files.append(value)
    return list(dict.fromkeys(names)), files


def file_configs(paths: list[str], delimiter: str | None, taken: list[str], n: int | None = None) -> dict[str, FileConfig]:
    """One task per file, keyed by the file's name (its first ``n`` rows with ``--n``); a name shared
    with a built-in task or another file is refused (results would overwrite each other)."""
    out: dict[str, FileConfig] = {}
    for path in paths:
        name = task_name(path)
        if name in TASKS or name in out or name in taken:
            raise UserError(f"--data {path}: its task would be named {name!r}, which is taken "
                            f"(built-in tasks and other files); rename the file")
        cfg = FileConfig(data=path, delimiter=delimiter, **({"n": n} if n is not None else {}))
        cfg.check(name)
        out[name] = cfg
    return out


def configs(tasks: list[str], settings: dict[str, object] | None = None, n: int | None = None) -> dict[str, object]:
    """Each task's configuration with ``{"task.key": value}`` overrides, checked against its fields.
    ``n`` (``--n``): the prompts of every task that draws a number of them (``TASK.n`` in settings wins)."""
    from editor.settings import from_dict, parse_value

    out = {name: TASKS[name].config() for name in tasks}
    settings = dict(settings or {})
    if n is not None:
        for name, cfg in out.items():
            if "n" in {f.name for f in fields(cfg)}:
                settings.setdefault(f"{name}.n", n)
    overrides: dict[str, dict] = {}
    for dotted, value in settings.items():
        task, _, key = dotted.partition(".")
        if task not in TASKS:
            raise UserError(f"setting {dotted}: unknown task {task!r}; choose from {', '.join(TASKS)}")
        if task not in out:
            continue  # a setting for a task not being run is harmless
        known = [f.name for f in fields(out[task])]
        if key not in known:
            raise UserError(f"setting {dotted}: {task} has no setting {key!r}; it has {', '.join(known)}")
        hint = typing.get_type_hints(type(out[task]))[key]  # text from the command line, read as recipe overrides
        text = hint is str or str in typing.get_args(hint)  # are, but a text setting keeps its text ("3")
        overrides.setdefault(task, {})[key] = parse_value(value, dotted, text) if isinstance(value, str) else value
    # The recipes' schema checks types and ranges and runs each config's own check().
    return {task: from_dict(type(cfg), {**dataclasses.asdict(cfg), **overrides.get(task, {})}, where=task)
            for task, cfg in out.items()}


def evaluate_model(model, tokenizer, tasks: dict[str, object], name: str = "model", batch_size: int = 32,
                   progress: bool = True, reference: Evaluation | None = None, self_reference: bool = False,
                   padding_side: str = "left", log: Callable[[str], None] | None = None,
                   note: Callable[[str], None] | None = None) -> Evaluation:
    """Run each configured task on ``model`` (a ``{name: config}`` dict from :func:`configs`).

    A key ``task@label`` runs ``task`` once more under another name (e.g. a second prompt set).
    """
    model.eval()
    ctx = Context(model, tokenizer, batch_size, progress, padding_side, reference, self_reference, note)
    results = {}
    for key, cfg in tasks.items():
        start = time.perf_counter()
        result = _runner(key, cfg)(ctx, cfg)
        result.seconds = round(time.perf_counter() - start, 2)
        results[key] = result
        if log:
            log(f"  {key}: {result.seconds:.1f} s")
    return Evaluation(name, results, {"batch_size": batch_size})


def _runner(task_name: str, cfg) -> Callable[[Context, object], TaskResult]:
    """The task's runner: by name ("gender@choice" is a second gender set), or, for a user's file
    (named after the file), by its configuration's kind."""
    task = TASKS.get(task_name.split("@")[0])
    if task is None and isinstance(cfg, FILE_TASK.config):
        task = FILE_TASK
    return task.run


def compare(before: Evaluation, after: Evaluation, seed: int = 0) -> Comparison:
    """Paired change of every measure both evaluations have on the same units."""
    metric = load_metric("paired_change")
    changes: dict[str, dict[str, Change]] = {}
    for name, task in after.tasks.items():
        if name not in before.tasks:
            continue
        for key, a in task.measures.items():
            b = before.tasks[name].measures.get(key)
            if b is None or b.per_unit is None or a.per_unit is None or len(b.per_unit) != len(a.per_unit):
                continue
            r = metric.compute(before=b.per_unit, after=a.per_unit, statistic=a.statistic, block_size=a.block, seed=seed)
            changes.setdefault(name, {})[key] = Change(float(r["change"]), float(r["low"]), float(r["high"]), int(r["n"]))
    return Comparison(before, after, changes)


def evaluate_against(load_model: Callable[[str], object], model: str, base: str, tasks: dict[str, object],
                     batch_size: int = 32, progress: bool = True, log: Callable[[str], None] | None = None) -> Comparison:
    """Evaluate ``base`` then ``model`` (one in memory at a time) and compare them unit by unit."""
    log = log or (lambda _msg: None)
    log(f"evaluating the base {base}")
    loaded = load_model(base)
    before = evaluate_model(loaded.model, loaded.tokenizer, tasks, base, batch_size, progress,
                            self_reference=True, log=log)
    del loaded
    gc.collect()
    log(f"evaluating {model}")
    loaded = load_model(model)
    after = evaluate_model(loaded.model, loaded.tokenizer, tasks, model, batch_size, progress, reference=before, log=log)
    return compare(before, after)
