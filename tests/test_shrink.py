"""Physical shrink: the smaller model computes exactly what the zeroed model computes, on every family."""

import pytest
import torch

import tiny
from editor.edit.checkpoint import plain_reload_logits, save_checkpoint
from editor.edit.shrink import Removal, parameter_counts, removed_parameters, shrink, skip_layers, zeroed
from editor.errors import UserError
from editor.model.arch import Arch


def _removal(arch: Arch) -> Removal:
    """Layer 1 out; in layers 0 and 2: one key/value group and a third of the neurons (different ones)."""
    width = arch.d_ffn(0)
    k = width // 3
    return Removal(layers=[1],
                   groups={0: [arch.n_kv_heads - 1], 2: [0]},
                   neurons={0: list(range(k)), 2: list(range(width - k, width))})


@torch.no_grad()
def test_shrunk_equals_zeroed(family, batch):
    model = tiny.tiny_model(family)
    arch = Arch(model)
    removal = _removal(arch)
    before = model(**batch).logits
    with zeroed(model, removal):
        reference = model(**batch).logits
    assert torch.equal(model(**batch).logits, before), "zeroed() must restore the model"
    small, notes = shrink(model, removal)
    got = small(**batch).logits
    mask = batch["attention_mask"].bool()
    assert (got - reference)[mask].abs().max().item() < 1e-5
    assert (reference - before)[mask].abs().max().item() > 1e-3, "the removal must change something"
    small_arch = Arch(small)
    assert small_arch.n_layers == arch.n_layers - 1
    assert small_arch.d_ffn(0) == arch.d_ffn(0) - arch.d_ffn(0) // 3
    counts, base_counts = parameter_counts(small), parameter_counts(model)
    assert counts["non_embedding"] == base_counts["non_embedding"] - removed_parameters(arch, removal)
    tied = lambda m: m.get_output_embeddings().weight is m.get_input_embeddings().weight  # noqa: E731
    assert tied(small) == tied(model)  # an untied copy of a tied embedding would add its size back
    assert counts["total"] == base_counts["total"] - removed_parameters(arch, removal)
    if arch.spec.heads_shrinkable:
        assert small_arch.n_kv_heads == arch.n_kv_heads - 1 and not notes
    else:
        assert small_arch.n_heads == arch.n_heads and notes


def test_shrunk_checkpoint_reloads_in_plain_transformers(tmp_path, batch, tokenizer):
    model = tiny.tiny_model("qwen2")
    small, _ = shrink(model, _removal(Arch(model)))
    path = save_checkpoint(small, tokenizer, tmp_path / "small")
    theirs = plain_reload_logits(path, batch)
    with torch.no_grad():
        mine = small(**batch).logits
    mask = batch["attention_mask"].bool()
    assert (mine - theirs)[mask].abs().max().item() < 1e-5
    assert sum(f.stat().st_size for f in path.glob("*.safetensors")) < sum(
        p.numel() * 4 for p in model.parameters())


@torch.no_grad()
def test_skip_layers_passes_the_block_input_through(batch):
    model = tiny.tiny_model("llama")
    block = Arch(model).layers[1]
    seen = {}

    def record_in(module, args, kwargs):
        seen["in"] = (args[0] if args else kwargs["hidden_states"]).clone()

    def record_out(module, args, kwargs, output):
        seen["out"] = (output[0] if isinstance(output, tuple) else output).clone()

    with skip_layers(model, [1]):
        hooks = [block.register_forward_pre_hook(record_in, with_kwargs=True),
                 block.register_forward_hook(record_out, with_kwargs=True)]
        model(**batch)
        for h in hooks:
            h.remove()
    assert torch.equal(seen["in"], seen["out"])


@pytest.mark.parametrize("bad", [
    Removal(neurons={0: [0], 1: [0, 1], 2: [0]}),       # not uniform
    Removal(layers=[0, 1, 2]),                          # nothing left
    Removal(groups={0: [0, 1], 1: [0, 1], 2: [0, 1]}),  # every group of a layer
    Removal(neurons={0: [999], 1: [0], 2: [0]}),        # out of range
])
def test_bad_removals_are_refused(bad):
    model = tiny.tiny_model("llama")
    with pytest.raises(UserError):
        shrink(model, bad)
