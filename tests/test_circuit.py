"""Gradient rankings confirmed exactly, specificity, and the joint circuit search (tiny arithmetic model)."""

import json

import pytest
import torch
from click.testing import CliRunner

import tiny
from editor.attribution.circuit import accuracy, circuit_search, set_specificity
from editor.attribution.confirm import add_specificity, auto_head_scores
from editor.attribution.gradient import gradient_scores
from editor.tasks.guard import guard_windows
from editor.attribution.gradient import gradient_effects
from editor.attribution.heads import head_ablation_scan
from editor.cli import main
from editor.edit.plan import EditPlan
from editor.edit.weights import intervene
from editor.io import write_text_atomic
from editor.tasks.arithmetic import split_prompts
from editor.tasks import load_examples


@pytest.fixture(scope="module")
def model():
    return tiny.arithmetic_model("llama")


@pytest.fixture(scope="module")
def prompts():
    sets = split_prompts({"search": 48, "heldout": 48}, {"search": 0.5, "heldout": 0.5}, shots=1, seed=7)
    return sets["search"], sets["heldout"]


def test_a_subset_scan_equals_the_full_scan_on_its_heads(model, tokenizer, prompts):
    search, _ = prompts
    full = head_ablation_scan(model, tokenizer, search, batch_size=16, progress=False)
    heads = [(0, 1), (1, 0), (1, 3), (2, 2)]
    part = head_ablation_scan(model, tokenizer, search, batch_size=16, progress=False, heads=heads)
    for layer, head in heads:
        for column in ("logp_drop", "acc_drop", "ablated_acc"):
            assert torch.allclose(part.columns[column][layer, head], full.columns[column][layer, head], atol=1e-5)
    assert torch.isnan(part.columns["logp_drop"][0, 0])  # not scanned


def test_gradient_scores_are_the_mean_first_order_drop(model, tokenizer, prompts):
    search, _ = prompts
    effects = gradient_effects(model, tokenizer, search, progress=False)
    scores = gradient_scores(model, tokenizer, search, "head", progress=False)
    assert torch.allclose(scores.columns["logp_drop_estimate"], -effects.heads.mean(0))
    neurons = gradient_scores(model, tokenizer, search, "neuron", progress=False)
    assert torch.allclose(neurons.columns["logp_drop_estimate"], -effects.neurons.mean(0))


def test_auto_rows_marked_exact_equal_the_exact_scan_and_rank_first(model, tokenizer, prompts):
    search, _ = prompts
    full = head_ablation_scan(model, tokenizer, search, batch_size=16, progress=False)
    auto = auto_head_scores(model, tokenizer, search, top=3, factor=2, progress=False)
    exact = auto.columns["exact"].bool()
    assert int(exact.sum()) == 6 and auto.meta["confirmed"] == 6
    assert torch.allclose(auto.columns["logp_drop"][exact], full.columns["logp_drop"][exact], atol=1e-5)
    assert torch.equal(auto.columns["logp_drop"][~exact], auto.columns["logp_drop_estimate"][~exact])
    ranked = auto.ranked()
    assert [r["exact"] for r in ranked[:6]] == [1.0] * 6 and all(r["exact"] == 0.0 for r in ranked[6:])
    top = [r["logp_drop"] for r in ranked[:6]]
    assert top == sorted(top, reverse=True)
    # The candidates are the gradient's best: every confirmed head's estimate beats every other head's.
    est = auto.columns["logp_drop_estimate"]
    assert est[exact].min() >= est[~exact].max()


def test_specificity_is_task_drop_minus_the_largest_other_drop(model, tokenizer, prompts):
    search, _ = prompts
    auto = auto_head_scores(model, tokenizer, search, top=2, factor=2, progress=False)
    control = load_examples("icl", n=16, seed=3)
    guard = guard_windows(tokenizer, n=16, length=24)
    add_specificity(auto, model, tokenizer, control, guard, progress=False)
    exact = auto.columns["exact"].bool()
    heads = [tuple(x) for x in exact.nonzero().tolist()]
    scan = head_ablation_scan(model, tokenizer, control, progress=False, heads=heads)
    assert torch.allclose(auto.columns["control_drop"][exact], scan.columns["logp_drop"][exact], atol=1e-5)
    expected = auto.columns["logp_drop"] - torch.maximum(auto.columns["control_drop"], auto.columns["guard_drop"])
    assert torch.allclose(auto.columns["specificity"], expected)
    assert len(guard) == 16 and all(e.answer for e in guard)


