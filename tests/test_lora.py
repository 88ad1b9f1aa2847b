"""LoRA on tiny models: training lowers the loss, merged weights equal the adapter, zero shift on itself."""

import json

import pytest
import torch
from click.testing import CliRunner

import tiny
from editor.cli import main
from editor.errors import UserError
from editor.lora.compare import coefficient_shift
from editor.tasks.arithmetic import split_arithmetic
from editor.lora.train import (LoraSettings, heldout_examples, load_adapter, lora_config,
                               train_and_save, train_lora, trained_adapter)
from editor.model.capture import encode
from editor.model.loading import load_model
from editor.tasks.examples import Example

PROMPTS = ["12+3=", "The sum of 4 and 5 is", "Q: What is 7 times 8? A:"]


def test_split_is_disjoint_and_deterministic():
    train, held = split_arithmetic(300, 50, 2, seed=3)
    assert (train, held) == split_arithmetic(300, 50, 2, seed=3)
    key = lambda e: (e.meta["op"], e.meta["a"], e.meta["b"])  # noqa: E731
    assert not {key(e) for e in train} & {key(e) for e in held} and len(train) == 300 and len(held) == 50


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox"])
def test_training_lowers_the_loss_and_merging_is_exact(family, tokenizer):
    model = tiny.tiny_model(family)
    data = [Example(f"{a}+{b}=", str(a + b)) for a, b in [(1, 2), (3, 4), (2, 2), (5, 1)]]
    settings = LoraSettings(layers=[0, 2], steps=40, lr=2e-2, batch_size=4, seed=1)
    peft_model, result = train_lora(model, tokenizer, settings, data, progress=False)
    assert sum(result.losses[-5:]) / 5 < sum(result.losses[:5]) / 5 - 0.1, result.losses
    inputs = encode(tokenizer, PROMPTS, padding_side="left")
    with torch.no_grad():
        adapted = peft_model(**inputs).logits
    merged = peft_model.merge_and_unload()
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, adapted, atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "qwen2"])
def test_answer_loss_equals_the_labelled_loss_with_its_gradients(family, tokenizer):
    """The fast training loss (logits at answer positions only, left padding) is the transformers loss
    of the right-padded labelled batch, in value and in every parameter's gradient."""
    from editor.lora.train import _batch, answer_loss

    model = tiny.tiny_model(family)
    data = [Example(f"{a}+{b}=", str(a * 37 + b)) for a, b in [(1, 2), (30, 4), (2, 22), (5, 1), (7, 7)]]

    def grads(loss):
        model.zero_grad(set_to_none=True)
        loss.backward()
        return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    ref, ref_grads = grads(model(**_batch(tokenizer, data, "cpu"), use_cache=False).loss)
    fast, fast_grads = grads(answer_loss(model, tokenizer, data, "cpu"))
    torch.testing.assert_close(fast, ref, atol=1e-5, rtol=1e-5)
    assert fast_grads.keys() == ref_grads.keys() and ref_grads
    for name in ref_grads:
        torch.testing.assert_close(fast_grads[name], ref_grads[name], atol=1e-5, rtol=1e-4, msg=name)


def test_conv1d_targets_use_fan_in_fan_out():
    model = tiny.tiny_model("gpt2")
    config = lora_config(model, LoraSettings(layers=[1], targets=["q", "v", "o"]))
    assert config.fan_in_fan_out and set(config.target_modules) == {"transformer.h.1.attn.c_attn",
                                                                      "transformer.h.1.attn.c_proj"}
    llama = lora_config(tiny.tiny_model("llama"), LoraSettings(layers=[2], targets=["k", "mlp_out"]))
    assert not llama.fan_in_fan_out and set(llama.target_modules) == {"model.layers.2.self_attn.k_proj",
                                                                       "model.layers.2.mlp.down_proj"}
    with pytest.raises(UserError, match="unknown projection"):
        lora_config(model, LoraSettings(layers=[1], targets=["query"]))


def test_adapter_removed_after_use_leaves_the_base_untouched(tokenizer):
    model = tiny.tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    data = [Example("1+1=", "2"), Example("2+2=", "4")]
    with trained_adapter(model, tokenizer, LoraSettings(layers=[1], steps=3, batch_size=2), data, False) as (pm, _):
        assert any("lora_" in n for n, _ in pm.named_parameters())
    after = model.state_dict()
    assert set(after) == set(before) and all(torch.equal(before[k], after[k]) for k in before)


def test_comparing_a_model_with_itself_gives_zero_shift(tokenizer):
    _, held = split_arithmetic(20, 6, 1, seed=0)
    base = tiny.tiny_model("llama")
    shift = coefficient_shift(base, base, tokenizer, held, progress=False)
    assert all(r["increase"] == 0 and r["relative_increase"] == 0 for r in shift.rows)
    assert all(a["increase"] == 0 and a["relative_increase"] == 0 and a["magnitude_change"] == 0 for a in shift.averages)
    assert shift.accuracy["base"].value == shift.accuracy["lora"].value
    # A fresh adapter starts as the identity (LoRA's B is zero): the same through disable_adapter.
    from peft import get_peft_model

    peft_model = get_peft_model(tiny.tiny_model("llama"), lora_config(base, LoraSettings(layers=[0, 1])))
    shift = coefficient_shift(None, peft_model, tokenizer, held, progress=False)
    assert all(r["increase"] == 0 for r in shift.rows)


