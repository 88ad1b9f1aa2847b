"""Half precision: how far bfloat16 (and float16) weights move the attribution scores, on the default model.

    .venv/bin/python bench/bench_precision.py [--prompts 64] [--threads 2] [--dtypes bfloat16,float16]

The model is loaded in each dtype (`load_model(dtype=...)`, what `--dtype` does); scores, softmaxes
and sums accumulate in float32 in every method. For each method, against the float32 run of the
same prompts: the largest absolute score difference (and relative to the largest |score|), the
Spearman rank correlation over all components, and how many of the float32 top 20 stay in the top
20. Times are of this run, on this machine's CPU (half precision is for GPUs; CPUs may be slower).
"""

from __future__ import annotations

import argparse
import time

import torch

from editor.attribution.gradient import gradient_scores
from editor.attribution.heads import head_logprob_increase
from editor.attribution.neurons import neuron_logprob_increase
from editor.model.loading import load_model
from editor.tasks import load_examples


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    ra, rb = a.flatten().argsort().argsort().double(), b.flatten().argsort().argsort().double()
    return float(torch.corrcoef(torch.stack([ra, rb]))[0, 1])


def top(column: torch.Tensor, k: int = 20) -> set[int]:
    return set(column.flatten().argsort(descending=True)[:k].tolist())


METHODS = {
    "static head scores": lambda m, t, ex: head_logprob_increase(m, t, ex, progress=False),
    "FFN neuron scores": lambda m, t, ex: neuron_logprob_increase(m, t, ex, progress=False),
    "gradient (heads)": lambda m, t, ex: gradient_scores(m, t, ex, "head", progress=False),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtypes", default="bfloat16,float16")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    examples = load_examples("arithmetic", n=args.prompts, seed=0)
    print(f"# {time.strftime('%Y-%m-%d')} smollm2-135m, {args.prompts} arithmetic prompts, {args.threads} threads")
    reference = {}
    lm = load_model("smollm2-135m", dtype="float32")
    for name, fn in METHODS.items():
        t = time.perf_counter()
        reference[name] = fn(lm.model, lm.tokenizer, examples)
        print(f"float32   {name:20s} {time.perf_counter() - t:7.1f} s")
    del lm
    for dtype in args.dtypes.split(","):
        lm = load_model("smollm2-135m", dtype=dtype)
        for name, fn in METHODS.items():
            t = time.perf_counter()
            try:
                got = fn(lm.model, lm.tokenizer, examples)
            except Exception as exc:  # noqa: BLE001 - report what does not run in this dtype on CPU
                print(f"{dtype:9s} {name:20s} failed: {type(exc).__name__}: {str(exc)[:100]}")
                continue
            seconds = time.perf_counter() - t
            a, b = reference[name].columns[reference[name].primary], got.columns[got.primary].float()
            err = float((a - b).abs().max())
            print(f"{dtype:9s} {name:20s} {seconds:7.1f} s  max |diff| {err:.3g} ({err / float(a.abs().max()):.1%} of "
                  f"max |score|)  Spearman {spearman(a, b):.4f}  top-20 kept {len(top(a) & top(b))}/20  "
                  f"scores in {got.columns[got.primary].dtype}")
        del lm


if __name__ == "__main__":
    main()
