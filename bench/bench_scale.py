"""Scale on one machine: Ray's overhead, and the memory an offloaded model saves, on the default model.

    .venv/bin/python bench/bench_scale.py [--neuron-prompts 32] [--scan-prompts 16] [--skip-offload]

1. Ray overhead. On this 2-core machine Ray cannot be faster, so the question is what it costs: the
   same work as 1 process x 2 torch threads and as 2 Ray workers x 1 thread each (a local Ray
   instance started here), for the all-layer FFN neuron scores and the exact ablation scan of every
   head. Ray's numbers are split into start-up (Ray and two model loads, paid once per command) and
   the work itself; the merged scores are checked against the single process's.
2. Offload. `lmedit attribute neurons --layers 28-29` in a fresh process, in memory and with
   `--device auto --max-memory cpu=200MiB` (the rest offloaded to disk): wall time and peak resident
   memory of each process (getrusage of the children).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def max_difference(a, b) -> float:
    return max(float(torch.nan_to_num(a.columns[k] - b.columns[k]).abs().max()) for k in a.columns)


def ray_overhead(neuron_prompts: int, scan_prompts: int) -> list[dict]:
    from editor.attribution.sharded import LocalScorer, RayScorer
    from editor.distributed import ModelSpec, RayPool
    from editor.model.loading import load_model
    from editor.tasks import load_examples

    rows = []
    torch.set_num_threads(2)
    lm = load_model("smollm2-135m")
    local = LocalScorer(lm.model, lm.tokenizer, batch_size=8, progress=False)
    work = {"FFN neuron scores, 30 layers": ("neurons", load_examples("arithmetic", n=neuron_prompts, seed=0)),
            "ablation scan, 270 heads": ("scan", load_examples("arithmetic", n=scan_prompts, seed=1))}
    single = {}
    for name, (op, examples) in work.items():
        single[name], seconds = timed(lambda: getattr(local, op)(examples))
        rows.append({"work": name, "setup": "1 process x 2 threads", "seconds": seconds})
    lm = local = None  # free the in-process copy before the workers load theirs
    (pool, start) = timed(lambda: RayPool(2, None, ModelSpec(threads=1)))
    remote = RayScorer(pool, "smollm2-135m", batch_size=8, progress=False)
    # Two shards of a small job: each worker loads its model once.
    _, warm = timed(lambda: remote.neurons(load_examples("arithmetic", n=16, seed=9), layers=[29]))
    rows.append({"work": "Ray start + model loads", "setup": "2 Ray workers x 1 thread", "seconds": start + warm})
    for name, (op, examples) in work.items():
        merged, seconds = timed(lambda: getattr(remote, op)(examples))
        rows.append({"work": name, "setup": "2 Ray workers x 1 thread", "seconds": seconds,
                     "max_difference": max_difference(merged, single[name])})
    pool.close()
    return rows


def offload_memory(threads: int = 2) -> list[dict]:
    """Each run in its own process under GNU time, which reports that process's peak RSS."""
    rows = []
    lmedit = str(Path(sys.executable).parent / "lmedit")
    for label, extra in (("in memory", []), ("--device auto --max-memory cpu=200MiB", ["--device", "auto",
                                                                                     "--max-memory", "cpu=200MiB"])):
        with tempfile.TemporaryDirectory() as out:
            env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TQDM_DISABLE": "1"}
            start = time.perf_counter()
            done = subprocess.run(["/usr/bin/time", "-f", "%M", lmedit, "--quiet", "attribute", "neurons", "--n", "16",
                                   "--layers", "28-29", "--batch-size", "8", "--out", out, *extra], check=True, env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            seconds = time.perf_counter() - start
            peak_kib = int(done.stderr.strip().splitlines()[-1])
            top = json.loads((Path(out) / "neurons_logprob.json").read_text())["top"][:3]
        rows.append({"run": label, "seconds": seconds, "peak_rss_mib": peak_kib / 1024,
                     "top3": [r["neuron"] for r in top]})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--neuron-prompts", type=int, default=32)
    parser.add_argument("--scan-prompts", type=int, default=16)
    parser.add_argument("--skip-offload", action="store_true")
    parser.add_argument("--skip-ray", action="store_true")
    args = parser.parse_args()
    print(f"# {os.uname().machine}, torch {torch.__version__}, {os.cpu_count()} cores")
    if not args.skip_offload:
        rows = offload_memory()
        print("\n| run | seconds | peak RSS of the process (MiB) | top 3 neurons |")
        print("|---|---|---|---|")
        for r in rows:
            print(f"| {r['run']} | {r['seconds']:.1f} | {r['peak_rss_mib']:.0f} | {' '.join(r['top3'])} |")
    if not args.skip_ray:
        rows = ray_overhead(args.neuron_prompts, args.scan_prompts)
        print("\n| work | setup | seconds | max |difference| vs single |")
        print("|---|---|---|---|")
        for r in rows:
            diff = f"{r['max_difference']:.1e}" if "max_difference" in r else ""
            print(f"| {r['work']} | {r['setup']} | {r['seconds']:.1f} | {diff} |")
        by = {(r["work"], r["setup"]): r["seconds"] for r in rows}
        for work in ("FFN neuron scores, 30 layers", "ablation scan, 270 heads"):
            ratio = by[(work, "2 Ray workers x 1 thread")] / by[(work, "1 process x 2 threads")]
            print(f"{work}: Ray / single = {ratio:.2f} (overhead {100 * (ratio - 1):+.0f}%)")


if __name__ == "__main__":
    main()
