"""GGUF out: any checkpoint lmedit wrote (zeroed or rescaled edits, physically shrunk models, merged
LoRA) as a file llama.cpp runs.

Written with the ``gguf`` package (llama.cpp's own reader/writer). Tensor names come from its
``TensorNameMap`` (the names llama.cpp's converter writes); for the Llama family the query and key
rows are permuted into llama.cpp's rotary layout exactly as that converter does. Hyper-parameters
come from the model's config, so a shrunk model carries its own ``feed_forward_length``, head counts
and block count. The tokenizer and descriptive metadata come from a GGUF: the one the model was
originally converted from (the default model ships as a GGUF; lmedit finds it through the
checkpoint's manifest and the model store) or one the caller names. The lmedit manifest goes into
the metadata as ``lmedit.manifest`` (JSON), so the file says what was edited.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from editor.edit.checkpoint import MANIFEST, read_manifest
from editor.errors import UserError
from editor.events import artifact
from editor.io import atomic_file
from editor.model.arch import ARCHITECTURES

TYPES = ("f32", "f16", "q8_0")
# Source metadata written anew from the config (or by the writer) rather than copied.
_NOT_COPIED = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")


@dataclass(frozen=True)
class Exported:
    path: Path
    architecture: str
    tensors: int
    tokenizer_from: Path


def _permute(weights: torch.Tensor, n_head: int) -> torch.Tensor:
    """llama.cpp's converter's ``LlamaModel.permute``: Hugging Face's rotate-half rows -> GGML's
    interleaved pairs (per head: first half and second half of the rows interleaved)."""
    return (weights.reshape(n_head, 2, weights.shape[0] // n_head // 2, *weights.shape[1:])
            .swapaxes(1, 2).reshape(weights.shape))


def _spec(model, head_dim: int):
    model_type = model.config.model_type
    spec = ARCHITECTURES.get(model_type)
    if spec is None or spec.gguf is None:
        supported = sorted(t for t, s in ARCHITECTURES.items() if s.gguf)
        raise UserError(f"GGUF export does not support the {model_type!r} family (supported: {', '.join(supported)})")
    config = model.config
    if not spec.gguf_fewer_heads and head_dim * config.num_attention_heads != config.hidden_size:
        raise UserError(f"llama.cpp's {spec.gguf} architecture needs heads x head_dim = hidden size "
                        f"({config.num_attention_heads} x {head_dim} != {config.hidden_size}): a {model_type} model with "
                        "heads removed cannot be exported; prune neurons and layers only")
    for attr in spec.gguf_assumes_head_dim:
        if getattr(config, attr, head_dim) != head_dim:
            raise UserError(f"llama.cpp's {spec.gguf} assumes {attr} = head_dim ({head_dim}); this model has "
                            f"{getattr(config, attr)}, which llama.cpp would not reproduce")
    pattern = spec.gguf_layer_pattern
    types = getattr(config, "layer_types", None)
    if pattern and types and list(types) != [pattern[i % len(pattern)] for i in range(len(types))]:
        raise UserError(f"llama.cpp's {spec.gguf} alternates {' / '.join(pattern)} layers; this model's layers are "
                        f"{', '.join(types)} (a removed layer broke the pattern), which llama.cpp would not reproduce")
    scaling = getattr(model.config, "rope_scaling", None) or {}
    for rope in _rope_sets(model.config):
        rope_type = rope.get("rope_type", scaling.get("rope_type", "default"))
        if rope_type not in (None, "default"):
            raise UserError(f"GGUF export does not carry rope scaling of type {rope_type!r} yet")
    local = (getattr(model.config, "rope_parameters", None) or {}).get("sliding_attention")
    if spec.gguf == "gemma3" and local and float(local.get("rope_theta", LOCAL_ROPE_BASE)) != LOCAL_ROPE_BASE:
        raise UserError(f"llama.cpp's gemma3 fixes the sliding layers' rope base at {LOCAL_ROPE_BASE:g}; this model "
                        f"has {local['rope_theta']:g}, which llama.cpp would not reproduce")
    return spec


LOCAL_ROPE_BASE = 10000.0  # llama.cpp's gemma3 sliding-window layers


def _rope_sets(config) -> list[dict]:
    """The rope parameters of every attention kind (Gemma 3 keeps one per kind, others one in all)."""
    rope = getattr(config, "rope_parameters", None) or {}
    nested = [v for v in rope.values() if isinstance(v, dict)]
    return nested or [rope]


def _rope_theta(config) -> float:
    """The rope base llama.cpp's freq_base carries: the full-attention layers' where kinds differ."""
    rope = getattr(config, "rope_parameters", None) or {}
    rope = rope.get("full_attention", rope) if isinstance(rope.get("full_attention"), dict) else rope
    return float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0)))


def _hparams(config, arch: str, head_dim: int) -> dict:
    """The hyper-parameter keys llama.cpp reads for ``arch``, from the (possibly shrunk) config."""
    theta = _rope_theta(config)
    return {
        f"{arch}.context_length": ("uint32", config.max_position_embeddings),
        f"{arch}.embedding_length": ("uint32", config.hidden_size),
        f"{arch}.block_count": ("uint32", config.num_hidden_layers),
        f"{arch}.feed_forward_length": ("uint32", config.intermediate_size),
        f"{arch}.attention.head_count": ("uint32", config.num_attention_heads),
        f"{arch}.attention.head_count_kv": ("uint32", getattr(config, "num_key_value_heads", None)
                                            or config.num_attention_heads),
        f"{arch}.attention.key_length": ("uint32", head_dim),
        f"{arch}.attention.value_length": ("uint32", head_dim),
        f"{arch}.rope.dimension_count": ("uint32", head_dim),
        f"{arch}.rope.freq_base": ("float32", float(theta)),
        f"{arch}.attention.layer_norm_rms_epsilon": ("float32", float(config.rms_norm_eps)),
        f"{arch}.vocab_size": ("uint32", config.vocab_size),
        **{f"{arch}.{key}": ("float32", float(getattr(config, attr))) for key, attr in _SOFTCAPS
           if getattr(config, attr, None) is not None},
        **({f"{arch}.attention.sliding_window": ("uint32", config.sliding_window)}
           if getattr(config, "sliding_window", None) and arch in ("gemma2", "gemma3") else {}),
    }


# Gemma 2's tanh soft-caps (config attribute -> llama.cpp key).
_SOFTCAPS = (("attn_logit_softcapping", "attn_logit_softcapping"), ("final_logit_softcapping", "final_logit_softcapping"))


def _tensors(model, spec) -> dict[str, np.ndarray]:
    """GGUF tensor name -> float32 array, in llama.cpp's layout."""
    import gguf

    config = model.config
    arch_enum = {name: key for key, name in gguf.MODEL_ARCH_NAMES.items()}[spec.gguf]
    names = gguf.get_tensor_name_map(arch_enum, config.num_hidden_layers)
    n_head = config.num_attention_heads
    n_kv = getattr(config, "num_key_value_heads", None) or n_head
    out = {}
    for hf_name, tensor in model.state_dict().items():
        if hf_name == "lm_head.weight" and getattr(config, "tie_word_embeddings", False):
            continue  # llama.cpp reads the embedding as the output head when "output" is absent
        if "rotary_emb" in hf_name:
            continue
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise UserError(f"GGUF export: no llama.cpp name for tensor {hf_name!r} of the {config.model_type} family")
        data = tensor.detach().to(torch.float32).cpu()
        if spec.gguf_permute_qk and hf_name.endswith("q_proj.weight"):
            data = _permute(data, n_head)
        elif spec.gguf_permute_qk and hf_name.endswith("k_proj.weight"):
            data = _permute(data, n_kv)
        if spec.norm == "rms_plus_one" and hf_name.endswith("norm.weight"):
            data = data + 1  # Gemma scales by (1 + weight); llama.cpp's converter stores the sum
        out[name] = data.numpy()
    return out


