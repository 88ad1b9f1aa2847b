"""Half precision: every attribution method runs on bfloat16 weights, accumulates in float32, and
stays close to the float32 scores (tiny trained model; the default model's figures: bench/bench_precision.py)."""

import copy

import pytest
import torch

import tiny
from editor.attribution.confirm import gradient_scores
from editor.attribution.heads import head_ablation_scan, head_logprob_increase
from editor.attribution.neurons import neuron_logprob_increase
from editor.tasks.arithmetic import split_prompts

METHODS = {
    "static": lambda m, t, ex: head_logprob_increase(m, t, ex, progress=False),
    "ablation": lambda m, t, ex: head_ablation_scan(m, t, ex, progress=False),
    "neurons": lambda m, t, ex: neuron_logprob_increase(m, t, ex, progress=False),
    "gradient": lambda m, t, ex: gradient_scores(m, t, ex, "head", progress=False),
}


@pytest.fixture(scope="module")
def models():
    full = tiny.arithmetic_model("llama")
    return full, copy.deepcopy(full).to(torch.bfloat16)


@pytest.mark.parametrize("method", list(METHODS))
def test_bfloat16_scores_accumulate_in_float32_and_stay_close(models, tokenizer, method):
    full, half = models
    examples = split_prompts({"x": 32}, {"x": 1.0}, shots=1, seed=5)["x"]
    a, b = METHODS[method](full, tokenizer, examples), METHODS[method](half, tokenizer, examples)
    ca, cb = a.columns[a.primary], b.columns[b.primary]
    assert cb.dtype == torch.float32 and torch.isfinite(cb).all()
    assert (ca - cb).abs().max() <= 0.1 * ca.abs().max(), method  # bfloat16 keeps ~3 significant digits
    best = set(ca.flatten().argsort(descending=True)[:3].tolist())
    assert best & set(cb.flatten().argsort(descending=True)[:6].tolist()), method
