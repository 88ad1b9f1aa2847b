"""Gradient attribution vs the exact ablation scan, and the circuit search vs single-head rankings,
on the default model, all measured in one run.

    .venv/bin/python bench/bench_gradient.py [--prompts 64] [--threads 2] [--top 10]

Prompts: few-shot one-digit addition ("a + b = ", the pruning recipe's format, where the default
model answers about 60% correctly), query-disjoint SEARCH and HELD-OUT sets of ``--prompts`` each.
Reports, for all heads (and all FFN neurons in the same pass):

* time of one gradient pass vs the full exact (fast) ablation scan: the speed ratio;
* Spearman correlation of the gradient estimate with the exact log-probability drop, top-k overlap;
* ``--method auto`` (gradient + exact ablation of the best 3k): its time, and the top-k overlap
  of its exact rows with the full scan's top-k;
* the circuit search (target: held-out accuracy to half): time, set size, held-out accuracy,
  random sets of the same size; and the smallest top-k of the single-head exact ranking (and of
  the gradient ranking) whose removal reaches the same held-out accuracy.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from editor.attribution.circuit import accuracy, circuit_search
from editor.attribution.confirm import auto_head_scores
from editor.attribution.gradient import top_heads
from editor.attribution.gradient import gradient_effects
from editor.attribution.heads import head_ablation_scan
from editor.model.loading import load_model
from editor.tasks.arithmetic import split_prompts


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.flatten().argsort().argsort().double(), b.flatten().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def top_set(column: torch.Tensor, k: int) -> set[int]:
    return set(column.flatten().argsort(descending=True)[:k].tolist())


def smallest_prefix(model, tok, heldout, ranking, goal: float, limit: int, batch: int) -> tuple[int | None, float]:
    """Smallest k whose top-k removal brings held-out accuracy to ``goal`` or below (binary search
    is unsafe: accuracy is not monotone in k), scanning k = 1..limit."""
    acc = None
    for k in range(1, limit + 1):
        acc, _ = accuracy(model, tok, heldout, ranking[:k], batch)
        if acc <= goal:
            return k, acc
    return None, acc


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--target-drop", type=float, default=0.5)
    ap.add_argument("--max-size", type=int, default=40)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("smollm2-135m")
    model, tok, arch = lm.model, lm.tokenizer, lm.arch
    sets = split_prompts({"search": args.prompts, "heldout": args.prompts}, {"search": 0.5, "heldout": 0.5}, seed=11)
    search, heldout = sets["search"], sets["heldout"]
    b, k = args.batch_size, args.top
    print(f"# {time.strftime('%Y-%m-%d')} {platform.machine()}, torch {torch.__version__}, {args.threads} threads, "
          f"{lm.name}: {arch.n_layers * arch.n_heads} heads, {arch.n_layers * arch.d_ffn()} FFN neurons, "
          f"{len(search)} search / {len(heldout)} held-out prompts")

    effects, t_grad = timed(lambda: gradient_effects(model, tok, search, b, progress=False))
    exact, t_scan = timed(lambda: head_ablation_scan(model, tok, search, b, progress=False))
    auto, t_auto = timed(lambda: auto_head_scores(model, tok, search, top=k, batch_size=b, progress=False))
    estimate = -effects.heads.mean(0)
    truth = exact.columns["logp_drop"]
    confirmed_top = top_set(torch.where(auto.columns["exact"].bool(), auto.columns["logp_drop"],
                                        torch.full_like(truth, -1e9)), k)
    print("\n## gradient vs exact ablation (all heads; the gradient pass also scores every neuron and layer)")
    print(f"exact ablation scan (fast path)   {t_scan:8.1f} s")
    print(f"gradient pass                     {t_grad:8.1f} s   {t_scan / t_grad:6.1f}x faster than the scan")
    print(f"auto (gradient + {3 * k} exact)        {t_auto:8.1f} s   {t_scan / t_auto:6.1f}x faster than the scan")
    print(f"Spearman(gradient, exact logp drop) over heads: {spearman(estimate, truth):.3f}")
    print(f"top-{k} overlap with the exact top-{k}: gradient {len(top_set(estimate, k) & top_set(truth, k))}/{k}, "
          f"auto {len(confirmed_top & top_set(truth, k))}/{k}")
    print(f"base accuracy: search {exact.meta['base_acc']:.3f}")

    found, t_circuit = timed(lambda: circuit_search(model, tok, search, heldout, args.target_drop, beam=1,
                                                    candidates=8, max_size=args.max_size, random_seeds=3, batch_size=b,
                                                    log=print))
    size = len(found.heads)
    goal = (1 - args.target_drop) * found.base["heldout_acc"]
    print(f"\n## circuit search (target: held-out accuracy <= {goal:.3f}, {1 - args.target_drop:.0%} of "
          f"{found.base['heldout_acc']:.3f})")
    print(f"greedy search: {t_circuit:.1f} s, {size} heads {found.heads}, held-out accuracy "
          f"{found.curve[-1].heldout_acc if found.curve else found.base['heldout_acc']:.3f}, "
          f"random sets of {size}: {found.random_mean(size) if size else float('nan'):.3f} (mean of 3)")
    limit = max(args.max_size, 2 * size)
    for name, column in (("exact single-head ranking", truth), ("gradient ranking", estimate)):
        ranking = top_heads(type(exact)(kind="head", method=name, primary="x", columns={"x": column}), limit)
        (prefix, acc), t = timed(lambda: smallest_prefix(model, tok, heldout, ranking, goal, limit, b))
        print(f"{name}: smallest top-k reaching the target: "
              + (f"k = {prefix} (held-out {acc:.3f})" if prefix else f"none up to k = {limit} (held-out {acc:.3f})"))


if __name__ == "__main__":
    main()
