"""Bad input through real `lmedit` processes, generated from the option types of every command.

`tests/test_bad_input.py` runs hand-written lines in-process; here every option of every command
(the click tree walked, nothing listed by hand but a valid base line per command) gets the bad values
its type implies: below and above its range, not a number, NaN and infinity, huge, empty, unknown
choices, missing or wrong kinds of paths, given twice; output paths that are files, a user's folder
or a symbolic link, with --force. Every case runs in process (click's runner); a seeded sample and every
case aimed at a user's folder also as real processes (forked from a preloaded `lmedit`, see zygote.py),
and a smaller sample as fresh `lmedit` processes too. Each runs in an empty working folder and an empty
store, and must exit 2 with exactly one `Error:` line on stderr, no traceback, and nothing written or
deleted anywhere the command could reach. NUL bytes cannot be passed in a command line (the kernel
ends each argument at the first one): they are covered in files, by the in-process suite.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import click
import pytest

import tiny
from zygote import Result, Zygote

pytestmark = pytest.mark.slow

# Commands that start a server or talk to one are left to tests/test_service.py; `models pull`
# downloads. Every other command gets a valid base line (it would succeed) that a case breaks.
SKIP = {"serve", "jobs", "models pull", "models list", "recipes list"}
FAST_PRUNE = ["--set", "data.n_score=8", "--set", "data.n_val=8", "--set", "data.n_test=8", "--set",
              "data.n_train=8", "--set", "prune.max_rounds=1", "--recover", "none", "--baselines", ""]


def bases(f: dict) -> dict[str, list[str]]:
    m = ["--model", f["model"]]
    return {
        "models info": [f["model"]],
        "edit": [*m, "--zero-heads", "0.1", "--no-verify", "--out", "out"],
        "verify": [f["checkpoint"]],
        "attribute heads": [*m, "--n", "4", "--method", "static", "--no-specificity", "--out", "res"],
        "attribute circuit": [*m, "--n", "8", "--heldout", "8", "--out", "res"],
        "attribute neurons": [*m, "--n", "4", "--out", "res"],
        "attribute cna": [*m, "--n", "4", "--ablate-heads", "0.1", "--out", "res"],
        "attribute patch": [*m, "--data", f["pairs"], "--n", "4", "--method", "gradient", "--out", "res"],
        "evaluate": [*m, "--data", "guard", "--set", "guard.window=64", "--out", "res"],
        "recipes show": ["icl-heads"],
        "run": ["icl-heads", "--set", f"model={f['model']}", "--out", "run"],
        "prune": [*m, "--out", "p", *FAST_PRUNE],
        "export gguf": [f["checkpoint"], "--out", "m.gguf", "--tokenizer-from", f["tokenizer_gguf"]],
        "lora train": [*m, "--layers", "0", "--steps", "1", "--n-train", "4", "--n-eval", "4", "--out", "lora"],
        "lora compare": [*m, "--adapter", f["adapter"], "--n", "4", "--out", "cmp"],
    }


def commands(group: click.Group = None, path=()):
    from editor.cli import main

    group = group or main
    for name, cmd in group.commands.items():
        words = (*path, name)
        if " ".join(words) in SKIP or words[0] in SKIP:
            continue
        if isinstance(cmd, click.Group):
            yield from commands(cmd, words)
        else:
            yield " ".join(words), cmd


def bad_values(param: click.Parameter, f: dict) -> list[str]:
    """The values a parameter of this type must refuse."""
    t = param.type
    if isinstance(t, click.IntRange):
        out = ["abc", "1.5", "", "0x10", "9" * 40]  # huge: every count has a sane bound
        if t.min is not None:
            out.append(str(t.min if t.min_open else t.min - 1))
        if t.max is not None:
            out.append(str(t.max if t.max_open else t.max + 1))
        return out
    if isinstance(t, click.FloatRange):
        out = ["abc", "", "nan", "inf", "-inf"]
        if t.min is not None:
            out.append(repr(t.min if t.min_open else t.min - 1))
        if t.max is not None:
            out.append(repr(t.max if t.max_open else t.max + 1))
        return out
    if t is click.INT:
        return ["abc", "1.5", "", "9" * 40, "-" + "9" * 40]
    if t is click.FLOAT:
        return ["abc", "", "nan", "inf", "-inf", "1e999"]
    if isinstance(t, click.Choice):
        return ["nosuch", "", t.choices[0].upper() + "_"]
    if isinstance(t, click.Path):
        out = [f["missing"], f["loop"]] if t.exists else []
        if not t.dir_okay:
            out.append(f["dir"])
        if not t.file_okay:
            out.append(f["file"])
        if t.file_okay and t.exists:
            out += [f["empty"], f["binary"]]
        return out
    return ["", " ", "\u0663", "x" * 100_000]  # free text: empty, blank, a lone Arabic-Indic digit, 100 kB


# Commands whose output folder is replaced whole, and the option that allows it. (attribute and
# evaluate write their named result files into --out, beside whatever else is there.)
REPLACES = {"edit": "force", "lora train": "force", "run": "fresh"}

# (command, option, value) a type's generic bad value does not fit, each with why it is valid.
VALID = {
    ("*", "--delimiter", ""): "an explicit empty delimiter: answers joined as written, on purpose",
    ("*", "--delimiter", " "): "the usual delimiter",
    ("prune", "--baselines", ""): "no baselines",
    ("prune", "--baselines", " "): "no baselines, as ''",
}


def without(base: list[str], param: click.Option) -> list[str]:
    """``base`` with ``param`` taken out (and its value), so a case sets it once, to the bad value."""
    names, out, skip = {*param.opts, *param.secondary_opts}, [], False
    for token in base:
        if skip:
            skip = False
        elif token in names:
            skip = not param.is_flag
        else:
            out.append(token)
    return out


def cases(f: dict) -> list[tuple[str, list[str], str]]:
    """(id, argv, what the error line must contain, lower-case; '' for any)."""
    base = bases(f)
    out = []
    for name, cmd in commands():
        words = name.split()
        for param in cmd.params:
            if isinstance(param, click.Argument):
                args = base[name]
                position = [p for p in cmd.params if isinstance(p, click.Argument)].index(param)
                for value in bad_values(param, f):
                    argv = [*words, *args]
                    argv[len(words) + position] = value
                    out.append((f"{name} <{param.name}>={value[:20]!r}", argv, ""))
                continue
            opt = max(param.opts, key=len)
            if opt in ("--help",):
                continue
            rest = without(base[name], param)
            if not param.multiple and not param.count:
                twice = [opt] * 2 if param.is_flag else [opt, "1", opt, "1"]
                out.append((f"{name} {opt} twice", [*words, *rest, *twice], "given twice"))
            if param.is_flag:
                continue
            out.append((f"{name} {opt} without its value", [*words, *rest, opt], "requires an argument"))
            for value in bad_values(param, f):
                if ("*", opt, value) in VALID or (name, opt, value) in VALID:
                    continue
                out.append((f"{name} {opt}={value[:20]!r}", [*words, *rest, opt, value], ""))
            if opt == "--out":
                out.append((f"{name} --out=a file", [*words, *rest, opt, f["file"]], ""))
                if name in REPLACES:  # outputs replaced whole: --force must not take a user's folder
                    for target in ("user", "link"):
                        out.append((f"{name} --out={target} --{REPLACES[name]}",
                                    [*words, *rest, opt, f[target], f"--{REPLACES[name]}"], "refusing"))
                    if REPLACES[name] == "force":  # and without it, not even our own earlier output
                        out.append((f"{name} --out=an existing checkpoint", [*words, *rest, opt, f["checkpoint"]],
                                    "already exists"))
    return out


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """The files the cases point at, made once: a tiny model, a checkpoint, an adapter, and bad paths."""
    root = tmp_path_factory.mktemp("real-bad-input")
    files = root / "files"
    files.mkdir()
    model = tiny.save_dir(tiny.tiny_model("llama"), files / "model")
    f = {"model": str(model), "missing": str(files / "missing.json"), "dir": str(files / "somedir"),
         "file": str(files / "notes.txt"), "empty": str(files / "empty.json"), "binary": str(files / "binary.bin"),
         "user": str(files / "user"), "link": str(files / "link"), "checkpoint": str(files / "checkpoint"),
         "adapter": str(files / "lora" / "adapter"), "tokenizer_gguf": str(files / "tok.gguf"),
         "loop": str(files / "loop"), "pairs": str(files / "pairs.jsonl")}
    (files / "somedir").mkdir()
    (files / "notes.txt").write_text("my notes\n")
    (files / "pairs.jsonl").write_text("".join(  # contrast pairs of equal length in the tiny char tokenizer
        json.dumps({"prompt": f"{a} + 3 = ", "answer": "5", "corrupt_prompt": f"{a} + 6 = ", "corrupt_answer": "8"})
        + "\n" for a in range(1, 6)))
    (files / "empty.json").write_bytes(b"")
    (files / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (files / "user").mkdir()
    (files / "user" / "thesis.tex").write_text("years of work")
    (files / "link").symlink_to(files / "user", target_is_directory=True)
    (files / "loop").symlink_to(files / "loop")  # a link to itself: stat fails with ELOOP
    from test_gguf import no_vocab_gguf

    no_vocab_gguf(files / "tok.gguf")
    zygote = Zygote()
    env = environment(root / "setup-home")
    logs = root / "logs"
    logs.mkdir()
    for argv in (["edit", "--model", f["model"], "--zero-heads", "0.1", "--no-verify", "--out", f["checkpoint"]],
                 ["lora", "train", "--model", f["model"], "--layers", "0", "--steps", "1", "--n-train", "4",
                  "--n-eval", "4", "--out", str(files / "lora")]):
        made = zygote.run(argv, root, env, logs)
        assert made.returncode == 0, made.stderr
    yield root, f, zygote
    zygote.close()
    assert zygote.startup == "", f"importing lmedit printed: {zygote.startup[-2000:]}"


def environment(home: Path) -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "PYTHONPATH")}
    return {**keep, "EDITOR_HOME": str(home), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}


def tree(*roots: Path) -> dict:
    out = {}
    for root in roots:
        for p in sorted(root.rglob("*")):
            if p.is_symlink():
                out[str(p)] = ("link", os.readlink(p))
            elif p.is_file():
                out[str(p)] = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                out[str(p)] = "dir"
    return out


def check(result, expect: str) -> str | None:
    """Why ``result`` is not a clean refusal, or None."""
    lines = result.stderr.strip("\n").split("\n") if result.stderr.strip() else []
    if result.returncode != 2:
        return f"exit {result.returncode}: {result.stderr[-300:]!r}"
    if "Traceback" in result.stderr or len(lines) != 1 or not lines[0].startswith("Error:"):
        return f"stderr is not one Error: line: {result.stderr[-500:]!r}"
    if expect and expect not in lines[0].lower():
        return f"{lines[0]!r} does not say {expect!r}"
    return None


def in_process(argv: list[str], work_dir: Path, env: dict[str, str]) -> Result:
    """``lmedit ARGV`` run by click in this process, in ``work_dir`` with exactly ``env``: what a real
    process would print and return, but for what happens at interpreter shutdown (the real-process
    sample below covers that)."""
    from click.testing import CliRunner

    from editor.cli import main

    saved_env, saved_cwd = dict(os.environ), os.getcwd()
    os.environ.clear()
    os.environ.update(env)
    os.chdir(work_dir)
    try:
        got = CliRunner().invoke(main, argv, prog_name="lmedit")
    finally:
        os.chdir(saved_cwd)
        os.environ.clear()
        os.environ.update(saved_env)
    stderr = got.stderr
    if got.exception is not None and not isinstance(got.exception, SystemExit):
        import traceback

        stderr += "Traceback (in process):\n" + "".join(traceback.format_exception(got.exception))
    return Result(got.exit_code, got.stdout, stderr)


def run_cases(root: Path, numbered, runners) -> list[str]:
    """Each case in a fresh working folder and store, split over ``runners`` (callables taking
    argv, work_dir, env, logs) run side by side; the failures, one line each."""
    failures, lock = [], threading.Lock()

    def work(runner, chunk):
        for n, (name, argv, expect) in chunk:
            case = root / "cases" / str(n)
            work_dir, home, logs = case / "work", case / "home", case / "logs"
            for d in (work_dir, home, logs):
                d.mkdir(parents=True)
            why = check(runner(argv, work_dir, environment(home), logs), expect)
            if why is None and (any(work_dir.iterdir()) or any(home.iterdir())):
                why = f"wrote {sorted(str(p.relative_to(case)) for p in case.rglob('*') if 'logs' not in p.parts)[:3]}"
            if why:
                with lock:
                    failures.append(f"{name}: {why}")
            shutil.rmtree(case)

    threads = [threading.Thread(target=work, args=(r, numbered[i::len(runners)])) for i, r in enumerate(runners)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failures


def test_every_option_of_every_command_refuses_its_bad_values(world):
    """Every generated case, in process (a fork per case cost 0.5 s, 4.5 minutes for all)."""
    root, f, _ = world
    all_cases = cases(f)
    assert len(all_cases) >= 1000, len(all_cases)
    files_before = tree(root / "files")
    failures = run_cases(root, list(enumerate(all_cases)), [lambda argv, work, env, _logs: in_process(argv, work, env)])
    valid = in_process(["recipes", "show", "icl-heads"], root, environment(root / "valid-home"))
    assert check(valid, "") is not None and valid.returncode == 0  # the runner sees a success as one
    assert tree(root / "files") == files_before, "a case changed the shared files"
    assert not failures, f"{len(failures)} of {len(all_cases)} cases:\n" + "\n".join(failures[:60])


# Real processes for a seeded sample, and for every case that points --force at a folder that is not
# ours (the cases where a mistake would cost a user most).
REAL_SAMPLE = 120


def test_a_seeded_sample_as_real_processes(world):
    import random

    root, f, zygote = world
    all_cases = cases(f)
    numbered = list(enumerate(all_cases))
    dangerous = [c for c in numbered if c[1][2] in ("refusing", "already exists")]
    sample = dangerous + random.Random(1).sample([c for c in numbered if c not in dangerous], REAL_SAMPLE)
    files_before = tree(root / "files")
    extra = Zygote()  # two at a time: CI has two cores
    try:
        failures = run_cases(root, sample, [lambda argv, work, env, logs, z=z: z.run(argv, work, env, logs)
                                            for z in (zygote, extra)])
    finally:
        extra.close()
    assert tree(root / "files") == files_before, "a case changed the shared files"
    assert not failures, f"{len(failures)} of {len(sample)} cases:\n" + "\n".join(failures[:60])


def test_a_sample_as_fresh_processes_prints_the_same(world, tmp_path):
    """Forked from a preloaded process or started from scratch, a refusal reads the same: the
    zygote changes nothing a user would see (start-up output included)."""
    import random
    import subprocess

    root, f, zygote = world
    sample = random.Random(0).sample(cases(f), 12)
    for n, (name, argv, _) in enumerate(sample):
        work = tmp_path / str(n)
        work.mkdir()
        logs = tmp_path / f"logs{n}"
        logs.mkdir()
        env = environment(tmp_path / f"home{n}")
        forked = zygote.run(argv, work, env, logs)
        lmedit = Path(sys.executable).parent / "lmedit"  # the console script a user runs
        fresh = subprocess.run([str(lmedit), *argv], cwd=work, env=env, capture_output=True, text=True, timeout=300)
        assert (fresh.returncode, fresh.stderr) == (forked.returncode, forked.stderr), name


def request_for(name: str, argv: list[str], case: bool = True) -> dict | None:
    """The same case as a job request to the service (``{"command", "options"}``), or None where JSON
    cannot say it (an option without its value) or the service sets the option itself (--out,
    --force: a request may not, and the base's are dropped). A repeated option becomes a list."""
    from editor.cli import main
    from editor.service.jobs import RESERVED

    cmd = main
    for word in name.split():
        cmd = cmd.commands[word]
    flags = {o: p for p in cmd.params if isinstance(p, click.Option) for o in (*p.opts, *p.secondary_opts)}
    arguments = [p for p in cmd.params if isinstance(p, click.Argument)]
    tail, options, i, position, last = argv[len(name.split()):], {}, 0, 0, None

    def add(param, value):
        key = max(param.opts, key=len)[2:]
        if param.multiple:
            options.setdefault(key, []).append(value)
        else:
            options[key] = [options[key], value] if key in options else value

    while i < len(tail):
        param = flags.get(tail[i])
        if param is None:
            options[arguments[position].name] = tail[i]
            position += 1
        elif i + 1 == len(tail) and not param.is_flag:
            return None
        else:
            last = param
            if param.name not in RESERVED and param.name != "as_json":
                add(param, tail[i] in param.opts if param.is_flag else tail[i + 1])
            i += 0 if param.is_flag else 1
        i += 1
    if case and last is not None and (last.name in RESERVED or last.name == "as_json"):
        return None
    return {"command": name, "options": options}


def test_the_service_refuses_the_same_cases_with_422_before_queueing(world, tmp_path):
    """Every generated case of a command the service runs, as a real HTTP request to a real server:
    a 422 whose detail is one line, and nothing queued."""
    import httpx

    from editor.service.jobs import COMMANDS
    from test_service import ALICE, Server

    root, f, _ = world
    requests = []
    for name, argv, _ in cases(f):
        command = next((" ".join(argv[:n]) for n in (2, 1) if " ".join(argv[:n]) in COMMANDS), None)
        body = request_for(command, argv) if command else None
        if body is not None:
            requests.append((name, body))
    assert len(requests) >= 500, len(requests)
    from editor.service.jobs import validate

    for command in COMMANDS:  # each base request is valid: a 422 below is the bad value's doing
        validate(request_for(command, [*command.split(), *bases(f)[command]], case=False))
    server = Server(tmp_path / "home", "--workers", "1").start()
    failures = []
    try:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {ALICE}"}, timeout=120) as http:
            for name, body in requests:
                got = http.post("/v1/jobs", json=body)
                detail = got.json().get("detail") if got.headers.get("content-type", "").startswith("application/json") else None
                if got.status_code != 422 or not isinstance(detail, str) or "\n" in detail:
                    failures.append(f"{name}: {got.status_code} {str(detail)[:200]}")
            assert http.get("/v1/jobs").json()["jobs"] == [], "a refused request was queued"
    finally:
        server.stop()
    assert not failures, f"{len(failures)} of {len(requests)}:\n" + "\n".join(failures[:60])
