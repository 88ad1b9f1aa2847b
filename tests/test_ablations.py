"""Mean, resample and zero ablation through the patching machinery: zero-ablation equals the head
ablation scan (two implementations), mean-ablation replaces by the mean a hand computation gives
(and is a no-op on identical prompts), resample pairs each prompt with another of its length."""

import pytest
import torch

import tiny
from editor.attribution.ablations import paired
from editor.attribution.heads import head_ablation_scan
from editor.attribution.patch_estimates import patch_gradient
from editor.attribution.patching import _batches, _source_run, patch_exact, prepare
from editor.errors import UserError
from editor.model.arch import Arch
from editor.tasks.examples import Example

ROWS = [Example(p, a) for p, a in [("2 + 3 = ", "5"), ("1 + 1 = ", "2"), ("10 + 2 = ", "1"), ("4 + 3 = ", "7"),
                                   ("30 + 2 = ", "3"), ("3 + 3 = ", "6")]]


def test_zero_ablation_equals_the_head_ablation_scan(tokenizer):
    model = tiny.tiny_model("llama")
    patched = patch_exact(model, tokenizer, ROWS, "heads", ablation="zero", batch_size=4, progress=False)
    scan = head_ablation_scan(model, tokenizer, ROWS, batch_size=4, progress=False)
    torch.testing.assert_close(patched.columns["normalised"].float(), scan.columns["logp_drop"], rtol=1e-4, atol=1e-4)
    assert patched.meta["gap"] is None and patched.meta["ablation"] == "zero"


def test_mean_ablation_replaces_by_the_mean_over_prompts_at_each_position_from_the_end(tokenizer):
    model = tiny.tiny_model("gpt2")
    arch = Arch(model)
    pairs = prepare(model, tokenizer, ROWS, "attn", ablation="mean", batch_size=4)
    # By hand: each prompt alone (no padding), its attention outputs aligned at the prompt's end.
    length = max(len(tokenizer(e.prompt)["input_ids"]) for e in ROWS)
    total, count = torch.zeros(arch.n_layers, length, arch.d_model, dtype=torch.float64), torch.zeros(length)
    for e in ROWS:
        one = prepare(model, tokenizer, [e], "attn", ablation="zero")
        target, _, _, _ = next(_batches(model, tokenizer, one, 1, "noising"))
        store, _ = _source_run(model, arch, "attn", target, False)
        t = store[0].shape[1]
        for l in range(arch.n_layers):
            total[l, length - t:] += store[l][0].double()
        count[length - t:] += 1
    for l in range(arch.n_layers):
        torch.testing.assert_close(pairs.means[l], total[l] / count[:, None], rtol=1e-5, atol=1e-6)
    # The same prompt everywhere: its mean is itself, and mean-ablation changes nothing.
    same = patch_exact(model, tokenizer, [ROWS[0]] * 3, "heads", ablation="mean", progress=False)
    assert same.columns["effect"].abs().max() < 1e-5
    varied = patch_exact(model, tokenizer, ROWS, "heads", ablation="mean", batch_size=4, progress=False)
    assert varied.columns["effect"].abs().max() > 1e-4


def test_the_ablations_estimate_and_patch_through_one_machinery(tokenizer):
    """The gradient estimate of an ablation is the derivative of its exact patch scaled by alpha -> 0
    (same-length rows: padded rows turn NaN in float64 on some families)."""
    model = tiny.tiny_model("llama").double()
    rows = [ROWS[i] for i in (0, 1, 3, 5)]
    grad = patch_gradient(model, tokenizer, rows, "heads", ablation="mean", batch_size=4, progress=False)
    step = [patch_exact(model, tokenizer, rows, "heads", ablation="mean", batch_size=4, alpha=a,
                        progress=False).vectors["per_pair"] for a in (1e-2, -1e-2)]
    torch.testing.assert_close((step[0] - step[1]) / 2e-2, grad.vectors["per_pair"], rtol=1e-3,
                               atol=1e-3 * float(grad.vectors["per_pair"].abs().max()) + 1e-5)


