"""Files written whole or not at all: write to a temporary path beside the target, then rename."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def default_mode(directory: bool = False) -> int:
    """Permissions a plain open()/mkdir() would give; mkstemp/mkdtemp use 0600/0700."""
    return (0o777 if directory else 0o666) & ~_umask()


def write_text_atomic(path: str | Path, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_bytes_atomic(path: str | Path, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, default_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_json_atomic(path: str | Path, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


@contextmanager
def atomic_directory(out: str | Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; on success it replaces ``out`` (the old one is
    moved aside first, then deleted), on failure it is removed and ``out`` is left as it was."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(out, beside=True).acquire()  # two writers of one output: the second fails at once
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        yield tmp
        os.chmod(tmp, default_mode(directory=True))
        for file in tmp.iterdir():
            os.chmod(file, default_mode())
        if out.exists():
            old = out.with_name(f".{out.name}.old-{os.getpid()}")
            out.rename(old)
            tmp.rename(out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        lock.release()


class DirectoryLock:
    """An advisory lock on a directory (``DIR/.lmedit.lock``, through the ``filelock`` package, which
    transformers already depends on, so every OS gets the right primitive): one writer at a time;
    a second one fails at once with the holder's pid instead of mixing its results in. The lock dies
    with its process, so a killed run never leaves the directory locked."""

    NAME = ".lmedit.lock"

    def __init__(self, directory: str | Path, beside: bool = False):
        """``beside``: lock a directory that is replaced wholesale (a checkpoint) from its parent,
        ``PARENT/.NAME.lmedit.lock``, since a lock inside it would be replaced with it."""
        from filelock import FileLock

        self.directory = Path(directory)
        home, stem = (self.directory.parent, f".{self.directory.name}.lmedit") if beside else (self.directory, ".lmedit")
        self.home, self.path, self.pid_path = home, home / f"{stem}.lock", home / f"{stem}.pid"
        self.beside = beside
        self._lock = FileLock(str(self.path), timeout=0)

    def acquire(self) -> "DirectoryLock":
        from filelock import Timeout

        from editor.errors import UserError

        self.home.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise UserError(f"{self.directory} is in use by {self._holder()} (another lmedit process writing "
                            "there); wait for it to finish or choose another --out") from None
        write_text_atomic(self.pid_path, f"{os.getpid()}\n")
        return self

    def _holder(self) -> str:
        try:
            return f"pid {int(self.pid_path.read_text().strip())}"
        except (OSError, ValueError):
            return "another process"

    def release(self) -> None:
        if self._lock.is_locked:
            self.pid_path.unlink(missing_ok=True)
            if self.beside:  # leave nothing beside the output; removed while still held, so the
                self.path.unlink(missing_ok=True)  # next writer locks a fresh file after our work is done
            self._lock.release()

    def __enter__(self) -> "DirectoryLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_json(path: str | Path, what: str = "file"):
    """The one JSON reader for user-supplied files: a missing, unreadable, non-UTF-8 or invalid file
    (NaN and Infinity included: they are not JSON) is one clear UserError naming the file and ``what``."""
    from editor.errors import UserError

    path = Path(path)

    def no_constants(name):
        raise ValueError(f"{name} is not a JSON number")

    try:
        return json.loads(path.read_bytes().decode("utf-8"), parse_constant=no_constants)
    except FileNotFoundError:
        raise UserError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UserError(f"{what} {path} is a directory, not a JSON file") from None
    except UnicodeDecodeError:
        raise UserError(f"{what} {path} is not UTF-8 text") from None
    except ValueError as exc:  # json.JSONDecodeError is a ValueError
        raise UserError(f"{what} {path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None


def check_writable_directory(out: str | Path) -> None:
    """Before any computation: ``out`` is (or can become) a directory we may write in. Nothing is
    created: the nearest existing ancestor must be a writable directory."""
    from editor.errors import UserError

    out = Path(out)
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a directory")
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise UserError(f"cannot write {out}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise UserError(f"cannot write {out}: {probe} is not writable")


def read_records(path: str | Path, what: str = "data file") -> list[dict]:
    """The one reader of user record files: ``.jsonl`` (one JSON object per line) or ``.csv`` (a
    header row). Any problem (missing, not UTF-8, a bad line, a line that is not an object) is one
    UserError naming the file and, where there is one, the line."""
    import csv
    import io

    from editor.errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"{what} not found: {path}")
    if path.suffix not in (".jsonl", ".csv"):
        raise UserError(f"{path}: expected a .jsonl or .csv {what}")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise UserError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except OSError as exc:
        raise UserError(f"cannot read {what} {path}: {exc.strerror}") from None
    if path.suffix == ".csv":
        try:
            return [dict(row) for row in csv.DictReader(io.StringIO(text, newline=""))]
        except csv.Error as exc:
            raise UserError(f"{path}: not valid CSV ({exc})") from None
    records = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except ValueError as exc:
            raise UserError(f"{path}: line {n} is not valid JSON ({getattr(exc, 'msg', exc)})") from None
        if not isinstance(record, dict):
            raise UserError(f"{path}: line {n} is not a JSON object")
        records.append(record)
    return records
