"""Scoring by task kind (``editor.tasks.kinds``): the evaluation of a task's rows, with intervals,
and the one number a search keeps (its validation score: higher is better and a ratio to the base's
means "retained").

A kind's scorer is one :func:`scorer`-registered class with ``headline`` (the measure a prune
report leads with), ``evaluate`` and ``validation``.

A validation given a ``floor`` (the pruning search's: a move qualifies when its score is >= the
floor) may stop as soon as the score is certain to end below it: the rows not yet scored are counted
as hits (or as texts of zero loss), and once even that best case is below the floor nothing left can
change the verdict. The search's decisions are those of the full scoring; a failed move costs less.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

from editor.errors import UserError
from editor.evaluation.common import Context, _accuracy, _completion_result, _measure, _recorded, load_metric
from editor.evaluation.results import Measure, TaskResult
from editor.evaluation.scoring import score_continuations, score_text, text_windows
from editor.ranges import MAX_PROMPTS
from editor.tasks.examples import Example, fit_to_tokenizer
from editor.tasks.kinds import KINDS, TaskData, read_task

SCORERS: dict[str, "KindScorer"] = {}
EPS = 1e-12  # the search's tolerance on "score >= floor"


@dataclass(frozen=True)
class Validation:
    """A validation score; ``exact`` False when scoring stopped below the floor and ``value`` is the
    best the score could still have been (an upper bound, itself below the floor)."""

    value: float
    exact: bool = True


def scorer(kind: str):
    def register(cls):
        if kind not in KINDS:
            raise ValueError(f"no task kind {kind!r} in editor.tasks.kinds")
        SCORERS[kind] = cls()
        return cls
    return register


class KindScorer:
    headline: str  # the measure a prune report leads with
    better: str = "higher"

    def evaluate(self, ctx: Context, rows: list[Example], name: str, recorded: dict) -> TaskResult:
        raise NotImplementedError

    def validation(self, ctx: Context, rows: list[Example], floor: float | None = None) -> Validation:
        raise NotImplementedError


def _best_share(verdicts: list[bool | None]) -> float:
    """The share of hits, counting rows not scored yet (None) as hits: the most it can still become."""
    return sum(v is not False for v in verdicts) / len(verdicts)


def _share_validation(ctx: Context, rows: list[Example], floor: float | None, score, verdicts) -> Validation:
    """The share of hits among ``rows``: ``score(stop)`` scores them (stopping when ``stop`` says so)
    and ``verdicts(scored)`` reads one hit/miss/None per row."""
    stop = None if floor is None else (lambda out: _best_share(verdicts(out)) < floor - EPS)
    got = verdicts(score(stop))
    return Validation(_best_share(got), None not in got)


def _teacher_forced(ctx: Context, rows: list[Example], stop=None):
    rows = fit_to_tokenizer(ctx.tokenizer, rows)
    return score_continuations(ctx.model, ctx.tokenizer, [e.prompt for e in rows], [e.answer for e in rows],
                               ctx.batch_size, ctx.padding_side, False, stop=stop)


def _answer_verdicts(scored) -> list[bool | None]:
    return [None if s is None else all(s.correct) for s in scored]


def answer_hits(model, tokenizer, rows: list[Example], batch_size: int) -> list[bool]:
    """Per row: is every answer token the model's top-1 (teacher forced)?"""
    return [all(s.correct) for s in _teacher_forced(Context(model, tokenizer, batch_size, progress=False), rows)]


@scorer("completion")
class Completion(KindScorer):
    headline = "answer_accuracy"

    def evaluate(self, ctx, rows, name, recorded):
        return _completion_result(ctx, rows, name, recorded)

    def validation(self, ctx, rows, floor=None):
        """Share of rows whose every answer token is the model's top-1 (teacher forced)."""
        return _share_validation(ctx, rows, floor, lambda stop: _teacher_forced(ctx, rows, stop), _answer_verdicts)


