"""The unit table (editor/model/units.py) and the score-method registry that reads it."""

import pytest
import torch

from editor.errors import UserError

import tiny
from editor.edit.shrink import Removal
from editor.edit.weights import apply_plan
from editor.model.arch import Arch
from editor.model.units import Units


@torch.no_grad()
def _zero_owned(model, units: Units, kind: str, layer: int, index: int, sides=("out", "in")) -> None:
    """Zero every slice the table gives a unit on ``sides``, biases on the output side included."""
    for part in units[kind].parts:
        if part.side not in sides:
            continue
        module = units.module(layer, part)
        features = part.features([index])
        module.weight.index_fill_(part.dim(module), features, 0.0)
        if part.side == "out" and getattr(module, "bias", None) is not None:
            module.bias.index_fill_(0, features, 0.0)


@pytest.mark.parametrize("sides", [("out", "in"), ("out",)], ids=["all", "reading-side"])
@pytest.mark.parametrize("kind", ["neuron", "group"])
@torch.no_grad()
def test_a_unit_with_its_owned_slices_zeroed_equals_the_zeroed_form(family, batch, kind, sides):
    """The table's parts are what the unit owns: zeroing them silences exactly that unit, as the zeroed
    form (its output-projection coefficients zeroed) does; a wrong slice changes the logits. Zeroing
    only the rows a unit computes from (gate/up or fc_in with their biases; query/key/value rows)
    must silence it too: act(0) = 0 for every family's activation, and a zero value row zeroes the
    head. (The shrink-equals-zeroed test checks the query and key rows, which this cannot.)"""
    model = tiny.tiny_model(family)
    arch, units = Arch(model), Units(Arch(model))
    layer, index = 1, units[kind].count - 1
    removal = Removal(groups={layer: [index]}) if kind == "group" else Removal(neurons={layer: [index]})
    before = model(**batch).logits
    with apply_plan(model, removal.zero_plan(arch)):  # the zeroed form (one layer: no uniform-count rule)
        reference = model(**batch).logits
    if "in" not in sides and not any(p.side == "out" for p in units[kind].parts):
        pytest.skip(f"{family}: a {kind} owns no reading-side rows (fused QKV)")
    _zero_owned(model, units, kind, layer, index, sides)
    got = model(**batch).logits
    mask = batch["attention_mask"].bool()
    assert (reference - before)[mask].abs().max() > 1e-4, "the unit must matter"
    assert (got - reference)[mask].abs().max() < 1e-5


def test_parts_cover_what_a_unit_owns_on_one_family_by_hand():
    """Llama with grouped-query attention, written out: a group owns its query heads' rows, one key
    and one value head's rows and its heads' output columns; a neuron its gate/up rows and down column."""
    model = tiny.tiny_model("llama")
    arch, units = Arch(model), Units(Arch(model))
    d, rep = arch.head_dim, arch.heads_per_group
    assert rep > 1, "the tiny llama must use grouped-query attention for this test to mean anything"
    parts = {(p.module, p.side): p.features([1]).tolist() for p in units["group"].parts}
    assert parts == {("self_attn.q_proj", "out"): list(range(rep * d, 2 * rep * d)),
                     ("self_attn.k_proj", "out"): list(range(d, 2 * d)),
                     ("self_attn.v_proj", "out"): list(range(d, 2 * d)),
                     ("self_attn.o_proj", "in"): list(range(rep * d, 2 * rep * d))}
    neuron = {(p.module, p.side): p.features([5]).tolist() for p in units["neuron"].parts}
    assert neuron == {("mlp.gate_proj", "out"): [5], ("mlp.up_proj", "out"): [5], ("mlp.down_proj", "in"): [5]}
    assert units["head"].coefficient.features([2]).tolist() == list(range(2 * d, 3 * d))
    h = arch.d_model
    assert units.parameters_per_unit("neuron") == 3 * h
    assert units.parameters_per_unit("group") == rep * d * h + 2 * d * h + h * rep * d


