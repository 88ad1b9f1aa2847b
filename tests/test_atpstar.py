"""AtP*'s GradDrop: each dropped-layer estimate is the derivative of the exact patch with that layer's
contribution held at its target value, on every family; the score is the mean magnitude over the
dropped layers; auto confirms what it ranks highest; the CLI writes what the function computes."""

import json
from contextlib import contextmanager

import pytest
import torch

import tiny
from editor.attribution.atpstar import patch_atp_star
from editor.attribution.patch_estimates import patch_auto, patch_gradient
from editor.attribution.patch_metrics import read_metric
from editor.attribution.patching import _batches, _patched, _source_run, contrast_pairs, patch_exact, sites
from editor.model.arch import Arch
from test_patching import PAIRS

SAME_LENGTH = PAIRS[:4]


@contextmanager
def _held(arch: Arch, layer: int, delta: torch.Tensor):
    """Layer ``layer`` adds ``delta`` (its contribution in the unpatched target run) to whatever it reads."""
    def post(module, args, kwargs, output):
        x = args[0] if args else kwargs["hidden_states"]
        new = x + delta
        return (new, *output[1:]) if isinstance(output, tuple) else new

    handle = arch.layers[layer].register_forward_hook(post, with_kwargs=True)
    try:
        yield
    finally:
        handle.remove()


def _frozen_layer_derivative(model, tokenizer, unit: str, direction: str, positions: int | None, layer: int,
                             step: float = 1e-2):
    """Mean over pairs of d/d(alpha) of the exact patch of each site, with ``layer`` held (central
    difference), on SAME_LENGTH (padded rows of some families turn NaN in float64)."""
    arch = Arch(model)
    pairs = contrast_pairs(tokenizer, SAME_LENGTH)
    rows = []
    for target, source, answer, wrong in _batches(model, tokenizer, pairs, len(SAME_LENGTH), direction):
        io = {}
        handle = arch.layers[layer].register_forward_hook(
            lambda m, a, k, out: io.update(x=a[0] if a else k["hidden_states"],
                                           y=out[0] if isinstance(out, tuple) else out), with_kwargs=True)
        with torch.no_grad():
            model(**target, use_cache=False)
            handle.remove()
            delta = io["y"] - io["x"]
            src, _ = _source_run(model, arch, unit, source, False)
            got = []
            for site_layer, index, position in sites(arch, unit, positions):
                value = []
                for alpha in (step, -step):
                    with _held(arch, layer, delta), \
                            _patched(arch, unit, site_layer, [(index, position)], src[site_layer], alpha):
                        value.append(read_metric(model(**target, use_cache=False).logits[:, -1], answer, wrong))
                got.append((value[0] - value[1]) / (2 * step))
        rows.append(torch.stack(got, 1))
    return torch.cat(rows).mean(0)


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_each_dropped_layer_is_the_derivative_of_the_patch_with_that_layer_held(family, tokenizer):
    model = tiny.tiny_model(family).double()
    unit, direction, positions = ("attn", "denoising", 3) if family == "llama" else ("heads", "noising", None)
    star = patch_atp_star(model, tokenizer, SAME_LENGTH, unit, direction, positions, batch_size=4, progress=False)
    for layer in range(Arch(model).n_layers):
        want = _frozen_layer_derivative(model, tokenizer, unit, direction, positions, layer)
        got = star.vectors["dropped"][layer]
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-3 * float(want.abs().max()) + 1e-5)
    # Dropping a layer changes what was estimated (the test would pass for a GradDrop that drops nothing).
    assert not torch.allclose(star.vectors["dropped"][0], star.vectors["dropped"][-1])


def test_the_score_is_the_mean_magnitude_beside_the_plain_estimate(tokenizer):
    model = tiny.tiny_model("qwen2")
    star = patch_atp_star(model, tokenizer, PAIRS, "heads", "noising", batch_size=4, progress=False)
    grad = patch_gradient(model, tokenizer, PAIRS, "heads", "noising", batch_size=4, progress=False)
    torch.testing.assert_close(star.columns["effect"], grad.columns["effect"])
    layers = star.vectors["dropped"].shape[0]
    want = star.vectors["dropped"].abs().sum(0) / (layers - 1) / abs(star.meta["gap"])
    torch.testing.assert_close(star.columns["atp_star"].flatten(), want)
    assert star.primary == "atp_star" and star.ranked(1)[0]["atp_star"] == pytest.approx(float(want.max()), rel=1e-6)
    # The top layer's sites are never changed by a dropped layer below... and are zero when their own layer drops.
    per = star.shape[1]
    top = star.vectors["dropped"][:, -per:]
    torch.testing.assert_close(top[:-1], star.columns["effect"][-1].expand(layers - 1, per).double())
    assert torch.all(top[-1] == 0)

    auto = patch_auto(model, tokenizer, PAIRS, "heads", "noising", batch_size=4, confirm=4, progress=False,
                      estimator=patch_atp_star)
    picked = star.columns["atp_star"].flatten().argsort(descending=True)[:4]
    assert set(auto.columns["exact"].flatten().nonzero().flatten().tolist()) == set(picked.tolist())
    exact = patch_exact(model, tokenizer, PAIRS, "heads", "noising", batch_size=4, progress=False)
    done = auto.columns["exact"].bool()
    torch.testing.assert_close(auto.columns["effect"][done], exact.columns["effect"][done])
    assert auto.meta["estimator"] == "patch_atp*"