@scorer("choice")
class Choice(KindScorer):
    """Each choice scored by its summed log-probability after the prompt, as written (no delimiter is
    added and no space moved: every choice is scored on the same footing); ``accuracy_norm`` divides
    by the choice's length in bytes, as lm-evaluation-harness's ``acc_norm`` does."""

    headline = "accuracy"

    def _scored(self, ctx: Context, rows: list[Example], stop=None):
        prompts = [e.prompt for e in rows for _ in e.meta["choices"]]
        choices = [c for e in rows for c in e.meta["choices"]]
        return score_continuations(ctx.model, ctx.tokenizer, prompts, choices, ctx.batch_size, ctx.padding_side,
                                   ctx.progress and stop is None, "choices", stop=stop)

    @staticmethod
    def _picks(rows: list[Example], scored, norm: bool = False) -> list[int | None]:
        """Each row's highest-scoring choice (by summed log-probability, or per byte with ``norm``);
        None for a row with a choice not scored."""
        picks, at = [], 0
        for e in rows:
            part, at = scored[at:at + len(e.meta["choices"])], at + len(e.meta["choices"])
            if None in part:
                picks.append(None)
                continue
            totals = [s.total / (max(1, len(c.encode())) if norm else 1) for s, c in zip(part, e.meta["choices"])]
            picks.append(max(range(len(totals)), key=totals.__getitem__))
        return picks

    def evaluate(self, ctx, rows, name, recorded):
        scored = self._scored(ctx, rows)
        picks, picks_norm = self._picks(rows, scored), self._picks(rows, scored, norm=True)
        labels = [e.meta["label"] for e in rows]
        measures = {"accuracy": _accuracy([p == y for p, y in zip(picks, labels)], "question"),
                    "accuracy_norm": _accuracy([p == y for p, y in zip(picks_norm, labels)], "question")}
        chance = sum(1 / len(e.meta["choices"]) for e in rows) / len(rows)
        details = {"chance_accuracy": chance, "samples": [
            {"prompt": e.prompt, "choices": e.meta["choices"], "label": e.meta["label"], "picked": p}
            for e, p in zip(rows[:8], picks)]}
        return TaskResult(name, recorded, measures, 0.0, details)

    def validation(self, ctx, rows, floor=None):
        def verdicts(scored):
            return [None if p is None else p == e.meta["label"] for p, e in zip(self._picks(rows, scored), rows)]
        return _share_validation(ctx, rows, floor, lambda stop: self._scored(ctx, rows, stop), verdicts)


def _mean(values: list[float], unit: str, better: str):
    r = load_metric("mean_interval").compute(values=values)
    return _measure(r, None, unit, better, values)


@scorer("contrast")
class Contrast(KindScorer):
    """The answer's accuracy on the clean prompt, and, per pair, how much the model prefers it:
    ``logprob_difference`` = log p(answer | prompt) - log p(corrupt_answer | prompt) (rows with a
    corrupt answer; the logit difference of patching studies, over whole answers), and
    ``prompt_effect`` = log p(answer | prompt) - log p(answer | corrupt_prompt) (rows with a corrupt prompt)."""

    headline = "answer_accuracy"

    def evaluate(self, ctx, rows, name, recorded):
        rows = fit_to_tokenizer(ctx.tokenizer, rows)
        clean = score_continuations(ctx.model, ctx.tokenizer, [e.prompt for e in rows], [e.answer for e in rows],
                                    ctx.batch_size, ctx.padding_side, ctx.progress, f"{name}: answers")
        measures = {"answer_accuracy": _accuracy([all(s.correct) for s in clean], "pair")}
        for key, label, pick in (
                ("corrupt_answer", "logprob_difference", lambda e: (e.prompt, e.meta["corrupt_answer"])),
                ("corrupt_prompt", "prompt_effect", lambda e: (e.meta["corrupt_prompt"], e.answer))):
            have = [i for i, e in enumerate(rows) if key in (e.meta or {})]
            if not have:
                continue
            prompts, answers = zip(*(pick(rows[i]) for i in have))
            other = score_continuations(ctx.model, ctx.tokenizer, list(prompts), list(answers), ctx.batch_size,
                                        ctx.padding_side, ctx.progress, f"{name}: {key}")
            diffs = [clean[i].total - o.total for i, o in zip(have, other)]
            measures[label] = _mean(diffs, "pair", "higher")
            if key == "corrupt_answer":
                measures["prefers_answer"] = _accuracy([d > 0 for d in diffs], "pair")
        return TaskResult(name, recorded, measures, 0.0, {})

    def validation(self, ctx, rows, floor=None):
        return Completion().validation(ctx, rows, floor)


