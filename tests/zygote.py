"""Real `lmedit` processes at a fork's cost: a process that imports what every command imports, once,
then forks one child per command line (the "zygote" of Android and of multiprocessing's forkserver).

Each child is a real process running `lmedit ARGS`: its own stdout and stderr files, working folder,
environment, exit status, interpreter shutdown (atexit handlers, destructors, buffered output), and
it can be SIGKILLed at any moment. What differs from `exec` is only that the imports happened before
the fork; ``Zygote.startup`` holds what they printed, so the tests can require that to be nothing, and
``tests/test_bad_input_real.py`` runs a sample of its cases as fresh `python -m editor` processes too.

Run as a script it is the zygote: JSON requests on stdin, one JSON answer per line on stdout.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

PRELOAD = ("torch", "transformers", "safetensors.torch", "yaml", "editor.cli", "editor.model.loading",
           "editor.edit.checkpoint", "editor.edit.weights", "editor.tasks.examples", "editor.recipes.run")


@dataclass
class Result:
    returncode: int  # negative: killed by that signal, as subprocess reports it
    stdout: str
    stderr: str


class Zygote:
    def __init__(self):
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, __file__], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env, cwd=Path(__file__).parent.parent)
        ready = self.proc.stdout.readline()
        if ready.strip() != "ready":
            raise RuntimeError(f"the zygote did not start: {ready!r} {self.proc.stderr.read()[-2000:]}")
        self.startup = ""  # what the imports printed on stderr; read by the tests once the zygote is closed
        self._n = 0

    def _ask(self, request: dict) -> dict:
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def spawn(self, args: list[str], cwd: Path, env: dict[str, str], logs: Path) -> int:
        """Start `lmedit ARGS` in ``cwd`` with exactly ``env``; returns its pid."""
        self._n += 1
        out, err = logs / f"{self._n}.out", logs / f"{self._n}.err"
        return self._ask({"op": "spawn", "args": args, "cwd": str(cwd), "env": env, "stdout": str(out),
                          "stderr": str(err)})["pid"]

    def wait(self, pid: int) -> int:
        return self._ask({"op": "wait", "pid": pid})["returncode"]

    def run(self, args: list[str], cwd: Path, env: dict[str, str], logs: Path) -> Result:
        pid = self.spawn(args, cwd, env, logs)
        code = self.wait(pid)
        n = self._n
        return Result(code, (logs / f"{n}.out").read_text(errors="replace"), (logs / f"{n}.err").read_text(errors="replace"))

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(timeout=60)
        self.startup = self.proc.stderr.read()


def _child(request: dict) -> None:
    """In the forked child: become `lmedit ARGS` and exit as it would."""
    import click

    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    for fd, path in ((1, request["stdout"]), (2, request["stderr"])):
        target = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.dup2(target, fd)
        os.close(target)
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    sys.argv = ["lmedit", *request["args"]]
    from editor.cli import main

    code = 0
    try:
        main.main(args=request["args"], prog_name="lmedit")
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except click.exceptions.Exit as exc:
        code = exc.exit_code
    except Exception:  # as the interpreter does for an uncaught exception: the traceback, status 1
        import traceback

        traceback.print_exc()
        code = 1
    sys.stdout.flush()
    sys.stderr.flush()
    sys.exit(code)  # a normal interpreter shutdown: atexit handlers and destructors run, as in `lmedit`


def _serve() -> None:
    import importlib
    import signal

    import gc

    for name in PRELOAD:
        importlib.import_module(name)
    # What the imports built lives as long as any process: kept out of the collector (as a fork
    # server should), a child's interpreter shutdown takes 0.2 s instead of 0.5 s.
    gc.freeze()
    print("ready", flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["op"] == "spawn":
            sys.stdout.flush()
            sys.stderr.flush()
            pid = os.fork()
            if pid == 0:
                signal.signal(signal.SIGINT, signal.SIG_DFL)
                _child(request)  # ends in SystemExit, which unwinds this loop: the child's own shutdown
            answer = {"pid": pid}
        else:
            _, status = os.waitpid(request["pid"], 0)
            answer = {"returncode": os.waitstatus_to_exitcode(status)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).parent.parent))
    _serve()
