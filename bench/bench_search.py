"""The pruning search with validations stopped once a move is certain to fail, against the same
search scoring every validation row, on the default prune's data and settings, in one run.

    .venv/bin/python bench/bench_search.py [--rounds 4] [--threads 2] [--method attribution]

Both searches start from the same base and run ``--rounds`` rounds (the full search takes about ten);
they must take the same moves (checked, and the run stops if not). Printed: seconds per search,
forward passes of the validations, the ratio, and each failed move's validation rows scored.
"""

from __future__ import annotations

import argparse
import dataclasses
import platform
import time

import torch

import editor.evaluation.scoring as scoring
import editor.prune.search as search
from editor.model.loading import load_model
from editor.recipes.prune import _data, _examples, _kind, _settings
from editor.recipes.prune_command import prune_config


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--method", default="attribution")
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    cfg = prune_config()
    data = _data(cfg)
    score, val = _examples(data["score"]), _examples(data["val"])
    lm = load_model(cfg.model)
    settings = dataclasses.replace(_settings(cfg, args.method), max_rounds=args.rounds)
    guard = settings.max_guard_increase is not None
    base = search.measure(lm.model, lm.tokenizer, val, cfg.batch_size, guard, _kind(cfg))
    forwards, real_forward = [0], scoring._forward

    def counting(*a, **kw):
        forwards[0] += 1
        return real_forward(*a, **kw)

    scoring._forward = counting
    real_measure = search.measure_removal
    print(f"# {platform.machine()}, torch {torch.__version__}, {args.threads} threads, {cfg.model}, "
          f"{args.method}, {len(val)} validation rows, {args.rounds} rounds, retain {settings.retain}")
    runs = {}
    for early in (False, True):
        search.measure_removal = lambda *a, early=early, **kw: real_measure(*a, **kw, early=early)
        forwards[0] = 0
        t = time.perf_counter()
        state, trace, _ = search.run_search(lm.model, lm.tokenizer, settings, score, val, base,
                                            log=lambda _m: None, progress=False)
        runs[early] = (time.perf_counter() - t, forwards[0], state, trace)
    (t_full, f_full, s_full, tr_full), (t_early, f_early, s_early, tr_early) = runs[False], runs[True]
    same = s_full.to_json() == s_early.to_json() and [r["taken"] for r in tr_full] == [r["taken"] for r in tr_early]
    print(f"same moves and final removal: {same}")
    print("| validations | seconds (search) | forward passes (all scoring) | ratio to full |")
    print("|---|---|---|---|")
    print(f"| every row | {t_full:.1f} | {f_full} | 1.00 |")
    print(f"| stopped when decided | {t_early:.1f} | {f_early} | {t_early / t_full:.2f} |")
    failed = [c for row in tr_early for c in row["tried"] if c.get("val_bound")]
    print(f"failed moves stopped early: {len(failed)} of "
          f"{sum(1 for row in tr_early for c in row['tried'] if 'qualifies' in c and not c['qualifies'])}")
    if not same:
        raise SystemExit("the searches differ")


if __name__ == "__main__":
    main()
