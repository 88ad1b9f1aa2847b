"""Structured run events (editor/events.py): what a watcher reads instead of log text."""

import json

import pytest
from click.testing import CliRunner

import tiny
from editor.cli import main
from editor.events import ENV

FAST = ["batch_size=16", "data.n_score=16", "data.n_val=16", "data.n_test=16", "data.n_train=16",
        "data.formats=[[4, 1]]", "data.heldout_formats=[[4, 2]]", "data.n_heldout=8", "data.n_general=4",
        "prune.max_rounds=1", "baselines=[]", "recover.method=none"]


def read(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


@pytest.fixture
def events(tmp_path, monkeypatch):
    path = tmp_path / "events.jsonl"
    monkeypatch.setenv(ENV, str(path))
    return path


def test_a_refused_command_reports_its_error_line(events, tmp_path):
    got = CliRunner().invoke(main, ["edit", "--model", str(tmp_path / "missing"), "--zero-heads", "0.1"])
    assert got.exit_code == 2
    line = got.stderr.strip()
    assert [e["event"] for e in read(events)] == ["error"]
    assert f"Error: {read(events)[0]['line']}" == line


def test_a_recipe_run_reports_plan_steps_progress_and_artifacts(events, tmp_path):
    from editor.recipes import run_recipe

    model = tiny.save_dir(tiny.arithmetic_model("llama"), tmp_path / "model")
    out = tmp_path / "run"
    run_recipe("recipes/prune.yaml", [f"model={model}", *FAST], log=lambda _m: None, out=out)
    got = read(events)
    plan = [e for e in got if e["event"] == "plan"]
    assert len(plan) == 1
    steps = plan[0]["steps"]
    top = [e for e in got if e["event"] == "step" and "number" in e]
    # every planned step starts then finishes, in order, numbered as planned
    assert [e["name"] for e in top if e["status"] == "done"] == steps
    assert all(steps[e["number"] - 1] == e["name"] and e["total"] == len(steps) for e in top)
    assert any(e["event"] == "step" and "number" not in e for e in got), "the search's rounds are inner steps"
    progress = [e for e in got if e["event"] == "progress"]
    assert progress and all(0 < e["done"] <= e["total"] and e["label"] for e in progress)
    finished = {e["label"] for e in progress if e["done"] == e["total"]}
    assert "gradient attribution" in finished
    artifacts = {e["kind"]: e["path"] for e in got if e["event"] == "artifact"}
    assert artifacts["report"] == str(out / "report.html") and artifacts["checkpoint"] == str(out / "checkpoint")
    # a second run reads every step from the cache and says so
    events.unlink()
    run_recipe("recipes/prune.yaml", [f"model={model}", *FAST], log=lambda _m: None, out=out)
    again = [e for e in read(events) if e["event"] == "step" and "number" in e]
    assert again and {e["status"] for e in again} == {"cached"}


def test_nothing_is_written_without_a_watcher(tmp_path, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    CliRunner().invoke(main, ["edit", "--model", str(tmp_path / "missing"), "--zero-heads", "0.1"])
    assert list(tmp_path.iterdir()) == []
