"""A mean (or the exp of a mean: perplexity from token NLLs) with a block-bootstrap interval."""

import datasets
import evaluate

from editor.evaluation.stats import mean_interval

_DESCRIPTION = ("Mean of per-unit values, or exp(mean) with statistic='exp_mean', with a percentile bootstrap "
                "interval that resamples blocks of block_size consecutive values.")
_KWARGS = """
Args:
    values (list of float): one value per unit.
    statistic (str): "mean" (default) or "exp_mean".
    block_size (int): default 1. n_boot (int): default 1000. seed (int): default 0. confidence: default 0.95.
Returns:
    value, low, high (float) and n (int).
"""


class MeanInterval(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
                                   features=datasets.Features({"values": datasets.Value("float64")}))

    def _compute(self, values, statistic="mean", block_size=1, n_boot=1000, seed=0, confidence=0.95):
        return mean_interval(values, statistic, block_size, n_boot, seed, confidence)
