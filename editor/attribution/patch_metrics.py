"""What a patch is measured by, read at the last prompt position of each pair: the logit difference
``logit(answer) - logit(corrupt_answer)`` (the IOI convention), the answer's log-probability, or
whether the answer is the top token (accuracy: a step function, so exact patching only)."""

from __future__ import annotations

import torch

from editor.errors import UserError
from editor.tasks.examples import Example

METRICS = ("logit_difference", "answer_logprob", "accuracy")


def check_metric(metric: str | None, examples: list[Example]) -> str | None:
    """``metric`` if the rows can be read with it (one line otherwise; no model needed)."""
    if metric is None:
        return None
    if metric not in METRICS:
        raise UserError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if metric == "logit_difference":
        missing = next((i for i, e in enumerate(examples, 1) if "corrupt_answer" not in (e.meta or {})), None)
        if missing is not None:
            raise UserError(f"row {missing} has no 'corrupt_answer': the logit difference needs one in every row")
    return metric


def read_metric(logits: torch.Tensor, answer: torch.Tensor, wrong: torch.Tensor | None,
           kind: str | None = None) -> torch.Tensor:
    """Per row of last-position ``logits``: logit(answer) - logit(wrong), log p(answer), or whether the
    answer is the top token (``kind``; None: the logit difference where ``wrong`` is given). In
    float64: effects are differences of these, and the derivative test divides them by a small step."""
    logits = logits.double()
    if kind == "accuracy":
        return (logits.argmax(-1) == answer).double()
    picked = logits.gather(-1, answer[:, None])[:, 0]
    if wrong is not None and kind != "answer_logprob":
        return picked - logits.gather(-1, wrong[:, None])[:, 0]
    return picked - logits.logsumexp(-1)


def differentiable(pairs) -> None:
    """The estimators' check on :class:`editor.attribution.patching.Pairs`: accuracy is a step function
    of the logits."""
    if pairs.metric == "accuracy":
        raise UserError("accuracy is a step function of the logits, with no gradient to estimate it from: "
                        "use --method exact, or the logit_difference / answer_logprob metric")