def _encode(name: str, data: np.ndarray, kind: str):
    """(array, raw dtype or None) for one tensor: norms and biases stay float32, as llama.cpp's
    converter keeps them."""
    import gguf

    if data.ndim == 1 or kind == "f32":
        return data.astype(np.float32), None
    if kind == "f16":
        return data.astype(np.float16), None
    if data.shape[-1] % gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType.Q8_0][0]:
        return data.astype(np.float16), None  # rows that do not fill Q8_0 blocks
    return gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0), gguf.GGMLQuantizationType.Q8_0


def _file_type(kind: str) -> int:
    import gguf

    return {"f32": gguf.LlamaFileType.ALL_F32, "f16": gguf.LlamaFileType.MOSTLY_F16,
            "q8_0": gguf.LlamaFileType.MOSTLY_Q8_0}[kind]


def _copy_metadata(reader, writer) -> None:
    """general.* and tokenizer.* of the source GGUF, as they are."""
    import gguf

    for field in reader.fields.values():
        if field.name.startswith(_NOT_COPIED) or not field.name.startswith(("general.", "tokenizer.")):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(field.name, field.contents(), vtype, sub_type=sub)


def _manifest_chain(path: Path | None) -> list[dict]:
    """The manifests from this checkpoint back to the model the first edit started from."""
    chain = []
    while path is not None and (path / MANIFEST).is_file() and len(chain) < 16:
        manifest = read_manifest(path)  # the one manifest reader: one-line errors for a damaged file
        chain.append(manifest)
        source = manifest.get("source") or {}
        path = Path(source["path"]) if source.get("kind") == "directory" and source.get("path") else None
    return chain


