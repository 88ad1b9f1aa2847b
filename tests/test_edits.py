"""Edit plans and reversible in-place edits: weights == hooks, restore is bitwise, orientation by type."""

import json

import pytest
import torch

import tiny
from editor.edit.plan import Edit, EditPlan, KeepOnly, parse_component
from editor.edit.weights import apply_plan, intervene
from editor.errors import UserError
from editor.model.arch import Arch


def _plan(arch: Arch) -> EditPlan:
    last = arch.n_layers - 1
    return (EditPlan().zero("head", ["0.1", f"{last}.3"]).scale("head", ["1.2"], 0.5)
            .zero("neuron", ["0.5", f"{last}.7"]).scale("neuron", ["1.11"], 0.3))


def _logits(model, batch):
    with torch.no_grad():
        return model(**batch).logits


def _snapshot(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_weight_edit_equals_hook_intervention_and_restores_bitwise(family, batch):
    model = tiny.tiny_model(family)
    plan = _plan(Arch(model))
    before = _snapshot(model)
    clean = _logits(model, batch)
    with intervene(model, plan):
        hooked = _logits(model, batch)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items()), "hooks changed weights"
    handle = apply_plan(model, plan)
    edited = _logits(model, batch)
    handle.restore()
    torch.testing.assert_close(edited, hooked, atol=1e-5, rtol=1e-5)
    assert (edited - clean).abs().max() > 1e-3, "the plan had no effect"
    after = model.state_dict()
    assert all(torch.equal(v, after[k]) for k, v in before.items()), "restore is not bitwise"
    torch.testing.assert_close(_logits(model, batch), clean, atol=0, rtol=0)


def test_zeroing_through_weights_and_hooks_is_exact(family, batch):
    model = tiny.tiny_model(family)
    plan = EditPlan().zero("head", ["0.0", "2.3"]).zero("neuron", ["1.4"])
    with intervene(model, plan):
        hooked = _logits(model, batch)
    with apply_plan(model, plan):
        edited = _logits(model, batch)
    torch.testing.assert_close(edited, hooked, atol=1e-6, rtol=0)


def test_gpt2_conv1d_orientation_by_type():
    model = tiny.tiny_model("gpt2")
    arch = Arch(model)
    proj = arch.attn_out(0)
    assert proj.weight.shape[0] == proj.weight.shape[1], "GPT-2 attn.c_proj is square: shape cannot decide"
    original = proj.weight.detach().clone()
    with apply_plan(model, EditPlan().zero("head", ["0.1"])):
        rows = slice(arch.head_dim, 2 * arch.head_dim)
        assert proj.weight[rows].abs().max() == 0  # Conv1D [in, out]: a head is a block of ROWS
        keep = torch.ones(arch.d_model, dtype=torch.bool)
        keep[rows] = False
        assert torch.equal(proj.weight[keep], original[keep])
        assert torch.equal(proj.bias, model.transformer.h[0].attn.c_proj.bias)
    down = arch.mlp_out(1)
    with apply_plan(model, EditPlan().zero("neuron", ["1.9"])):
        assert down.weight[9].abs().max() == 0 and down.weight[:, 9].abs().max() > 0


def test_llama_linear_orientation():
    model = tiny.tiny_model("llama")
    arch = Arch(model)
    with apply_plan(model, EditPlan().zero("head", ["0.2"]).zero("neuron", ["0.3"])):
        o = arch.attn_out(0).weight
        assert o[:, 2 * arch.head_dim:3 * arch.head_dim].abs().max() == 0  # Linear [out, in]: COLUMNS
        assert o[:, :2 * arch.head_dim].abs().min() > 0
        assert arch.mlp_out(0).weight[:, 3].abs().max() == 0


def test_keep_only_zeroes_everything_else_in_range():
    model = tiny.tiny_model("llama")
    arch = Arch(model)
    plan = EditPlan().keep_only("neuron", 1, 2, ["1.0", "2.5"]).keep_only("head", 0, 0, ["0.3"])
    factors = plan.factors(arch.n_layers, arch.n_heads, arch.d_ffn)
    assert len([k for k in factors if k[0] == "neuron"]) == 2 * arch.d_ffn() - 2
    assert ("neuron", 1, 0) not in factors and ("neuron", 0, 0) not in factors
    assert sorted(k for k in factors if k[0] == "head") == [("head", 0, h) for h in range(3)]
    with apply_plan(model, plan):
        down = arch.mlp_out(1).weight
        assert down[:, 1:].abs().max() == 0 and down[:, 0].abs().min() > 0
        assert arch.mlp_out(0).weight.abs().min() > 0


