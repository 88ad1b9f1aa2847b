"""Comparisons several end-to-end tests share: results of two runs, two checkpoints' weights, and
the headless browser the rendering tests drive."""

import json
import shutil
from pathlib import Path

import torch


def results(text: str, run: Path):
    """JSON results with the run's own path and wall-clock timings taken out (all else must match)."""
    def scrub(value):
        if isinstance(value, dict):
            return {k: scrub(v) for k, v in value.items() if "seconds" not in k}
        return [scrub(v) for v in value] if isinstance(value, list) else value
    return scrub(json.loads(text.replace(str(run), "RUN")))


def weights(path: Path) -> dict:
    from safetensors.torch import load_file

    return {k: v for f in sorted(path.glob("*.safetensors")) for k, v in load_file(f).items()}


def same_weights(a: Path, b: Path) -> bool:
    """Two model folders hold bit-identical tensors under the same names."""
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None
