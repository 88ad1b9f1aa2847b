"""Checkpoints: plain transformers reloads them to identical logits; writes are atomic."""

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

import tiny
from editor.edit.checkpoint import MANIFEST, read_manifest, reload_difference, save_checkpoint
from editor.edit.plan import EditPlan
from editor.edit.weights import apply_plan
from editor.errors import UserError


def _edited(family):
    model = tiny.tiny_model(family)
    plan = EditPlan().zero("head", ["0.1", "2.0"]).scale("neuron", ["1.3"], 0.5).keep_only("neuron", 2, 2, ["2.1"])
    apply_plan(model, plan)
    return model, plan


def test_reload_gives_identical_logits_for_every_family(family, tmp_path, tokenizer, batch):
    model, plan = _edited(family)
    out = save_checkpoint(model, tokenizer, tmp_path / "ckpt", plan=plan, source={"model": family})
    reloaded = AutoModelForCausalLM.from_pretrained(out, attn_implementation="eager").eval()
    with torch.no_grad():
        mine, theirs = model(**batch).logits, reloaded(**batch).logits
    assert torch.equal(mine, theirs)
    manifest = read_manifest(out)
    assert manifest["plan"] == plan.to_json()
    assert manifest["source"] == {"model": family}
    assert set(manifest["weights_sha256"]) == {"model.safetensors"}


@pytest.mark.parametrize("family", ["gpt2", "gemma2"])
def test_fresh_process_plain_transformers_reload(family, tmp_path, tokenizer, batch):
    """The reload runs in a fresh interpreter that never imports lmedit (it asserts so)."""
    model, plan = _edited(family)
    out = save_checkpoint(model, tokenizer, tmp_path / "ckpt", plan=plan)
    assert reload_difference(model, out, batch) == 0.0
    # and the check can fail: a different model reloads to different logits
    other = tiny.tiny_model(family, seed=1)
    assert reload_difference(other, out, batch) > 0


def test_existing_output_needs_force(tmp_path, tokenizer):
    model, plan = _edited("llama")
    out = save_checkpoint(model, tokenizer, tmp_path / "ckpt", plan=plan)
    with pytest.raises(UserError, match="already exists"):
        save_checkpoint(model, tokenizer, out, plan=plan)
    (out / "stale.txt").write_text("old")
    save_checkpoint(model, tokenizer, out, plan=plan, force=True)
    assert not (out / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]  # no temp or old dirs left


def test_interrupted_save_leaves_nothing(tmp_path, tokenizer, monkeypatch):
    model, plan = _edited("llama")

    def boom(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tokenizer, "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, tokenizer, tmp_path / "ckpt", plan=plan)
    assert list(tmp_path.iterdir()) == []
    # an interrupted overwrite keeps the old checkpoint intact
    monkeypatch.undo()
    out = save_checkpoint(model, tokenizer, tmp_path / "ckpt", plan=plan, scores={"3.1": 0.5})
    before = (out / MANIFEST).read_text()
    monkeypatch.setattr(tokenizer, "save_pretrained", boom)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(model, tokenizer, out, plan=EditPlan(), force=True)
    assert (out / MANIFEST).read_text() == before
    assert json.loads(before)["scores"] == {"3.1": 0.5}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt"]


def test_peft_model_must_be_merged(tmp_path, tokenizer):
    from peft import LoraConfig, get_peft_model

    model = get_peft_model(tiny.tiny_model("llama"), LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(UserError, match="merge_and_unload"):
        save_checkpoint(model, tokenizer, tmp_path / "ckpt")


def test_checkpoint_carries_a_model_card(tmp_path, tokenizer):
    """README.md: where the model came from, every edit, the recorded results, how to load it."""
    model, plan = _edited("llama")
    plan.note = "zero the heads that copy the answer"
    rows = [{"model": "base", "bias_pronoun": 1.2}, {"model": "gradient", "bias_pronoun": 0.7}]
    out = save_checkpoint(model, tokenizer, tmp_path / "debiased", plan=plan, source={"model": "tiny-llama"},
                          extra={"debias": {"test": rows, "verdict": "Bias falls 42%."}})
    card = (out / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers")
    assert "# debiased: an edited tiny-llama" in card and "zero the heads that copy the answer" in card
    assert "4 edits: zero head 0.1, zero head 2.0, scale x0.5 neuron 1.3, keep only 1 neurons in layers 2-2" in card
    assert "| gradient | 0.7 |" in card and "Bias falls 42%." in card
    assert 'AutoModelForCausalLM.from_pretrained("debiased")' in card
    assert set(read_manifest(out)["weights_sha256"]) == {"model.safetensors"}  # the card is not a weight file
