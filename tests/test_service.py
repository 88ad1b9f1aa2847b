"""The job service: a real `lmedit serve` on loopback, real HTTP, real worker processes, tiny models."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import torch
from click.testing import CliRunner

import tiny
from same import chromium, free_port, local_ray, results, same_weights
from editor.cli import main
from editor.service.client import Client

ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789ab"
FAST = {"batch_size": 16, "data.n_score": 16, "data.n_val": 40, "data.n_test": 48, "data.n_train": 32,
        "data.formats": [[4, 1]], "data.heldout_formats": [[4, 2]], "data.n_heldout": 8, "data.n_general": 4, "prune.retain": 0.9, "prune.max_rounds": 4, "baselines": [],
        "recover.method": "none"}  # exact comparisons across processes: LoRA training differs with thread counts


class Server:
    """`lmedit serve` in its own process; ``kill()`` is a SIGKILL, ``start()`` brings it back on the same home."""

    def __init__(self, home: Path, *args: str):
        self.home, self.args, self.port = home, args, free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        tokens = home.parent / f"{home.name}-tokens.txt"
        tokens.write_text(f"# test users\nalice {ALICE}\nbob {BOB}\n")
        self.tokens = tokens
        self.proc = None

    def start(self) -> "Server":
        log = open(self.home.parent / f"{self.home.name}-server.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "editor", "serve", "--port", str(self.port), "--home",
                                      str(self.home), "--tokens", str(self.tokens), *self.args],
                                     stdout=log, stderr=log)
        end = time.monotonic() + 180  # a loaded 2-core machine imports torch and transformers slowly
        while time.monotonic() < end:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            assert self.proc.poll() is None, (self.home.parent / f"{self.home.name}-server.log").read_text()[-2000:]
            time.sleep(0.1)
        raise AssertionError("the server did not start")

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)

    def worker_pid(self, job: str) -> int | None:
        with sqlite3.connect(self.home / "jobs.sqlite3") as db:
            (worker,) = db.execute("SELECT worker FROM jobs WHERE id = ?", (job,)).fetchone()
        return int(worker) if worker and worker.isdigit() else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as f:  # a zombie is dead too
        return f.read().split(") ")[1][0] != "Z"


def gone(pid: int, within: float = 60) -> bool:
    """Whether ``pid`` has ended within ``within`` seconds: a polled wait, since how long a killed
    process takes to be reaped depends on the machine's load, not on what the test checks."""
    end = time.monotonic() + within
    while alive(pid) and time.monotonic() < end:
        time.sleep(0.1)
    return not alive(pid)


def wait_for(client: Client, job: str, states=("succeeded", "failed", "cancelled"), timeout: float = 600) -> dict:
    end = time.time() + timeout
    while time.time() < end:
        status = client.status(job)
        if status["state"] in states:
            return status
        time.sleep(0.2)
    raise AssertionError(f"job {job} still {status['state']}")


@pytest.fixture(scope="module")
def arith_dir(tmp_path_factory):
    return tiny.save_dir(tiny.arithmetic_model("llama"), tmp_path_factory.mktemp("models") / "tiny-arith")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    s = Server(tmp_path_factory.mktemp("svc") / "home", "--workers", "2").start()
    yield s
    s.stop()


def prune_job(arith_dir, **extra) -> dict:
    return {"recipe": "prune", "set": {"model": str(arith_dir), **FAST, **extra}}


