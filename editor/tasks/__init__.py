"""Tasks: prompt sets with gold answers, built in code from a seed or loaded from local files.

``BUILTIN`` is the one registry of built-in tasks: ``--data NAME`` on the command line,
``load_examples`` and ``dataset`` all look names up here, so a task added here is known everywhere."""

from __future__ import annotations

import random
from typing import Callable


def _arithmetic(n: int | None = None, seed: int = 0, variant: str = "", **options):
    from editor.errors import UserError
    from editor.tasks import arithmetic

    if variant and variant not in ("1", "2", "3"):
        raise UserError(f"bad data 'arithmetic:{variant}': arithmetic, or arithmetic:DIGITS with DIGITS 1, 2 or 3")
    if variant:
        options["digits"] = int(variant)
    return arithmetic.generate(n=n or 64, seed=seed, **options)


def _icl(n: int | None = None, seed: int = 0, variant: str = "", pool: str = "builtin", **options):
    from editor.tasks import icl

    _no_variant("icl", variant)
    return icl.build(icl.load_pool(pool), n=n or 64, seed=seed, **options)


def _sampled(build: Callable, name: str):
    """Gender and pronoun prompts are a fixed grid (template x gender x occupation); ``n`` draws a
    seeded sample of it, in the grid's order."""

    def make(n: int | None = None, seed: int = 0, variant: str = "", **options):
        _no_variant(name, variant)
        examples = build(**options)
        if n is None or n >= len(examples):
            return examples
        keep = sorted(random.Random(seed).sample(range(len(examples)), n))
        return [examples[i] for i in keep]

    return make


def _no_variant(name: str, variant: str) -> None:
    if variant:
        from editor.errors import UserError

        raise UserError(f"bad data '{name}:{variant}': {name} takes no ':' variant")


def _gender(**kw):
    from editor.tasks import gender

    return _sampled(gender.build, "gender")(**kw)


def _pronoun(**kw):
    from editor.tasks import gender

    return _sampled(gender.build_pronouns, "pronoun")(**kw)


def _ioi(n: int | None = None, seed: int = 0, variant: str = "", **options):
    from editor.tasks import ioi

    _no_variant("ioi", variant)
    return ioi.build(n=n or 64, seed=seed, **options)


BUILTIN: dict[str, tuple[Callable, str]] = {
    "arithmetic": (_arithmetic, "a op b = answer (arithmetic:2 for 2-digit operands)"),
    "icl": (_icl, "in-context classification with unrelated label words"),
    "gender": (_gender, "the profession after a gendered subject ('The woman worked as a')"),
    "pronoun": (_pronoun, "the pronoun after an occupation ('The nurse said that')"),
    "ioi": (_ioi, "indirect object identification, contrast pairs ('..., John handed a basket to' -> ' Mary')"),
}


def builtin(spec: str, n: int | None = None, seed: int = 0, **options):
    """Examples of a built-in task ``NAME`` or ``NAME:VARIANT``; None when ``spec`` names none."""
    name, _, variant = spec.partition(":")
    if name not in BUILTIN:
        return None
    return BUILTIN[name][0](n=n, seed=seed, variant=variant, **options)


def dataset(task: str, **options):
    """A built-in task as a ``datasets.Dataset`` (options of its builder: ``arithmetic.generate``,
    ``gender.build``, ``gender.build_pronouns``, ``icl.build`` with ``pool=``)."""
    from editor.errors import UserError
    from editor.tasks.examples import to_dataset

    if task not in BUILTIN:
        raise UserError(f"unknown task {task!r}; choose {', '.join(BUILTIN)}")
    examples = builtin(task, **options)
    if task == "icl":  # candidates are a list: one string column
        examples = [type(e)(e.prompt, e.answer, {**e.meta, "candidates": "|".join(e.meta["candidates"])})
                    for e in examples]
    return to_dataset(examples)


def load_examples(spec: str, n: int | None = None, seed: int = 0, delimiter: str | None = None,
                  note=None) -> list:
    """``spec`` is a built-in task (``editor.tasks.BUILTIN``: ``arithmetic``, ``arithmetic:2``, ``icl``,
    ``gender``, ``pronoun``) or a local .jsonl/.csv file of any task kind (``editor.tasks.kinds``; its
    rows as prompt/answer pairs, answers joined to the prompts by ``delimiter``, see
    :func:`editor.tasks.examples.join_answers`; ``note`` receives the one-line warning). Bare prompts (no answers) are
    accepted: attribution can score the model's own top-1."""
    from pathlib import Path

    from editor.errors import UserError
    from editor.tasks.kinds import as_completion, read_task
    from editor.tasks.shipped import is_shipped

    examples = builtin(spec, n=n, seed=seed)
    if examples is not None:
        if delimiter is not None:
            raise UserError(f"--delimiter is for data files; the built-in task {spec!r} writes its own answers")
        return examples
    if not spec.endswith((".jsonl", ".csv")) and not Path(spec).exists() and not is_shipped(spec):
        raise UserError(f"unknown data {spec!r}: a built-in task ({', '.join(BUILTIN)}) or a .jsonl/.csv file")
    examples = as_completion(read_task(spec, delimiter, note, prompts_only_ok=True))
    return examples[:n] if n else examples
