"""``lmedit evaluate`` on a tiny local model: one model, a checkpoint against its base, user errors."""

import json

from click.testing import CliRunner

from editor.cli import main

SMALL = ["--set", "arithmetic.n=6", "--set", "icl.n=4", "--set", "gender.templates=0"]


def run(*args):
    return CliRunner().invoke(main, ["--quiet", *(str(a) for a in args)])


def test_evaluate_one_model(tiny_dir, tmp_path):
    out = tmp_path / "eval"
    result = run("evaluate", "--model", tiny_dir, "--data", "arithmetic,guard", *SMALL, "--out", out)
    assert result.exit_code == 0, result.output
    assert "token_accuracy" in result.output and "perplexity" in result.output and "before" not in result.output
    data = json.loads((out / "evaluation.json").read_text())
    assert set(data["tasks"]) == {"arithmetic", "guard"}
    assert data["tasks"]["arithmetic"]["measures"]["exact_match"]["n"] == 6
    assert (out / "evaluation.md").read_text().startswith("# Evaluation of")


def test_n_is_the_prompts_per_task_for_built_in_tasks_and_files(tiny_dir, tmp_path):
    """--n means what it means on attribute: how many prompts; here per task, a file's first N rows;
    a task's own TASK.n setting wins."""
    rows = tmp_path / "sums.jsonl"
    rows.write_text("".join(json.dumps({"prompt": f"{a} + 1 = ", "answer": str(a + 1)}) + "\n" for a in range(8)))
    out = tmp_path / "eval"
    result = run("evaluate", "--model", tiny_dir, "--data", "arithmetic,icl", "--data", rows, "--n", "5",
                 "--set", "icl.n=4", "--out", out)
    assert result.exit_code == 0, result.output
    tasks = json.loads((out / "evaluation.json").read_text())["tasks"]
    assert tasks["arithmetic"]["measures"]["exact_match"]["n"] == 5
    assert tasks["sums"]["measures"]["exact_match"]["n"] == 5
    assert {m["n"] for m in tasks["icl"]["measures"].values() if "n" in m} == {4}


def test_checkpoint_is_compared_with_the_base_in_its_manifest(tiny_dir, tmp_path):
    ck = tmp_path / "ck"
    assert run("edit", "--model", tiny_dir, "--zero-heads", "0.1,2.3", "--out", ck, "--no-verify").exit_code == 0
    out = tmp_path / "eval"
    result = run("evaluate", "--model", ck, "--data", "guard,icl", *SMALL, "--out", out)
    assert result.exit_code == 0, result.output
    assert "base named in the manifest" in result.output and "change" in result.output
    data = json.loads((out / "evaluation.json").read_text())
    assert data["before"]["model"] == str(tiny_dir) and data["after"]["model"] == str(ck)
    assert data["changes"]["guard"]["top1_agreement"]["value"] < 0
    alone = run("evaluate", "--model", ck, "--data", "guard", "--alone", "--out", tmp_path / "alone")
    assert alone.exit_code == 0 and "change" not in alone.output


def test_user_errors_are_one_line(tiny_dir):
    cases = [(["--set", "arithmetic.digit=2"], "has no setting 'digit'"),
             (["--set", "digits"], "write TASK.KEY=VALUE"),
             (["--data", "poetry"], "unknown task"),
             (["--against", tiny_dir, "--alone"], "exclude each other"),
             (["--set", "arithmetic.digits=5", "--data", "arithmetic"], "arithmetic.digits: 1-3")]
    for extra, message in cases:
        result = run("evaluate", "--model", tiny_dir, *extra)
        assert result.exit_code == 2, (extra, result.output)
        assert "Error: " in result.output and message in result.output and "Traceback" not in result.output