def test_accuracy_with_zeroed_heads_equals_the_hook_intervention(model, tokenizer, prompts):
    """The search edits weights; the same removal through hooks gives the same accuracy."""
    search, _ = prompts
    heads = [(0, 1), (2, 3)]
    by_weights = accuracy(model, tokenizer, search, heads)
    with intervene(model, EditPlan().zero("head", heads)):
        by_hooks = accuracy(model, tokenizer, search)
    assert by_weights[0] == by_hooks[0] and abs(by_weights[1] - by_hooks[1]) < 1e-5
    assert accuracy(model, tokenizer, search) != by_weights  # the heads matter, so the check can fail


@pytest.mark.parametrize("beam", [1, 2])
def test_the_circuit_search_reaches_its_target_on_search_prompts(model, tokenizer, prompts, beam):
    search, heldout = prompts
    found = circuit_search(model, tokenizer, search, heldout, target_drop=0.5, beam=beam, candidates=4, max_size=12,
                           random_seeds=2)
    assert found.base["search_acc"] > 0.5
    assert found.curve and found.curve[-1].search_acc <= found.target_acc + 1e-9
    assert all(p.search_acc > found.target_acc for p in found.curve[:-1])  # it stops at the first set that cuts
    assert len(set(found.heads)) == len(found.heads)
    heads = [tuple(map(int, h.split("."))) for h in found.heads]
    assert accuracy(model, tokenizer, heldout, heads)[0] == found.curve[-1].heldout_acc
    sizes = {r["size"] for r in found.random}
    assert len(found.heads) in sizes and all(r["seed"] in (0, 1) for r in found.random)
    spec = set_specificity(model, tokenizer, heads, heldout, load_examples("icl", n=16), guard_windows(tokenizer, 16))
    assert spec["task"]["acc_after"] == found.curve[-1].heldout_acc
    assert spec["specificity"] == pytest.approx(spec["task"]["logp_drop"] - max(spec["control"]["logp_drop"],
                                                                                spec["guard"]["logp_drop"]))


def test_cli_heads_auto_and_circuit(tmp_path, prompts):
    search, heldout = prompts
    model_dir = tiny.save_dir(tiny.arithmetic_model("llama"), tmp_path / "arith")
    data = tmp_path / "add.jsonl"
    write_text_atomic(data, "".join(json.dumps(e.to_json()) + "\n" for e in search + heldout))
    runner = CliRunner()
    got = runner.invoke(main, ["attribute", "heads", "--model", str(model_dir), "--data", str(data), "--n", "32",
                               "--top", "3", "--specificity", "--out", str(tmp_path / "o")])
    assert got.exit_code == 0, got.output
    assert "exact" in got.output and "specificity" in got.output
    saved = json.loads((tmp_path / "o" / "heads_auto.json").read_text())
    assert saved["method"] == "auto" and saved["meta"]["control"] == "arithmetic" and saved["meta"]["confirmed"] == 9
    got = runner.invoke(main, ["attribute", "circuit", "--model", str(model_dir), "--data", str(data), "--n", "48",
                               "--max-size", "10", "--candidates", "4", "--random-seeds", "1", "--out", str(tmp_path / "o")])
    assert got.exit_code == 0, got.output
    assert ("scoring 12 heads, 48 search + 48 held-out prompts: at most 10 steps of 1 beam(s) x 3 search batch(es) x "
            "(1 forward + 1 backward, then 1 + at most 3 forward passes over the 4 candidates)") in got.output
    circuit = json.loads((tmp_path / "o" / "circuit.json").read_text())
    assert circuit["heads"] and circuit["specificity"]["task"]["acc_before"] == circuit["base"]["heldout_acc"]
    assert (tmp_path / "o" / "circuit.png").stat().st_size > 0
    assert (tmp_path / "o" / "circuit.csv").read_text().startswith("size,head,search_acc")
