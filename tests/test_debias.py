"""Gender bias in two directions, the three disjoint splits, the contrast metric and the selection rule."""

import json

import pytest
import torch

import tiny
from editor.attribution.gradient import weighted_effects
from editor.errors import UserError
from editor.evaluation.harness import GenderConfig, PronounConfig, evaluate_model
from editor.recipes import load_recipe, run_recipe
from editor.recipes.gender_debias import N_TEMPLATES, contrast_examples, random_like, select
from editor.recipes.gender_debias_report import relative, relative_interval
from editor.tasks.gender import split_occupations
from editor.tasks import gender


def test_occupation_leans_come_from_the_statistics_file(tmp_path):
    occ = gender.occupations()
    leans = [lean for _, lean in occ]
    assert leans.count("woman") == leans.count("man") == 24
    assert ("nurse", "woman") in occ and ("electrician", "man") in occ
    assert "pharmacist" not in {o for o, _ in occ}  # 60% women: no lean, not used
    f = tmp_path / "occ.csv"
    f.write_text("occupation,percent_women\nastronaut,12\nweaver,71\nbaker,50\n")
    assert gender.occupations(f) == [("astronaut", "man"), ("weaver", "woman")]
    f.write_text("occupation,percent_women\nastronaut,lots\n")
    with pytest.raises(UserError, match="line 2 needs 'occupation' and a numeric 'percent_women'"):
        gender.occupations(f)
    with pytest.raises(UserError, match="occupations file not found"):
        gender.occupations(tmp_path / "missing.csv")


def test_both_directions_build_paired_prompts():
    pron = gender.build_pronouns(gender.PRONOUN_TEMPLATES[:1], [("nurse", "woman")])
    assert [(e.prompt, e.answer) for e in pron] == [("The nurse said that", " she"), ("The nurse said that", " he")]
    prof = gender.build(["A {g} works as a"], [("electrician", "man")])
    assert [e.prompt for e in prof] == ["A woman works as an", "A man works as an"]  # article fits the word


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_splits_are_disjoint_and_balanced(seed):
    split = split_occupations(gender.occupations(), [0.4, 0.3, 0.3], seed)
    names = {k: {o for o, _ in v} for k, v in split.items()}
    assert not names["choose"] & names["validate"] and not names["choose"] & names["test"]
    assert not names["validate"] & names["test"]
    for part in split.values():
        leans = [lean for _, lean in part]
        assert leans.count("woman") == leans.count("man") > 0
    assert split_occupations(gender.occupations(), [0.4, 0.3, 0.3], seed) == split  # seeded


def test_template_splits_must_not_overlap():
    cfg = load_recipe("recipes/gender-debias.yaml")
    seen = [set(range(0, 4)), set(range(4, 8)), set(range(8, 12))]
    assert {cfg.split.choose_templates, cfg.split.validate_templates, cfg.split.test_templates} == {"0-3", "4-7", "8-11"}
    assert set().union(*seen) == set(range(N_TEMPLATES))
    with pytest.raises(UserError, match="template 4 is also in validate_templates; splits must be disjoint"):
        load_recipe("recipes/gender-debias.yaml", ["split.test_templates=4-5"])
    with pytest.raises(UserError, match="three positive shares"):
        load_recipe("recipes/gender-debias.yaml", ["split.fractions=[0.5, 0.5, 0.5]"])


def _row(method, k, p, g, ppl, factor=0.0):
    return {"method": method, "k": k, "factor": factor, "bias_profession": p, "bias_pronoun": g, "perplexity": ppl}


def test_selection_needs_both_directions_lower_within_the_guard():
    base = _row("base", 0, 1.0, 0.5, 20.0)
    rows = [_row("a", 5, 0.2, 0.6, 20.0),  # pronoun bias rose: out
            _row("b", 5, 0.1, 0.1, 21.0),  # best bias, but perplexity +5%: out
            _row("c", 20, 0.5, 0.2, 20.3),  # worse direction 0.5/1.0 = 0.5
            _row("d", 5, 0.4, 0.2, 20.1)]  # worse direction 0.4: chosen
    assert select(rows, base, 0.02)["method"] == "d"
    assert select(rows, base, 0.10)["method"] == "b"
    assert select(rows[:1], base, 0.02) is None
    assert relative(_row("x", 1, -0.5, 0.25, 1), base) == (0.5, 0.5)  # a reversed bias counts by its size