def test_the_cli_runs_atp_star(tiny_dir, tmp_path):
    from click.testing import CliRunner

    from editor.cli import main
    from editor.model.loading import load_model

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": e.prompt, "answer": e.answer, **e.meta}) + "\n" for e in PAIRS))
    out = tmp_path / "out"
    got = CliRunner().invoke(main, ["attribute", "patch", "--model", str(tiny_dir), "--data", str(data),
                                    "--method", "atp*", "--out", str(out), "--json"])
    assert got.exit_code == 0, got.output
    assert "(2 forward + 1 + 3 backward, one per dropped layer" in got.output  # the tiny model's 3 layers
    saved = json.loads((out / "patch_heads_noising_atpstar.json").read_text())
    lm = load_model(str(tiny_dir))
    want = patch_atp_star(lm.model, lm.tokenizer, PAIRS, progress=False)
    torch.testing.assert_close(torch.tensor(saved["columns"]["atp_star"]), want.columns["atp_star"],
                               rtol=1e-4, atol=1e-6, check_dtype=False)


# The QK fix (queries and keys) ---------------------------------------------------------------------
def _pattern_of(model, arch: Arch, layer: int, inputs: dict, *contexts) -> torch.Tensor:
    from contextlib import ExitStack

    from editor.attribution.atpstar import _patterns

    store = {}
    with torch.no_grad(), ExitStack() as stack:
        for c in contexts:
            stack.enter_context(c)
        stack.enter_context(_patterns(arch, store))
        model(**inputs, use_cache=False)
    return store[layer].double()


@pytest.mark.parametrize("family", tiny.FAMILIES)
def test_the_patched_pattern_is_each_sites_own_exact_patch(family, tokenizer):
    """What the QK fix computes exactly: layer l's pattern with every query (key) of l patched at once
    equals, on the heads a site owns, the pattern of that site's own patch, and a site moves no other
    head's pattern (which is why one pass per layer serves all of its sites)."""
    from editor.attribution.atpstar import patched_patterns

    model = tiny.tiny_model(family)
    arch = Arch(model)
    pairs = contrast_pairs(tokenizer, PAIRS)
    target, source, _, _ = next(_batches(model, tokenizer, pairs, 8, "noising"))
    for unit, positions in (("queries", None), ("keys", None), ("keys", 2), ("queries", 2)):
        src, _ = _source_run(model, arch, unit, source, False)
        patched = {l: a.double() for l, a in patched_patterns(model, arch, unit, target, src, positions, False).items()}
        where = [None] if positions is None else list(range(-positions, 0))
        for layer in range(arch.n_layers):
            plain = _pattern_of(model, arch, layer, target)
            for index in range(arch.n_heads if unit == "queries" else arch.n_kv_heads):
                owned = [index] if unit == "queries" else arch.group_heads(index)
                for copy, position in enumerate(where):
                    one = _pattern_of(model, arch, layer, target,
                                      _patched(arch, unit, layer, [(index, position)], src[layer]))
                    torch.testing.assert_close(patched[layer][copy][:, owned], one[:, owned], rtol=1e-5, atol=1e-6)
                    others = [h for h in range(arch.n_heads) if h not in owned]
                    torch.testing.assert_close(one[:, others], plain[:, others], rtol=1e-5, atol=1e-6)
        assert any(not torch.allclose(patched[l][0], _pattern_of(model, arch, l, target)) for l in range(arch.n_layers))


def _qk_estimate(model, tokenizer, unit: str, positions: int | None, alpha: float) -> torch.Tensor:
    """The QK-fixed estimate ``[pairs, sites]`` of the patch moved ``alpha`` of the way to the source."""
    from editor.attribution.atpstar import _patterns, patched_patterns, qk_attributions
    from editor.attribution.gradient import gradients_only_for
    from editor.attribution.patch_estimates import target_graph

    arch = Arch(model)
    pairs = contrast_pairs(tokenizer, SAME_LENGTH)
    rows = []
    for target, source, answer, wrong in _batches(model, tokenizer, pairs, len(SAME_LENGTH), "noising"):
        src, _ = _source_run(model, arch, unit, source, False)
        tgt, _ = _source_run(model, arch, unit, target, False)
        moved = {l: tgt[l] + alpha * (src[l] - tgt[l]) for l in src}
        patched = patched_patterns(model, arch, unit, target, moved, positions, False)
        store = {}
        with gradients_only_for(model), target_graph(model, arch, unit, target, answer, wrong, False,
                                          _patterns(arch, store)) as (m, _):
            nodes = [store[l] for l in range(arch.n_layers)]
            grads = torch.autograd.grad(m.sum(), nodes, allow_unused=True)
        rows.append(qk_attributions(arch, unit, patched, nodes, grads))
    return torch.cat(rows)


