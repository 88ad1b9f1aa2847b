"""Load any causal LM a user names: a store alias, a local directory, a ``.gguf`` file or a hub id."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from editor.errors import UserError
from editor.model import store
from editor.model.arch import Arch
from editor.model.gguf_read import load_gguf
from editor.model.names import check_device, check_model_name  # noqa: F401  (their home: checked before torch loads)
from editor.progress import quiet_transformers

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class LoadedModel:
    """A model with its tokenizer, its architecture entry and where it came from."""

    model: nn.Module
    tokenizer: object
    arch: Arch
    name: str  # what the user named
    path: Path | None  # local directory or file the weights came from, when there is one
    kind: str  # "alias", "directory", "gguf" or "hub"
    info: dict = field(default_factory=dict)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def describe(self) -> dict:
        params = sum(p.numel() for p in self.model.parameters())
        return {"model": self.name, "kind": self.kind, "path": str(self.path) if self.path else None,
                **self.arch.describe(), "parameters": params, "dtype": str(self.model.dtype).removeprefix("torch.")}


def _resolve_dtype(dtype: str | torch.dtype, device: str) -> torch.dtype | str:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        # Half precision on CPU is slow and imprecise: default to float32 there.
        return torch.float32 if device == "cpu" else "auto"
    if dtype not in DTYPES:
        raise UserError(f"unknown dtype {dtype!r}; choose one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def _resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {device!r} requested but no CUDA device is available; use device 'cpu'")
    if device != "cpu" and not device.startswith("cuda"):
        raise UserError(f"unknown device {device!r}; choose auto, cpu, cuda or cuda:N")
    return device


def _offload_folder() -> str:
    """A folder of this process for weights accelerate offloads to disk and for edited offloaded
    weights (the user's checkpoint is never written); removed when the process ends."""
    import atexit
    import shutil
    import tempfile

    folder = tempfile.mkdtemp(prefix="lmedit-offload-")
    atexit.register(shutil.rmtree, folder, ignore_errors=True)
    return folder


def _from_pretrained(source: str | Path, dtype, device: str, placement: dict | None,
                     attn_implementation: str, trust_remote_code: bool, offline_hint: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    kwargs = dict(dtype=dtype, attn_implementation=attn_implementation, trust_remote_code=trust_remote_code,
                  use_safetensors=True)  # never unpickle weights
    if placement:  # accelerate's device_map="auto" with its memory limits and offload folder
        kwargs.update({k: v for k, v in placement.items() if v is not None})
    try:
        model = AutoModelForCausalLM.from_pretrained(source, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - a user's files: corrupt safetensors, bad configs raise many types
        hint = (f"; it is not a store alias ({', '.join(store.ALIASES)}) nor an existing local path, "
                "and the hub may be unreachable") if offline_hint else ""
        raise UserError(f"could not load model {str(source)!r}: {str(exc).splitlines()[0]}{hint}") from exc
    if not placement:
        model.to(device)
    return model, tokenizer


def local_config(name: str):
    """The model's config, read without its weights where that is possible (a local folder, a store
    model already converted), else None: lets a command refuse "head 99.99" in well under a second
    instead of after a load of 5-23 s. Never runs remote code."""
    from transformers import AutoConfig

    local = Path(name).expanduser()
    folder = store.model_dir(name) if name in store.ALIASES and store.is_cached(name) else local
    if not (folder / "config.json").is_file():
        return None
    try:
        return AutoConfig.from_pretrained(folder, trust_remote_code=False)
    except Exception:  # noqa: BLE001 - unreadable here: the load itself will say why
        return None


def load_model(
    name: str = store.DEFAULT_MODEL,
    device: str = "cpu",
    dtype: str | torch.dtype = "auto",
    attn_implementation: str = "eager",
    trust_remote_code: bool = False,
    pull: bool = True,
    max_memory: str | dict | None = None,
) -> LoadedModel:
    """Load ``name`` for editing and attribution.

    ``name`` is a store alias (pulled on first use when ``pull``), a local Hugging Face directory,
    a ``.gguf`` file, or a hub id. ``device="auto"`` loads through accelerate (``device_map="auto"``):
    the model spreads over the GPUs, CPU memory and, past ``max_memory`` (e.g. ``"cpu=2GiB,0=20GiB"``),
    disk, so a model larger than memory still loads (editor/model/offload.py: reading and editing
    offloaded weights). Eager attention is the default because only it returns attention
    probabilities; remote code runs only when asked.
    """
    from editor.errors import work_begins
    from editor.model.names import parse_max_memory

    check_device(device)
    work_begins()  # a request being validated stops here: everything before was checked
    memory = parse_max_memory(max_memory) if isinstance(max_memory, str) or max_memory is None else max_memory
    if memory and device != "auto":
        raise UserError("a memory limit needs device auto (accelerate places and offloads the model)")
    check_model_name(name)  # the same checks `lmedit run` makes before a run directory exists
    placement = {"device_map": "auto", "max_memory": memory, "offload_folder": _offload_folder()} \
        if device == "auto" else None
    device = _resolve_device(device)
    torch_dtype = _resolve_dtype(dtype, device)
    info: dict = {}
    local = Path(name).expanduser()
    if name in store.ALIASES:
        if not store.is_cached(name):
            if not pull:
                raise UserError(f"{name} is not in the store yet; run `lmedit models pull {name}`")
            store.pull(name)
        path, kind = store.model_dir(name), "alias"
        info["store"] = store.provenance(path)
        model, tokenizer = _from_pretrained(path, torch_dtype, device, placement, attn_implementation,
                                            trust_remote_code, offline_hint=False)
    elif local.suffix == ".gguf":
        path, kind = local, "gguf"
        model, tokenizer = load_gguf(local, torch_dtype if isinstance(torch_dtype, torch.dtype) else torch.float32)
        model.config._attn_implementation = attn_implementation
        model.to(device)
    elif local.exists():
        path, kind = local, "directory"
        model, tokenizer = _from_pretrained(local, torch_dtype, device, placement, attn_implementation,
                                            trust_remote_code, offline_hint=False)
    else:
        path, kind = None, "hub"
        model, tokenizer = _from_pretrained(name, torch_dtype, device, placement, attn_implementation,
                                            trust_remote_code, offline_hint=True)
    model.eval()
    if getattr(tokenizer, "pad_token", None) is None and getattr(tokenizer, "eos_token", None) is not None:
        tokenizer.pad_token = tokenizer.eos_token  # batching needs a pad token; masks keep it inert
    return LoadedModel(model=model, tokenizer=tokenizer, arch=Arch(model), name=name, path=path, kind=kind, info=info)
