"""Activation patching from counterfactual prompts: the fast exact patch equals a full forward per
site on every family, patches that replace a whole layer's worth equal what they must equal, and
attribution patching is the derivative of the exact patch."""

import pytest
import torch

import tiny
from editor.attribution.patch_estimates import patch_gradient
from editor.attribution.patching import contrast_pairs, patch_exact, patch_exact_naive
from editor.errors import UserError
from editor.tasks.examples import Example

# Same-length pairs in the tiny char vocabulary: the corrupt prompt swaps the operands' roles.
PAIRS = [Example(p, a, {"corrupt_prompt": c, "corrupt_answer": w}) for p, a, c, w in [
    ("2 + 3 = ", "5", "2 + 6 = ", "8"), ("1 + 1 = ", "2", "1 + 4 = ", "5"), ("4 + 3 = ", "7", "1 + 3 = ", "4"),
    ("3 + 3 = ", "6", "3 + 5 = ", "8"), ("10 + 2 = ", "1", "30 + 2 = ", "3")]]


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_the_fast_exact_patch_equals_a_forward_per_site(family, tokenizer):
    model = tiny.tiny_model(family)
    # the layer cache and the copies per family; queries and keys: every fused or separate QKV layout
    units = (("heads", None, "noising"), ("resid", 2, "denoising"), ("queries", None, "denoising"), ("keys", 2, "noising"))
    if family == "llama":
        units += (("heads", None, "denoising"), ("mlp", None, "noising"))
    for unit, positions, direction in units:
        fast = patch_exact(model, tokenizer, PAIRS, unit, direction, positions, batch_size=2, sites_per_pass=3,
                           progress=False)
        naive = patch_exact_naive(model, tokenizer, PAIRS, unit, direction, positions, batch_size=2)
        target = fast.meta["clean_metric" if direction == "noising" else "corrupt_metric"]
        torch.testing.assert_close(fast.columns["effect"].flatten(), naive.mean(0) - target, rtol=1e-4, atol=1e-4)


def test_neuron_patches_equal_a_forward_per_neuron(tokenizer):
    """Neurons are one input feature of the MLP output projection each (the heads' hook, another slice)."""
    model = tiny.tiny_model("llama")
    fast = patch_exact(model, tokenizer, PAIRS, "neurons", "noising", batch_size=8, progress=False)
    naive = patch_exact_naive(model, tokenizer, PAIRS, "neurons", "noising", batch_size=8)
    assert fast.shape == (3, 48)
    torch.testing.assert_close(fast.columns["effect"].flatten(), naive.mean(0) - fast.meta["clean_metric"],
                               rtol=1e-4, atol=1e-4)


def test_whole_layer_patches_equal_what_they_replace(tokenizer):
    """Every head of a layer at every position is the layer's attention output (the output projection
    is linear); the residual stream at every position of layer 0 replays the source run."""
    from contextlib import ExitStack

    from editor.attribution.patch_metrics import read_metric
    from editor.attribution.patching import _batches, _patched, _source_run
    from editor.model.arch import Arch

    model = tiny.tiny_model("llama")
    attn = patch_exact(model, tokenizer, PAIRS, "attn", "noising", batch_size=8, progress=False)
    arch = Arch(model)
    pairs = contrast_pairs(tokenizer, PAIRS)
    target, source, answer, wrong = next(_batches(model, tokenizer, pairs, 8, "noising"))
    with torch.no_grad():
        clean = read_metric(model(**target).logits[:, -1], answer, wrong)
        src, src_logits = _source_run(model, arch, "heads", source, False)
        for layer in range(arch.n_layers):
            with ExitStack() as stack:
                for head in range(arch.n_heads):
                    stack.enter_context(_patched(arch, "heads", layer, [(head, None)], src[layer]))
                every_head = read_metric(model(**target).logits[:, -1], answer, wrong)
            torch.testing.assert_close((every_head - clean).mean(), attn.columns["effect"][layer, 0],
                                       rtol=1e-4, atol=1e-4)
        src_r, _ = _source_run(model, arch, "resid", source, False)
        with _patched(arch, "resid", 0, [(0, None)], src_r[0]):
            replay = read_metric(model(**target).logits[:, -1], answer, wrong)
    torch.testing.assert_close(replay, read_metric(src_logits, answer, wrong), rtol=1e-5, atol=1e-5)
    assert attn.meta["metric"] == "logit_difference" and attn.meta["gap"] == pytest.approx(
        float((clean - read_metric(src_logits, answer, wrong)).mean()), abs=1e-5)


