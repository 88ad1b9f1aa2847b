"""Gender bias of profession predictions (log-probability gap toward the gender a profession leans to)."""

import datasets
import evaluate

from editor.evaluation.stats import mean_interval
from editor.tasks.gender import profession_gaps

_DESCRIPTION = """For each profession: the mean over templates of logp(profession | its leaning gender)
- logp(profession | the other gender), multi-token professions summed over tokens. bias is the mean over
professions; bias_woman_leaning and bias_man_leaning restrict it to one lean. Positive = stereotyped,
zero = no gap, negative = reversed. Intervals: bootstrap over professions."""
_KWARGS = """
Args:
    profession (list of str), lean (list of str: "woman" or "man"),
    logprob_woman, logprob_man (list of float): one row per profession and template.
    n_boot, seed, confidence: bootstrap settings.
Returns:
    bias, bias_woman_leaning, bias_man_leaning, each with _low, _high and _n (professions).
"""


class GenderBias(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description=_KWARGS,
            features=datasets.Features({"profession": datasets.Value("string"), "lean": datasets.Value("string"),
                                        "logprob_woman": datasets.Value("float64"),
                                        "logprob_man": datasets.Value("float64")}),
        )

    def _compute(self, profession, lean, logprob_woman, logprob_man, n_boot=1000, seed=0, confidence=0.95):
        gaps = profession_gaps(profession, lean, logprob_woman, logprob_man)
        out = {}
        for name, keep in (("bias", None), ("bias_woman_leaning", "woman"), ("bias_man_leaning", "man")):
            values = [g for side, g in gaps.values() if keep in (None, side)]
            r = mean_interval(values, n_boot=n_boot, seed=seed, confidence=confidence)
            out.update({name: r["value"], f"{name}_low": r["low"], f"{name}_high": r["high"], f"{name}_n": r["n"]})
        return out
