"""Gradient attribution equals the finite-difference derivative of the exact metric, on every family."""

import torch

import tiny
from editor.attribution.gradient import gradient_effects
from editor.edit.plan import EditPlan
from editor.edit.weights import apply_plan
from editor.model.arch import Arch
from editor.tasks.examples import Example, answer_ids, fit_to_tokenizer

EXAMPLES = [Example("12+3=", "15"), Example("The sum of 4 and 5 is", " 9"), Example("a b", " c d"),
            Example("7*8=", "56")]


@torch.no_grad()
def _metric(model, tokenizer) -> torch.Tensor:
    """Summed gold log-probability per example, one unpadded forward each, in float64 (the harness
    rounds to float32, too coarse for a finite difference)."""
    out = []
    for ex in fit_to_tokenizer(tokenizer, EXAMPLES):  # as the harness and the attribution both do
        ans = answer_ids(tokenizer, ex.prompt, ex.answer)
        ids = torch.tensor([tokenizer(ex.prompt)["input_ids"] + ans])
        logp = model(input_ids=ids).logits[0, -len(ans) - 1:-1].double().log_softmax(-1)
        out.append(logp.gather(-1, torch.tensor(ans)[:, None]).sum())
    return torch.stack(out)


def _finite_difference(model, tokenizer, kind, component, eps=1e-2) -> torch.Tensor:
    """-(d metric / d t) at t = 1 for the component scaled by t: the first-order zeroing effect.

    Central differences (error ~eps^2); eps is not tiny because RMSNorm computes in float32 even in a
    float64 model."""
    values = []
    for t in (1 + eps, 1 - eps):
        with apply_plan(model, EditPlan().scale(kind, [component], t)):
            values.append(_metric(model, tokenizer))
    return -(values[0] - values[1]) / (2 * eps)


def test_gradient_effects_match_finite_differences(family, tokenizer):
    model = tiny.tiny_model(family).double()
    arch = Arch(model)
    # One prompt per batch: float64 eager attention turns fully masked pad rows into NaN (float32 does
    # not); padding is covered by test_padding_does_not_change_the_effects.
    effects = gradient_effects(model, tokenizer, EXAMPLES, batch_size=1, progress=False)
    assert torch.allclose(effects.metric.double(), _metric(model, tokenizer), atol=1e-4)
    for layer, neuron in ((0, 1), (arch.n_layers - 1, 5)):
        fd = _finite_difference(model, tokenizer, "neuron", (layer, neuron))
        assert torch.allclose(effects.neurons[:, layer, neuron].double(), fd, rtol=1e-3, atol=1e-5), (layer, neuron)
    for layer, head in ((0, 0), (1, arch.n_heads - 1)):
        fd = _finite_difference(model, tokenizer, "head", (layer, head))
        assert torch.allclose(effects.heads[:, layer, head].double(), fd, rtol=1e-3, atol=1e-5), (layer, head)
    assert effects.neurons.abs().sum() > 0 and effects.heads.abs().sum() > 0 and effects.layers.abs().sum() > 0


def test_layer_effect_is_the_derivative_of_scaling_the_block_delta(tokenizer):
    model = tiny.tiny_model("llama").double()
    arch = Arch(model)
    effects = gradient_effects(model, tokenizer, EXAMPLES, batch_size=1, progress=False)
    layer, eps, values = 1, 1e-2, []
    for t in (1 + eps, 1 - eps):
        def hook(module, args, kwargs, output, t=t):
            x = args[0] if args else kwargs["hidden_states"]
            out = output[0] if isinstance(output, tuple) else output
            new = x + t * (out - x)
            return (new,) + tuple(output[1:]) if isinstance(output, tuple) else new
        h = arch.layers[layer].register_forward_hook(hook, with_kwargs=True)
        values.append(_metric(model, tokenizer))
        h.remove()
    fd = -(values[0] - values[1]) / (2 * eps)
    assert torch.allclose(effects.layers[:, layer].double(), fd, rtol=1e-3, atol=1e-5)


def test_padding_does_not_change_the_effects(family, tokenizer):
    model = tiny.tiny_model(family)
    alone = gradient_effects(model, tokenizer, EXAMPLES, batch_size=1, progress=False)
    padded = gradient_effects(model, tokenizer, EXAMPLES, batch_size=4, progress=False)
    for a, b in ((alone.neurons, padded.neurons), (alone.heads, padded.heads), (alone.layers, padded.layers),
                 (alone.metric, padded.metric)):
        assert torch.allclose(a, b, atol=1e-4, rtol=1e-3)


CONTRAST = [Example("12+4=", "15"), Example("The sum of 4 and 6 is", " 9"), Example("a c", " c d"),
            Example("7*9=", "56")]


def test_patching_effects_match_finite_differences(family, tokenizer):
    """Patching a head or neuron from the contrast prompt: the estimate equals the derivative of the
    exact metric along a -> a + t (a_contrast - a) at t = 0."""
    model = tiny.tiny_model(family).double()
    arch = Arch(model)
    effects = gradient_effects(model, tokenizer, EXAMPLES, batch_size=1, progress=False, contrast=CONTRAST)
    for kind, layer, index in (("head", 0, arch.n_heads - 1), ("neuron", arch.n_layers - 1, 3)):
        proj = arch.attn_out(layer) if kind == "head" else arch.mlp_out(layer)
        width = arch.head_dim if kind == "head" else 1
        cols = slice(index * width, (index + 1) * width)
        values = []
        for t in (1e-2, -1e-2):
            per_example = []
            for ex, other in zip(fit_to_tokenizer(tokenizer, EXAMPLES), fit_to_tokenizer(tokenizer, CONTRAST)):
                ans = answer_ids(tokenizer, ex.prompt, ex.answer)
                ids = torch.tensor([tokenizer(ex.prompt)["input_ids"] + ans])
                ids_b = torch.tensor([tokenizer(other.prompt)["input_ids"] + ans])
                seen = {}
                grab = proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("x", a[0].clone()))
                with torch.no_grad():
                    model(input_ids=ids_b)
                grab.remove()

                def patch(m, a, t=t, seen=seen):
                    x = a[0].clone()
                    x[..., cols] = x[..., cols] + t * (seen["x"][..., cols] - x[..., cols])
                    return (x,) + tuple(a[1:])
                h = proj.register_forward_pre_hook(patch)
                with torch.no_grad():
                    logp = model(input_ids=ids).logits[0, -len(ans) - 1:-1].double().log_softmax(-1)
                h.remove()
                per_example.append(logp.gather(-1, torch.tensor(ans)[:, None]).sum())
            values.append(torch.stack(per_example))
        fd = (values[0] - values[1]) / 2e-2
        got = (effects.heads if kind == "head" else effects.neurons)[:, layer, index].double()
        assert torch.allclose(got, fd, rtol=1e-3, atol=1e-5), (kind, got, fd)
    assert effects.heads.abs().sum() > 0


def test_patching_needs_pairs_of_the_same_length(tokenizer):
    import pytest

    from editor.errors import UserError

    with pytest.raises(UserError, match="same length"):
        gradient_effects(tiny.tiny_model("llama"), tokenizer, EXAMPLES[:1], contrast=[Example("123+3=", "15")],
                         progress=False)
