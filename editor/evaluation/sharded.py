"""``lmedit evaluate --executor ray``: the tasks spread over Ray workers, merged to the single run.

Each task is measured on its own prompts with its own seeded bootstrap, so a task's result does not
depend on which other tasks ran beside it: the workers take whole tasks (the guard's reference
top-1 agreement needs the base's logits on the same text, so a task never splits between workers),
and the merged evaluation, and the paired changes recomputed from it, equal the single-process run.
"""

from __future__ import annotations

from editor.evaluation.harness import compare, evaluate_against, evaluate_model
from editor.evaluation.results import Comparison, Evaluation


def task_groups(names: list[str], workers: int) -> list[list[str]]:
    """Tasks dealt round-robin over at most ``workers`` groups."""
    groups = [names[i::workers] for i in range(min(workers, len(names)))]
    return [g for g in groups if g]


def evaluate_on_ray(pool, model: str, base: str | None, tasks: dict[str, object], batch_size: int = 32,
                    progress: bool = True) -> Evaluation | Comparison:
    from editor.progress import progress_bar

    names = list(tasks)
    jobs = [{"model": model, "base": base, "tasks": {n: tasks[n] for n in group}, "batch_size": batch_size,
             "weight": len(group)} for group in task_groups(names, len(pool.actors))]
    bar = progress_bar(len(names), f"evaluation ({len(pool.actors)} Ray workers)", "task", enabled=progress)
    try:
        parts = pool.run_shards("editor.evaluation.sharded:run_shard", jobs, "evaluation", progress=bar.update)
    finally:
        bar.close()
    if base is None:
        return merge_evaluations(parts, names)
    before = merge_evaluations([p.before for p in parts], names)
    after = merge_evaluations([p.after for p in parts], names)
    return compare(before, after)


def merge_evaluations(parts: list[Evaluation], order: list[str]) -> Evaluation:
    tasks = {name: task for part in parts for name, task in part.tasks.items()}
    return Evaluation(parts[0].model, {name: tasks[name] for name in order}, dict(parts[0].meta))


def run_shard(load, model: str, base: str | None, tasks: dict[str, object], batch_size: int):
    """Runs on a Ray worker: some of the tasks, alone or against the base, as the single run does."""
    if base is not None:
        return evaluate_against(load, model, base, tasks, batch_size, progress=False)
    lm = load(model)
    return evaluate_model(lm.model, lm.tokenizer, tasks, model, batch_size, progress=False)
