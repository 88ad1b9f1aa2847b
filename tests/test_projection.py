"""Projections of the MLP output folded into weights: the fold equals the same map applied by hooks
(LEACE's own eraser from concept-erasure, and a DAMA-style projection through the origin), restores
bitwise, and a folded checkpoint reloads through plain from_pretrained to the same logits."""

import pytest
import torch
from concept_erasure import LeaceFitter
from transformers import AutoModelForCausalLM

import tiny
from editor.edit.projection import Projection, fold, intervene
from editor.errors import UserError
from editor.model.arch import Arch

IDS = torch.tensor([[5, 9, 13, 2, 7, 21, 3], [8, 8, 1, 30, 12, 6, 4]])


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(ids).logits


def _outputs(model, layer):
    """The layer's MLP outputs on IDS, one row per position."""
    got = []
    handle = Arch(model).mlp_out(layer).register_forward_hook(lambda m, i, out: got.append(out.detach()))
    _logits(model)
    handle.remove()
    return got[0].reshape(-1, got[0].shape[-1]).float()


def _leace(model, layer):
    x = _outputs(model, layer)
    z = torch.arange(len(x)) % 2
    eraser = LeaceFitter.fit(x, z).eraser
    return eraser, Projection(layer, eraser.proj_left, eraser.proj_right.T, eraser.bias, "leace")


def _orthogonal(d, r, seed=0):
    q, _ = torch.linalg.qr(torch.randn(d, r, generator=torch.Generator().manual_seed(seed)))
    return Projection(1, q, q, None, "dama")


@pytest.mark.parametrize("family", ["llama", "gpt2", "gpt_neox", "gemma3_text"])
def test_a_folded_projection_equals_the_same_projection_by_hooks(family):
    model = tiny.tiny_model(family).float()
    d = model.config.hidden_size
    projections = [_orthogonal(d, 3)]
    if family != "gemma3_text":  # Gemma 3 has no MLP bias to hold LEACE's constant
        eraser, leace = _leace(model, 0)
        # Our Projection is LEACE's own eraser (the package applies it, not us).
        y = _outputs(model, 0)
        assert torch.allclose(leace(y), eraser(y), atol=1e-5)
        projections.append(leace)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with intervene(model, projections):
        hooked = _logits(model)
    with fold(model, projections):
        folded = _logits(model)
        assert not torch.equal(folded, _logits_of_copy(before, family))
    assert torch.allclose(folded, hooked, atol=1e-4), (folded - hooked).abs().max()
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert not getattr(model.config, "mlp_bias", False)  # the flag a LEACE fold turned on is off again


def _logits_of_copy(state, family):
    model = tiny.tiny_model(family).float()
    model.load_state_dict(state)
    return _logits(model)


def test_leace_on_a_family_without_mlp_biases_is_refused_in_one_line():
    model = tiny.tiny_model("qwen2").float()
    _, leace = _leace(model, 0)
    with pytest.raises(UserError, match="needs a bias on the MLP output") as err:
        fold(model, [leace])
    assert "\n" not in str(err.value)
    assert all(Arch(model).mlp_out(l).bias is None for l in range(Arch(model).n_layers))


def test_a_folded_llama_saves_and_reloads_with_mlp_biases(tmp_path):
    model = tiny.tiny_model("llama").float()
    _, leace = _leace(model, 1)
    with intervene(model, [leace]):
        hooked = _logits(model)
    with fold(model, [leace]):
        model.save_pretrained(tmp_path / "m")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "m").float()
    assert reloaded.config.mlp_bias is True
    assert torch.allclose(_logits(reloaded), hooked, atol=1e-4)
    assert Arch(model).mlp_out(1).bias is None and not model.config.mlp_bias