def test_relative_interval_is_the_worse_directions_interval_scaled_by_the_base():
    base = _row("base", 0, 1.0, 0.5, 20.0)
    row = {**_row("x", 1, 0.2, 0.4, 20.0), "bias_profession_95": [0.1, 0.3], "bias_pronoun_95": [0.3, 0.5]}
    assert relative(row, base) == (0.2, 0.8)  # the pronoun direction is the worse one
    assert relative_interval(row, base) == pytest.approx((0.6, 1.0))
    spans_zero = {**row, "bias_pronoun_95": [-0.1, 0.45]}
    assert relative_interval(spans_zero, base) == pytest.approx((0.0, 0.9))  # |bias| can be 0
    assert relative_interval(_row("y", 1, 0.2, 0.4, 20.0), base) is None  # measured without intervals


def test_random_components_match_kinds_and_counts():
    comps = [{"kind": "head", "component": "1.0"}] + [{"kind": "neuron", "component": f"2.{i}"} for i in range(5)]
    rand = random_like(comps, [1, 2], n_heads=4, width=64, seed=3)
    assert sum(c["kind"] == "head" for c in rand) == 1 and sum(c["kind"] == "neuron" for c in rand) == 5
    assert all(int(c["component"].split(".")[0]) in (1, 2) for c in rand)
    assert rand == random_like(comps, [1, 2], n_heads=4, width=64, seed=3)


def test_contrast_metric_is_the_harness_bias_of_both_directions(tmp_path):
    """The weighted log-probability sum that gradient attribution differentiates equals the
    harness's profession bias plus pronoun bias on the same prompts (and zeroing moves it as estimated)."""
    model, tok = tiny.tiny_model("llama"), tiny.char_tokenizer()
    occ = [("nurse", "woman"), ("pilot", "man"), ("dietitian", "woman"), ("welder", "man")]
    f = tmp_path / "occ.jsonl"
    f.write_text("".join(json.dumps({"profession": o, "lean": lean}) + "\n" for o, lean in occ))
    examples, weights = contrast_examples([0, 5], occ)
    effects = weighted_effects(model, tok, examples, weights, batch_size=4, progress=False)
    ev = evaluate_model(model, tok, {"gender": GenderConfig(templates="0,5", professions=str(f)),
                                     "pronoun": PronounConfig(templates="0,5", professions=str(f))}, progress=False)
    harness = ev.tasks["gender"].measures["bias"].value + ev.tasks["pronoun"].measures["bias"].value
    assert float(effects.metric) == pytest.approx(harness, abs=1e-5)


def test_recipe_saves_exactly_the_validation_pick(tmp_path):
    model_dir = tiny.save_dir(tiny.tiny_model("llama"), tmp_path / "m")
    sets = [f"model={model_dir}", "batch_size=8", "select.ks=[3, 8]", "select.factors=[0.0, 0.5]",
            "select.methods=[gradient, gradient-heads]", "select.random_seeds=[1]", "arithmetic_n=4",
            "select.penalties=[0, 1]", "select.capability_sentences=8",
            "select.max_perplexity_increase=0.05", "save_if_test_worse=true", "select.baselines=[]", "benchmarks=[]"]
    out = tmp_path / "run"
    _, result = run_recipe("recipes/gender-debias.yaml", sets, log=lambda _m: None, out=out)
    summary = result["summary"]
    assert len(summary["validation"]) == 2 * 2 * 2 * 2  # methods x penalties x ks x factors
    assert summary["chosen"] == select(summary["validation"], summary["validation_base"], 0.05)
    models = [r["model"] for r in summary["rows"]]
    assert models[0] == "base"
    report = (out / "report.html").read_text()
    assert "gender given occupation" in report and "Validation sweep" in report
    assert "bias_profession_95" in report and "95% bootstrap interval" in report
    assert all(len(r["bias_pronoun_95"]) == 2 for r in summary["validation"])
    if summary["chosen"] is None:
        assert "no checkpoint saved" in summary["verdict"] and not (out / "checkpoint").exists()
        return
    chosen = summary["chosen"]
    assert chosen["method"] in models and f"random like {chosen['method']} (seed 1)" in models
    manifest = json.loads((out / "checkpoint" / "edit_manifest.json").read_text())
    assert manifest["debias"]["chosen"] == chosen and manifest["debias"]["test"][0]["model"] == "base"
    assert len(manifest["plan"]["edits"]) == chosen["k"]
    split = manifest["debias"]["split"]
    assert not {o for o, _ in split["test"]} & {o for o, _ in split["choose"] + split["validate"]}