def test_submit_follow_download_and_reload(server, arith_dir, tmp_path):
    """Submit -> events -> artifacts -> the checkpoint loads with plain transformers; the same through `lmedit jobs`."""
    from transformers import AutoModelForCausalLM

    client = Client(server.url, ALICE)
    job = client.submit(**prune_job(arith_dir))
    events = list(client.events(job))
    states = [e["data"]["state"] for e in events if e["type"] == "state"]
    assert states[0] == "queued" and "running" in states and states[-1] == "succeeded", states
    steps = [e["data"] for e in events if e["type"] == "step"]
    assert any(s["step"] == "attribution_search" and s["status"] == "done" for s in steps)
    assert any(s["step"] == "attribution_round_01" and s.get("inner") for s in steps)
    assert [e["seq"] for e in events] == list(range(1, len(events) + 1))  # none lost, none repeated
    # read from the worker's structured events (editor/events.py), not from its log text
    progress = [e["data"] for e in events if e["type"] == "progress"]
    assert any(p["label"] == "gradient attribution" and p["done"] == p["total"] for p in progress), progress
    artifacts = {e["data"]["kind"]: e["data"]["path"] for e in events if e["type"] == "artifact"}
    assert artifacts["report"] == "report.html" and artifacts["checkpoint"] == "checkpoint"
    status = client.status(job)
    assert status["progress"] == 1.0 and status["steps_done"] == status["steps_total"] and status["seconds"] > 0
    names = {a["path"] for a in client.artifacts(job)}
    assert {"report.html", "search_trace.json", "checkpoint/model.safetensors", "checkpoint/config.json"} <= names
    assert not [n for n in names if "/." in n or n.startswith(".")]
    got = CliRunner().invoke(main, ["jobs", "--server", server.url, "--token", ALICE, "download", job, "--to",
                                    str(tmp_path)])
    assert got.exit_code == 0, got.output
    model = AutoModelForCausalLM.from_pretrained(tmp_path / job / "checkpoint")
    ids = torch.tensor([[3, 4, 5, 6]])
    with torch.no_grad():
        assert torch.isfinite(model(ids).logits).all()
    page = httpx.get(f"{server.url}/v1/jobs/{job}/artifacts/report.html", headers={"Authorization": f"Bearer {ALICE}"})
    assert page.headers["content-type"].startswith("text/html") and "<table>" in page.text
    listing = CliRunner().invoke(main, ["jobs", "--server", server.url, "--token", ALICE, "list"])
    assert listing.exit_code == 0 and job in listing.output and "succeeded" in listing.output


def test_a_patching_command_runs_as_a_job(server, tiny_dir, tmp_path):
    """A command (not a recipe) through the real service: AtP* with the QK fix on keys, by position;
    the job's JSON holds what the function computes."""
    import json

    from editor.attribution.atpstar import patch_atp_star
    from editor.model.loading import load_model
    from test_patching import PAIRS

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": e.prompt, "answer": e.answer, **e.meta}) + "\n" for e in PAIRS))
    client = Client(server.url, ALICE)
    job = client.submit(command="attribute patch", options={"model": str(tiny_dir), "data": str(data), "units": "keys",
                                                            "positions": "3", "method": "atp*"})
    status = wait_for(client, job)
    assert status["state"] == "succeeded", status
    name = "patch_keys_positions_noising_atpstar.json"
    saved = json.loads(client.download(job, name, tmp_path / "got.json").read_text())
    lm = load_model(str(tiny_dir))
    want = patch_atp_star(lm.model, lm.tokenizer, PAIRS, "keys", "noising", 3, progress=False)
    torch.testing.assert_close(torch.tensor(saved["columns"]["atp_star"]), want.columns["atp_star"],
                               rtol=1e-4, atol=1e-6, check_dtype=False)