@pytest.mark.parametrize("family, unit, positions", [
    ("llama", "heads", None), ("llama", "neurons", None), ("llama", "attn", 4), ("llama", "resid", 4),
    ("gpt2", "heads", None), ("gpt2", "neurons", None), ("gemma2", "heads", None), ("gemma2", "resid", 4)])
def test_attribution_patching_is_the_derivative_of_the_exact_patch(family, unit, positions, tokenizer):
    """The exact patch moved alpha of the way, differentiated at alpha = 0 (central difference, float64
    weights; eager attention keeps its softmax in float32, hence the step): the gradient estimate."""
    model = tiny.tiny_model(family).double()
    for direction in ("noising", "denoising"):
        grad = patch_gradient(model, tokenizer, PAIRS, unit, direction, positions, batch_size=2, progress=False)
        step = [patch_exact(model, tokenizer, PAIRS, unit, direction, positions, batch_size=2, alpha=a,
                            progress=False).vectors["per_pair"] for a in (1e-2, -1e-2)]
        estimate = grad.vectors["per_pair"]
        torch.testing.assert_close((step[0] - step[1]) / 2e-2, estimate, rtol=1e-3,
                                   atol=1e-3 * float(estimate.abs().max()) + 1e-5)  # + float32 softmax noise
        if unit == "neurons":  # one neuron's full patch is itself in the linear regime on a tiny model
            continue
        full = patch_exact(model, tokenizer, PAIRS, unit, direction, positions, batch_size=2, progress=False)
        assert not torch.allclose(full.vectors["per_pair"], estimate, atol=1e-3 * float(estimate.abs().max()))


def test_bad_pairs_are_one_line(tokenizer):
    with pytest.raises(UserError, match="needs a 'corrupt_prompt'"):
        contrast_pairs(tokenizer, [Example("2 + 3 = ", "5", {"corrupt_answer": "6"})])
    with pytest.raises(UserError, match=r"\+1 tokens longer"):
        contrast_pairs(tokenizer, [Example("2 + 3 = ", "5", {"corrupt_prompt": "2 + 31 = "})])
    with pytest.raises(UserError, match="start with the same token"):
        contrast_pairs(tokenizer, [Example("2 + 3 = ", "5", {"corrupt_prompt": "2 + 4 = ", "corrupt_answer": "51"})])
    pairs = contrast_pairs(tokenizer, [Example("2 + 3 = ", "5", {"corrupt_prompt": "2 + 4 = "})])
    assert pairs.metric == "answer_logprob"


def test_the_cli_writes_what_the_function_computes(tiny_dir, tmp_path):
    import json

    from click.testing import CliRunner

    from editor.cli import main
    from editor.model.loading import load_model

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": e.prompt, "answer": e.answer, **e.meta}) + "\n" for e in PAIRS))
    out = tmp_path / "out"
    got = CliRunner().invoke(main, ["attribute", "patch", "--model", str(tiny_dir), "--data", str(data),
                                    "--units", "resid", "--positions", "3", "--direction", "denoising", "--method", "exact",
                                    "--out", str(out), "--json"])
    assert got.exit_code == 0, got.output
    saved = json.loads((out / "patch_resid_positions_denoising_exact.json").read_text())
    assert (out / "patch_resid_positions_denoising_exact.png").is_file()
    lm = load_model(str(tiny_dir))
    want = patch_exact(lm.model, lm.tokenizer, PAIRS, "resid", "denoising", 3, progress=False)
    torch.testing.assert_close(torch.tensor(saved["columns"]["normalised"]), want.columns["normalised"],
                               rtol=1e-4, atol=1e-5, check_dtype=False)
    assert saved["meta"]["metric"] == "logit_difference" and len(saved["meta"]["positions"]) == 3


