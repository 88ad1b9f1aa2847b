"""--fresh deletes only a run directory of ours (issue: a mistyped --out must never cost user data)."""

import pytest
from click.testing import CliRunner

from editor.cli import main
from editor.errors import UserError
from editor.recipes.run import Run

RECIPE = {"recipe": "icl-heads", "name": "x"}


def test_fresh_refuses_a_directory_that_is_not_a_run(tmp_path):
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "thesis.txt").write_text("years of work")
    with pytest.raises(UserError, match="not an lmedit run directory"):
        Run.open(notes, RECIPE, fresh=True, log=lambda _m: None)
    assert (notes / "thesis.txt").read_text() == "years of work"


def test_fresh_refuses_a_run_directory_holding_foreign_files(tmp_path):
    out = tmp_path / "run"
    Run.open(out, RECIPE, log=lambda _m: None).close()
    (out / "report.html").write_text("ours")
    (out / "my-notes.md").write_text("theirs")
    with pytest.raises(UserError, match=r"holds files a run does not write \(my-notes.md\)"):
        Run.open(out, RECIPE, fresh=True, log=lambda _m: None)
    assert (out / "my-notes.md").is_file()
    (out / "my-notes.md").unlink()
    (out / "evaluation.md").write_text("ours too")
    Run.open(out, {**RECIPE, "seed": 1}, fresh=True, log=lambda _m: None).close()  # a real run dir: wiped, reopened
    assert not (out / "report.html").exists() and (out / "steps" / "recipe.sha256").is_file()


def test_cli_fresh_on_a_foreign_directory_is_one_line(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "keep.txt").write_text("x")
    result = CliRunner().invoke(main, ["run", "recipes/icl-heads.yaml", "--out", str(home), "--fresh"])
    assert result.exit_code == 2 and "not an lmedit run directory" in result.output
    assert "Traceback" not in result.output and (home / "keep.txt").is_file()


def test_two_writers_of_one_checkpoint_folder_never_both_write(tmp_path, tiny_dir):
    """While one process holds an output folder, `lmedit edit --force` into it fails at once, naming
    the holder, and leaves the folder and no temporary copy behind."""
    import os
    import subprocess
    import sys

    from editor.io import DirectoryLock

    out = tmp_path / "ckpt"
    out.mkdir()
    (out / "edit_manifest.json").write_text('{"format": "lmedit-checkpoint"}')  # ours, so --force may replace it
    (out / "keep.txt").write_text("first writer's")
    lock = DirectoryLock(out, beside=True).acquire()
    try:
        got = subprocess.run([sys.executable, "-m", "editor", "edit", "--model", str(tiny_dir), "--zero-heads", "0.1",
                              "--out", str(out), "--force", "--no-verify"], capture_output=True, text=True, timeout=300)
    finally:
        lock.release()
    assert got.returncode == 2 and f"in use by pid {os.getpid()}" in got.stderr, got.stderr
    assert (out / "keep.txt").read_text() == "first writer's"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_attribute_and_evaluate_outputs_are_locked_while_written(tmp_path, tiny_dir):
    """A second process writing results into a folder that another holds fails in one line, naming
    the holder, and writes nothing there; with the folder free, --force overwrites earlier results."""
    import os
    import subprocess
    import sys

    from editor.io import DirectoryLock

    out = tmp_path / "results"
    commands = [["attribute", "heads", "--model", str(tiny_dir), "--n", "4", "--out", str(out)],
                ["evaluate", "--model", str(tiny_dir), "--data", "guard", "--set", "guard.window=64", "--out", str(out)]]
    lock = DirectoryLock(out, beside=True).acquire()
    try:
        for command in commands:
            got = subprocess.run([sys.executable, "-m", "editor", *command], capture_output=True, text=True, timeout=300)
            said = [line for line in got.stderr.splitlines() if not line.startswith("scoring ")]  # the plan ahead
            assert got.returncode == 2 and len(said) == 1, got.stderr
            assert f"in use by pid {os.getpid()}" in got.stderr, got.stderr
    finally:
        lock.release()
    assert not out.exists() or not any(out.iterdir())
    for command in commands:
        runner = CliRunner()
        assert runner.invoke(main, command).exit_code == 0
        again = runner.invoke(main, command)
        assert again.exit_code == 2 and "pass --force" in again.output
        assert runner.invoke(main, [*command, "--force"]).exit_code == 0