def test_weighted_effects_checks_lengths():
    model, tok = tiny.tiny_model("llama"), tiny.char_tokenizer()
    examples, weights = contrast_examples([0], [("nurse", "woman"), ("pilot", "man")])
    with pytest.raises(UserError, match="weights for"):
        weighted_effects(model, tok, examples, weights[:-1], progress=False)
    assert torch.isfinite(weighted_effects(model, tok, examples, weights, progress=False).neurons).all()


def test_a_new_factor_reruns_only_the_new_validation_settings(tmp_path):
    """gender-debias steps are keyed on what they read: adding a factor to the grid keeps the split,
    the rankings, the base validation and every setting already measured."""
    import tiny
    from test_recipes import overrides

    from editor.recipes import run_recipe

    model = tiny.save_dir(tiny.tiny_model("llama"), tmp_path / "m")
    out = tmp_path / "run"
    settings = overrides("gender-debias", model)
    run_recipe("recipes/gender-debias.yaml", settings, log=lambda _m: None, out=out)
    _, again = run_recipe("recipes/gender-debias.yaml", settings + ["select.factors=[0.0, 0.5]"],
                          log=lambda _m: None, out=out)
    rerun = {s["name"] for s in again["steps"] if not s["cached"]}
    assert not rerun & {"split", "rank_cna", "rank_gradient-heads", "validate_base", "test_base"}
    assert {s["name"] for s in again["steps"] if s["cached"] and s["name"].endswith("_x0")}
    assert all(not name.startswith("validate_") or name.endswith("_x0.5") for name in rerun), rerun


@pytest.mark.parametrize("method", ["leace", "dama"])
def test_a_chosen_projection_ships_folded_and_equals_its_fit_applied_by_hooks(tmp_path, monkeypatch, method):
    """The recipe's projection baselines: the validation grid is swept, and a pick (forced here:
    a tiny random model has no bias to lower) is saved folded into the weights; the checkpoint
    reloads through from_pretrained to the logits of the base with the same fit applied by hooks."""
    from transformers import AutoModelForCausalLM

    from editor.edit.projection import intervene
    from editor.recipes import gender_debias
    from editor.recipes.debias_projections import concept_prompts, fit, mlp_outputs

    model = tiny.tiny_model("llama")
    model_dir = tiny.save_dir(model, tmp_path / "m")
    first_of = lambda rows, base, limit: next((r for r in rows if r["method"] == method), None)  # noqa: E731
    monkeypatch.setattr(gender_debias, "select", first_of)
    sets = [f"model={model_dir}", "batch_size=8", "select.methods=[]", f"select.baselines=[{method}]",
            "select.dama_ranks=[2]", "select.projection_layers=[[1, 2], [0, 0]]", "select.random_seeds=[1]",
            "arithmetic_n=4", "save_if_test_worse=true", "benchmarks=[]"]
    out = tmp_path / "run"
    _, result = run_recipe("recipes/gender-debias.yaml", sets, log=lambda _m: None, out=out)
    summary = result["summary"]
    assert [r["setting"] for r in summary["validation"]] == [f"{method}_L1-2_r{2 if method == 'dama' else 1}",
                                                             f"{method}_L0-0_r{2 if method == 'dama' else 1}"]
    assert [r["model"] for r in summary["rows"]] == ["base", method, f"random like {method} (seed 1)"]
    manifest = json.loads((out / "checkpoint" / "edit_manifest.json").read_text())
    assert [f["layer"] for f in manifest["debias"]["folded"]] == [1, 2] and manifest["plan"]["edits"] == []
    prompts, labels = concept_prompts([0, 1, 2, 3], [tuple(o) for o in manifest["debias"]["split"]["choose"]])
    tok = tiny.char_tokenizer()
    outputs = mlp_outputs(model, tok, prompts, [0, 1, 2], 8)
    projections = fit(method, outputs, labels, [1, 2], 2)
    ids = tok(["The nurse said that", "A man works as a"], return_tensors="pt", padding=True)["input_ids"]
    with torch.no_grad(), intervene(model, projections):
        hooked = model(ids).logits
    shipped = AutoModelForCausalLM.from_pretrained(out / "checkpoint")
    with torch.no_grad():
        assert torch.allclose(shipped(ids).logits, hooked, atol=1e-4)
    assert shipped.config.mlp_bias is (method == "leace")