@pytest.mark.parametrize("rows, args, message", [
    ([{"prompt": "2 + 3 = ", "answer": "5"}], [], "row 1 has no 'corrupt_prompt'"),
    ([{"prompt": "2 + 3 = ", "answer": "5", "corrupt_prompt": "2 + 33 = "}], [], "tokens longer than the prompt"),
    ([{"prompt": "2 + 3 = ", "answer": "5", "corrupt_prompt": "2 + 4 = "}], ["--units", "resid"], "give --positions"),
    ([{"prompt": "2 + 3 = ", "answer": "5", "corrupt_prompt": "2 + 4 = "}], ["--metric", "accuracy"], "no gradient"),
    ([{"prompt": "2 + 3 = ", "answer": "5", "corrupt_prompt": "2 + 4 = "}], ["--metric", "logit_difference"],
     "row 1 has no 'corrupt_answer'"),
])
def test_bad_patching_input_is_one_line_and_writes_nothing(tiny_dir, tmp_path, rows, args, message):
    import json

    from click.testing import CliRunner

    from editor.cli import main

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    got = CliRunner().invoke(main, ["attribute", "patch", "--model", str(tiny_dir), "--data", str(data),
                                    "--out", str(out), *args])
    assert got.exit_code == 2 and message in got.output and len(got.output.strip().splitlines()) == 1, got.output
    assert not out.exists()


def test_auto_confirms_the_largest_estimates_exactly(tokenizer):
    from editor.attribution.patch_estimates import patch_auto

    model = tiny.tiny_model("qwen2")
    auto = patch_auto(model, tokenizer, PAIRS, "heads", "noising", batch_size=4, confirm=5, progress=False)
    exact = patch_exact(model, tokenizer, PAIRS, "heads", "noising", batch_size=4, progress=False)
    grad = patch_gradient(model, tokenizer, PAIRS, "heads", "noising", batch_size=4, progress=False)
    done = auto.columns["exact"].bool()
    assert int(done.sum()) == 5
    largest = grad.columns["effect"].abs().flatten().argsort(descending=True)[:5]
    assert set(largest.tolist()) == set(done.flatten().nonzero().flatten().tolist())
    torch.testing.assert_close(auto.columns["effect"][done], exact.columns["effect"][done])
    torch.testing.assert_close(auto.columns["effect"][~done], grad.columns["effect"][~done])
    assert {r["head"] for r in auto.ranked(5)} == {f"{i // 4}.{i % 4}" for i in largest.tolist()}


def test_heads_by_position_are_labelled_head_at_position(tokenizer, tmp_path):
    model = tiny.tiny_model("llama")
    got = patch_exact(model, tokenizer, PAIRS, "heads", "noising", positions=2, batch_size=8, progress=False)
    assert got.kind == "head_position" and got.shape == (3, 4 * 2)
    for rec in got.ranked(5):
        layer, rest = rec["head_position"].split(".")
        head, position = rest.split("@")
        assert got.columns["normalised"][int(layer), int(head) * 2 + int(position) + 2] == pytest.approx(rec["normalised"])
    assert (tmp_path / "h.png") in got.save(tmp_path, "h").values()


def test_the_metric_can_be_chosen(tokenizer):
    """Accuracy (the answer is the top token): the fast exact patch equals a forward per site and each
    pair's value is 0 or 1; the log-probability on pairs that have corrupt answers equals the default
    metric of the same pairs without them; estimators refuse accuracy; a logit difference needs a
    corrupt answer in every row."""
    model = tiny.arithmetic_model("llama")
    fast = patch_exact(model, tokenizer, PAIRS, "heads", "noising", batch_size=2, sites_per_pass=3, progress=False,
                       metric="accuracy")
    naive = patch_exact_naive(model, tokenizer, PAIRS, "heads", "noising", batch_size=2, metric="accuracy")
    assert fast.meta["metric"] == "accuracy" and set(naive.unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(fast.columns["effect"].flatten(), naive.mean(0) - fast.meta["clean_metric"])
    assert fast.columns["effect"].abs().max() > 0  # some head's patch flips an answer
    bare = [Example(e.prompt, e.answer, {"corrupt_prompt": e.meta["corrupt_prompt"]}) for e in PAIRS]
    chosen = patch_exact(model, tokenizer, PAIRS, "heads", "noising", batch_size=8, progress=False,
                         metric="answer_logprob")
    default = patch_exact(model, tokenizer, bare, "heads", "noising", batch_size=8, progress=False)
    torch.testing.assert_close(chosen.columns["effect"], default.columns["effect"])
    assert chosen.meta["metric"] == default.meta["metric"] == "answer_logprob"
    with pytest.raises(UserError, match="no gradient"):
        patch_gradient(model, tokenizer, PAIRS, "heads", metric="accuracy", progress=False)
    with pytest.raises(UserError, match="row 1 has no 'corrupt_answer'"):
        patch_exact(model, tokenizer, bare, "heads", metric="logit_difference", progress=False)