def sentence_context(tokenizer, prompt: str = "") -> str:
    """What a sentence is scored after: its prompt, or with none the tokenizer's own start (a BOS it
    adds, else its BOS or EOS token written out), as lm-evaluation-harness scores a context-free
    sentence after the end-of-text token; so the first word is scored too."""
    if prompt or tokenizer("")["input_ids"]:
        return prompt
    start = tokenizer.bos_token or tokenizer.eos_token
    if not start:
        raise UserError("scoring whole sentences needs a start token (BOS or EOS); this tokenizer has neither")
    return start


@scorer("stereotype")
class Stereotype(KindScorer):
    """Each sentence scored by its log-probability after the row's context (:func:`sentence_context`).

    ``stereotype_score``: the share of rows whose stereotype is likelier than its anti-stereotype by
    summed log-probability (CrowS-Pairs' measure as lm-evaluation-harness computes it for causal
    LMs; 0.5 is no preference); ``stereotype_score_per_token`` compares mean log-probability per token
    instead, as StereoSet's scorer for generative models does. With ``unrelated`` sentences,
    StereoSet's ``lm_score`` (how often the stereotype and the anti-stereotype each beat the
    unrelated sentence, per token) and ``icat`` = lm_score x min(ss, 1 - ss) / 0.5 (1: a model that
    always prefers a meaningful sentence and is neutral between the two), both on the per-token score."""

    headline = "stereotype_score"
    better = "neutral"
    KEYS = ("stereotype", "anti_stereotype", "unrelated")

    def _scored(self, ctx: Context, rows: list[Example]) -> list[dict[str, tuple[float, float]]]:
        """Per row: sentence -> (summed log-probability, mean per token)."""
        items = [(i, key, e.answer if key == "stereotype" else e.meta[key]) for i, e in enumerate(rows)
                 for key in self.KEYS if key == "stereotype" or key in (e.meta or {})]
        contexts = [sentence_context(ctx.tokenizer, rows[i].prompt) for i, _, _ in items]
        scored = score_continuations(ctx.model, ctx.tokenizer, contexts, [text for _, _, text in items],
                                     ctx.batch_size, ctx.padding_side, ctx.progress, "sentences")
        out: list[dict] = [{} for _ in rows]
        for (i, key, _), s in zip(items, scored):
            out[i][key] = (s.total, s.total / len(s.targets))
        return out

    @staticmethod
    def _neutral(measure: Measure) -> Measure:
        return dataclasses.replace(measure, better="neutral")

    def evaluate(self, ctx, rows, name, recorded):
        scored = self._scored(ctx, rows)
        prefers = [r["stereotype"][0] > r["anti_stereotype"][0] for r in scored]
        per_token = [r["stereotype"][1] > r["anti_stereotype"][1] for r in scored]
        measures = {"stereotype_score": self._neutral(_accuracy(prefers, "pair")),
                    "stereotype_score_per_token": self._neutral(_accuracy(per_token, "pair")),
                    "logprob_difference": _mean([r["stereotype"][0] - r["anti_stereotype"][0] for r in scored],
                                                "pair", "zero")}
        with_unrelated = [r for r in scored if "unrelated" in r]
        if with_unrelated:
            meaningful = [((r["stereotype"][1] > r["unrelated"][1]) + (r["anti_stereotype"][1] > r["unrelated"][1])) / 2
                          for r in with_unrelated]
            measures["lm_score"] = _mean(meaningful, "row", "higher")
            measures["icat"] = _icat(meaningful, [r["stereotype"][1] > r["anti_stereotype"][1] for r in with_unrelated])
        return TaskResult(name, recorded, measures, 0.0, {"rows": len(rows)})

    def validation(self, ctx, rows, floor=None):
        """Neutrality, 1 - 2 |stereotype_score - 0.5| (1: no preference either way)."""
        scored = self._scored(dataclasses.replace(ctx, progress=False), rows)
        share = sum(r["stereotype"][0] > r["anti_stereotype"][0] for r in scored) / len(scored)
        return Validation(1 - 2 * abs(share - 0.5))


def _icat(meaningful: list[float], prefers: list[bool], resamples: int = 1000, seed: int = 0) -> Measure:
    """StereoSet's ICAT with a seeded bootstrap interval over rows (it is not a mean of per-row values)."""
    import random

    def icat(idx: list[int]) -> float:
        lms, ss = sum(meaningful[i] for i in idx) / len(idx), sum(prefers[i] for i in idx) / len(idx)
        return lms * min(ss, 1 - ss) / 0.5

    n, rng = len(meaningful), random.Random(seed)
    draws = sorted(icat([rng.randrange(n) for _ in range(n)]) for _ in range(resamples))
    return Measure(icat(list(range(n))), draws[int(0.025 * resamples)], draws[int(0.975 * resamples) - 1], n,
                   "row", "higher")


