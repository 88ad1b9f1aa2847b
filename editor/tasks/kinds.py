"""Task kinds: what a row of a user's file means, read by one reader for every command.

A file is ``.jsonl`` or ``.csv`` (``editor.io.read_records``); its fields say its kind:

* ``completion``: ``prompt``, ``answer``; scored on the answer's tokens as they follow the prompt.
* ``choice``: ``prompt``, ``choices``, ``label``; the model picks the choice of highest
  log-probability (multiple choice, as lm-evaluation-harness scores it).
* ``contrast``: ``prompt``, ``answer`` and ``corrupt_prompt`` and/or ``corrupt_answer``: a
  counterfactual pair (what changes the answer).
* ``text``: ``text``; perplexity ("keep my domain's text likely").
* ``stereotype``: ``stereotype``, ``anti_stereotype`` and optionally ``unrelated`` and ``prompt``:
  sentences that differ in who or what they stereotype, scored by their likelihood (CrowS-Pairs,
  WinoBias, StereoSet; shipped as named tasks, ``editor.tasks.shipped``).

Every kind takes an optional ``group`` field: rows of one group always land in the same split.
A kind is one :func:`kind`-registered function that turns a record into an :class:`Example`;
adding a kind is adding one such function (its scoring lives in ``editor.evaluation.kinds``).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from editor.errors import UserError
from editor.tasks.examples import Example, join_answers


@dataclass(frozen=True)
class Kind:
    name: str
    required: tuple[str, ...]
    optional: tuple[str, ...]
    summary: str
    row: Callable[[dict, str], Example]  # a record (its required fields present) -> an Example
    one_of: tuple[str, ...] = ()  # at least one of these too

    def fields(self) -> str:
        return ", ".join([*self.required, *([" or ".join(self.one_of)] if self.one_of else [])])


KINDS: dict[str, Kind] = {}  # in detection order: the first kind whose marker field a record has


def kind(name: str, required: tuple[str, ...], optional: tuple[str, ...], summary: str, one_of: tuple[str, ...] = ()):
    def register(row: Callable[[dict, str], Example]) -> Callable[[dict, str], Example]:
        KINDS[name] = Kind(name, required, (*optional, "group"), summary, row, one_of)
        return row
    return register


def _text(rec: dict, key: str, where: str, empty_ok: bool = False) -> str:
    value = rec[key]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        value = str(value)  # a CSV or JSON number answer ("12") is its text
    if not isinstance(value, str):
        raise UserError(f"{where}: '{key}' should be text, got {type(value).__name__}")
    if not value.strip() and not empty_ok:
        raise UserError(f"{where}: '{key}' is empty")
    return value


def _meta(rec: dict, used: tuple[str, ...], **extra) -> dict | None:
    meta = {k: v for k, v in rec.items() if k not in used}
    meta.update(extra)
    return meta or None


@kind("text", ("text",), (), "perplexity of the text (lower is better)")
def text_row(rec: dict, where: str) -> Example:
    return Example(_text(rec, "text", where), None, _meta(rec, ("text",), kind="text"))


@kind("choice", ("prompt", "choices", "label"), (),
      "the choice of highest summed log-probability after the prompt (accuracy, and length-normalised)")
def choice_row(rec: dict, where: str) -> Example:
    prompt, choices = _text(rec, "prompt", where), rec["choices"]
    if isinstance(choices, str):  # CSV: a JSON list or choices separated by '|'
        choices = json.loads(choices) if choices.lstrip().startswith("[") else choices.split("|")
    if not isinstance(choices, list) or len(choices) < 2:
        raise UserError(f"{where}: 'choices' should be a list of two or more (in CSV: a|b|c)")
    choices = [_text({"choice": c}, "choice", where) for c in choices]
    if len(set(choices)) != len(choices):
        raise UserError(f"{where}: 'choices' repeats a choice")
    label = rec["label"]
    if isinstance(label, str) and label.strip().isdigit():
        label = int(label)
    if isinstance(label, str) and label in choices:
        label = choices.index(label)
    if not isinstance(label, int) or isinstance(label, bool) or not 0 <= label < len(choices):
        raise UserError(f"{where}: 'label' should be the index (0-{len(choices) - 1}) or the text of a choice, "
                        f"got {rec['label']!r}")
    return Example(prompt, choices[label], _meta(rec, ("prompt", "choices", "label"), choices=choices, label=label))


@kind("contrast", ("prompt", "answer"), ("corrupt_prompt", "corrupt_answer"),
      "the answer against its counterfactual (corrupt prompt and/or corrupt answer)",
      one_of=("corrupt_prompt", "corrupt_answer"))
def contrast_row(rec: dict, where: str) -> Example:
    extra = {k: _text(rec, k, where) for k in ("corrupt_prompt", "corrupt_answer") if k in rec}
    if extra.get("corrupt_answer") == rec["answer"]:
        raise UserError(f"{where}: 'corrupt_answer' equals 'answer'; a contrast needs two answers")
    used = ("prompt", "answer", "corrupt_prompt", "corrupt_answer")
    return Example(_text(rec, "prompt", where), _text(rec, "answer", where), _meta(rec, used, **extra))


@kind("stereotype", ("stereotype", "anti_stereotype"), ("unrelated", "prompt"),
      "which sentence the model finds likelier: the stereotype or its anti-stereotype (0.5: neither)")
def stereotype_row(rec: dict, where: str) -> Example:
    """The stereotype is the row's answer, the sentences compared with it its meta; ``prompt`` (a
    shared context, optional) is what every sentence follows."""
    sentences = {k: _text(rec, k, where) for k in ("stereotype", "anti_stereotype", "unrelated") if k in rec}
    if len(set(sentences.values())) != len(sentences):
        raise UserError(f"{where}: two of {', '.join(sentences)} are the same sentence; there is nothing to compare")
    prompt = _text(rec, "prompt", where, empty_ok=True) if "prompt" in rec else ""
    used = ("prompt", "stereotype", "anti_stereotype", "unrelated")
    return Example(prompt, sentences["stereotype"],
                   _meta(rec, used, **{k: v for k, v in sentences.items() if k != "stereotype"}))


@kind("completion", ("prompt", "answer"), (), "the answer's tokens after the prompt (teacher forced, exact match)")
def completion_row(rec: dict, where: str) -> Example:
    return Example(_text(rec, "prompt", where), _text(rec, "answer", where), _meta(rec, ("prompt", "answer")))


# What marks a record as a kind: its most specific field (checked in this order).
MARKERS = {"text": ("text",), "choice": ("choices", "label"), "contrast": ("corrupt_prompt", "corrupt_answer"),
           "stereotype": ("stereotype", "anti_stereotype", "unrelated"), "completion": ("prompt", "answer")}


def kind_of(rec: dict) -> str | None:
    present = {k for k, v in rec.items() if v not in (None, "")}
    return next((name for name, marks in MARKERS.items() if present & set(marks)), None)


def kinds_help() -> str:
    return "; ".join(f"{k.name}: {k.fields()}" for k in KINDS.values())


@dataclass
class TaskData:
    """A task's rows and what they are: its name (a file's stem), kind and source."""

    name: str
    kind: str
    rows: list[Example]
    source: str

    def __len__(self) -> int:
        return len(self.rows)


def read_task(path: str | Path, delimiter: str | None = None, note=None, prompts_only_ok: bool = False) -> TaskData:
    """Read a user's task file: every row one kind, its required fields present and non-empty.

    ``prompts_only_ok``: a file of bare prompts (no answers) is accepted as a completion task whose
    answers the command supplies (attribution's top-1 target)."""
    from editor.io import read_records

    from editor.tasks.shipped import resolve

    where, path = str(path), resolve(path)
    records = read_records(path, "data file")
    if not records:
        raise UserError(f"{where}: no rows")
    first = None
    rows = []
    for i, rec in enumerate(records, 1):
        rec = {k: v for k, v in rec.items() if v is not None and k is not None}
        name = kind_of(rec)
        if name is None:
            raise UserError(f"{where}: row {i} has none of the fields a task needs ({', '.join(sorted(rec)) or 'no fields'}); "
                            f"kinds: {kinds_help()}")
        if first is None:
            first = (name, i)
        elif name != first[0]:
            raise UserError(f"{where}: row {first[1]} is a {first[0]} row but row {i} is a {name} row; "
                            "one kind per file")
        rows.append(_row(KINDS[name], rec, f"{where}: row {i}", prompts_only_ok))
    task_kind = first[0]
    if task_kind in ("completion", "contrast"):
        rows = join_answers(rows, delimiter, where, note)
    elif task_kind == "choice":
        rows = _join_choices(rows, delimiter, where, note)
    elif delimiter is not None:
        raise UserError(f"--delimiter is for files with answers or choices; {where} is a {task_kind} file")
    return TaskData(Path(where).stem, task_kind, rows, where)


def _join_choices(rows: list[Example], delimiter: str | None, where: str, note) -> list[Example]:
    """Choices follow their prompt as answers do (:func:`join_answers`: one note for glued ones,
    ``delimiter`` to put between them)."""
    flat = [Example(e.prompt, c) for e in rows for c in e.meta["choices"]]
    joined = iter(join_answers(flat, delimiter, where, note))
    out = []
    for e in rows:
        choices = [next(joined).answer for _ in e.meta["choices"]]
        out.append(Example(e.prompt, choices[e.meta["label"]], {**e.meta, "choices": choices}))
    return out


def _row(spec: Kind, rec: dict, where: str, prompts_only_ok: bool) -> Example:
    missing = [f for f in spec.required if f not in rec or rec[f] == ""]
    if missing == ["answer"] and spec.name == "completion" and prompts_only_ok and "answer" not in rec:
        return Example(_text(rec, "prompt", where), None, _meta(rec, ("prompt",)))
    if missing:
        raise UserError(f"{where} looks like a {spec.name} row but has no {' or '.join(repr(f) for f in missing)} "
                        f"(kinds and their fields: {kinds_help()})")
    return spec.row(rec, where)


# Splits ---------------------------------------------------------------------------------------------
def group_of(example: Example, index: int) -> str:
    """Rows sharing a ``group`` value go to one split; without one, each row is its own group."""
    group = (example.meta or {}).get("group")
    return f"row:{index}" if group in (None, "") else f"group:{group}"


def split_rows(rows: list[Example], shares: dict[str, float], seed: int, where: str,
               minimum: dict[str, int] | None = None) -> dict[str, list[Example]]:
    """Seeded split into named sets by share of rows, whole groups at a time, so no group (query)
    is in two sets. Each set gets at least ``minimum[name]`` rows (default 1); too few rows is one
    line saying how many the split needs."""
    minimum = {name: (minimum or {}).get(name, 1) for name in shares}
    groups: dict[str, list[int]] = {}
    for i, ex in enumerate(rows):
        groups.setdefault(group_of(ex, i), []).append(i)
    need = sum(minimum.values())
    if len(rows) < need or len(groups) < len(shares):
        raise UserError(f"{where}: {len(rows)} rows in {len(groups)} groups are too few for the "
                        f"{'/'.join(shares)} splits: at least {need} rows in {len(shares)} or more groups are needed "
                        f"({', '.join(f'{k} >= {v}' for k, v in minimum.items())})")
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    total = sum(shares.values())
    targets = {name: max(minimum[name], round(len(rows) * share / total)) for name, share in shares.items()}
    out: dict[str, list[int]] = {name: [] for name in shares}
    names = list(shares)
    for g in order:  # each group to the set furthest below its target (ties: the earlier set)
        name = min(names, key=lambda n: (len(out[n]) - targets[n], names.index(n)) if len(out[n]) < targets[n]
                   else (float("inf"), names.index(n)))
        out[name].extend(groups[g])
    short = {n: len(v) for n, v in out.items() if len(v) < minimum[n]}
    if short:
        raise UserError(f"{where}: its groups could not fill every split ({', '.join(f'{n}: {c} rows' for n, c in short.items())}"
                        f"; needed {', '.join(f'{n} >= {minimum[n]}' for n in short)}): add rows or split large groups")
    return {name: [rows[i] for i in sorted(idx)] for name, idx in out.items()}


def check_disjoint(train: list[Example], test: list[Example], where: str) -> None:
    """An explicit test file must share no row and no group with the rows the model was tuned on."""
    seen = {(e.prompt, e.answer) for e in train}
    groups = {(e.meta or {}).get("group") for e in train} - {None, ""}
    for i, ex in enumerate(test, 1):
        if (ex.prompt, ex.answer) in seen:
            raise UserError(f"{where}: row {i} is also a row of the training data; a test set must be held out")
        if (ex.meta or {}).get("group") in groups:
            raise UserError(f"{where}: row {i}'s group {ex.meta['group']!r} is also in the training data; "
                            "a test set must be held out")


def as_completion(task: TaskData) -> list[Example]:
    """The task's rows as prompt/answer pairs, for the commands that score one answer per prompt
    (attribution, the prune scores, LoRA training): a choice row is its prompt and correct choice,
    a contrast row its clean pair, and a text row its first half continued by its second half (the
    text's own likelihood, from its middle on)."""
    if task.kind == "stereotype":
        raise UserError(f"{task.source} compares whole sentences (a stereotype task): evaluate measures it; "
                        "attribution, pruning and LoRA training take completion, choice, contrast or text rows")
    if task.kind != "text":
        return task.rows
    return [Example(*_halves(e.prompt), e.meta) for e in task.rows]


def _halves(text: str) -> tuple[str, str]:
    """Split at the whitespace nearest the middle, the space going with the second half."""
    middle = len(text) // 2
    spaces = [i for i, c in enumerate(text) if c.isspace() and 0 < i < len(text) - 1]
    cut = min(spaces, key=lambda i: abs(i - middle)) if spaces else max(1, middle)
    return text[:cut], text[cut:]
