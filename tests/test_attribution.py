"""Attribution exactness: fast scores equal slow, obviously correct references on every family."""

import json

import pytest
import torch

import tiny
from editor.attribution.cna import cna
from editor.attribution.heads import head_ablation_scan, head_ablation_scan_naive, head_logprob_increase
from editor.attribution.neurons import neuron_logprob_increase
from editor.attribution.query import query_neurons, value_keys
from editor.attribution.results import ComponentScores
from editor.edit.plan import EditPlan
from editor.model.arch import Arch, weight_in_slice
from editor.model.capture import capture, encode
from editor.tasks.examples import Example, fit_to_tokenizer, gold_token_ids

EXAMPLES = [Example("12+3=", "15"), Example("a b c", " d"), Example("7*8=", "56"), Example("Q: 1?", " A"),
            Example("The sum of 4 and 5 is", " 9")]


def _reference_logprob(model, arch, h_final, v, target):
    """log p(target | v) with the final norm's scale frozen at h_final, written out from the definition."""
    norm = arch.final_norm
    eps = getattr(norm, "variance_epsilon", None) or getattr(norm, "eps")
    g = norm.weight.float() + (1.0 if arch.spec.norm == "rms_plus_one" else 0.0)
    if arch.spec.norm == "layernorm":
        sigma = torch.sqrt(h_final.var(unbiased=False) + eps)
        v = v - v.mean()
    else:
        sigma = torch.sqrt(h_final.pow(2).mean() + eps)
    z = arch.unembed.weight.float() @ (g * v / sigma)
    if getattr(arch.unembed, "bias", None) is not None:  # GPT-J's lm_head has a bias
        z = z + arch.unembed.bias.float()
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        z = cap * torch.tanh(z / cap)
    return torch.log_softmax(z, -1)[target]


def _post(arch, model, layer, path, original, vector):
    """Frozen post-norm of a sublayer (Gemma 2/3); identity elsewhere."""
    if path is None:
        return vector
    norm = arch.layers[layer].get_submodule(path)
    sigma = torch.sqrt(original.pow(2).mean() + norm.eps)
    return vector * (1 + norm.weight.float()) / sigma


@torch.no_grad()
def test_static_head_scores_equal_vector_by_vector_reference(family, tokenizer):
    model = tiny.tiny_model(family)
    arch = Arch(model)
    fast = head_logprob_increase(model, tokenizer, EXAMPLES, target="gold", batch_size=2, progress=False)
    ref = torch.zeros(len(EXAMPLES), arch.n_layers, arch.n_heads)
    fitted = fit_to_tokenizer(tokenizer, EXAMPLES)
    for b, (ex, target) in enumerate(zip(fitted, gold_token_ids(tokenizer, fitted))):
        got = capture(model, encode(tokenizer, [ex.prompt]), what=["resid_pre", "head_out", "resid_post", "attn_out"])
        h_final = got.resid_post[0, -1]
        for layer in range(arch.n_layers):
            x = got.resid_pre[0, layer]
            base = _reference_logprob(model, arch, h_final, x, target)
            for head in range(arch.n_heads):
                o = _post(arch, model, layer, arch.spec.attn_post_norm, got.attn_out[0, layer], got.head_out[0, layer, head])
                ref[b, layer, head] = _reference_logprob(model, arch, h_final, x + o, target) - base
    torch.testing.assert_close(fast.columns["mean"], ref.mean(0), atol=1e-5, rtol=0)
    assert ref.abs().max() > 1e-4  # the scores are not trivially zero


