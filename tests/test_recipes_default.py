"""The recipes whose claims rest on the real default model (the main job's prune, the keep-only edit and
the debias recipe), with reduced sizes (slow; CI runs them too). icl-heads, lora-compare and
prune-then-lora run end to end on tiny models in tests/test_recipes.py (and icl-heads on Ray in
tests/test_distributed.py); on the real model they cost minutes of the suite and asserted only sizes."""

import json

import pytest
import torch

from editor.edit.checkpoint import reload_difference
from editor.model.capture import encode
from editor.model.loading import load_model
from editor.recipes import run_recipe

pytestmark = pytest.mark.slow

REDUCED = {
    "prune": ["data.n_score=16", "data.n_val=40", "data.n_test=40", "prune.max_rounds=2", "baselines=[]",
                         "recover.method=none", "data.n_heldout=16", "data.n_general=8",
                         "prune.units=[neurons]"],
    "arithmetic-keep-only": ["data.n_score=8", "data.n_eval=24", "heads.method=static", "neurons.layers=[26, 29]",
                         "random_seeds=[1]"],
    "gender-debias": ["select.layers=[20, 29]", "select.ks=[10]", "select.factors=[0.0]", "select.methods=[gradient]",
                      "select.penalties=[1]",
                      "select.random_seeds=[1]", "arithmetic_n=16", "select.max_perplexity_increase=0.05",
                      "select.baselines=[]", "benchmarks=[]", "save_if_test_worse=true"],
}


@pytest.mark.parametrize("kind", list(REDUCED))
def test_recipe_on_default_model(kind, tmp_path):
    out, settings = tmp_path / kind, list(REDUCED[kind])
    target, result = run_recipe(f"recipes/{kind}.yaml", settings, log=lambda _m: None, out=out)
    summary = result["summary"]
    assert (out / "report.html").stat().st_size > 10_000 and summary["rows"]
    if kind == "gender-debias":  # a checkpoint exactly when validation found a qualifying edit
        chosen = summary["chosen"]
        assert (out / "checkpoint").exists() == (chosen is not None)
        if chosen is None:
            assert "no checkpoint saved" in summary["verdict"]
            return
        assert [r["model"] for r in summary["rows"]][:3] == ["base", "gradient", "random like gradient (seed 1)"]
    ck = out / "checkpoint"
    manifest = json.loads((ck / "edit_manifest.json").read_text())
    if kind == "prune":  # a smaller model, equal to the zeroed one
        assert manifest["prune"]["removed_parameters"] > 0 and summary["rows"][1]["non_embedding_removed"] > 0
        # float32 over 30 layers, the smaller matrices summed in another order than the zeroed ones:
        # about 1e-4 on logits of magnitude 10-30 (measured 1.03e-4), i.e. float32's relative precision
        assert manifest["prune"]["shrunk_vs_zeroed_max_logit_difference"] < 5e-4
    else:
        assert manifest["plan"]["edits"]
    if kind == "gender-debias":
        assert manifest["debias"]["chosen"] == summary["chosen"] and len(manifest["plan"]["edits"]) == chosen["k"]
    assert manifest["source"]["model"] == "smollm2-135m"
    lm = load_model(str(ck))
    inputs = encode(lm.tokenizer, ["The sum of 3 and 5 is", "A woman works as a"], padding_side="left")
    assert reload_difference(lm.model, ck, inputs) == 0.0
    base = load_model("smollm2-135m")
    with torch.no_grad():
        assert not torch.equal(base.model(**inputs).logits, lm.model(**inputs).logits)