def test_auth_and_users_see_only_their_jobs(server, arith_dir):
    alice, bob = Client(server.url, ALICE), Client(server.url, BOB)
    job = alice.submit(recipe="prune", set={"model": str(arith_dir), **FAST, "prune.max_rounds": 1})
    for headers in ({}, {"Authorization": "Bearer wrong-token-0123456789"}, {"Authorization": ALICE}):
        for method, path in (("GET", "/v1/jobs"), ("POST", "/v1/jobs"), ("GET", f"/v1/jobs/{job}"),
                             ("DELETE", f"/v1/jobs/{job}"), ("GET", f"/v1/jobs/{job}/events"),
                             ("GET", f"/v1/jobs/{job}/artifacts")):
            assert httpx.request(method, server.url + path, headers=headers).status_code == 401, (method, path)
    bearer = {"Authorization": f"Bearer {BOB}"}
    for method, path in (("GET", f"/v1/jobs/{job}"), ("DELETE", f"/v1/jobs/{job}"), ("GET", f"/v1/jobs/{job}/events"),
                         ("GET", f"/v1/jobs/{job}/artifacts"), ("GET", f"/v1/jobs/{job}/artifacts/report.html")):
        assert httpx.request(method, server.url + path, headers=bearer).status_code == 404, (method, path)
    assert job not in {j["id"] for j in bob.jobs()} and job in {j["id"] for j in alice.jobs()}
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    wait_for(alice, job)
    traversal = httpx.get(f"{server.url}/v1/jobs/{job}/artifacts/..%2F..%2Fjobs.sqlite3",
                          headers={"Authorization": f"Bearer {ALICE}"})
    assert traversal.status_code == 404
    # A symbolic link inside the job's folder (a recipe could write one) that leads out of it: refused too.
    run = next(server.home.glob(f"**/{job}/run"))
    (run / "escape.txt").symlink_to(server.home / "jobs.sqlite3")
    (run / "inside.txt").symlink_to(run / "report.html")
    got = {name: httpx.get(f"{server.url}/v1/jobs/{job}/artifacts/{name}", headers={"Authorization": f"Bearer {ALICE}"})
           for name in ("escape.txt", "inside.txt")}
    assert got["escape.txt"].status_code == 404 and got["inside.txt"].status_code == 200


def test_a_body_without_a_size_is_refused_before_it_is_read(server):
    """Every request body is bounded before parsing: by Content-Length (413 past the limit), and a
    chunked body, which has none, is a 411 (it could otherwise stream without end)."""
    def chunks():
        yield b'{"recipe": '
        yield b'"icl-heads"}'

    headers = {"Authorization": f"Bearer {ALICE}", "Content-Type": "application/json"}
    got = httpx.post(f"{server.url}/v1/jobs", content=chunks(), headers=headers)
    assert got.status_code == 411, got.text
    big = httpx.post(f"{server.url}/v1/jobs", content=b" " * (2 << 20), headers=headers)
    assert big.status_code == 413


def test_the_home_is_private_and_held_by_one_service(server, tmp_path):
    """The service home is 0700 and its local token 0600; a second service on the same home is
    refused in one line (it would run the same queued jobs twice); the first one is unharmed."""
    import stat

    from editor.service.app import claim_home, local_token

    assert stat.S_IMODE(server.home.stat().st_mode) == 0o700
    second = subprocess.run([sys.executable, "-m", "editor", "serve", "--port", str(server.port + 1), "--home",
                             str(server.home), "--tokens", str(server.tokens)], capture_output=True, text=True,
                            timeout=120)
    assert second.returncode == 2 and second.stderr.count("\n") == 1, second.stderr
    assert "another lmedit service uses" in second.stderr and "pid" in second.stderr
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    home = tmp_path / "fresh-home"
    lock = claim_home(home)
    try:
        local_token(home)
        assert stat.S_IMODE(home.stat().st_mode) == 0o700
        assert stat.S_IMODE((home / "token").stat().st_mode) == 0o600
    finally:
        lock.release()


