"""The second real model family: Gemma 3 270M from four PyPI chunk wheels (slow).

No claim should rest on one model: attribution, evaluate and prune (with a physical shrink) run on
it end to end. Its one key/value head per layer means heads can go only with whole layers."""

import json

import pytest
import torch
from click.testing import CliRunner

from editor.cli import main
from editor.edit.checkpoint import reload_difference
from editor.model import store
from editor.model.capture import encode
from editor.model.loading import load_model

pytestmark = pytest.mark.slow

ALIAS = "gemma3-270m"


@pytest.fixture(scope="module")
def gemma():
    store.pull(ALIAS, log=lambda _m: None)
    return load_model(ALIAS)


@pytest.fixture(scope="module")
def capitals(tmp_path_factory):
    """24 rows of the shipped capitals task (12 countries x 2 phrasings): the fewest a prune splits
    (4 scoring, 8 validation, 8 test rows at least), kept short for a 262k vocabulary."""
    rows = open("examples/capitals.jsonl").read().splitlines()[:24]
    path = tmp_path_factory.mktemp("data") / "capitals.jsonl"
    path.write_text("\n".join(rows) + "\n")
    return path


def test_gemma_is_the_model_the_store_pins(gemma):
    info = gemma.describe()
    assert (info["family"], info["layers"], info["heads"], info["kv_heads"], info["head_dim"], info["ffn"],
            info["vocab"]) == ("gemma3_text", 18, 4, 1, 256, 2048, 262144)
    assert store.provenance(gemma.path)["entry"]["gguf_sha256"] == store.ALIASES[ALIAS].gguf_sha256
    assert "Gemma Terms of Use" in store.provenance(gemma.path)["entry"]["license"]


def test_gemma_attribution_and_evaluation_from_the_command_line(gemma, capitals, tmp_path):
    got = CliRunner().invoke(main, ["attribute", "heads", "--model", ALIAS, "--data", str(capitals), "--n", "8",
                                    "--method", "gradient", "--no-specificity", "--batch-size", "4", "--out",
                                    str(tmp_path / "a"), "--json"])
    assert got.exit_code == 0, got.output
    result = json.loads(got.stdout)["results"][0]
    saved = json.loads(open(next(f for f in result["files"].values() if f.endswith(".json"))).read())
    assert saved["shape"] == [18, 4] and len(result["top"]) == 20
    got = CliRunner().invoke(main, ["evaluate", "--model", ALIAS, "--data", str(capitals), "--batch-size", "4",
                                    "--out", str(tmp_path / "e"), "--json"])
    assert got.exit_code == 0, got.output
    measures = json.loads(got.stdout)["evaluation"]["tasks"]["capitals"]["measures"]
    assert measures["answer_accuracy"]["n"] == 24 and measures["answer_accuracy"]["value"] > 0


def test_gemma_prune_shrinks_to_a_checkpoint_that_equals_the_zeroed_model(gemma, capitals, tmp_path):
    from editor.recipes import run_config
    from editor.recipes.prune_command import prune_config

    out = tmp_path / "prune"
    cfg = prune_config(model=ALIAS, out=out, data=str(capitals), units=["neurons", "heads", "layers"],
                       recover="none", overrides=["prune.retain=0.5", "prune.max_rounds=1", "batch_size=8",
                                                  "prune.neuron_step=0.25", "prune.layer_tries=1",
                                                  "data.n_general=4"])
    _, result = run_config(cfg, log=lambda _m: None, out=out)
    manifest = json.loads((out / "checkpoint" / "edit_manifest.json").read_text())["prune"]
    assert manifest["removed_parameters"] > 0 and result["summary"]["task"] == "capitals"
    assert not any(manifest["removed"]["groups"].values())  # one key/value head: heads go only with layers
    assert manifest["shrunk_vs_zeroed_max_logit_difference"] < 1e-3
    small = load_model(str(out / "checkpoint"))
    inputs = encode(small.tokenizer, ["The capital of France is", "Q: What is the capital of Peru? A:"],
                    padding_side="left")
    assert reload_difference(small.model, out / "checkpoint", inputs) == 0.0
    assert sum(p.numel() for p in small.model.parameters()) == manifest["parameters_after"]["total"]
    with torch.no_grad():
        assert torch.isfinite(small.model(**inputs).logits).all()


def test_gemma_exports_to_a_gguf_that_llama_cpp_runs_like_transformers(gemma, tmp_path):
    """llama.cpp's gemma3 (5 sliding-window layers, then a full one) on the export of the real model:
    the same top-1 token at every position of two prompts as transformers."""
    import numpy as np

    from editor.edit.gguf import export_gguf

    llama_cpp = pytest.importorskip("llama_cpp")  # installed by `make test`
    out = export_gguf(ALIAS, tmp_path / "gemma.gguf", "f16", log=lambda _m: None)
    assert out.architecture == "gemma3"
    for prompt in ("The capital of France is", "3 + 5 = 8\n2 + 4 = "):
        tokens = gemma.tokenizer(prompt)["input_ids"]
        llm = llama_cpp.Llama(model_path=str(out.path), logits_all=True, n_ctx=64, n_threads=2, verbose=False)
        llm.eval(tokens)
        got = torch.tensor(np.array(llm.scores[: len(tokens)]), dtype=torch.float32)
        llm.close()
        with torch.no_grad():
            want = gemma.model(torch.tensor([tokens])).logits[0]
        assert (got.argmax(-1) == want.argmax(-1)).all(), prompt
