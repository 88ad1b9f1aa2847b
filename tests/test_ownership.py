"""One ownership rule for every writer: --force and --fresh replace only a missing path, an empty
directory or what lmedit provably wrote; a user's folder, the current directory and anything above
it are refused in one line, before any model loads, and nothing is deleted.
`lmedit verify` checks every claim the manifest makes about the checkpoint's own files."""

import json
import os
import subprocess
import sys

import pytest
from click.testing import CliRunner

from editor.cli import main
from editor.edit.checkpoint import MANIFEST, save_checkpoint
from editor.errors import UserError
from editor.io import check_replaceable

import tiny


def snapshot(root):
    return {str(p.relative_to(root)): (p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(root.rglob("*"))}


def one_error_line(result, code=2):
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == code, result.output
    assert len(lines) == 1 and lines[0].startswith("Error:") and "Traceback" not in result.output, result.output
    return lines[0]


@pytest.fixture
def user_folder(tmp_path):
    folder = tmp_path / "thesis"
    folder.mkdir()
    (folder / "chapter1.tex").write_text("years of work")
    (folder / "figures").mkdir()
    (folder / "figures" / "plot.pdf").write_bytes(b"%PDF")
    return folder


def edit(model, out, *extra):
    return ["edit", "--model", str(model), "--zero-heads", "0.1", "--out", str(out), "--no-verify", *extra]


def test_edit_force_refuses_a_users_folder_and_deletes_nothing(tmp_path, tiny_dir, user_folder):
    before = snapshot(tmp_path)
    line = one_error_line(CliRunner().invoke(main, edit(tiny_dir, user_folder, "--force")))
    assert "refusing to replace" in line and "chapter1.tex" in line and "not an lmedit checkpoint" in line
    assert snapshot(tmp_path) == before


def test_edit_force_replaces_empty_folders_and_its_own_checkpoints(tmp_path, tiny_dir):
    out = tmp_path / "ckpt"
    out.mkdir()
    runner = CliRunner()
    assert runner.invoke(main, edit(tiny_dir, out, "--force")).exit_code == 0  # empty: fine
    first = json.loads((out / MANIFEST).read_text())["created"]
    assert runner.invoke(main, edit(tiny_dir, out)).exit_code == 2  # ours, but no --force
    result = runner.invoke(main, ["edit", "--model", str(tiny_dir), "--zero-heads", "1.2", "--out", str(out),
                                  "--no-verify", "--force"])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["plan"]["edits"][0]["target"] == "1.2" and manifest["created"] >= first


@pytest.mark.parametrize("where", [".", "..", "~"])
def test_the_current_directory_and_above_are_never_replaced(tmp_path, tiny_dir, monkeypatch, where):
    work = tmp_path / "a" / "b"
    work.mkdir(parents=True)
    (work / MANIFEST).write_text(json.dumps({"format": "lmedit-checkpoint"}))  # even when it looks like ours
    monkeypatch.chdir(work)
    before = snapshot(tmp_path)
    line = one_error_line(CliRunner().invoke(main, edit(tiny_dir, os.path.expanduser(where), "--force")))
    assert "refusing to replace" in line
    assert snapshot(tmp_path) == before


def test_a_symlink_is_not_followed_or_replaced(tmp_path, tiny_dir, user_folder):
    link = tmp_path / "link"
    link.symlink_to(user_folder, target_is_directory=True)
    before = snapshot(tmp_path)
    line = one_error_line(CliRunner().invoke(main, edit(tiny_dir, link, "--force")))
    assert "symbolic link" in line and snapshot(tmp_path) == before


def test_lora_train_force_refuses_a_users_folder_before_training(tmp_path, tiny_dir, user_folder):
    before = snapshot(tmp_path)
    line = one_error_line(CliRunner().invoke(main, ["lora", "train", "--model", str(tiny_dir), "--layers", "0",
                                                    "--out", str(user_folder), "--force"]))
    assert "not an lmedit LoRA output" in line and snapshot(tmp_path) == before


def test_attribute_force_overwrites_only_its_own_results(tmp_path, tiny_dir):
    out = tmp_path / "results"
    out.mkdir()
    (out / "heads_gradient.json").write_text('{"my": "own notes"}')
    command = ["attribute", "heads", "--method", "gradient", "--model", str(tiny_dir), "--n", "4", "--out", str(out),
               "--no-specificity"]
    before = snapshot(tmp_path)
    line = one_error_line(CliRunner().invoke(main, [*command, "--force"]))
    assert "not an lmedit result file" in line and snapshot(tmp_path) == before
    (out / "heads_gradient.json").unlink()
    runner = CliRunner()
    assert runner.invoke(main, command).exit_code == 0
    assert runner.invoke(main, [*command, "--force"]).exit_code == 0  # its own result: overwritten


def test_export_force_refuses_a_file_it_did_not_write(tmp_path, tiny_dir):
    from editor.edit.gguf import check_export_out, is_export

    mine = tmp_path / "model.gguf"
    mine.write_bytes(b"GGUF" + bytes(64))
    with pytest.raises(UserError, match="not a GGUF exported by lmedit"):
        check_export_out(mine, force=True)
    with pytest.raises(UserError, match="pass --force"):
        check_export_out(mine, force=False)
    assert not is_export(mine) and mine.read_bytes()[:4] == b"GGUF"


def test_fresh_refuses_the_current_directory_even_as_a_run(tmp_path, monkeypatch):
    from editor.recipes.run import Run

    run = tmp_path / "run"
    Run.open(run, {"recipe": "icl-heads", "name": "x"}, log=lambda _m: None).close()
    monkeypatch.chdir(run)
    with pytest.raises(UserError, match="current directory"):
        Run.open(run, {"recipe": "icl-heads", "name": "x"}, fresh=True, log=lambda _m: None)
    assert (run / "steps" / "recipe.sha256").is_file()


def test_the_rule_is_checked_again_under_the_lock(tmp_path):
    """What appears in ``out`` between the first check and the write (another program, a user) is not
    deleted either: save_checkpoint re-checks inside the lock."""
    model = tiny.tiny_model("llama")
    out = tmp_path / "late"
    out.mkdir()
    (out / "arrived-meanwhile.txt").write_text("x")
    with pytest.raises(UserError, match="arrived-meanwhile.txt"):
        save_checkpoint(model, None, out, force=True)
    assert (out / "arrived-meanwhile.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["late"]  # no temporary left beside it


def test_check_replaceable_on_files_and_directories(tmp_path):
    check_replaceable(tmp_path / "missing", lambda p: False, "x")
    (tmp_path / "empty").mkdir()
    check_replaceable(tmp_path / "empty", lambda p: False, "x")
    (tmp_path / "file").write_text("x")
    with pytest.raises(UserError, match="it is a file, not x"):
        check_replaceable(tmp_path / "file", lambda p: False, "x")
    check_replaceable(tmp_path / "file", lambda p: True, "x")


# verify: every claim of the manifest --------------------------------------------------------------

@pytest.fixture
def checkpoint(tmp_path, tiny_dir):
    out = tmp_path / "ckpt"
    assert CliRunner().invoke(main, edit(tiny_dir, out)).exit_code == 0
    return out


def test_verify_catches_weights_that_are_not_the_manifests(checkpoint):
    weights = checkpoint / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1  # one bit of one weight
    weights.write_bytes(bytes(data))
    line = one_error_line(CliRunner().invoke(main, ["verify", str(checkpoint)]), code=1)  # a failed check
    assert "model.safetensors does not match the manifest's sha256" in line


def test_verify_catches_an_unrecorded_weight_file(checkpoint):
    (checkpoint / "extra.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    line = one_error_line(CliRunner().invoke(main, ["verify", str(checkpoint)]), code=1)
    assert "extra.safetensors is not recorded" in line


@pytest.mark.parametrize("field", ["plan", "weights_sha256", "source", "format"])
def test_verify_of_a_manifest_missing_a_field_is_one_line(checkpoint, field):
    manifest = json.loads((checkpoint / MANIFEST).read_text())
    del manifest[field]
    (checkpoint / MANIFEST).write_text(json.dumps(manifest))
    line = one_error_line(CliRunner().invoke(main, ["verify", str(checkpoint)]))
    assert field in line


def test_verify_without_a_manifest_is_one_line(checkpoint):
    (checkpoint / MANIFEST).unlink()
    assert "no edit_manifest.json" in one_error_line(CliRunner().invoke(main, ["verify", str(checkpoint)]))


def test_a_real_process_refusing_force_prints_one_line(tmp_path, tiny_dir, user_folder):
    """The same refusal from a real `lmedit` process: what it prints at start-up and exit included."""
    before = snapshot(tmp_path)
    got = subprocess.run([sys.executable, "-m", "editor", *edit(tiny_dir, user_folder, "--force")],
                         capture_output=True, text=True, timeout=300)
    assert got.returncode == 2 and got.stderr.count("\n") == 1 and got.stderr.startswith("Error:"), got.stderr
    assert snapshot(tmp_path) == before


def test_a_full_disk_during_a_save_leaves_the_old_checkpoint_and_says_so(tmp_path, tiny_dir):
    """A write limit (RLIMIT_FSIZE: the kernel refuses to grow any file past 30 kB, as a full disk
    refuses a write) hits the 115 kB weights file half-way: one line, the earlier checkpoint intact,
    no temporary left beside it."""
    import resource

    out = tmp_path / "ckpt"
    assert CliRunner().invoke(main, edit(tiny_dir, out)).exit_code == 0
    before = snapshot(tmp_path)

    def limit():
        resource.setrlimit(resource.RLIMIT_FSIZE, (30_000, 30_000))

    got = subprocess.run([sys.executable, "-m", "editor", "edit", "--model", str(tiny_dir), "--zero-heads", "1.1",
                          "--out", str(out), "--no-verify", "--force"], preexec_fn=limit, capture_output=True,
                         text=True, timeout=300)
    assert got.returncode == 2 and got.stderr.count("\n") == 1, got.stderr
    assert "disk is full" in got.stderr and "is as it was" in got.stderr
    assert snapshot(tmp_path) == before