@pytest.mark.parametrize("argv", [
    ["attribute", "heads", "--n", "8", "--method", "gradient", "--no-specificity", "--top", "5"],
    ["attribute", "patch", "--units", "keys", "--positions", "3", "--method=atp*"],
    ["edit", "--zero-heads", "0.1", "--scale-neurons", "1.2=0.5", "--no-verify"],
    ["export", "gguf", "MODEL_DIR", "--type", "f32"],
])
def test_a_command_line_becomes_the_request_that_runs_it(argv, tiny_dir):
    """`lmedit jobs submit CMD ...`: the options read off a command line, sent as a request, make the
    worker run the same command line (same parsed values)."""
    from editor.service.jobs import _argv, _lookup, options_from_argv, split_command

    argv = [str(tiny_dir) if a == "MODEL_DIR" else a for a in argv]
    command, rest = split_command(argv)
    cmd, ctx = _lookup(command)
    options = options_from_argv(command, rest)
    direct = cmd.make_context(command, list(rest), parent=ctx.parent, resilient_parsing=True).params
    sent = cmd.make_context(command, _argv(cmd, options), parent=ctx.parent, resilient_parsing=True).params
    assert sent == direct


def test_command_options_are_read_by_the_commands_own_definition(tiny_dir):
    """``false`` of an on/off switch is its --no- form (it was dropped, so the default ran); an option
    the command does not have, or a switch given a value, is refused before anything is queued."""
    from editor.errors import UserError
    from editor.service.jobs import validate

    spec = validate({"command": "attribute heads", "options": {"model": str(tiny_dir), "specificity": False,
                                                                "n": 4}})
    assert "--no-specificity" in spec["argv"] and "--specificity" not in spec["argv"]
    spec = validate({"command": "edit", "options": {"model": str(tiny_dir), "zero-heads": "0.1", "verify": False}})
    assert "--no-verify" in spec["argv"]
    for options, message in (({"colour": "red"}, "unknown option 'colour'"),
                             ({"specificity": "no"}, "is a switch"),
                             ({"n": 4, "zero-heads": "0.1"}, "unknown option 'zero-heads'")):
        with pytest.raises(UserError, match=message):
            validate({"command": "attribute heads", "options": {"model": str(tiny_dir), **options}})
    spec = validate({"command": "attribute patch", "options": {"model": str(tiny_dir), "units": "resid",
                                                                "positions": 4, "direction": "denoising"}})
    assert spec["argv"][-6:] == ["--units", "resid", "--positions", "4", "--direction", "denoising"]
    with pytest.raises(UserError, match="give --positions"):  # the CLI's own check, before anything is queued
        validate({"command": "attribute patch", "options": {"model": str(tiny_dir), "units": "resid"}})


@pytest.mark.parametrize("body,cli,message", [
    ({"recipe": "nosuch"}, None, "unknown recipe 'nosuch'"),
    ({"recipe": "icl-heads", "set": {"cut.rank_by": "magic"}}, ["run", "icl-heads", "--set", "cut.rank_by=magic"],
     "rank_by"),
    ({"recipe": "icl-heads", "set": {"colour": "red"}}, ["run", "icl-heads", "--set", "colour=red"], "unknown key"),
    ({"recipe": "icl-heads", "set": {"model": "./no/such/dir"}}, ["run", "icl-heads", "--set", "model=./no/such/dir"],
     "no such model directory"),
    ({"recipe": "recipe: icl-heads\nname: x\nseed: [\n"}, None, "not valid YAML"),
    ({"command": "prune", "options": {"retain": "abc", "out": "x"}}, None, "set by the service"),
    ({"command": "prune", "options": {"retain": "abc"}}, ["prune", "--retain", "abc", "--out", "x"],
     "Invalid value for '--retain'"),
    ({"command": "attribute heads", "options": {"method": "magic"}}, ["attribute", "heads", "--method", "magic"],
     "Invalid value for '--method'"),
    # checks the command makes in its own body, before any model loads (were 202, then a failed job)
    ({"command": "edit", "options": {"zero-heads": "3:1"}}, ["edit", "--zero-heads", "3:1"], "bad head '3:1'"),
    ({"command": "attribute heads", "options": {"control": "icl", "specificity": False}},
     ["attribute", "heads", "--control", "icl", "--no-specificity"], "--no-specificity"),
    ({"command": "evaluate", "options": {"data": "nosuch"}}, ["evaluate", "--data", "nosuch"], "unknown task"),
    ({"recipe": "recipe: icl-heads\nname: &n x\nmodel: *n\n"}, None, "aliases (*name) are not allowed"),
    ({"command": "rm -rf"}, None, "unknown command"),
    ({"recipe": "icl-heads", "command": "prune"}, None, "exactly one"),
    ({"recipe": "icl-heads", "resources": {"gpus": -1}}, None, "resources.gpus"),
])
def test_bad_requests_are_422_with_the_cli_message_and_queue_nothing(server, body, cli, message, tmp_path, monkeypatch):
    bob = Client(server.url, BOB)
    before = len(bob.jobs())
    got = httpx.post(f"{server.url}/v1/jobs", json=body, headers={"Authorization": f"Bearer {BOB}"})
    assert got.status_code == 422, got.text
    detail = got.json()["detail"]
    assert message in detail and "\n" not in detail
    if cli:  # the CLI says the same thing
        monkeypatch.chdir(tmp_path)
        result = CliRunner().invoke(main, cli, prog_name="lmedit")
        assert result.exit_code == 2 and result.stderr.strip() == f"Error: {detail}", (result.stderr, detail)
    assert len(bob.jobs()) == before
    assert httpx.post(f"{server.url}/v1/jobs", content=b"{not json", headers={"Authorization": f"Bearer {BOB}"}
                      ).status_code == 422
    huge = httpx.post(f"{server.url}/v1/jobs", content=b"x" * (2 << 20), headers={"Authorization": f"Bearer {BOB}"})
    assert huge.status_code == 413


