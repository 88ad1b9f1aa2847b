"""What a user names a model, a device or a memory limit, checked before torch or any weights load.

A leaf for the command layer: nothing here imports torch or transformers, so a mistyped name, an
unknown device or a malformed ``--max-memory`` fails in a fraction of a second."""

from __future__ import annotations

import functools
import os
from pathlib import Path

from editor.errors import UserError
from editor.io import recover
from editor.model import store

DEVICES = ("auto", "cpu", "cuda")


def _hub_reachable() -> bool:
    """Whether the Hugging Face hub answers; offline mode (HF_HUB_OFFLINE) counts as no."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False
    return _probe_hub(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))


@functools.lru_cache(maxsize=None)
def _probe_hub(endpoint: str, timeout: float = 1.5) -> bool:
    """A TCP connection to the endpoint within ``timeout`` seconds (the name lookup runs in a thread,
    since it has no timeout of its own). Once per process and endpoint: a command checks a name
    before loading it, and loading checks it again."""
    import socket
    import threading
    from urllib.parse import urlparse

    host = urlparse(endpoint).hostname or "huggingface.co"
    result = []

    def probe():
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            result.append(True)
        except OSError:
            pass

    thread = threading.Thread(target=probe, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(result)


def _check_hub_id(name: str) -> None:
    """Fail in about a second, with the aliases and the closest one, for a name that is neither a
    store alias, nor a local path, nor a hub id this machine can load (reachable hub, or cached)."""
    import difflib

    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    aliases = sorted(store.ALIASES)
    closest = difflib.get_close_matches(name, aliases, n=1)
    hint = f"; did you mean {closest[0]!r}?" if closest else ""
    try:
        cached = isinstance(try_to_load_from_cache(name, "config.json"), str)
    except HFValidationError:
        raise UserError(f"unknown model {name!r}: not a store alias ({', '.join(aliases)}), a local path or a "
                        f"valid hub id{hint}") from None
    if _hub_reachable():
        return
    os.environ["HF_HUB_OFFLINE"] = "1"  # load from the cache without waiting on retries
    if not cached:
        raise UserError(f"unknown model {name!r}: not a store alias ({', '.join(aliases)}) or a local path, and "
                        f"the hub is unreachable (it is not in the local hub cache either){hint}")


def check_device(device: str, where: str = "device") -> None:
    """auto, cpu, cuda or cuda:N (N a number), before anything loads."""
    import re

    if device not in DEVICES and not re.fullmatch(r"cuda:[0-9]+", str(device)):
        raise UserError(f"unknown {where} {device!r}; choose auto, cpu, cuda or cuda:N")


def _check_local_dir(local: Path) -> None:
    """A Hugging Face folder with safetensors weights: pickle-only weights (pytorch_model.bin) can run
    code when loaded, so they are refused rather than loaded."""
    if not (local / "config.json").is_file():
        raise UserError(f"{local} is not a Hugging Face model directory (no config.json)")
    if not any(local.glob("*.safetensors")) and any(local.glob("*.bin")):
        raise UserError(f"{local} holds only pickle weights (*.bin); lmedit loads safetensors only "
                        "(convert them with save_pretrained(..., safe_serialization=True) in a trusted session)")


def check_model_name(name: str) -> None:
    """What ``load_model`` would refuse by name alone, found without loading anything: a missing
    path or .gguf, a folder without config.json, a name that is no alias, path or loadable hub id."""
    if not isinstance(name, str) or not name.strip():
        raise UserError("the model name is empty; give a store alias, a folder, a .gguf file or a hub id")
    if name in store.ALIASES:
        return
    local = Path(name).expanduser()
    recover(local)  # a checkpoint whose replacement a kill interrupted is completed, not "missing"
    if local.suffix == ".gguf":
        if not local.is_file():
            raise UserError(f"GGUF file not found: {local}")
    elif local.exists():
        _check_local_dir(local)
    elif name.startswith((".", "/", "~")) or name.count("/") > 1:
        raise UserError(f"no such model directory or file: {name}")
    else:
        _check_hub_id(name)


def parse_max_memory(text: str | None) -> dict | None:
    """``cpu=2GiB,0=20GiB`` -> ``{"cpu": "2GiB", 0: "20GiB"}`` (accelerate's ``max_memory``)."""
    if not text:
        return None
    out: dict = {}
    for item in text.split(","):
        device, sep, amount = item.strip().partition("=")
        device, amount = device.strip(), amount.strip()
        if not sep or not device or not amount:
            raise UserError(f"bad --max-memory item {item.strip()!r}: write DEVICE=SIZE, e.g. cpu=2GiB,0=20GiB")
        if not (device in ("cpu", "disk") or device.isdigit()):
            raise UserError(f"bad --max-memory device {device!r}: cpu or a GPU number")
        if not _size_ok(amount):
            raise UserError(f"bad --max-memory size {amount!r}: a number with KB, MB, GB, KiB, MiB or GiB")
        out[int(device) if device.isdigit() else device] = amount
    return out


def _size_ok(amount: str) -> bool:
    import re

    return re.fullmatch(r"[0-9]+(\.[0-9]+)?\s*([KMG]i?B)", amount, flags=re.IGNORECASE) is not None
