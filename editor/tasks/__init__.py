"""Tasks: prompt sets with gold answers, built in code from a seed or loaded from local files."""


def dataset(task: str, **options):
    """A built-in task as a ``datasets.Dataset``: ``arithmetic`` (options of ``arithmetic.generate``),
    ``gender`` (``gender.build``), ``pronoun`` (``gender.build_pronouns``) or ``icl`` (``icl.build``; ``pool=`` a pool source, default builtin)."""
    from editor.errors import UserError
    from editor.tasks import arithmetic, gender, icl
    from editor.tasks.examples import to_dataset

    if task == "arithmetic":
        return to_dataset(arithmetic.generate(**options))
    if task == "gender":
        return to_dataset(gender.build(**options))
    if task == "pronoun":
        return to_dataset(gender.build_pronouns(**options))
    if task == "icl":
        pool = icl.load_pool(options.pop("pool", "builtin"))
        examples = icl.build(pool, **options)
        return to_dataset([type(e)(e.prompt, e.answer, {**e.meta, "candidates": "|".join(e.meta["candidates"])})
                           for e in examples])
    raise UserError(f"unknown task {task!r}; choose arithmetic, gender, pronoun or icl")
