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
from editor.attribution.patching import _batches, _patched, _source_run, contrast_pairs, metric, patch_exact, sites
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
                        value.append(metric(model(**target, use_cache=False).logits[:, -1], answer, wrong))
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
