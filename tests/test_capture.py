"""Capture: decompositions sum back to module outputs, for every family in the architecture table."""

import pytest
import torch

import tiny
from editor.model.arch import Arch, weight_in_slice
from editor.model.capture import POINTS, capture, encode, last_token_positions

ATOL = 1e-5


def _bias(module, like):
    return module.bias if getattr(module, "bias", None) is not None else torch.zeros_like(like)


def test_head_outputs_sum_to_attention_output(family, batch):
    model = tiny.tiny_model(family)
    arch = Arch(model)
    got = capture(model, batch, what=["head_out", "attn_out"])
    assert got.head_out.shape == (4, arch.n_layers, arch.n_heads, arch.d_model)
    for layer in range(arch.n_layers):
        summed = got.head_out[:, layer].sum(1) + _bias(arch.attn_out(layer), got.attn_out[0, 0])
        torch.testing.assert_close(summed, got.attn_out[:, layer], atol=ATOL, rtol=0)


def test_neuron_contributions_sum_to_ffn_output(family, batch):
    model = tiny.tiny_model(family)
    arch = Arch(model)
    got = capture(model, batch, what=["neuron_coef", "mlp_out"])
    for layer in range(arch.n_layers):
        down = arch.mlp_out(layer)
        f = weight_in_slice(down, slice(None))  # [d_ffn, d_model]: row k is neuron k's value vector
        summed = got.neuron_coef[:, layer] @ f + _bias(down, got.mlp_out[0, 0])
        torch.testing.assert_close(summed, got.mlp_out[:, layer], atol=ATOL, rtol=0)


def test_residual_stream_adds_up(family, batch):
    """The table's norms and residual mode are right: pre + attention (+ MLP) gives the next stream."""
    model = tiny.tiny_model(family)
    arch = Arch(model)
    got = capture(model, batch, what=["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"])
    with torch.no_grad():
        for layer in range(arch.n_layers):
            block = arch.layers[layer]
            attn = got.attn_out[:, layer]
            mlp = got.mlp_out[:, layer]
            if arch.spec.attn_post_norm:
                attn = block.get_submodule(arch.spec.attn_post_norm)(attn)
            if arch.spec.mlp_post_norm:
                mlp = block.get_submodule(arch.spec.mlp_post_norm)(mlp)
            pre, mid, post = got.resid_pre[:, layer], got.resid_mid[:, layer], got.resid_post[:, layer]
            if arch.parallel_residual:
                torch.testing.assert_close(mid, pre, atol=0, rtol=0)
                torch.testing.assert_close(post, pre + attn + mlp, atol=ATOL, rtol=1e-5)
            else:
                torch.testing.assert_close(mid, pre + attn, atol=ATOL, rtol=1e-5)
                torch.testing.assert_close(post, mid + mlp, atol=ATOL, rtol=1e-5)
            if layer + 1 < arch.n_layers:
                torch.testing.assert_close(got.resid_pre[:, layer + 1], post, atol=0, rtol=0)


def test_attention_probabilities(family, batch):
    model = tiny.tiny_model(family)
    arch = Arch(model)
    got = capture(model, batch, what=["attn_probs"])
    seq = batch["input_ids"].shape[1]
    assert got.attn_probs.shape == (4, arch.n_layers, arch.n_heads, seq)
    torch.testing.assert_close(got.attn_probs.sum(-1), torch.ones(4, arch.n_layers, arch.n_heads), atol=1e-5, rtol=0)
    pad = batch["attention_mask"] == 0  # left padding: padded keys get no attention
    assert got.attn_probs.permute(0, 3, 1, 2)[pad].abs().max() == 0


def test_left_and_right_padding_agree(family, tokenizer):
    from conftest import PROMPTS

    model = tiny.tiny_model(family)
    left = capture(model, encode(tokenizer, PROMPTS, padding_side="left"), what=["head_out", "neuron_coef"])
    right = capture(model, encode(tokenizer, PROMPTS, padding_side="right"), what=["head_out", "neuron_coef"])
    torch.testing.assert_close(left.logits, right.logits, atol=1e-5, rtol=0)
    torch.testing.assert_close(left.head_out, right.head_out, atol=1e-5, rtol=0)
    torch.testing.assert_close(left.neuron_coef, right.neuron_coef, atol=1e-5, rtol=0)


def test_logits_match_plain_forward_at_last_token(tokenizer):
    model = tiny.tiny_model("llama")
    from conftest import PROMPTS

    for prompt in PROMPTS:
        single = encode(tokenizer, [prompt])
        full = model(**single).logits[0, -1]
        got = capture(model, single, what=[])
        torch.testing.assert_close(got.logits[0], full, atol=1e-5, rtol=0)


def test_last_token_positions():
    mask = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1]])
    assert last_token_positions(mask).tolist() == [3, 2, 3]


def test_explicit_positions_and_layer_subset(batch):
    model = tiny.tiny_model("gpt2")
    positions = torch.tensor([[5, 6]] * 4)
    got = capture(model, batch, what=["resid_post"], positions=positions, layers=[2, 0])
    every = capture(model, batch, what=["resid_post"], positions=positions)
    assert got.resid_post.shape == (4, 2, 2, 32)
    torch.testing.assert_close(got.resid_post[:, :, 0], every.resid_post[:, :, 2])
    torch.testing.assert_close(got.resid_post[:, :, 1], every.resid_post[:, :, 0])


def _hook_count(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def test_no_hooks_left_behind_even_when_forward_raises(batch):
    from editor.errors import UserError

    model = tiny.tiny_model("llama")
    capture(model, batch)
    assert _hook_count(model) == 0
    bad = dict(batch, input_ids=batch["input_ids"] + 10_000)  # out of vocabulary: the forward raises
    with pytest.raises(IndexError):
        capture(model, bad)
    assert _hook_count(model) == 0
    with pytest.raises(UserError, match="unknown capture point"):
        capture(model, batch, what=["nope"])
    assert set(POINTS) >= {"head_out", "neuron_coef"}


def test_sdpa_attention_gives_clear_error(batch):
    from editor.errors import UserError

    model = tiny.tiny_model("llama", attn_implementation="sdpa")
    with pytest.raises(UserError, match="eager"):
        capture(model, batch, what=["attn_probs"])
    assert _hook_count(model) == 0