@pytest.mark.parametrize("kind", ["mlp", "attn"])
@torch.no_grad()
def test_neuron_scores_equal_vector_by_vector_reference(family, tokenizer, kind):
    model = tiny.tiny_model(family)
    arch = Arch(model)
    fast = neuron_logprob_increase(model, tokenizer, EXAMPLES, kind=kind, target="gold", batch_size=2,
                                   group_size=3, progress=False)
    full_sum = neuron_logprob_increase(model, tokenizer, EXAMPLES, kind=kind, target="gold", tol=None, progress=False)
    b = 4  # check one prompt fully by hand
    ex = EXAMPLES[b]
    fitted = fit_to_tokenizer(tokenizer, [ex])
    target = gold_token_ids(tokenizer, fitted)[0]
    got = capture(model, encode(tokenizer, [fitted[0].prompt]), what=["resid_pre", "resid_mid", "resid_post",
                                                                       "neuron_coef", "attn_z", "attn_out", "mlp_out"])
    single = neuron_logprob_increase(model, tokenizer, [ex], kind=kind, target="gold", progress=False)
    h_final = got.resid_post[0, -1]
    layer = arch.n_layers - 1
    if kind == "mlp":
        x, coef, proj, path, orig = (got.resid_mid[0, layer], got.neuron_coef[0, layer], arch.mlp_out(layer),
                                     arch.spec.mlp_post_norm, got.mlp_out[0, layer])
    else:
        x, coef, proj, path, orig = (got.resid_pre[0, layer], got.attn_z[0, layer], arch.attn_out(layer),
                                     arch.spec.attn_post_norm, got.attn_out[0, layer])
    values = weight_in_slice(proj, slice(None)).float()
    base = _reference_logprob(model, arch, h_final, x, target)
    ref = torch.stack([_reference_logprob(model, arch, h_final, x + _post(arch, model, layer, path, orig, coef[k] * values[k]),
                                          target) - base for k in range(values.shape[0])])
    torch.testing.assert_close(single.columns["mean"][layer], ref, atol=1e-5, rtol=0)
    torch.testing.assert_close(fast.columns["mean"], full_sum.columns["mean"], atol=1e-5, rtol=0)
    torch.testing.assert_close(single.columns["coef_mean"][layer], coef.float(), atol=0, rtol=0)


FACTOR = 100.0


@torch.no_grad()
def test_series_and_full_sums_agree_when_both_are_used(tokenizer):
    """A large final-norm gain pushes some (prompt, neuron) pairs past the series' bound: both paths run."""
    model = tiny.tiny_model("llama")
    model.model.norm.weight.mul_(FACTOR)
    series = neuron_logprob_increase(model, tokenizer, EXAMPLES, progress=False)
    full = neuron_logprob_increase(model, tokenizer, EXAMPLES, tol=None, progress=False)
    assert 0.0 < series.meta["exact_sum_fraction"] < 1.0
    torch.testing.assert_close(series.columns["mean"], full.columns["mean"], atol=1e-5, rtol=0)
    assert full.columns["mean"].abs().max() > 1e-2


def test_fast_ablation_scan_equals_naive(family, tokenizer):
    model = tiny.tiny_model(family)
    fast = head_ablation_scan(model, tokenizer, EXAMPLES, batch_size=2, heads_per_pass=3, progress=False)
    naive = head_ablation_scan_naive(model, tokenizer, EXAMPLES, batch_size=5, progress=False)
    for col in ("logp_drop", "acc_drop", "ablated_acc"):
        torch.testing.assert_close(fast.columns[col], naive.columns[col], atol=1e-5, rtol=0)
    assert fast.columns["logp_drop"].abs().max() > 1e-4
    assert fast.meta["base_acc"] == naive.meta["base_acc"]
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == 0
    assert all("forward" not in vars(layer) for layer in Arch(model).layers)  # stubs removed


def test_cna_identical_conditions_is_zero_and_ablation_is_not(tokenizer):
    model = tiny.tiny_model("gpt2")
    same = cna(model, tokenizer, EXAMPLES, examples_b=list(EXAMPLES), progress=False)
    assert same.columns["diff"].abs().max() == 0
    twin = cna(model, tokenizer, EXAMPLES, model_b=model, progress=False)
    assert twin.columns["diff"].abs().max() == 0
    cut = cna(model, tokenizer, EXAMPLES, ablate=EditPlan().zero("head", ["0.1", "1.2"]), progress=False)
    assert cut.columns["diff"].abs().max() > 1e-6
    torch.testing.assert_close(cut.columns["importance_a"], same.columns["importance_a"])
    assert {"diff", "importance_a", "importance_b", "coef_a", "coef_b"} == set(cut.columns)


