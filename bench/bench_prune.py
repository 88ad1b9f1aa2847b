"""Size and speed of pruned models against the base, measured in one run.

    .venv/bin/python bench/bench_prune.py RUN_DIR [--threads 2] [--decode 64] [--repeats 3] [--plot PNG]

RUN_DIR is a finished ``prune`` run (``make demo`` writes checkpoints/prune).
For the base and for every method's removal in that run (rebuilt with the same shrink the
checkpoint uses; with recovery, the cut that recovered, whose merged LoRA leaves the shapes and so
the speed as they are) it prints: parameters (total and non-embedding), safetensors bytes, CPU prefill
throughput (a batch of test prompts), greedy decode throughput (one prompt, DECODE new tokens,
KV cache on; tok/s from each model's best round), the run's held-out test accuracy with its
interval and guard perplexity. Every ratio is against the base measured in the same process, with
the same thread count: the models take turns in each of REPEATS rounds and a ratio is the median
of the per-round ratios, so the machine's speed drifting during the run cancels out. ``--plot`` draws every
method's search path (validation accuracy against the share of non-embedding parameters removed,
one point per taken round) with its final held-out test accuracy.
"""

from __future__ import annotations

import argparse
import io
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from editor.edit.shrink import Removal, parameter_counts, shrink
from editor.model.loading import load_model
from editor.recipes.run import step_result


def _bytes(model) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        return sum(f.stat().st_size for f in Path(tmp).glob("*.safetensors"))


@torch.no_grad()
def _prefill_seconds(model, batch: dict) -> float:
    start = time.perf_counter()
    model(**batch, use_cache=False, logits_to_keep=1)
    return time.perf_counter() - start


@torch.no_grad()
def _decode_seconds(model, inputs: dict, kwargs: dict) -> float:
    start = time.perf_counter()
    model.generate(**inputs, **kwargs)
    return time.perf_counter() - start


def _timings(models: dict, tok, prompts: list[str], new_tokens: int, repeats: int) -> tuple[dict, dict]:
    """Prefill and decode seconds per model and round. The models take turns within each round, so a
    drift of the machine's speed (seen here: the base alone from 8.0 to 12.8 decode tok/s between
    runs) hits every model of a round alike; ratios are medians of per-round ratios. Returns the
    seconds by model and kind, and the tokens each kind's timing covers."""
    batch = tok(prompts, return_tensors="pt", padding=True)
    one = tok([prompts[0]], return_tensors="pt")
    kwargs = dict(max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                  pad_token_id=tok.pad_token_id or tok.eos_token_id)
    for model in models.values():  # warm-up
        _prefill_seconds(model, batch)
        _decode_seconds(model, one, {**kwargs, "max_new_tokens": 4, "min_new_tokens": 4})
    out = {name: {"prefill": [], "decode": []} for name in models}
    for _ in range(repeats):
        for name, model in models.items():
            out[name]["prefill"].append(_prefill_seconds(model, batch))
            out[name]["decode"].append(_decode_seconds(model, one, kwargs))
    return out, {"prefill": int(batch["attention_mask"].sum()), "decode": new_tokens}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--decode", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--plot", type=Path, help="write the accuracy-vs-removed curves of all methods here (PNG)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    steps = args.run_dir / "steps"
    recipe = json.loads(json.dumps(__import__("yaml").safe_load((args.run_dir / "recipe.yaml").read_text())))
    lm = load_model(recipe["model"])
    tok = lm.tokenizer
    tok.padding_side = "left"
    test = step_result(args.run_dir, "data")["test"]
    prompts = [r["prompt"] for r in test[:32]]
    rows = []
    models = {"base": lm.model}
    for path in sorted(steps.glob("*_search.json")):
        method = path.name[: -len("_search.json")]
        if not (steps / f"evaluate_{method}.json").is_file():  # an unfinished method of an interrupted run
            print(f"skipping {method}: not evaluated in this run")
            continue
        chosen = f"{method}_recovery" if (steps / f"{method}_recovery.json").is_file() else f"{method}_search"
        removal = Removal.from_json(step_result(args.run_dir, chosen)["removal"])
        models[method] = shrink(lm.model, removal)[0]  # a recovered model has these shapes (its LoRA is merged)
    times, tokens = _timings(models, tok, prompts, args.decode, args.repeats)
    for name, model in models.items():
        evaluation = step_result(args.run_dir, f"evaluate_{name}")["evaluation"]["tasks"]
        acc = evaluation["arithmetic"]["measures"]["answer_accuracy"]
        speed = {k: tokens[k] / min(times[name][k]) for k in ("prefill", "decode")}
        ratio = {k: statistics.median(b / t for b, t in zip(times["base"][k], times[name][k]))
                 for k in ("prefill", "decode")}
        rows.append({"model": name, **parameter_counts(model), "bytes": _bytes(model), **speed,
                     "ratio": ratio, "accuracy": f"{acc['value']:.3f} [{acc['low']:.3f}, {acc['high']:.3f}]",
                     "perplexity": evaluation["guard"]["measures"]["perplexity"]["value"]})
    base = rows[0]
    print(f"# {platform.machine()}, torch {torch.__version__}, {args.threads} threads; run {args.run_dir}")
    print("| model | parameters | non-embedding (removed) | safetensors MB | prefill tok/s (x base) | "
          "decode tok/s (x base) | test answer accuracy [95%] | guard perplexity |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        removed = 1 - r["non_embedding"] / base["non_embedding"]
        print(f"| {r['model']} | {r['total']:,} | {r['non_embedding']:,} ({100 * removed:.1f}%) | "
              f"{r['bytes'] / 1e6:.1f} | {r['prefill']:.0f} ({r['ratio']['prefill']:.2f}x) | "
              f"{r['decode']:.1f} ({r['ratio']['decode']:.2f}x) | {r['accuracy']} | {r['perplexity']:.2f} |")
    if args.plot:
        args.plot.write_bytes(_curves(steps, base["non_embedding"], rows))
        print(f"curves: {args.plot}")


def _curves(steps: Path, non_embedding: int, rows: list[dict]) -> bytes:
    """Validation accuracy along each method's search (line) and its final test accuracy (star), one
    colour per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    base_val = step_result(steps.parent, "base_validation")["val_accuracy"]
    traces = json.loads((steps.parent / "search_trace.json").read_text())
    fig, ax = plt.subplots(figsize=(9.0, 4.2))
    for i, r in enumerate(rows):
        colour = f"C{i}"
        if r["model"] != "base":
            xs, ys = [0.0], [base_val]
            for row in traces.get(r["model"], []):
                if row["taken"]:
                    xs.append(100 * row["removed_parameters"] / non_embedding)
                    ys.append(row["val_accuracy"])
            ax.plot(xs, ys, marker="o", markersize=3, color=colour, label=f"{r['model']}: search (validation)")
        removed = 100 * (1 - r["non_embedding"] / non_embedding)
        ax.plot([removed], [float(r["accuracy"].split()[0])], marker="*", markersize=13, color=colour,
                linestyle="none", label=f"{r['model']}: final (test)")
    ax.axhline(0.95 * base_val, linestyle="--", color="grey", linewidth=1)
    ax.annotate("95% of base (validation)", (0.01, 0.95 * base_val), xycoords=("axes fraction", "data"), fontsize=8,
                color="grey", va="bottom")
    ax.set_xlabel("non-embedding parameters removed (%)")
    ax.set_ylabel("answer accuracy")
    ax.set_title("Pruning: each method's search path and final held-out accuracy")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    ax.grid(alpha=0.3)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buf.getvalue()


if __name__ == "__main__":
    main()