@pytest.mark.parametrize("family, unit, positions, sharp", [
    ("gpt2", "queries", None, False), ("qwen3", "keys", 3, False), ("gpt_neox", "queries", None, True),
    ("gemma3_text", "keys", None, False), ("llama", "queries", 3, True)])
def test_the_qk_fix_of_a_small_patch_is_the_derivative(family, unit, positions, sharp, tokenizer):
    """For a patch moved alpha of the way, the QK fix divided by alpha tends to attribution patching (the
    derivative of the exact patch, tied to it in test_patching.py) with an error of order alpha: the
    heads, groups and positions each site sums over are the ones its exact patch moves. Cases whose
    effects stand clear of the float32 softmax's rounding (sharpened attention where they would not)."""
    model = (_sharpened(family) if sharp else tiny.tiny_model(family)).double()
    want = patch_gradient(model, tokenizer, SAME_LENGTH, unit, "noising", positions, batch_size=4,
                          progress=False).vectors["per_pair"]
    error = {alpha: float((_qk_estimate(model, tokenizer, unit, positions, alpha) / alpha - want).abs().max()
                          / want.abs().max()) for alpha in (1e-1, 1e-2)}
    assert error[1e-2] < 1e-2 and error[1e-2] < 0.2 * error[1e-1], error


def _sharpened(family: str):
    """A tiny model whose queries and keys are scaled up: attention near one-hot, the saturated regime."""
    model = tiny.tiny_model(family)
    arch = Arch(model)
    with torch.no_grad():
        for layer in range(arch.n_layers):
            for path in dict.fromkeys(arch.spec.attn_qkv[:2]):
                arch.layer_module(layer, path).weight.mul_(6.0)
    return model


@pytest.mark.parametrize("family", ["llama", "gpt_neox", "gemma"])
def test_the_qk_fix_beats_attribution_patching_where_attention_saturates(family, tokenizer):
    model = _sharpened(family)
    for unit in ("keys", "queries"):
        exact = patch_exact(model, tokenizer, PAIRS, unit, "noising", batch_size=8, progress=False)
        grad = patch_gradient(model, tokenizer, PAIRS, unit, "noising", batch_size=8, progress=False)
        star = patch_atp_star(model, tokenizer, PAIRS, unit, "noising", batch_size=8, progress=False)
        error = {name: float((r.columns["effect"] - exact.columns["effect"]).abs().sum()) for name, r in
                 (("gradient", grad), ("qk", star))}
        # Keys saturate hardest (one key can take a head's whole attention): there the fix must halve the error.
        assert error["qk"] < (0.5 if unit == "keys" else 1.0) * error["gradient"], (unit, error)
        assert star.meta["qk_fix"] and star.primary == "atp_star"


def test_the_cli_patches_keys_by_position_with_the_qk_fix(tiny_dir, tmp_path):
    from click.testing import CliRunner

    from editor.cli import main
    from editor.model.loading import load_model

    data = tmp_path / "pairs.jsonl"
    data.write_text("".join(json.dumps({"prompt": e.prompt, "answer": e.answer, **e.meta}) + "\n" for e in PAIRS))
    out = tmp_path / "out"
    got = CliRunner().invoke(main, ["attribute", "patch", "--model", str(tiny_dir), "--data", str(data), "--units",
                                    "keys", "--positions", "3", "--method", "atp*", "--out", str(out), "--top", "5"])
    assert got.exit_code == 0, got.output
    assert "and 3 patched forward passes per batch (over 3 copies) for the exact attention patterns" in got.output
    saved = json.loads((out / "patch_keys_positions_noising_atpstar.json").read_text())
    assert saved["kind"] == "key_position" and saved["meta"]["qk_fix"]
    assert (out / "patch_keys_positions_noising_atpstar.png").is_file()
    lm = load_model(str(tiny_dir))
    want = patch_atp_star(lm.model, lm.tokenizer, PAIRS, "keys", "noising", 3, progress=False)
    torch.testing.assert_close(torch.tensor(saved["columns"]["atp_star"]), want.columns["atp_star"],
                               rtol=1e-4, atol=1e-6, check_dtype=False)
    groups = Arch(lm.model).n_kv_heads
    assert {r["key_position"].split("@")[1] for r in saved["top"]} <= {"-3", "-2", "-1"}
    assert all(0 <= int(r["key_position"].split(".")[1].split("@")[0]) < groups for r in saved["top"])
