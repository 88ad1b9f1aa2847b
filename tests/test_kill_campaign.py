"""Random kill campaign: a real recipe run SIGKILLed at 30 random moments (seeded), resumed after
each, must end with every artifact equal to an uninterrupted run's (bitwise for weights, JSON equal
but for wall-clock timings and the run's own path), and no temporary, lock or journal left.

`tests/test_crash.py` kills at named points; here the moments are drawn uniformly over the length of
an uninterrupted run, so kills land wherever the run happens to be: loading, scoring, between a
step's result and its save, inside a checkpoint write, a rename, the report. The runs are forked from
a preloaded lmedit (zygote.py) so that the kills fit the test budget; two chains run at a time.
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from pathlib import Path

import pytest

import tiny
from same import results, same_weights
from zygote import Zygote

pytestmark = pytest.mark.slow

KILLS = 30
SETTINGS = ["batch_size=16", "data.n_score=8", "data.n_val=16", "data.n_test=16", "data.n_train=8", "data.formats=[[4, 1]]", "data.heldout_formats=[[4, 2]]", "data.n_heldout=8", "data.n_general=4",
            "prune.retain=0.9", "prune.max_rounds=2", "baselines=[]", "recover.steps=2"]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:  # a zombie (exited, not yet reaped by the zygote) is dead
            return f.read().split(") ")[1][0] != "Z"
    except FileNotFoundError:
        return False


def leftovers(root: Path) -> list[str]:
    """Temporaries, journals, pid files and lock files beside an output. A run folder's own
    ``.lmedit.lock`` stays (deleting a lock file while releasing it would race the next locker;
    it holds nothing and the lock dies with its process)."""
    marks = (".tmp-", ".old-", ".scratch-", ".lmedit.swap", ".lmedit.pid", ".lmedit.lock")
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if any(m in p.name for m in marks) and p.name != ".lmedit.lock")


def artifacts(run: Path) -> dict:
    """Every file a run leaves, in comparable form: JSON scrubbed of timings, weights as tensors
    (compared bitwise separately), the report and other text as bytes."""
    out = {}
    for p in sorted(run.rglob("*")):
        if not p.is_file() or p.suffix == ".safetensors" or p.name.startswith("."):
            continue
        rel = str(p.relative_to(run))
        if p.suffix == ".json" or p.suffix == ".jsonl":
            text = p.read_text()
            data = [results(line, run) for line in text.splitlines() if line.strip()] \
                if p.suffix == ".jsonl" else results(text, run)
            if isinstance(data, dict):  # a step's cache key hashes its output path; a manifest its time
                data = {k: v for k, v in data.items() if not (k == "key" and rel.startswith("steps/"))
                        and k != "created"}
            out[rel] = data
        elif p.suffix in (".html", ".md"):
            out[rel] = "present"  # carry timings in prose; their numbers come from the JSON compared above
        else:
            out[rel] = p.read_bytes()
    return out


def command(model: Path, out: Path) -> list[str]:
    sets = sum((["--set", s] for s in [f"model={model}", *SETTINGS]), [])
    return ["run", "prune", "--out", str(out), "--json", *sets]


def test_random_kills_each_resume_to_the_uninterrupted_result(tmp_path):
    model = tiny.save_dir(tiny.arithmetic_model("llama"), tmp_path / "model")
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "TMPDIR", "PYTHONPATH")}
    env |= {"EDITOR_HOME": str(tmp_path / "home"), "TQDM_DISABLE": "1", "LMEDIT_QUIET": "1"}
    zygotes = [Zygote(), Zygote()]
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        reference = tmp_path / "reference"
        start = time.monotonic()
        done = zygotes[0].run(command(model, reference), Path.cwd(), env, logs)
        length = time.monotonic() - start
        assert done.returncode == 0, done.stderr
        expected = artifacts(reference)
        assert "checkpoint/edit_manifest.json" in expected and "report.html" in expected

        kills, failures, moments = [0], [], []
        lock = threading.Lock()

        def chain(z: Zygote, rng: random.Random, name: str):
            n = 0
            while True:
                with lock:
                    if kills[0] >= KILLS:
                        return
                out = tmp_path / f"{name}-{n}"
                n += 1
                attempts = 0
                while True:  # kill this run again and again until a resume finishes it
                    attempts += 1
                    moment = rng.uniform(0, length)
                    pid = z.spawn(command(model, out), Path.cwd(), env, logs)
                    end = time.monotonic() + moment
                    while alive(pid) and time.monotonic() < end:
                        time.sleep(0.01)
                    killed = alive(pid)
                    if killed:
                        os.kill(pid, 9)
                    code = z.wait(pid)
                    if killed and code == -9:
                        with lock:
                            kills[0] += 1
                            moments.append(moment / length)
                        continue
                    if code != 0:
                        with lock:
                            failures.append(f"{out.name}: attempt {attempts} exited {code}")
                        return
                    break
                got, why = artifacts(out), None
                if got.keys() != expected.keys():
                    why = f"files differ: {sorted(got.keys() ^ expected.keys())}"
                elif got != expected:
                    why = f"differs in {[k for k in got if got[k] != expected[k]]}"
                elif not same_weights(out / "checkpoint", reference / "checkpoint"):
                    why = "checkpoint weights differ"
                elif [p for p in leftovers(tmp_path) if p.startswith((out.name + "/", "." + out.name))]:
                    why = f"left {leftovers(tmp_path)}"
                with lock:
                    if why:
                        failures.append(f"{out.name} after {attempts - 1} kills: {why}")

        threads = [threading.Thread(target=chain, args=(z, random.Random(seed), f"chain{seed}"))
                   for seed, z in enumerate(zygotes)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        for z in zygotes:
            z.close()
    assert not failures, "\n".join(failures)
    assert kills[0] >= KILLS
    assert leftovers(tmp_path) == [], leftovers(tmp_path)
    spread = sorted(moments)  # where in the run the kills landed (fractions of an uninterrupted run), for the log
    print(json.dumps({"kills": kills[0], "run_seconds": round(length, 2),
                      "kill_moment_deciles": [round(spread[len(spread) * k // 10], 2) for k in range(10)]}))


def test_a_service_killed_at_random_moments_finishes_its_job_as_an_uninterrupted_run(tmp_path):
    """The service itself SIGKILLed at seeded random moments while its job runs, restarted each time
    on the same home: the job resumes from its last finished step and ends as a direct run does."""
    from editor.service.client import Client
    from test_service import ALICE, Server, direct_run, prune_job, wait_for

    model = tiny.save_dir(tiny.arithmetic_model("llama"), tmp_path / "model")
    longer = {"data.n_test": 400}  # long enough for several kills
    reference = tmp_path / "reference"
    direct = direct_run(model, reference, **longer)
    rng, kills = random.Random(7), 0
    server = Server(tmp_path / "home").start()
    try:
        job = Client(server.url, ALICE).submit(**prune_job(model, **longer))
        while kills < 5:
            time.sleep(rng.uniform(0.5, 4.0))
            if Client(server.url, ALICE).status(job)["state"] in ("succeeded", "failed", "cancelled"):
                break
            server.kill()
            kills += 1
            server.start()
        status = wait_for(Client(server.url, ALICE), job)
    finally:
        server.stop()
    assert kills >= 3 and status["state"] == "succeeded" and 2 <= status["attempts"] <= kills + 1, (kills, status)
    run = tmp_path / "home" / "jobs" / job / "run"
    result = json.loads((tmp_path / "home" / "jobs" / job / "result.json").read_text())
    assert results(json.dumps(result["summary"]), run) == results(json.dumps(direct["summary"]), reference)
    assert same_weights(run / "checkpoint", reference / "checkpoint")
    assert leftovers(run) == []
