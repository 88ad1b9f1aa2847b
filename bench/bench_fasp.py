"""FASP's head scan on the default model: the layer-by-layer scan against the per-head rescoring.

The reference (every head zeroed in the weights, both sets rescored by full forwards) is timed on a
few heads and scaled to all of them; the fast scan runs whole. Both on the recipe's capability
sentences (the same number the recipe uses), which stand in for both FASP sets here: the work
depends on how many prompts and how long, not on what they say. Prints the ratio measured in this run
and the largest difference on the heads both computed.

    .venv/bin/python bench/bench_fasp.py [--sentences 96] [--heads 4]
"""

from __future__ import annotations

import argparse
import time

import torch

from editor.model.loading import load_model
from editor.recipes.debias_fasp import _weighted_head_changes, weighted_logprob
from editor.recipes.gender_debias import capability_examples
from editor.edit.plan import EditPlan
from editor.edit.weights import apply_plan


class _Quiet:
    def update(self, n: int = 1) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sentences", type=int, default=96)
    parser.add_argument("--heads", type=int, default=4, help="heads the reference rescoring is timed on")
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    lm = load_model("smollm2-135m")
    examples, weights = capability_examples(args.sentences)
    n_layers, n_heads = lm.arch.n_layers, lm.arch.n_heads
    torch.set_grad_enabled(False)

    start = time.perf_counter()
    fast = _weighted_head_changes(lm.model, lm.tokenizer, examples, weights, args.batch_size, _Quiet())
    fast_s = time.perf_counter() - start

    start = time.perf_counter()
    base = weighted_logprob(lm.model, lm.tokenizer, examples, weights, args.batch_size)
    heads = [(l, h) for l in (0, n_layers // 2, n_layers - 1) for h in range(n_heads)][:args.heads]
    reference = {}
    for layer, head in heads:
        with apply_plan(lm.model, EditPlan().zero("head", [(layer, head)])):
            reference[(layer, head)] = weighted_logprob(lm.model, lm.tokenizer, examples, weights, args.batch_size) - base
    per_head = (time.perf_counter() - start) / len(heads)
    reference_s = per_head * n_layers * n_heads
    diff = max(abs(float(fast[lh]) - reference[lh]) for lh in heads)
    print(f"{len(examples)} sentences, {n_layers} x {n_heads} heads, one set (FASP scans two)")
    print(f"layer-by-layer scan: {fast_s:.1f} s; per-head rescoring: {per_head:.2f} s a head, "
          f"{reference_s:.0f} s for all (scaled from {len(heads)}); ratio {reference_s / fast_s:.2f}x")
    print(f"largest difference on the {len(heads)} heads both computed: {diff:.2e}")


if __name__ == "__main__":
    main()