def test_queue_limits_cancel_and_a_killed_worker(tmp_path, arith_dir):
    server = Server(tmp_path / "home", "--workers", "1", "--max-queued", "1").start()
    try:
        client = Client(server.url, ALICE)
        running = client.submit(**prune_job(arith_dir, **{"prune.max_rounds": 8}))
        wait_for(client, running, ("running",))
        queued = client.submit(**prune_job(arith_dir, seed=1))
        full = httpx.post(f"{server.url}/v1/jobs", json=prune_job(arith_dir, seed=2),
                          headers={"Authorization": f"Bearer {ALICE}"})
        assert full.status_code == 429 and int(full.headers["retry-after"]) > 0
        page = httpx.Client(base_url=server.url, follow_redirects=True)
        listed = page.get("/", params={"token": ALICE}).text  # signed in: the cookie rides along from here
        assert f"/ui/jobs/{queued}/cancel" in listed and f"/ui/jobs/{running}/cancel" in listed
        assert page.post(f"/ui/jobs/{queued}/cancel").status_code == 200  # the page's cancel button
        assert client.status(queued)["state"] == "cancelled"
        assert f"/ui/jobs/{queued}/cancel" not in page.get("/").text
        assert page.post("/ui/jobs/nosuch/cancel").status_code == 404
        assert httpx.post(f"{server.url}/ui/jobs/{running}/cancel").status_code == 401  # no cookie, no cancel
        pid = server.worker_pid(running)
        assert pid and alive(pid)
        client.cancel(running)
        assert wait_for(client, running)["state"] == "cancelled"
        assert gone(pid)
        # A worker killed from outside (the OOM killer, say): the job fails with the reason, the service lives on.
        victim = client.submit(**prune_job(arith_dir, seed=3))
        wait_for(client, victim, ("running",))
        os.kill(server.worker_pid(victim), signal.SIGKILL)
        failed = wait_for(client, victim)
        assert failed["state"] == "failed" and "SIGKILL" in failed["error"]
        assert httpx.get(f"{server.url}/healthz").json()["ok"]
        assert client.status(queued)["state"] == "cancelled"
    finally:
        server.stop()


def direct_run(model, out, **settings) -> dict:
    """The prune job's recipe run directly (no service), its JSON summary: the reference a job is held to."""
    sets = sum((["--set", f"{k}={json.dumps(v) if not isinstance(v, str) else v}"]
                for k, v in {"model": str(model), **FAST, **settings}.items()), [])
    direct = subprocess.run([sys.executable, "-m", "editor", "run", "prune", "--out", str(out),
                             "--json", *sets], capture_output=True, text=True)
    assert direct.returncode == 0, direct.stderr
    return json.loads(direct.stdout)


