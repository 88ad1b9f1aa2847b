"""Change of a statistic between two models on the same units, with a paired bootstrap interval."""

import datasets
import evaluate

from editor.evaluation.stats import paired_change

_DESCRIPTION = ("statistic(after) - statistic(before) where before[i] and after[i] are the same unit (token, "
                "prompt, profession) under two models; the interval resamples units (in blocks) as pairs.")
_KWARGS = """
Args:
    before, after (list of float): per-unit values of the two models, aligned.
    statistic (str): "mean" (default) or "exp_mean". block_size, n_boot, seed, confidence as in mean_interval.
Returns:
    change, low, high (float) and n (int).
"""


class PairedChange(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
                                   features=datasets.Features({"before": datasets.Value("float64"),
                                                               "after": datasets.Value("float64")}))

    def _compute(self, before, after, statistic="mean", block_size=1, n_boot=1000, seed=0, confidence=0.95):
        return paired_change(before, after, statistic, block_size, n_boot, seed, confidence)
