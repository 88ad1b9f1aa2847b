"""Activation patching on the built-in IOI contrast task: exact vs attribution patching vs AtP*
(GradDrop; for queries and keys with the QK fix) vs auto (with either estimate), on the default
model, all measured in one run.

    .venv/bin/python bench/bench_patching.py [--pairs 32] [--threads 2] [--top 10] [--direction noising]
        [--units heads|queries|keys]

Reports, for every head: the time of the exact patch (one patched forward per head, batched) and of
one attribution-patching pass, their ratio; Spearman correlation of the estimate with the exact
effect (signed, and by magnitude); how many of the exact top-k (by normalised effect) the estimate's
top-k holds; and for ``auto`` (estimate + exact patch of the 3k largest magnitudes) its time and
its top-k overlap with the exact one. AtP*'s score is a magnitude: its rows compare it with the
exact effect's magnitude (signed Spearman not defined) and its top-k with the exact top-k by magnitude.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from editor.attribution.atpstar import patch_atp_star
from editor.attribution.patch_estimates import patch_auto, patch_gradient
from editor.attribution.patching import patch_exact
from editor.model.loading import load_model
from editor.tasks import load_examples
from editor.tasks.ioi import build


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.flatten().argsort().argsort().double(), b.flatten().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def top(scores, k: int, by: str | None = None, absolute: bool = False) -> set[str]:
    return {r[scores.kind] for r in scores.ranked(k, by=by, absolute=absolute)}


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--pairs", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--top", type=int, default=10)
    p.add_argument("--direction", default="noising", choices=["noising", "denoising"])
    p.add_argument("--data", default="ioi", help="ioi (contrast pairs) or any task, e.g. arithmetic with --ablation zero")
    p.add_argument("--ablation", default="corrupt", choices=["corrupt", "resample", "mean", "zero"])
    p.add_argument("--units", default="heads", choices=["heads", "queries", "keys"])
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    pairs = build(args.pairs, seed=0) if args.data == "ioi" else load_examples(args.data, n=args.pairs, seed=0)
    print(f"# {platform.machine()}, torch {torch.__version__}, {args.threads} threads, {args.model}, "
          f"{args.data} {args.pairs} rows, {args.units}, {args.direction}, ablation {args.ablation}")
    run = dict(model=lm.model, tokenizer=lm.tokenizer, examples=pairs, unit=args.units, direction=args.direction,
               batch_size=16, progress=False, ablation=args.ablation)
    exact, t_exact = timed(lambda: patch_exact(**run))
    grad, t_grad = timed(lambda: patch_gradient(**run))
    star, t_star = timed(lambda: patch_atp_star(**run))
    auto, t_auto = timed(lambda: patch_auto(**run, confirm=3 * args.top))
    auto_star, t_auto_star = timed(lambda: patch_auto(**run, confirm=3 * args.top, estimator=patch_atp_star))
    k = args.top
    e, g = exact.columns["effect"], grad.columns["effect"]
    print(f"clean {exact.meta['clean_metric']:.3f}  corrupt {exact.meta['corrupt_metric']}  ({exact.meta['metric']})")
    print(f"exact top {k}: " + ", ".join(f"{r[exact.kind]} {r['normalised']:.3f}" for r in exact.ranked(k)))
    print("| method | seconds | x faster than exact | Spearman vs exact (signed / magnitude) | exact top-k held |")
    print("|---|---|---|---|---|")
    print(f"| exact | {t_exact:.1f} | 1.0 | | {k}/{k} |")
    print(f"| gradient | {t_grad:.1f} | {t_exact / t_grad:.1f} | {spearman(e, g):.3f} / {spearman(e.abs(), g.abs()):.3f} "
          f"| {len(top(exact, k) & top(grad, k))}/{k} |")
    s = star.columns["atp_star"]
    by_size = top(exact, k, "effect", absolute=True)
    print(f"| atp* (GradDrop) | {t_star:.1f} | {t_exact / t_star:.1f} | - / {spearman(e.abs(), s):.3f} "
          f"| {len(top(exact, k) & top(star, k))}/{k} ({len(by_size & top(star, k))}/{k} by magnitude; "
          f"gradient: {len(by_size & top(grad, k, 'effect', absolute=True))}/{k}) |")
    if args.units in ("queries", "keys"):  # atp*'s signed column is the QK-fixed estimate
        q = star.columns["effect"]
        print(f"| atp* QK fix, signed estimate | {t_star:.1f} | {t_exact / t_star:.1f} | {spearman(e, q):.3f} / "
              f"{spearman(e.abs(), q.abs()):.3f} | {len(top(exact, k) & top(star, k, 'normalised'))}/{k} |")
    for name, scores, t in ((f"auto ({3 * k} confirmed)", auto, t_auto),
                            (f"auto with atp* ({3 * k} confirmed)", auto_star, t_auto_star)):
        a = scores.columns["effect"]
        print(f"| {name} | {t:.1f} | {t_exact / t:.1f} | {spearman(e, a):.3f} / "
              f"{spearman(e.abs(), a.abs()):.3f} | {len(top(exact, k) & top(scores, k))}/{k} |")
    print(f"one gradient pass = 1: atp* {t_star / t_grad:.2f}x, auto {t_auto / t_grad:.2f}x, "
          f"auto with atp* {t_auto_star / t_grad:.2f}x the time")


if __name__ == "__main__":
    main()