def test_taylor_scores_follow_their_definition(tokenizer):
    """LLM-Pruner's element-wise first-order score against a direct computation: one backward of the
    summed answer loss through the whole model, then |w * grad| summed over the module slices a neuron
    and a group own, named here by hand."""
    from editor.prune.scores import taylor_scores
    from editor.tasks.examples import Example, answer_ids

    model = tiny.arithmetic_model("llama")
    examples = [Example("1 + 2 = ", "3"), Example("4 + 4 = ", "8"), Example("2 + 5 = ", "7")]
    got = taylor_scores(model, tokenizer, examples, batch_size=2)
    assert all(not p.requires_grad for p in model.parameters()) or all(p.requires_grad for p in model.parameters())
    model.zero_grad()
    with torch.enable_grad():
        for p in model.parameters():
            p.requires_grad_(True)
        loss = 0
        for e in examples:  # one prompt at a time, no padding: an independent route to the same loss
            ans = answer_ids(tokenizer, e.prompt, e.answer)
            ids = torch.tensor([tokenizer(e.prompt)["input_ids"] + ans])
            logp = model(input_ids=ids).logits[0, -len(ans) - 1:-1].log_softmax(-1)
            loss = loss - logp.gather(-1, torch.tensor(ans)[:, None]).sum()
        loss.backward()
    layer, k, g = 1, 9, 1
    mlp, attn = model.model.layers[layer].mlp, model.model.layers[layer].self_attn
    t = lambda w: (w.detach() * w.grad).abs()  # noqa: E731
    neuron = t(mlp.gate_proj.weight)[k].sum() + t(mlp.up_proj.weight)[k].sum() + t(mlp.down_proj.weight)[:, k].sum()
    assert torch.allclose(got.neurons[layer, k], neuron, rtol=1e-3)
    arch = Arch(model)
    d, rep = arch.head_dim, arch.heads_per_group
    q_rows, kv_rows = slice(g * rep * d, (g + 1) * rep * d), slice(g * d, (g + 1) * d)
    group = (t(attn.q_proj.weight)[q_rows].sum() + t(attn.k_proj.weight)[kv_rows].sum()
             + t(attn.v_proj.weight)[kv_rows].sum() + t(attn.o_proj.weight)[:, q_rows].sum())
    assert torch.allclose(got.groups[layer, g], group, rtol=1e-3)
    assert torch.allclose(got.layers, got.neurons.sum(1) + got.groups.sum(1))


def test_a_registered_score_method_reaches_the_cli_and_the_recipe_schema():
    """One decorator adds a method: the prune command's --method choices and the recipe's baselines
    accept it (both read the registry); unknown names are still refused."""
    from click.testing import CliRunner

    from editor.cli import main
    from editor.errors import UserError
    from editor.prune import scores
    from editor.recipes import validate

    names = ("taylor",)  # registered in editor/prune/scores.py like every method
    assert set(names) <= set(scores.SCORE_METHODS) and "taylor" not in scores.DEFAULT_BASELINES
    choices = next(p for p in main.commands["prune"].params if p.name == "method").type.choices
    assert tuple(choices) == tuple(scores.SCORE_METHODS)
    got = CliRunner().invoke(main, ["prune", "--method", "nosuch"])
    assert got.exit_code == 2 and "taylor" in got.output
    assert validate({"recipe": "prune", "name": "p", "baselines": ["taylor"]}, "recipe").baselines == ["taylor"]
    with pytest.raises(UserError, match="baselines"):
        validate({"recipe": "prune", "name": "p", "baselines": ["nosuch"]}, "recipe")


def test_the_prune_recipe_answers_to_its_earlier_name(tmp_path):
    """`recipe: arithmetic-prune` (files and run directories written before the rename) is the prune recipe."""
    from editor.recipes import validate
    from editor.recipes.prune import PruneRecipe
    from editor.recipes.run import _check_kind

    assert isinstance(validate({"recipe": "arithmetic-prune", "name": "p"}, "old.yaml"), PruneRecipe)
    (tmp_path / "recipe.yaml").write_text("recipe: arithmetic-prune\nname: p\n")
    _check_kind(tmp_path, {"recipe": "prune"})  # the same kind: it resumes
    with pytest.raises(UserError, match="holds a run of the 'prune' recipe"):
        _check_kind(tmp_path, {"recipe": "icl-heads"})
