"""Reading a ``.gguf`` file as an ordinary transformers model (the store converts through it).

Its own module so that the store and the loader both use it without importing each other."""

from __future__ import annotations

from pathlib import Path

import torch

from editor.errors import UserError
from editor.progress import quiet_transformers


def load_gguf(path: Path, dtype: torch.dtype = torch.float32):
    """Load a ``.gguf`` file as a plain (serialisable) transformers model and its tokenizer.

    transformers de-quantises GGUF weights but marks the model as "quantized with gguf" and refuses
    ``save_pretrained``; rebuilding from the config without ``quantization_config`` and loading the
    state dict strictly gives the same weights in a model that saves normally.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quiet_transformers()
    path = Path(path)
    try:
        loaded = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    except Exception as exc:  # transformers raises many types for unreadable or unsupported GGUF
        raise UserError(f"could not load GGUF file {path}: {exc}") from exc
    config = loaded.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = str(path)
    plain = AutoModelForCausalLM.from_config(config, dtype=dtype)
    plain.load_state_dict(loaded.state_dict(), strict=True)
    plain.tie_weights()
    plain.eval()
    return plain, tokenizer