def source_gguf(model_name: str, model_path: Path | None, chain: list[dict]) -> Path | None:
    """The GGUF the model was converted from: a .gguf named directly, a store alias, or the start of
    the manifest chain (an alias or a .gguf file)."""
    from editor.model import store

    candidates = [(model_name, model_path)]
    for manifest in chain:
        source = manifest.get("source") or {}
        candidates.append((source.get("model"), Path(source["path"]) if source.get("path") else None))
    for name, path in candidates:
        if path is not None and path.suffix == ".gguf" and path.is_file():
            return path
        if name in store.ALIASES:
            return store.source_gguf(name)
    return None


TENSORS_SHA256 = "lmedit.tensors_sha256"


def tensors_sha256(tensors) -> str:
    """One sha256 over (name, bytes as stored) of every tensor, in file order: what ``verify_gguf``
    recomputes from the file, so a GGUF whose tensors changed after export is caught."""
    import hashlib

    digest = hashlib.sha256()
    for name, array in tensors:
        digest.update(name.encode() + b"\0")
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()


def verify_gguf(path: str | Path) -> dict:
    """Check every claim an exported GGUF makes about itself: it is ours, its tensors are the ones
    whose hash it records, and the manifest it carries (the checkpoint it came from) is complete.
    Returns what was checked; raises UserError (not ours, incomplete) or GGUFMismatch (changed)."""
    from editor.edit.checkpoint import REQUIRED

    path = Path(path)
    reader = _our_reader(path)
    if reader is None:
        raise UserError(f"{path} is not a GGUF exported by lmedit (no lmedit.version in its metadata)")
    recorded = _string(reader, TENSORS_SHA256)
    if recorded is None:
        raise UserError(f"{path} records no {TENSORS_SHA256} (exported by an older lmedit): nothing to check it against")
    actual = tensors_sha256((t.name, t.data) for t in reader.tensors)
    if actual != recorded:
        raise GGUFMismatch(f"{path}: its tensors do not match the {TENSORS_SHA256} recorded at export "
                           "(changed after it was written)")
    manifest = _string(reader, "lmedit.manifest")
    if manifest is not None:
        try:
            data = json.loads(manifest)
        except ValueError:
            raise GGUFMismatch(f"{path}: its lmedit.manifest is not valid JSON") from None
        missing = [k for k in REQUIRED if not isinstance(data, dict) or k not in data]
        if missing:
            raise GGUFMismatch(f"{path}: its lmedit.manifest lacks {', '.join(missing)}")
    return {"tensors": len(reader.tensors), "tensors_sha256": actual, "manifest": manifest is not None}


class GGUFMismatch(UserError):
    """A GGUF whose contents are not what its metadata records: a failed verification (exit 1)."""


