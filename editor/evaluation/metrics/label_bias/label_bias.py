"""In-context classification: accuracy, majority-label bias and recency bias."""

import datasets
import evaluate

from editor.evaluation.stats import wilson

_DESCRIPTION = """Accuracy of label predictions, and two biases measured as excess prediction rates:
majority_label_bias = P(prediction = the demonstrations' majority label) - P(gold = that label), over rows
with a majority (>= 0); recency_bias = P(prediction = the last demonstration's label) - P(gold = that label),
over rows with a last label (>= 0). Zero means no bias; intervals are Wilson intervals of the rate, shifted
by the fixed gold rate."""
_KWARGS = """
Args:
    predictions, references (list of int): predicted and gold label indices.
    majority (list of int): majority label of each row's demonstrations, -1 when balanced.
    last (list of int): label of each row's last demonstration, -1 when unknown.
Returns:
    accuracy, majority_label_bias, recency_bias, each with _low, _high and _n.
"""


def _excess(preds, golds, marks, confidence):
    rows = [(p, g, m) for p, g, m in zip(preds, golds, marks) if m >= 0]
    n = len(rows)
    if n == 0:
        return float("nan"), float("nan"), float("nan"), 0
    hits = sum(p == m for p, _, m in rows)
    base = sum(g == m for _, g, m in rows) / n
    low, high = wilson(hits, n, confidence)
    return hits / n - base, low - base, high - base, n


class LabelBias(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({name: datasets.Value("int64")
                                        for name in ("predictions", "references", "majority", "last")}),
        )

    def _compute(self, predictions, references, majority, last, confidence=0.95):
        n = len(predictions)
        hits = sum(p == r for p, r in zip(predictions, references))
        out = {"accuracy": hits / n if n else float("nan"), "accuracy_n": n}
        out["accuracy_low"], out["accuracy_high"] = wilson(hits, n, confidence)
        for name, marks in (("majority_label_bias", majority), ("recency_bias", last)):
            value, low, high, count = _excess(predictions, references, marks, confidence)
            out.update({name: value, f"{name}_low": low, f"{name}_high": high, f"{name}_n": count})
        return out