@torch.no_grad()
def test_query_neurons_match_explicit_inner_products(tokenizer):
    model = tiny.tiny_model("llama")
    arch = Arch(model)
    values = neuron_logprob_increase(model, tokenizer, EXAMPLES, layers=[2], progress=False)
    q = query_neurons(model, tokenizer, EXAMPLES, values, top_values=1, progress=False)
    top = values.ranked(1)[0]
    keys = value_keys(arch, 2, top["index"])
    assert keys.shape == (2, arch.d_model)  # gate and up rows
    torch.testing.assert_close(keys[0], model.model.layers[2].mlp.gate_proj.weight[top["index"]]
                               * model.model.layers[2].post_attention_layernorm.weight)
    got = capture(model, encode(tokenizer, [e.prompt for e in EXAMPLES], padding_side="left"), what=["neuron_coef"])
    layer, k = 1, 5
    f = model.model.layers[layer].mlp.down_proj.weight[:, k]
    expected = (got.neuron_coef[:, layer, k] * top["mean"] * (keys @ f).sum()).mean()
    torch.testing.assert_close(q.columns["query_score"][layer, k], expected, atol=1e-6, rtol=1e-4)
    assert q.columns["query_score"][2:].abs().max() == 0  # only layers below the value neuron


def test_results_serialise(tmp_path, tokenizer):
    model = tiny.tiny_model("llama")
    scores = head_logprob_increase(model, tokenizer, EXAMPLES, progress=False)
    paths = scores.save(tmp_path, "heads")
    data = json.loads(paths["json"].read_text())
    back = ComponentScores.from_json(data)
    torch.testing.assert_close(back.columns["mean"], scores.columns["mean"])
    assert data["top"][0]["head"] == scores.ranked(1)[0]["head"]
    assert paths["csv"].read_text().splitlines()[0].startswith("rank,head,layer,index,mean")
    assert paths["png"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    ranked = [r["mean"] for r in scores.ranked()]
    assert ranked == sorted(ranked, reverse=True) and len(ranked) == 12


@torch.no_grad()
def test_query_keys_of_attention_value_neurons_follow_grouped_query_attention(tokenizer):
    model = tiny.tiny_model("llama")  # 4 heads, 2 KV heads, head_dim 8
    arch = Arch(model)
    key = value_keys(arch, 1, 3 * arch.head_dim + 5, kind="attn_neuron")  # head 3 -> KV head 1, dim 5
    layer = model.model.layers[1]
    torch.testing.assert_close(key[0], layer.self_attn.v_proj.weight[arch.head_dim + 5] * layer.input_layernorm.weight)
    values = neuron_logprob_increase(model, tokenizer, EXAMPLES, kind="attn", layers=[2], progress=False)
    q = query_neurons(model, tokenizer, EXAMPLES, values, top_values=2, progress=False)
    assert q.columns["query_score"][:2].abs().max() > 0 and q.columns["query_score"][2:].abs().max() == 0
    from editor.errors import UserError

    with pytest.raises(UserError, match="fuses"):
        value_keys(Arch(tiny.tiny_model("gpt2")), 1, 0, kind="attn_neuron")


@torch.no_grad()
def test_vocabulary_projection(tokenizer):
    from editor.attribution.vocab import neuron_tokens, project

    model = tiny.tiny_model("llama")
    arch = Arch(model)
    target = tokenizer.convert_tokens_to_ids("7")
    direction = arch.unembed.weight[target] / model.model.norm.weight  # g * v = W_U[7]
    got = project(arch, tokenizer, direction, k=3)
    scores = arch.unembed.weight @ arch.unembed.weight[target]
    assert got["top"][0] == tokenizer.decode([int(scores.argmax())])
    assert got["bottom"][0] == tokenizer.decode([int(scores.argmin())])
    f = model.model.layers[1].mlp.down_proj.weight[:, 4]
    expected = (arch.unembed.weight @ (f * model.model.norm.weight)).topk(2).indices.tolist()
    assert neuron_tokens(arch, tokenizer, 1, 4, k=2)["top"] == [tokenizer.decode([i]) for i in expected]