def _string(reader, key: str) -> str | None:
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def _our_reader(path: Path):
    """A reader of ``path`` if it is a GGUF this module wrote (every export carries
    ``lmedit.version`` in its metadata), else None."""
    import gguf

    try:
        with open(path, "rb") as f:
            if f.read(4) != b"GGUF":
                return None
        reader = gguf.GGUFReader(path)
    except Exception:  # noqa: BLE001 - unreadable or not GGUF: not ours
        return None
    return reader if "lmedit.version" in reader.fields else None


def is_export(path: Path) -> bool:
    return _our_reader(path) is not None


def check_export_out(out: str | Path, force: bool) -> Path:
    """Before any work: ``out`` is free, or ``force`` is given and it is an earlier export of ours."""
    from editor.io import check_output

    return check_output(out, force, is_export, "a GGUF exported by lmedit")


def export_gguf(model_name: str, out: str | Path, kind: str = "f32", tokenizer_from: str | Path | None = None,
                log=print, force: bool = True) -> Exported:
    """Write ``model_name`` (a checkpoint directory, store alias or .gguf) as a GGUF file at ``out``
    (temporary name, then rename: never half a file). An existing ``out`` is replaced only with
    ``force`` and only if an earlier export wrote it."""
    import gguf

    from editor import __version__
    from editor.io import check_writable_directory
    from editor.model.loading import check_model_name, load_model

    if kind not in TYPES:
        raise UserError(f"unknown GGUF type {kind!r}; choose {', '.join(TYPES)}")
    out = Path(out)
    if out.suffix != ".gguf":
        raise UserError(f"the output file should end in .gguf, got {out}")
    if tokenizer_from is not None and not Path(tokenizer_from).is_file():
        raise UserError(f"GGUF file not found: {tokenizer_from}")
    check_model_name(model_name)
    check_export_out(out, force)
    check_writable_directory(out.parent)
    local = Path(model_name).expanduser()
    chain = _manifest_chain(local if local.is_dir() else None)
    source = Path(tokenizer_from) if tokenizer_from else source_gguf(model_name, local if local.exists() else None, chain)
    if source is None:
        raise UserError(f"{model_name} was not made from a GGUF, so there is no llama.cpp tokenizer to carry over; "
                        "name one with --tokenizer-from FILE.gguf (a GGUF of the same tokenizer)")
    try:
        reader = gguf.GGUFReader(source)
    except Exception as exc:  # noqa: BLE001 - any unreadable file; gguf raises several types
        raise UserError(f"{source} is not a readable GGUF file ({type(exc).__name__})") from None
    lm = load_model(model_name, dtype="float32")
    spec = _spec(lm.model, lm.arch.head_dim)
    vocab = reader.fields.get("tokenizer.ggml.tokens")
    if "tokenizer.ggml.model" not in reader.fields:
        raise UserError(f"{source} holds no tokenizer (no tokenizer.ggml.model)")
    if vocab is not None and len(vocab.data) != lm.model.config.vocab_size:
        raise UserError(f"{source} has {0 if vocab is None else len(vocab.data)} tokens, the model "
                        f"{lm.model.config.vocab_size}: not the model's tokenizer")
    tensors = _tensors(lm.model, spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out, suffix=".gguf") as tmp:
        writer = gguf.GGUFWriter(str(tmp), spec.gguf)
        _copy_metadata(reader, writer)
        for key, (vtype, value) in _hparams(lm.model.config, spec.gguf, lm.arch.head_dim).items():
            getattr(writer, f"add_{vtype}")(key, value)
        writer.add_file_type(_file_type(kind))
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
        writer.add_string("lmedit.version", __version__)
        if chain:
            writer.add_string("lmedit.manifest", json.dumps(chain[0], sort_keys=True))
        encoded = {name: _encode(name, data, kind) for name, data in tensors.items()}
        writer.add_string(TENSORS_SHA256, tensors_sha256((name, array) for name, (array, _) in encoded.items()))
        for name, (array, raw) in encoded.items():
            writer.add_tensor(name, array, raw_dtype=raw)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    log(f"wrote {out} ({spec.gguf}, {kind}, {len(tensors)} tensors; tokenizer from {source.name})")
    artifact(out, "gguf")
    return Exported(out, spec.gguf, len(tensors), source)