@scorer("text")
class Text(KindScorer):
    """Perplexity over every row's text (each row scored on its own, in windows of 256 tokens), with
    a block-bootstrap interval. Its validation score is 1 / perplexity, so a ratio to the base's
    is "retained" as for accuracies (0.95: perplexity at most 1/0.95 of the base's)."""

    headline = "perplexity"
    better = "lower"
    block = 32

    def _nll(self, ctx: Context, rows: list[Example]) -> list[float]:
        nll = []
        for e in rows:
            nll.extend(score_text(ctx.model, ctx.tokenizer, e.prompt, progress=False).nll)
        if not nll:
            raise UserError("every text row is a single token: no token has a context to be predicted from")
        return nll

    def evaluate(self, ctx, rows, name, recorded):
        nll = self._nll(ctx, rows)
        r = load_metric("mean_interval").compute(values=nll, statistic="exp_mean", block_size=self.block)
        measures = {"perplexity": _measure(r, None, "token", "lower", nll, statistic="exp_mean", block=self.block)}
        return TaskResult(name, recorded, measures, 0.0, {"tokens": len(nll)})

    def validation(self, ctx, rows, floor=None):
        """1 / perplexity; with ``floor``, rows are scored in turn and scoring stops once even a zero
        loss on every token left would keep the score below it."""
        tokens = sum(len(w) - 1 for e in rows for w in text_windows(ctx.model, ctx.tokenizer, e.prompt))
        nll = []
        for i, e in enumerate(rows):
            nll.extend(score_text(ctx.model, ctx.tokenizer, e.prompt, progress=False).nll)
            best = math.exp(-sum(nll) / max(tokens, 1))
            if floor is not None and i < len(rows) - 1 and best < floor - EPS:
                return Validation(best, False)
        if not nll:
            raise UserError("every text row is a single token: no token has a context to be predicted from")
        return Validation(math.exp(-sum(nll) / len(nll)))


# The evaluation harness's entry for a user's file (and a recipe's split of one, held in memory) -----
@dataclass
class FileConfig:
    """A user's task file, any kind, reported under the file's own name."""

    data: str = ""
    n: int = MAX_PROMPTS
    delimiter: str | None = None  # put between glued prompt/answer pairs (editor.tasks.examples.join_answers)
    kind: str | None = None  # recorded; with ``examples``, the kind of those rows
    examples: list[Example] | None = field(default=None, repr=False)  # a recipe's split, in memory

    def check(self, where: str) -> None:
        if not 1 <= self.n <= MAX_PROMPTS:
            raise UserError(f"{where}.n: 1-{MAX_PROMPTS}, got {self.n}")
        if self.examples is None:
            from editor.tasks.shipped import SHIPPED, resolve

            if not self.data or not resolve(self.data).is_file():
                raise UserError(f"{where}.data: no such file {self.data!r} (shipped tasks: {', '.join(SHIPPED)})")
            self.kind = self.task().kind  # a malformed file is refused before any model loads

    def task(self, note=None) -> TaskData:
        if self.examples is not None:
            return TaskData(task_name(self.data), self.kind or "completion", list(self.examples), self.data)
        task = read_task(self.data, self.delimiter, note)
        task.rows = task.rows[:self.n]
        return task


def task_name(path: str) -> str:
    """A user's task is named after its file (``capitals.jsonl`` -> ``capitals``)."""
    return Path(path).stem


def run_file(ctx: Context, cfg: FileConfig) -> TaskResult:
    task = cfg.task(ctx.note)
    result = SCORERS[task.kind].evaluate(ctx, task.rows, task.name, {**_recorded(cfg), "kind": task.kind})
    return result


def validation_score(model, tokenizer, kind: str, rows: list[Example], batch_size: int,
                     floor: float | None = None) -> Validation:
    """The search's number for ``rows`` of ``kind`` (higher is better); see :class:`Validation` for ``floor``."""
    return SCORERS[kind].validation(Context(model, tokenizer, batch_size, progress=False), rows, floor)