def test_resample_pairs_each_prompt_with_another_of_its_length(tokenizer):
    rows = paired(tokenizer, ROWS, "resample", seed=3)
    for e, r in zip(ROWS, rows):
        other = r.meta["corrupt_prompt"]
        assert other != e.prompt and other in [x.prompt for x in ROWS]
        assert len(tokenizer(other)["input_ids"]) == len(tokenizer(e.prompt)["input_ids"])
    assert paired(tokenizer, ROWS, "resample", seed=3) == rows
    with pytest.raises(UserError, match="row 3 is the only one of"):
        paired(tokenizer, ROWS[:4], "resample")
    with pytest.raises(UserError, match="no denoising direction"):
        prepare(tiny.tiny_model("llama"), tokenizer, ROWS, "heads", "denoising", ablation="mean")
    model = tiny.tiny_model("qwen2")
    got = patch_exact(model, tokenizer, ROWS, "heads", ablation="resample", seed=3, batch_size=4, progress=False)
    assert got.meta["ablation"] == "resample" and got.meta["gap"] is not None


def test_the_cli_ablates_a_plain_task(tiny_dir, tmp_path):
    """A completion file without counterfactuals: mean-ablation from the command line, as the function
    computes it; the denoising direction of a mean ablation is one line and writes nothing."""
    import json

    from click.testing import CliRunner

    from editor.cli import main
    from editor.model.loading import load_model

    data = tmp_path / "plain.jsonl"
    data.write_text("".join(json.dumps({"prompt": e.prompt, "answer": e.answer}) + "\n" for e in ROWS))
    out = tmp_path / "out"
    args = ["attribute", "patch", "--model", str(tiny_dir), "--data", str(data), "--method", "exact", "--out", str(out)]
    got = CliRunner().invoke(main, [*args, "--ablation", "mean", "--json"])
    assert got.exit_code == 0, got.output
    saved = json.loads((out / "patch_heads_noising_exact_mean.json").read_text())
    lm = load_model(str(tiny_dir))
    want = patch_exact(lm.model, lm.tokenizer, ROWS, "heads", ablation="mean", progress=False)
    torch.testing.assert_close(torch.tensor(saved["columns"]["normalised"]), want.columns["normalised"],
                               rtol=1e-4, atol=1e-6, check_dtype=False)
    bad = CliRunner().invoke(main, [*args, "--ablation", "zero", "--direction", "denoising"])
    assert bad.exit_code == 2 and "use --direction noising" in bad.output and len(bad.output.strip().splitlines()) == 1
    missing = CliRunner().invoke(main, args)  # corrupt (the default) needs counterfactuals
    assert missing.exit_code == 2 and "no 'corrupt_prompt'" in missing.output


def test_answers_with_a_leading_space_keep_the_twins_aligned(tokenizer):
    """The char tokenizer makes " 5"'s space a token of its own, so the prompt takes it: the corrupt
    (or ablated) prompt must take it too, and the corrupt answer lose it, or the pair is refused."""
    from editor.attribution.patching import contrast_pairs

    spaced = [Example(e.prompt.rstrip(), " " + e.answer) for e in ROWS]
    model = tiny.tiny_model("llama")
    torch.testing.assert_close(
        patch_exact(model, tokenizer, spaced, "heads", ablation="zero", batch_size=4, progress=False).columns["effect"],
        patch_exact(model, tokenizer, ROWS, "heads", ablation="zero", batch_size=4, progress=False).columns["effect"])
    pairs = contrast_pairs(tokenizer, [Example("2 + 3 =", " 5", {"corrupt_prompt": "2 + 6 =", "corrupt_answer": " 8"})])
    assert pairs.corrupt[0] == tokenizer("2 + 6 = ")["input_ids"] and pairs.wrong == [tokenizer("8")["input_ids"][-1]]