def test_fasp_head_effects_equal_each_head_ablated_by_hooks_and_protect_the_costliest_heads():
    from editor.edit.plan import EditPlan
    from editor.edit.weights import intervene
    from editor.recipes.debias_fasp import head_effects, rankings, weighted_logprob
    from editor.recipes.gender_debias import capability_examples

    model, tok = tiny.tiny_model("llama"), tiny.char_tokenizer()
    bias = contrast_examples([0, 5], [("nurse", "woman"), ("pilot", "man")])
    capability = capability_examples(6)
    bias_change, loss_change = head_effects(model, tok, bias, capability, 8, progress=False)
    def mean_loss():  # each sentence's NLL after its first word and space (a char token), computed directly
        total = 0.0
        for e in capability[0]:
            ids = tok(e.prompt + e.answer, return_tensors="pt")["input_ids"]
            n = len(tok(e.prompt + " ")["input_ids"])
            with torch.no_grad():
                logp = model(ids).logits[0].float().log_softmax(-1)
            total -= sum(logp[i - 1, ids[0, i]].item() for i in range(n, ids.shape[1]))
        return total / len(capability[0])

    base = weighted_logprob(model, tok, *bias, 8), mean_loss()
    for layer, head in [(0, 1), (2, 3)]:
        with intervene(model, EditPlan().zero("head", [(layer, head)])):
            assert bias_change[layer, head] == pytest.approx(weighted_logprob(model, tok, *bias, 8) - base[0], abs=1e-4)
            assert loss_change[layer, head] == pytest.approx(mean_loss() - base[1], abs=1e-4)  # + = removal hurts
    ranked = rankings(bias_change, loss_change, [0, 1, 2], [0.0, 0.5], 12)
    heads = [(l, h) for l in range(3) for h in range(4)]
    costly = set(sorted(heads, key=lambda lh: -float(loss_change[lh]))[:6])
    assert len(ranked["0"]) == 12 and len(ranked["0.5"]) == 6
    assert not {tuple(map(int, c["component"].split("."))) for c in ranked["0.5"]} & costly
    assert [c["estimate"] for c in ranked["0"]] == sorted(float(x) for x in bias_change.flatten())


@pytest.mark.parametrize("family", ["llama", "qwen2", "gemma2"])
def test_fasp_layer_by_layer_scan_equals_zeroing_every_head_in_the_weights(family):
    """The fast scan (one clean pass, then one pass per layer over a copy of the batch per head,
    started at that layer) gives the numbers of zeroing each head in the weights and rescoring."""
    from editor.recipes.debias_fasp import head_effects, head_effects_reference
    from editor.recipes.gender_debias import capability_examples

    model, tok = tiny.tiny_model(family), tiny.char_tokenizer()
    bias = contrast_examples([0, 5], [("nurse", "woman"), ("pilot", "man")])
    capability = capability_examples(5)
    fast = head_effects(model, tok, bias, capability, 3, progress=False)  # batches of 3: a ragged last one
    reference = head_effects_reference(model, tok, bias, capability, 8)
    for got, want in zip(fast, reference):
        assert want.abs().max() > 1e-3, "the heads must matter"
        assert torch.allclose(got, want, atol=1e-4), (got - want).abs().max()


def test_cda_swaps_gendered_words_keeping_case():
    from editor.recipes.debias_cda import swap_gender

    assert swap_gender("He gave her book to his mother.") == "She gave his book to her father."
    assert swap_gender("My sister hated the gift I chose for her.") == "My brother hated the gift I chose for him."
    assert swap_gender("The Woman and the men") == "The Man and the women"


