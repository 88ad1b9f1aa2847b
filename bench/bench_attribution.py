"""Attribution speed on the default model, each against a naive baseline measured in the same run.

    .venv/bin/python bench/bench_attribution.py [--prompts 64] [--threads 2]

Baselines that would take tens of minutes are timed on a subset and scaled linearly (said in the
output): the naive ablation scan on a few heads (its cost per head does not depend on the head), the
vector-by-vector neuron scores on a few prompts x layers. Numbers are compared on those subsets.
"""

from __future__ import annotations

import argparse
import platform
import resource
import time

import torch

from editor.attribution.heads import head_ablation_scan, head_ablation_scan_naive, head_logprob_increase
from editor.attribution.neurons import neuron_logprob_increase
from editor.model.loading import load_model
from editor.tasks import load_examples


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra = a.flatten().argsort().argsort().double()
    rb = b.flatten().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--naive-heads", type=int, default=6, help="heads timed for the naive ablation baseline")
    ap.add_argument("--skip", default="", help="comma list of benchmarks to skip: heads,ablation,neurons")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    skip = set(filter(None, args.skip.split(",")))
    lm = load_model("smollm2-135m")
    model, tok, arch = lm.model, lm.tokenizer, lm.arch
    examples = load_examples("arithmetic", n=args.prompts, seed=0)
    n_heads = arch.n_layers * arch.n_heads
    print(f"# {time.strftime('%Y-%m-%d')} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, {args.prompts} arithmetic prompts, smollm2-135m")

    # Naive baseline: full rerun per zeroed head, on a subset of heads spread over the layers.
    step = max(1, n_heads // args.naive_heads)
    subset = [(i // arch.n_heads, i % arch.n_heads) for i in range(0, n_heads, step)][: args.naive_heads]
    naive, t_naive_sub = timed(lambda: head_ablation_scan_naive(model, tok, examples, heads=subset, progress=False))
    t_naive = t_naive_sub / len(subset) * n_heads
    print(f"naive ablation scan: {t_naive_sub:.1f} s for {len(subset)} heads -> {t_naive:.0f} s for all {n_heads} "
          "(scaled linearly)")

    if "heads" not in skip:
        static, t_static = timed(lambda: head_logprob_increase(model, tok, examples, progress=False))
        print(f"static head scores: {t_static:.1f} s  -> {t_naive / t_static:.1f}x faster than the naive scan "
              "(target >= 30x)")
    if "ablation" not in skip:
        fast, t_fast = timed(lambda: head_ablation_scan(model, tok, examples, progress=False))
        diff = max((fast.columns[c][l, h] - naive.columns[c][l, h]).abs().item()
                   for c in ("logp_drop", "acc_drop") for l, h in subset)
        print(f"fast ablation scan: {t_fast:.1f} s  -> {t_naive / t_fast:.2f}x faster (target >= 1.8x); "
              f"max |difference| on the {len(subset)} shared heads = {diff:.2e} (target <= 1e-5)")
        if "heads" not in skip:
            rho = spearman(static.columns["mean"], fast.columns["logp_drop"])
            top_s = set(static.top_components(10))
            top_a = set(fast.top_components(10))
            print(f"static vs ablation ranking: Spearman {rho:.3f}, top-10 overlap {len(top_s & top_a)}/10 "
                  f"(base accuracy {fast.meta['base_acc']:.3f})")
    if "neurons" not in skip:
        n_sub, layers_sub = 2, [0, 29]
        ref, t_ref = timed(lambda: neuron_logprob_increase(model, tok, examples[:n_sub], layers=layers_sub,
                                                           method="reference", progress=False))
        t_ref_all = t_ref / (n_sub * len(layers_sub)) * (args.prompts * arch.n_layers)
        print(f"vector-by-vector neuron scores: {t_ref:.1f} s for {n_sub} prompts x {len(layers_sub)} layers -> "
              f"{t_ref_all:.0f} s for all (scaled linearly)")
        rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        fast_n, t_fast_n = timed(lambda: neuron_logprob_increase(model, tok, examples, progress=False))
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        check = neuron_logprob_increase(model, tok, examples[:n_sub], layers=layers_sub, progress=False)
        diff = max((check.columns["mean"][l] - ref.columns["mean"][l]).abs().max().item() for l in layers_sub)
        n_neurons = arch.n_layers * arch.d_ffn()
        print(f"exact scores of all {n_neurons} FFN neurons x {args.prompts} prompts: {t_fast_n:.1f} s "
              f"(target < 180 s) -> {t_ref_all / t_fast_n:.1f}x faster (target >= 10x); max |difference| "
              f"{diff:.2e} (target <= 1e-4); peak RSS of the process {rss:.2f} GiB (target <= 4 GiB; "
              f"{rss0 / 2**20:.2f} GiB before); full vocabulary sums for "
              f"{100 * fast_n.meta['exact_sum_fraction']:.2f}% of pairs")


if __name__ == "__main__":
    main()
