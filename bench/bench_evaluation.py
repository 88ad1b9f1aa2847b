"""Evaluation harness speed on the default model: batched vs one prompt at a time, same numbers.

    .venv/bin/python bench/bench_evaluation.py [--threads 2] [--batch-size 32]

The baseline is the harness with its scoring primitives swapped for the naive loop the reference
notebooks use: one forward per (prompt, continuation) pair over the full vocabulary at every
position, one ``generate`` call per prompt, one guard window at a time. Both runs use the same
tasks, data and metric code; the script checks that every measure agrees.
"""

from __future__ import annotations

import argparse
import platform
import time

import torch

from editor.evaluation import harness, scoring
from editor.evaluation.harness import configs, evaluate_model
from editor.model.loading import load_model
from editor.tasks.examples import answer_ids


@torch.no_grad()
def naive_continuations(model, tokenizer, prompts, continuations, batch_size=1, padding_side="left",
                        progress=False, desc=""):
    out = []
    for prompt, cont in zip(prompts, continuations):
        p_ids, c_ids = tokenizer(prompt)["input_ids"], answer_ids(tokenizer, prompt, cont)
        ids = torch.tensor([p_ids + c_ids])
        logp = model(ids).logits[0].float().log_softmax(-1)[len(p_ids) - 1:-1]
        target = torch.tensor(c_ids)
        out.append(scoring.Continuation(c_ids, logp.gather(-1, target[:, None])[:, 0].tolist(), logp.argmax(-1).tolist()))
    return out


def naive_greedy(model, tokenizer, prompts, max_new_tokens, batch_size=1, progress=False, desc=""):
    return [scoring.greedy_answers(model, tokenizer, [p], max_new_tokens, 1, False)[0] for p in prompts]


def naive_text(model, tokenizer, text, window=256, batch_size=1, progress=False, desc=""):
    return scoring.score_text(model, tokenizer, text, window, batch_size=1, progress=False)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--arithmetic", type=int, default=100, help="arithmetic prompts")
    ap.add_argument("--icl", type=int, default=50, help="in-context queries per setting")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    lm = load_model("smollm2-135m")
    cfg = configs(list(harness.TASKS), {"arithmetic.n": args.arithmetic, "icl.n": args.icl})
    print(f"# {time.strftime('%Y-%m-%d')} {platform.processor() or platform.machine()}, torch {torch.__version__}, "
          f"{args.threads} threads, smollm2-135m, arithmetic n={args.arithmetic}, icl n={args.icl} x 3 settings, "
          f"gender 8 templates x 2 x 31 professions, guard text")

    t = time.perf_counter()
    batched = evaluate_model(lm.model, lm.tokenizer, cfg, batch_size=args.batch_size, progress=False, self_reference=True)
    t_batched = time.perf_counter() - t

    originals = (harness.score_continuations, harness.greedy_answers, harness.score_text)
    harness.score_continuations, harness.greedy_answers, harness.score_text = naive_continuations, naive_greedy, naive_text
    try:
        t = time.perf_counter()
        naive = evaluate_model(lm.model, lm.tokenizer, cfg, batch_size=1, progress=False, self_reference=True)
        t_naive = time.perf_counter() - t
    finally:
        harness.score_continuations, harness.greedy_answers, harness.score_text = originals

    worst = 0.0
    for name, task in batched.tasks.items():
        for key, m in task.measures.items():
            other = naive.tasks[name].measures[key]
            worst = max(worst, abs(m.value - other.value) / max(1.0, abs(other.value)))
            print(f"  {name:<10} {key:<24} batched {m.value:9.4f}  one-at-a-time {other.value:9.4f}")
    for name in batched.tasks:
        print(f"  {name:<10} {batched.tasks[name].seconds:6.1f} s batched   {naive.tasks[name].seconds:6.1f} s one at a time")
    print(f"one prompt at a time: {t_naive:.1f} s; batched (batch {args.batch_size}): {t_batched:.1f} s "
          f"-> {t_naive / t_batched:.2f}x faster (target >= 5x); largest relative difference of a measure {worst:.1e}")


if __name__ == "__main__":
    main()
