"""Comparisons several end-to-end tests share: results of two runs, two checkpoints' weights, and
the headless browser the rendering tests drive."""

import json
import shutil
import socket
import subprocess
import sys
from contextlib import contextmanager
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def local_ray(cpus: int = 2):
    """A real Ray head on loopback (``ray start``), its address, stopped (with this process's
    connection to it) on exit."""
    import os

    ray = str(Path(sys.executable).parent / "ray")
    port = free_port()
    # Loopback only, started and stopped here: no token (a token a earlier local Ray left in ~/.ray
    # would otherwise be demanded of this process's connection).
    saved = os.environ.get("RAY_AUTH_MODE")
    os.environ["RAY_AUTH_MODE"] = "disabled"
    started = subprocess.run([ray, "start", "--head", "--num-cpus", str(cpus), "--port", str(port),
                              "--include-dashboard=false", "--disable-usage-stats"], capture_output=True, text=True,
                             timeout=180)
    assert started.returncode == 0, started.stderr[-2000:]
    try:
        yield f"127.0.0.1:{port}"
    finally:
        import ray as ray_module

        ray_module.shutdown()
        subprocess.run([ray, "stop", "--force"], capture_output=True, timeout=120)
        if saved is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        else:
            os.environ["RAY_AUTH_MODE"] = saved
