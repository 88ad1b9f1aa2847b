"""Models larger than memory: --device auto with a small --max-memory offloads weights to disk
(accelerate); every score, edit and saved checkpoint equals the in-memory run's."""

import hashlib
import json

import pytest
import torch
from click.testing import CliRunner

import tiny
from editor.attribution.sharded import LocalScorer
from editor.cli import main
from editor.edit.plan import EditPlan
from editor.edit.weights import apply_plan
from editor.errors import UserError
from editor.model.capture import encode
from editor.model.loading import load_model
from editor.model.names import parse_max_memory
from editor.tasks.arithmetic import generate
from same import weights


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny.save_dir(tiny.tiny_model("llama"), tmp_path_factory.mktemp("offload") / "tiny")


def folder_digest(path):
    return {f.name: hashlib.sha256(f.read_bytes()).hexdigest() for f in sorted(path.iterdir()) if f.is_file()}


@pytest.fixture(scope="module")
def both(model_dir):
    """The tiny model in memory and with most of it offloaded to disk."""
    in_memory = load_model(str(model_dir))
    size = sum(p.numel() * p.element_size() for p in in_memory.model.parameters())
    offloaded = load_model(str(model_dir), device="auto", max_memory=f"cpu={size // 4 // 1024}KiB")
    meta = [n for n, p in offloaded.model.named_parameters() if p.device.type == "meta"]
    assert len(meta) > len(list(offloaded.model.parameters())) // 2, "the test needs most weights offloaded"
    return in_memory, offloaded


def close(a, b, tol=1e-5):
    for name in a.columns:
        assert torch.allclose(a.columns[name], b.columns[name], atol=tol, equal_nan=True), name


@pytest.mark.parametrize("op", ["static", "neurons", "scan", "gradient"])
def test_scores_on_an_offloaded_model_equal_the_in_memory_ones(both, op):
    in_memory, offloaded = both
    examples = generate(8, 1, "+-", seed=1)
    run = lambda lm: getattr(LocalScorer(lm.model, lm.tokenizer, 4, False), op)(examples)  # noqa: E731
    close(run(offloaded), run(in_memory))


def test_edits_reach_offloaded_weights_and_restore_bitwise(both):
    in_memory, offloaded = both
    inputs = encode(in_memory.tokenizer, ["12+3=", "7-2="], padding_side="left")
    logits = lambda lm: lm.model(**inputs).logits  # noqa: E731
    plan = EditPlan().zero("head", ["1.0", "2.3"]).scale("neuron", ["2.5", "1.7"], 0.5)
    with torch.no_grad():
        base = logits(offloaded)
        with apply_plan(in_memory.model, plan), apply_plan(offloaded.model, plan):
            edited = logits(offloaded)
            assert (edited - base).abs().max() > 1e-4  # not a silent no-op on meta tensors
            assert torch.allclose(edited, logits(in_memory), atol=1e-5)
        assert torch.equal(logits(offloaded), base)  # restored


def test_an_edited_offloaded_model_saves_the_in_memory_checkpoint(both, model_dir, tmp_path):
    before = folder_digest(model_dir)
    runner = CliRunner()
    common = ["edit", "-m", str(model_dir), "--zero-heads", "1.0,2.3", "--zero-neurons", "2.5"]
    r = runner.invoke(main, common + ["--out", str(tmp_path / "memory")])
    assert r.exit_code == 0, r.output
    r = runner.invoke(main, common + ["--out", str(tmp_path / "offloaded"), "--device", "auto", "--max-memory", "cpu=8KiB"])
    assert r.exit_code == 0, r.output
    a, b = weights(tmp_path / "memory"), weights(tmp_path / "offloaded")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert folder_digest(model_dir) == before  # the user's checkpoint was only read


def same_scores_offloaded(command: list[str], limit: str, tmp_path, tol: float) -> None:
    """``lmedit attribute neurons`` in memory and with ``--max-memory limit``: equal columns."""
    runner = CliRunner()
    assert runner.invoke(main, command + ["--out", str(tmp_path / "a")]).exit_code == 0
    r = runner.invoke(main, command + ["--out", str(tmp_path / "b"), "--device", "auto", "--max-memory", limit])
    assert r.exit_code == 0, r.output
    a, b = (json.loads((tmp_path / d / "neurons_logprob.json").read_text())["columns"] for d in "ab")
    for name in a:
        assert torch.allclose(torch.tensor(a[name]), torch.tensor(b[name]), atol=tol), name


def test_cli_scores_with_offload_equal_in_memory(model_dir, tmp_path):
    same_scores_offloaded(["attribute", "neurons", "-m", str(model_dir), "--n", "8", "--batch-size", "4"], "cpu=8KiB",
                          tmp_path, 1e-5)


def test_shrinking_and_training_refuse_an_offloaded_model(both):
    from editor.edit.shrink import Removal, shrink
    from editor.lora.train import LoraSettings, train_lora

    _, offloaded = both
    with pytest.raises(UserError, match="shrinking needs the whole model in memory"):
        shrink(offloaded.model, Removal())
    with pytest.raises(UserError, match="LoRA training needs the whole model in memory"):
        train_lora(offloaded.model, offloaded.tokenizer, LoraSettings(steps=1), generate(4, 1, "+", seed=0))


def test_memory_limits_are_checked():
    assert parse_max_memory("cpu=2GiB, 0=20GB") == {"cpu": "2GiB", 0: "20GB"}
    for bad in ("cpu", "cpu=lots", "gpu=1GB", "=1GB"):
        with pytest.raises(UserError, match="--max-memory"):
            parse_max_memory(bad)
    with pytest.raises(UserError, match="needs device auto"):
        load_model("smollm2-135m", max_memory="cpu=1GiB")


@pytest.mark.slow
def test_the_default_model_offloaded_scores_and_saves_as_in_memory(tmp_path):
    same_scores_offloaded(["attribute", "neurons", "--n", "8", "--batch-size", "4", "--layers", "28-29"], "cpu=200MiB",
                          tmp_path, 1e-4)
    runner = CliRunner()
    common = ["edit", "--zero-heads", "3.1,20.4", "--zero-neurons", "29.100"]
    assert runner.invoke(main, common + ["--out", str(tmp_path / "memory")]).exit_code == 0
    r = runner.invoke(main, common + ["--out", str(tmp_path / "offloaded"), "--device", "auto", "--max-memory", "cpu=200MiB"])
    assert r.exit_code == 0, r.output
    x, y = weights(tmp_path / "memory"), weights(tmp_path / "offloaded")
    assert x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)
