"""Files written whole or not at all: write to a temporary path beside the target, then rename."""

from __future__ import annotations

import errno
import json
import os
import re
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


_FULL = {errno.ENOSPC, errno.EFBIG, errno.EDQUOT}  # no space left, file too large, quota exceeded
_RUST_FULL = re.compile(r"os error (%s)\b" % "|".join(map(str, sorted(_FULL))))  # safetensors, tokenizers


def disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` says the disk (or a size limit or quota) is full; Rust writers such as
    safetensors report it as their own error type with the OS error number in the text."""
    if isinstance(exc, OSError):
        return exc.errno in _FULL
    return _RUST_FULL.search(str(exc)) is not None


def too_long(exc: BaseException):
    """A UserError for a name no file system can hold (ENAMETOOLONG, from any stat or open of a
    user-given name), or None: the CLI and the service both say it in one line."""
    from editor.errors import UserError

    if isinstance(exc, OSError) and exc.errno == errno.ENAMETOOLONG:
        return UserError(f"a name given is too long for a file path ({len(str(exc.filename or ''))} characters); "
                         "check the arguments")
    return None


def _full_error(target: Path, exc: BaseException):
    from editor.errors import UserError

    state = "is as it was" if target.exists() else "was not written"
    return UserError(f"the disk is full (or a file size limit was reached) while writing {target}; {target} {state}, "
                     "and nothing half-written is left; free space and run again")


def write_text_atomic(path: str | Path, text: str, mode: int | None = None) -> Path:
    return write_bytes_atomic(path, text.encode(), mode)


def write_bytes_atomic(path: str | Path, data: bytes, mode: int | None = None) -> Path:
    with atomic_file(path, mode=mode) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_json_atomic(path: str | Path, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False) + "\n")


# Temporary names carry the writer's pid, ``.NAME.KIND-PID-RANDOM``, so that what a killed process
# left behind can be told from what a live one is writing, and removed by the next writer.
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|scratch)-(?P<pid>\d+)-[A-Za-z0-9_]+(?P<suffix>\.[a-z]+)?$")


def _temp_name(name: str, kind: str) -> str:
    return f".{name}.{kind}-{os.getpid()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def sweep_stale(target: str | Path) -> list[Path]:
    """Remove the temporary files and directories of ``target`` that dead processes left beside it
    (a SIGKILL or power cut during a save); those of live processes are left alone. Returns them."""
    target = Path(target)
    return sweep_directory(target.parent, target.name)


def sweep_directory(directory: str | Path, name: str | None = None) -> list[Path]:
    """Remove what dead processes' saves left in ``directory`` (only those of ``name`` if given);
    without ``name``, interrupted replacements there are finished first (see :func:`recover`)."""
    directory = Path(directory)
    removed: list[Path] = []
    if not directory.is_dir():
        return removed
    if name is None:
        for journal in directory.glob(".*.lmedit.swap"):
            recover(directory / journal.name[1:-len(".lmedit.swap")])
    for entry in directory.iterdir():
        match = _TEMP.match(entry.name)
        if not match or (name is not None and match["name"] != name) or _alive(int(match["pid"])):
            continue
        if match["kind"] == "old" and _journal(entry.with_name(match["name"])).is_file():
            continue  # the old copy of an interrupted replacement: finish_replace decides its fate
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed


@contextmanager
def atomic_file(path: str | Path, suffix: str = "", mode: int | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write; on success it replaces ``path`` in one
    rename, on failure it is removed (temporaries of killed writers are swept first). ``mode``
    (e.g. 0o600 for a secret) is the file's from its creation on, never wider in between."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(path)
    fd, name = tempfile.mkstemp(prefix=_temp_name(path.name, "tmp"), suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.chmod(tmp, default_mode() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        if disk_full(exc):
            raise _full_error(path, exc) from None
        raise


@contextmanager
def scratch_directory(beside: str | Path) -> Iterator[Path]:
    """A work directory beside ``beside`` (same filesystem, so results can be renamed into place),
    removed afterwards; one a killed process left is swept by the next user."""
    beside = Path(beside)
    beside.parent.mkdir(parents=True, exist_ok=True)
    sweep_stale(beside)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_name(beside.name, "scratch"), dir=beside.parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _journal(out: Path) -> Path:
    return out.with_name(f".{out.name}.lmedit.swap")


def finish_replace(out: str | Path) -> str | None:
    """Complete a replacement of ``out`` that a killed process left half done, and sweep the
    temporaries of dead writers. Call with ``out``'s lock held (``DirectoryLock(out, beside=True)``).

    A replacement is: write the journal (new and old names), rename ``out`` aside, rename the new
    directory to ``out``, delete the old one, delete the journal. The new directory was complete
    before the journal was written, so whatever step the kill came at, the swap can be finished:
    the result is always the new version, never a missing ``out``. Returns what was done, if anything."""
    out = Path(out)
    journal = _journal(out)
    done = None
    if journal.is_file():
        try:
            names = json.loads(journal.read_text())
            new, old = out.with_name(names["new"]), out.with_name(names["old"])
        except (OSError, ValueError, KeyError, TypeError):  # a torn journal: the swap had not started
            new = old = None
        if new is not None and new.is_dir():
            if out.exists() and not old.exists():
                out.rename(old)
            if not out.exists():
                new.rename(out)
                done = f"finished replacing {out} (an earlier writer was interrupted)"
        if old is not None and old.exists():
            shutil.rmtree(old, ignore_errors=True)
        journal.unlink(missing_ok=True)
    sweep_stale(out)
    return done


def recover(out: str | Path) -> str | None:
    """For readers: if a replacement of ``out`` was interrupted (its journal is there), finish it
    under the lock, so a checkpoint killed mid-replace is found complete instead of missing."""
    out = Path(out)
    if not _journal(out).is_file():
        return None
    with DirectoryLock(out, beside=True):
        return finish_replace(out)


@contextmanager
def atomic_directory(out: str | Path, log=None, ours=None, what: str = "") -> Iterator[Path]:
    """Yield a temporary directory beside ``out``; on success it replaces ``out`` (journaled, see
    :func:`finish_replace`), on failure it is removed and ``out`` is left as it was. Locked: a second
    writer of the same ``out`` fails at once; an interrupted earlier replacement is finished first.
    With ``ours`` (see :func:`check_replaceable`), an existing ``out`` is replaced only if it is ours,
    checked under the lock, so what another process put there meanwhile is not deleted either."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    lock = DirectoryLock(out, beside=True).acquire()  # two writers of one output: the second fails at once
    try:
        note = finish_replace(out)
        if note and log:
            log(note)
        if ours is not None:
            check_replaceable(out, ours, what)
        tmp = Path(tempfile.mkdtemp(prefix=_temp_name(out.name, "tmp"), dir=out.parent))
        try:
            yield tmp
            os.chmod(tmp, default_mode(directory=True))
            for file in tmp.iterdir():
                os.chmod(file, default_mode())
            _swap(tmp, out)
        except BaseException as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            if disk_full(exc):
                raise _full_error(out, exc) from None
            raise
    finally:
        lock.release()


def _swap(new: Path, out: Path) -> None:
    from editor.faults import crash_point

    if not out.exists():
        new.rename(out)
        return
    old = Path(tempfile.mkdtemp(prefix=_temp_name(out.name, "old"), dir=out.parent))
    old.rmdir()  # a unique free name for the old copy
    write_json_atomic(_journal(out), {"new": new.name, "old": old.name})
    out.rename(old)
    crash_point("replace.between-renames")
    new.rename(out)
    shutil.rmtree(old, ignore_errors=True)
    _journal(out).unlink(missing_ok=True)


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
            raise UserError(f"{self.directory} is in use by {self.holder()} (another lmedit process writing "
                            "there); wait for it to finish or choose another --out") from None
        write_text_atomic(self.pid_path, f"{os.getpid()}\n")
        return self

    def holder(self) -> str:
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


# Ownership ------------------------------------------------------------------------------------
# One rule for every writer that replaces something (--force, --fresh): a missing path, an empty
# directory, or a path that is provably ours. Anything else may be a user's own work: refused.


def sha256_of(paths: list[str | Path]) -> str:
    """One sha256 over the bytes of ``paths`` in order (what a cached step read from users' files)."""
    import hashlib

    digest = hashlib.sha256()
    for path in paths:
        digest.update(Path(path).read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()


def json_object_with(path: str | Path, keys: set[str]) -> bool:
    """Whether ``path`` is a JSON object holding every key in ``keys``: how a results file of ours
    is recognised (each writer names the keys its format always has)."""
    try:
        data = json.loads(Path(path).read_bytes().decode("utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and keys <= data.keys()


def protected(path: Path) -> str | None:
    """Why ``path`` may never be replaced, whatever it holds: the current directory, one above it,
    the home directory, a filesystem root."""
    resolved, here = path.resolve(), Path.cwd().resolve()
    if resolved == here:
        return "it is the current directory"
    if resolved in here.parents:
        return "it holds the current directory"
    if resolved == Path.home().resolve():
        return "it is the home directory"
    if resolved.parent == resolved:
        return "it is a filesystem root"
    return None


def check_output(out: str | Path, force: bool, ours, what: str) -> Path:
    """Before any work, for a writer that replaces ``out`` whole: ``out`` is free, or ``force`` is
    given and the ownership rule allows replacing it (:func:`check_replaceable`); its folder is writable."""
    from editor.errors import UserError

    out = Path(out)
    if (out.exists() or out.is_symlink()) and not force:
        raise UserError(f"{out} already exists; pass --force (force=True) to overwrite it")
    check_replaceable(out, ours, what)
    check_writable_directory(out.parent if out.exists() else out)  # replaced from its parent
    return out


def check_replaceable(path: str | Path, ours, what: str, option: str = "--force") -> None:
    """Refuse, in one line naming what is in the way, to replace ``path`` unless it is missing, an
    empty directory, or ``ours(path)`` proves it is ``what`` (e.g. "an lmedit checkpoint") written by
    lmedit. Call before any work, and again under the writer's lock."""
    from editor.errors import UserError

    path = Path(path)
    if not path.exists() and not path.is_symlink():
        return
    why = protected(path)
    if why:
        raise UserError(f"refusing to replace {path} ({option}): {why}; choose another output path")
    if path.is_symlink():
        raise UserError(f"refusing to replace {path} ({option}): it is a symbolic link; "
                        "choose another output path or remove the link yourself")
    if path.is_dir() and not any(path.iterdir()):
        return
    if ours(path):
        return
    if path.is_dir():
        names = sorted(p.name for p in path.iterdir())
        held = f"it holds {', '.join(names[:3])}{' ...' if len(names) > 3 else ''}"
    else:
        held = "it is a file"
    raise UserError(f"refusing to replace {path} ({option}): {held}, not {what}; "
                    "choose another output path or remove it yourself")