def test_train_and_save_then_compare(tiny_dir, tmp_path, tokenizer):
    out = tmp_path / "lora"
    settings = LoraSettings(layers=[1], steps=6, lr=1e-2, batch_size=4, n_train=24, n_eval=8, digits=1)
    summary = train_and_save(load_model(str(tiny_dir)), settings, out, progress=False, log=lambda _m: None)
    assert (out / "adapter" / "adapter_model.safetensors").is_file() and (out / "adapter" / "adapter_config.json").is_file()
    manifest = json.loads((out / "merged" / "edit_manifest.json").read_text())
    assert manifest["lora"]["settings"]["layers"] == [1] and manifest["source"]["kind"] == "directory"
    assert len(summary["train"]["losses"]) == 6
    merged = load_model(str(out / "merged")).model
    peft_model = load_adapter(load_model(str(tiny_dir)).model, out / "adapter", merge=False)
    inputs = encode(tokenizer, PROMPTS, padding_side="left")
    with torch.no_grad():
        torch.testing.assert_close(merged(**inputs).logits, peft_model(**inputs).logits, atol=1e-5, rtol=0)
    assert heldout_examples(out / "adapter") == split_arithmetic(24, 8, 1, 0)[1]
    result = CliRunner().invoke(main, ["lora", "compare", "--base", str(tiny_dir), "--adapter", str(out / "adapter"),
                                       "--n", "6", "--out", str(tmp_path / "cmp")])
    assert result.exit_code == 0, result.output
    data = json.loads((tmp_path / "cmp" / "lora_compare.json").read_text())
    assert [a["top"] for a in data["averages"]] == [10, 20, 30, 50] and (tmp_path / "cmp" / "lora_compare.png").is_file()
    # The CLI loads the base once (the adapter switched off is the base); two separate loads agree.
    from editor.lora.compare import coefficient_shift
    from editor.lora.train import heldout_examples as held

    two = coefficient_shift(load_model(str(tiny_dir)).model, load_adapter(load_model(str(tiny_dir)).model, out / "adapter"),
                            tokenizer, held(out / "adapter", 6), progress=False)
    for mine, theirs in zip(data["averages"], two.averages):
        for key, value in theirs.items():
            assert mine[key] == pytest.approx(value, abs=1e-4), key


def test_cli_lora_train_and_errors(tiny_dir, tmp_path):
    out = tmp_path / "l"
    args = ["lora", "train", "--model", str(tiny_dir), "--layers", "0-1", "--steps", "3", "--n-train", "16",
            "--n-eval", "4", "--digits", "1", "--batch-size", "4", "--out", str(out)]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "token accuracy" in result.output and (out / "merged" / "model.safetensors").is_file()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "already exists" in again.output
    bad = CliRunner().invoke(main, args[:-2] + ["--targets", "q,zz", "--out", str(tmp_path / "m")])
    assert bad.exit_code == 2 and "unknown LoRA target 'zz'" in bad.output and "Traceback" not in bad.output


def test_average_shifts_by_hand():
    from editor.lora.compare import average_shifts

    rows = [{"coef_base": b, "coef_lora": l, "increase": l - b} for b, l in [(2.0, 3.0), (-1.0, -3.0)] + [(0.0, 0.0)] * 48]
    top10 = average_shifts(rows)[0]
    assert top10["top"] == 10 and top10["increase"] == pytest.approx(-0.1)  # (1 - 2) / 10
    assert top10["relative_increase"] == pytest.approx(-1.0)  # mean coefficient 0.1 -> 0.0
    assert top10["magnitude_change"] == pytest.approx(1.0)  # mean |coefficient| 0.3 -> 0.6


def test_precomputed_base_scores_give_the_same_shift(tokenizer):
    """The lora-compare recipe scores the base once; that must equal scoring it with each adapter."""
    from editor.attribution.neurons import neuron_logprob_increase
    from editor.attribution.results import ComponentScores

    _, held = split_arithmetic(20, 6, 1, seed=0)
    base, tuned = tiny.tiny_model("llama"), tiny.tiny_model("llama", seed=1)
    direct = coefficient_shift(base, tuned, tokenizer, held, progress=False)
    scores = neuron_logprob_increase(base, tokenizer, held, target="gold", progress=False)
    cached = ComponentScores.from_json(scores.to_json(top=0))  # as the recipe's step cache stores it
    reused = coefficient_shift(base, tuned, tokenizer, held, progress=False, base_scores=cached)
    assert reused.rows == direct.rows and reused.averages == direct.averages
    with pytest.raises(UserError, match="other layers"):
        coefficient_shift(base, tuned, tokenizer, held, layers=[0, 1], progress=False, base_scores=cached)


def test_exact_match_is_the_harness_exact_match(tokenizer):
    from editor.evaluation.harness import ArithmeticConfig, evaluate_model
    from editor.lora.compare import exact_match

    model = tiny.tiny_model("llama").eval()
    _, held = split_arithmetic(4, 12, 1, 0)
    ours = exact_match(model, tokenizer, held, batch_size=5, progress=False)
    harness = evaluate_model(model, tokenizer, {"arithmetic": ArithmeticConfig(n=12, examples=held)}, progress=False)
    reference = harness.tasks["arithmetic"].measures["exact_match"]
    assert ours.per_unit == reference.per_unit and ours.n == 12
    assert (ours.low, ours.high) == pytest.approx((reference.low, reference.high))