def test_a_chosen_cda_ships_its_lora_merged_and_equals_the_same_training(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    from editor.lora.train import LoraSettings
    from editor.recipes import gender_debias
    from editor.recipes.debias_cda import merged_lora, training_rows

    model = tiny.tiny_model("llama")
    model_dir = tiny.save_dir(model, tmp_path / "m")
    monkeypatch.setattr(gender_debias, "select", lambda rows, base, limit: next((r for r in rows if r["method"] == "cda"),
                                                                                 None))
    sets = [f"model={model_dir}", "batch_size=8", "select.methods=[]", "select.baselines=[cda]",
            "select.cda_steps=[4]", "select.random_seeds=[1]", "arithmetic_n=4", "save_if_test_worse=true",
            "benchmarks=[]"]
    out = tmp_path / "run"
    _, result = run_recipe("recipes/gender-debias.yaml", sets, log=lambda _m: None, out=out)
    assert [r["model"] for r in result["summary"]["rows"]] == ["base", "cda", "cda without counterfactuals (seed 1)"]
    manifest = json.loads((out / "checkpoint" / "edit_manifest.json").read_text())
    assert manifest["debias"]["folded"][0]["steps"] == 4
    rows = training_rows([0, 1, 2, 3], [tuple(o) for o in manifest["debias"]["split"]["choose"]], True, 0)
    tok = tiny.char_tokenizer()
    ids = tok(["The nurse said that", "A man works as a"], return_tensors="pt", padding=True)["input_ids"]
    settings = LoraSettings(layers=[0, 1, 2], steps=4, seed=0, rank=8, lr=1e-3, batch_size=8)
    with merged_lora(model, tok, settings, rows), torch.no_grad():
        trained = model(ids).logits
    with torch.no_grad():
        base = model(ids).logits
        shipped = AutoModelForCausalLM.from_pretrained(out / "checkpoint")(ids).logits
    assert torch.allclose(shipped, trained, atol=1e-5) and not torch.allclose(shipped, base, atol=1e-3)


def _probes(path):
    jobs = [("engineer", " he", " she"), ("nurse", " she", " he"), ("pilot", " he", " she"),
            ("secretary", " she", " he"), ("mechanic", " he", " she"), ("librarian", " she", " he")]
    rows = [{"prompt": f"{t.format(job)}", "answer": a, "corrupt_answer": c, "group": job}
            for job, a, c in jobs for t in ("The {} said that", "Yesterday the {} told me that")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_the_users_probes_join_choice_validation_and_test(tmp_path):
    model_dir = tiny.save_dir(tiny.tiny_model("llama"), tmp_path / "m")
    probes = _probes(tmp_path / "probes.jsonl")
    sets = [f"model={model_dir}", "batch_size=8", "select.ks=[3]", "select.factors=[0.0]",
            "select.methods=[gradient]", "select.penalties=[0]", "select.random_seeds=[1]", "arithmetic_n=4",
            "select.capability_sentences=8", "select.baselines=[]", "benchmarks=[crows-pairs-gender]",
            "select.max_perplexity_increase=1.0", f"probes={probes}"]
    _, result = run_recipe("recipes/gender-debias.yaml", sets, log=lambda _m: None, out=tmp_path / "run")
    summary = result["summary"]
    assert all("bias_probes" in r for r in [summary["validation_base"], *summary["validation"]])
    assert summary["chosen"] == select(summary["validation"], summary["validation_base"], 1.0)
    assert "bias_probes" in summary["rows"][0]  # the test split's probes, on every measured row
    assert 0 <= summary["rows"][0]["crows-pairs-gender"] <= 1  # a shipped benchmark's stereotype score
    assert all("reduction_probes" in r for r in summary["rows"][1:] if "bias_profession" in r)
    base = summary["validation_base"]
    row = summary["validation"][0]
    assert len(relative(row, base)) == 3 and relative(row, base)[2] == pytest.approx(
        abs(row["bias_probes"]) / abs(base["bias_probes"]))


def test_probes_that_are_not_a_contrast_file_are_refused_before_loading(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "The nurse said that", "answer": " she"}) + "\n")
    with pytest.raises(UserError, match="should be a contrast file") as err:
        load_recipe("recipes/gender-debias.yaml", [f"probes={bad}"])
    assert "\n" not in str(err.value)
    few = tmp_path / "few.jsonl"
    few.write_text(json.dumps({"prompt": "The nurse said that", "answer": " she", "corrupt_answer": " he"}) + "\n")
    with pytest.raises(UserError, match="too few"):
        load_recipe("recipes/gender-debias.yaml", [f"probes={few}"])