def test_identity_is_dropped_and_a_component_edited_twice_is_refused():
    """One edit per component: a second one (recorded twice, or silently compounding the first) is
    an error in every way a plan is built, from the API, the CLI's lists and a plan file."""
    from editor.errors import UserError

    arch = Arch(tiny.tiny_model("llama"))
    plan = EditPlan().scale("head", ["1.1"], 1.0).scale("neuron", ["0.1"], 0.5)
    assert plan.factors(arch.n_layers, arch.n_heads, arch.d_ffn) == {("neuron", 0, 1): 0.5}
    with pytest.raises(UserError, match="head 1.1 is edited twice"):
        plan.scale("head", ["1.1"], 2.0)
    with pytest.raises(UserError, match="neuron 0.1 is edited twice"):
        EditPlan().zero("neuron", ["0.1", "0.1"])
    given = EditPlan(edits=list(plan.edits))  # edits given whole, then added to
    with pytest.raises(UserError, match="neuron 0.1 is edited twice"):
        given.zero("neuron", ["0.1"])
    given.edits = given.edits[:1]  # replaced by a shorter list: neuron 0.1 is free again
    assert len(given.zero("neuron", ["0.1"])) == 2
    with pytest.raises(UserError, match="head 0.2 is edited twice"):
        EditPlan.from_json({"edits": [{"op": "zero_head", "target": "0.2"},
                                      {"op": "scale_head", "target": "0.2", "factor": 0.5}]})


def test_plan_json_round_trip(tmp_path):
    plan = (EditPlan(note="why").zero("head", ["3.1"]).scale("neuron", ["20.771"], 0.5)
            .keep_only("neuron", 17, 29, ["17.5", "20.771"]))
    path = tmp_path / "plan.json"
    plan.save(path)
    loaded = EditPlan.load(path)
    assert loaded.to_json() == plan.to_json()
    assert loaded.edits[0] == Edit("head", 3, 1, 0.0)
    assert loaded.edits[2] == KeepOnly("neuron", 17, 29, frozenset({(17, 5), (20, 771)}))
    assert json.loads(path.read_text())["edits"][1] == {"op": "scale_neuron", "target": "20.771", "factor": 0.5}


@pytest.mark.parametrize("data, message", [
    ({"edits": [{"op": "zero_head", "target": "3.1", "extra": 1}]}, "unknown key"),
    ({"edits": [{"op": "explode", "target": "3.1"}]}, "unknown op"),
    ({"edits": [{"op": "scale_head", "target": "3.1"}]}, "needs key"),
    ({"edits": [{"op": "zero_head", "target": "3-1"}]}, "LAYER.INDEX"),
    ({"edits": [{"op": "scale_neuron", "target": "3.1", "factor": "big"}]}, "must be a number"),
    ({"edits": [], "colour": "red"}, "unknown key"),
    ({"edits": {}}, "must be a list"),
    ({"edits": [{"op": "keep_only_heads", "layers": [5, 2], "keep": []}]}, "first <= last"),
])
def test_plan_validation(data, message):
    with pytest.raises(UserError, match=message):
        EditPlan.from_json(data)


def test_out_of_range_components_are_rejected_before_any_change():
    model = tiny.tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for plan, message in [(EditPlan().zero("head", ["0.1", "9.0"]), "layer out of range"),
                          (EditPlan().zero("head", ["0.4"]), "index out of range"),
                          (EditPlan().zero("neuron", ["0.48"]), "index out of range"),
                          (EditPlan().keep_only("neuron", 0, 1, ["2.0"]), "outside layers")]:
        with pytest.raises(UserError, match=message):
            apply_plan(model, plan)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_parse_component():
    assert parse_component("20.771") == (20, 771)
    for bad in ["20", "a.b", "1.2.3", "-1.2", ""]:
        with pytest.raises(UserError):
            parse_component(bad)


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_config_dimensions_equal_the_loaded_models(family):
    """What a plan is checked against before the weights load (config.json alone) is what the loaded
    model has, in every family of the table, a shrunk one included."""
    from editor.edit.shrink import Removal, shrink
    from editor.model.arch import config_dimensions

    model = tiny.tiny_model(family)
    arch = Arch(model)
    assert config_dimensions(model.config) == (arch.n_layers, arch.n_heads, arch.d_ffn(0))
    small, _ = shrink(model, Removal(neurons={layer: [0, 1, 2] for layer in range(arch.n_layers)}))
    smaller = Arch(small)
    assert config_dimensions(small.config) == (smaller.n_layers, smaller.n_heads, smaller.d_ffn(0))


def test_edit_refuses_a_missing_component_before_the_weights_load(tiny_dir, tmp_path):
    """The weights file is garbage: had the model been loaded first, the error would be about it."""
    from click.testing import CliRunner

    from editor.cli import main

    (tiny_dir / "model.safetensors").write_bytes(b"not a safetensors file")
    for option, value, message in (("--zero-heads", "99.99", "layer out of range (model has 3 layers)"),
                                   ("--zero-heads", "0.4", "index out of range (layer has 4 heads)"),
                                   ("--zero-neurons", "2.48", "index out of range (layer has 48 neurons)")):
        got = CliRunner().invoke(main, ["edit", "--model", str(tiny_dir), option, value, "--out", str(tmp_path / "o")])
        assert got.exit_code == 2 and message in got.stderr, got.output
