"""Accuracy with a Wilson score interval (binomial) and the sample count."""

import datasets
import evaluate

from editor.evaluation.stats import wilson

_DESCRIPTION = "Fraction of predictions equal to their references, with a Wilson score interval."
_KWARGS = """
Args:
    predictions (list of int): predicted labels or token ids.
    references (list of int): gold labels or token ids.
    confidence (float): interval coverage, default 0.95.
Returns:
    accuracy, low, high (float) and n (int).
"""


class AccuracyInterval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references, confidence: float = 0.95):
        n = len(predictions)
        hits = sum(int(p == r) for p, r in zip(predictions, references))
        low, high = wilson(hits, n, confidence)
        return {"accuracy": hits / n if n else float("nan"), "low": low, "high": high, "n": n}