def test_a_killed_service_resumes_its_jobs_to_the_same_artifacts(tmp_path, arith_dir):
    """SIGKILL the service while a job runs: its worker dies with it; on restart the job is still
    listed, resumes from its last finished step, and ends with what an uninterrupted run writes."""
    slower = {"data.n_test": 600}  # the rest of the run must outlast the events' way to this test
    reference = tmp_path / "reference"
    direct = direct_run(arith_dir, reference, **slower)
    server = Server(tmp_path / "home").start()
    try:
        client = Client(server.url, ALICE)
        job = client.submit(**prune_job(arith_dir, **slower))
        for event in client.events(job):  # wait until some steps are done, then kill
            if event["type"] == "step" and event["data"]["step"] == "base_validation" \
                    and event["data"]["status"] == "done":
                break
        assert client.status(job)["state"] == "running"
        worker = server.worker_pid(job)
        server.kill()
        assert gone(worker), "the worker must die with the service"
        server.start()
        client = Client(server.url, ALICE)
        assert job in {j["id"] for j in client.jobs()}
        status = wait_for(client, job)
        assert status["state"] == "succeeded" and status["attempts"] == 2, status
        events = client.history(job)
        assert any("restarted" in json.dumps(e["data"]) for e in events)
        assert any(e["type"] == "step" and e["data"]["status"] == "cached" for e in events)
    finally:
        server.stop()
    run = tmp_path / "home" / "jobs" / job / "run"
    result = json.loads((tmp_path / "home" / "jobs" / job / "result.json").read_text())
    assert results(json.dumps(result["summary"]), run) == results(json.dumps(direct["summary"]), reference)
    assert same_weights(run / "checkpoint", reference / "checkpoint")
    assert not [p for p in run.rglob("*") if ".tmp-" in p.name]


def test_refuses_a_public_address_without_tokens(tmp_path):
    got = CliRunner().invoke(main, ["serve", "--host", "0.0.0.0", "--home", str(tmp_path / "h")])
    assert got.exit_code == 2 and "needs --tokens" in got.stderr
    bad = tmp_path / "tokens.txt"
    bad.write_text("alice short\n")
    got = CliRunner().invoke(main, ["serve", "--tokens", str(bad), "--home", str(tmp_path / "h")])
    assert got.exit_code == 2 and "shorter than 16" in got.stderr


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (make test installs it where it can)")
def test_the_web_page_in_headless_chromium(server, arith_dir, tmp_path):
    client = Client(server.url, ALICE)
    job = client.submit(recipe="prune", set={"model": str(arith_dir), **FAST, "prune.max_rounds": 1})
    wait_for(client, job)

    def dom(url):
        return subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000", "--dump-dom",
                               url], capture_output=True, text=True, timeout=120).stdout

    signed_in = dom(f"{server.url}/?token={ALICE}")
    assert f"data-job='{job}'" in signed_in.replace('"', "'") and "jobs of alice" in signed_in
    assert "report.html" in signed_in and "<form" in signed_in
    assert BOB not in signed_in and ALICE not in signed_in  # the token is not echoed into the page
    assert "sign in" in dom(f"{server.url}/?token=wrong-token-000000000")
    assert "activity" not in signed_in or "running" in signed_in


