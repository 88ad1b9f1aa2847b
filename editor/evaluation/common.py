"""What every task runner shares: the context it runs in, metric modules, measures with intervals,
and the completion scorer that the arithmetic task and users' completion files both use."""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from editor.errors import UserError
from editor.evaluation.results import Evaluation, Measure, TaskResult
from editor.evaluation.scoring import answer_matches, greedy_answers, match_from_teacher_forcing, score_continuations
from editor.tasks.examples import Example, fit_to_tokenizer

METRICS_DIR = Path(__file__).parent / "metrics"


@lru_cache(maxsize=None)
def load_metric(name: str):
    """A local metric module, loaded the way ``evaluate`` loads any other."""
    import evaluate

    logging.getLogger("evaluate").setLevel(logging.ERROR)
    path = METRICS_DIR / name
    if not (path / f"{name}.py").is_file():
        raise UserError(f"no metric module {name!r} in {METRICS_DIR}")
    return evaluate.load(str(path), keep_in_memory=True)


@dataclass
class Context:
    """What every task runner gets besides its configuration."""

    model: object
    tokenizer: object
    batch_size: int = 32
    progress: bool = True
    padding_side: str = "left"
    reference: Evaluation | None = None  # the unedited model's evaluation, for agreement measures
    self_reference: bool = False  # this model IS the reference (agreement with itself = 1)
    note: Callable[[str], None] | None = None  # notes about the data (e.g. answers glued to prompts)

    def continuations(self, examples: list[Example], desc: str, next_token: bool = False):
        return score_continuations(self.model, self.tokenizer, [e.prompt for e in examples],
                                   [e.answer for e in examples], self.batch_size, self.padding_side,
                                   self.progress, desc, next_token)


def _measure(result: dict, key: str | None, unit: str, better: str, per_unit: list[float], **kw) -> Measure:
    prefix = f"{key}_" if key else ""
    value = result[key] if key else result.get("value", result.get("accuracy"))
    return Measure(value=float(value), low=float(result[f"{prefix}low"]), high=float(result[f"{prefix}high"]),
                   n=int(result[f"{prefix}n"]), unit=unit, better=better, per_unit=[float(x) for x in per_unit], **kw)


def _accuracy(hits: list[bool], unit: str) -> Measure:
    r = load_metric("accuracy_interval").compute(predictions=[int(h) for h in hits], references=[1] * len(hits))
    return _measure(r, None, unit, "higher", [float(h) for h in hits])



def _recorded(cfg) -> dict:
    """A task's configuration as results record it: in-memory examples and pools by their size."""
    out = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(cfg) if f.name not in ("examples", "pool")}
    if getattr(cfg, "examples", None) is not None:
        out["examples"] = f"{len(cfg.examples)} given in memory"
    if getattr(cfg, "pool", None) is not None:
        out["pool"] = f"{len(cfg.pool.sentences)} sentences given in memory"
    return out


SAMPLES = 8  # greedy continuations shown in the results


def _exact_match(ctx: Context, examples: list[Example], scored, name: str) -> tuple[list[bool], dict[int, str]]:
    """Greedy exact match per prompt, generating only where teacher forcing cannot decide it (about
    the prompts the model gets wrong: generation was more than half of an evaluation), and for the
    samples shown. Returns the matches and the generated texts by prompt index."""
    decided = [match_from_teacher_forcing(ctx.tokenizer, e.answer, s) for e, s in zip(examples, scored)]
    chosen = sorted({i for i, d in enumerate(decided) if d is None} | set(range(min(SAMPLES, len(examples)))))
    max_new = max(len(s.targets) for s in scored) + 1
    texts = greedy_answers(ctx.model, ctx.tokenizer, [examples[i].prompt for i in chosen], max_new, ctx.batch_size,
                           ctx.progress, f"{name}: greedy answers")
    greedy = dict(zip(chosen, texts))
    exact = [d if d is not None else answer_matches(greedy[i], e.answer)
             for i, (d, e) in enumerate(zip(decided, examples))]
    return exact, greedy


def _completion_result(ctx: Context, examples: list[Example], name: str, recorded: dict) -> TaskResult:
    """Answer-token accuracy, whole-answer accuracy and greedy exact match of prompt/answer rows."""
    examples = fit_to_tokenizer(ctx.tokenizer, examples)
    scored = ctx.continuations(examples, f"{name}: teacher forcing", next_token=True)
    exact, greedy = _exact_match(ctx, examples, scored, name)
    tokens = [ok for s in scored for ok in s.correct]
    r = load_metric("accuracy_interval").compute(predictions=[p for s in scored for p in s.top1],
                                                 references=[t for s in scored for t in s.targets])
    measures = {
        "token_accuracy": _measure(r, None, "answer token", "higher", [float(x) for x in tokens]),
        "answer_accuracy": _accuracy([all(s.correct) for s in scored], "prompt"),
        "exact_match": _accuracy(exact, "prompt"),
    }
    by_op: dict[str, list[bool]] = {}
    for e, s in zip(examples, scored):
        by_op.setdefault((e.meta or {}).get("op", "all"), []).extend(s.correct)
    details = {"token_accuracy_by_op": {op: sum(v) / len(v) for op, v in by_op.items()},
               "samples": [{"prompt": e.prompt, "answer": e.answer, "greedy": greedy[i]} for i, e in
                           enumerate(examples[:SAMPLES])],
               "greedy_generated": len(greedy)}
    return TaskResult(name, recorded, measures, 0.0, details)