def test_the_page_links_what_a_job_reported_and_the_docs_work_offline(server, tiny_dir, tmp_path):
    """A report link only where the job wrote a report; the API reference needs no network (no CDN);
    the sign-in page says where the token is."""
    import json

    from test_patching import PAIRS

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": e.prompt, "answer": e.answer, **e.meta}) + "\n" for e in PAIRS))
    client = Client(server.url, ALICE)
    submitted = CliRunner().invoke(main, ["jobs", "--server", server.url, "--token", ALICE, "submit", "attribute",
                                          "patch", "--model", str(tiny_dir), "--data", str(data), "--method=gradient"])
    assert submitted.exit_code == 0, submitted.output  # a command, as a user would type it
    job = submitted.stdout.strip()
    assert client.status(job)["spec"]["command"] == "attribute patch"
    assert wait_for(client, job)["state"] == "succeeded"
    page = httpx.Client(base_url=server.url, follow_redirects=True)
    listed = page.get("/", params={"token": ALICE}).text
    row = listed[listed.index(f"data-job='{job}'"):]
    row = row[:row.index("</tr>")]
    assert "report" not in row.replace("report.html", "") and "data-kind='results'" in row
    assert "cancel" not in row
    docs = page.get("/docs").text
    assert "/v1/jobs" in docs and "cdn" not in docs.lower() and "<script" not in docs.lower()
    signin = httpx.get(f"{server.url}/").text
    assert "sign in" in signin and "--tokens file" in signin  # this server has a tokens file
    from editor.service.page import _login

    local = _login("", "/home/me/.cache/lmedit/service/token").body.decode()  # `lmedit serve` without --tokens
    assert "/home/me/.cache/lmedit/service/token" in local


@pytest.mark.slow
def test_the_ray_executor_end_to_end(tmp_path, arith_dir):
    """A local Ray instance started here; the service submits each job as a Ray task with the job's
    resources; the artifacts land in the service home and equal the local executor's."""
    with local_ray() as address:
        _ray_jobs(tmp_path, arith_dir, address)


def _ray_jobs(tmp_path, arith_dir, address):
    server = Server(tmp_path / "home", "--executor", "ray", "--ray-address", address, "--workers", "2")
    local = Server(tmp_path / "local-home")
    try:
        server.start()
        local.start()
        client, other = Client(server.url, ALICE), Client(local.url, ALICE)
        job = client.submit(**prune_job(arith_dir), resources={"cpus": 1})
        ref = other.submit(**prune_job(arith_dir))
        assert wait_for(client, job)["state"] == "succeeded" and wait_for(other, ref)["state"] == "succeeded"
        with sqlite3.connect(server.home / "jobs.sqlite3") as db:
            (worker,) = db.execute("SELECT worker FROM jobs WHERE id = ?", (job,)).fetchone()
        assert worker.startswith("ray:")
        assert any(e["type"] == "step" for e in client.history(job))  # progress flows from Ray workers too
        assert same_weights(server.home / "jobs" / job / "run" / "checkpoint",
                            local.home / "jobs" / ref / "run" / "checkpoint")
        # Cancel reaches a Ray task too.
        long = client.submit(**prune_job(arith_dir, **{"data.n_test": 2000}))
        wait_for(client, long, ("running",))
        client.cancel(long)
        assert wait_for(client, long)["state"] == "cancelled"
    finally:
        server.stop()
        local.stop()


def test_a_job_whose_worker_cannot_start_fails_once_with_the_reason(tmp_path):
    """A job folder that cannot be made (here: a file in its place) fails that job with one line;
    the scheduler does not retry it on every tick, and the next job still runs."""
    from editor.service.runner import LocalExecutor, Scheduler
    from editor.service.store import JobStore

    store = JobStore(tmp_path / "jobs.sqlite3")
    spec = {"kind": "command", "argv": ["models", "list"]}
    broken, _ = store.create("alice", spec, 10, 10)
    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / broken).write_text("in the way")
    scheduler = Scheduler(store, tmp_path, LocalExecutor(), workers=1)
    scheduler.tick()
    job = store.get(broken)
    assert job.state == "failed" and "could not start the job's worker" in job.error
    scheduler.tick()  # not retried: no second state event
    events = [e for e in store.events(broken) if e["type"] == "state"]
    assert [e["data"]["state"] for e in events].count("failed") == 1
