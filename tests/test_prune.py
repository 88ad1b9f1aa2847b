"""Pruning for a task: the search's rule, the shrunk checkpoint, baselines, resume and bad input."""

import json

import pytest
import torch
from click.testing import CliRunner

import tiny
from editor.cli import main
from editor.edit.checkpoint import reload_difference
from editor.edit.shrink import Removal, zeroed
from editor.errors import UserError
from editor.model.arch import Arch, weight_in_slice, weight_out_rows
from editor.model.capture import encode
from editor.model.loading import load_model
from editor.prune.scores import magnitude_scores, wanda_scores
from editor.recipes import run_recipe

FAST = ["batch_size=16", "data.n_score=16", "data.n_val=40", "data.n_test=48", "data.n_train=32", "data.formats=[[4, 1]]", "data.heldout_formats=[[4, 2]]", "data.n_heldout=8", "data.n_general=4",
        "prune.retain=0.9", "prune.max_rounds=8", "recover.method=none"]


@pytest.fixture(scope="module")
def arith_dir(tmp_path_factory):
    return tiny.save_dir(tiny.arithmetic_model("llama"), tmp_path_factory.mktemp("models") / "tiny-arith")


@pytest.fixture(scope="module")
def pruned_run(arith_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "prune"
    target, result = run_recipe("recipes/prune.yaml", [f"model={arith_dir}", *FAST,
                                                                  "baselines=[random, magnitude]"],
                                log=lambda _m: None, out=out)
    return out, result


def test_search_keeps_the_validation_rule_and_shrinks(pruned_run, arith_dir):
    out, result = pruned_run
    summary = result["summary"]
    assert [r["model"] for r in summary["rows"]] == ["base", "attribution", "random", "magnitude"]
    traces = json.loads((out / "search_trace.json").read_text())
    floor = 0.9 * summary["base_val_accuracy"]
    for method, trace in traces.items():
        for row in trace:
            if row["taken"]:
                assert row["val_accuracy"] >= floor - 1e-12, (method, row)
    assert (out / "search_trace.csv").read_text().startswith("method,round,taken")
    manifest = json.loads((out / "checkpoint" / "edit_manifest.json").read_text())
    info = manifest["prune"]
    assert info["removed_parameters"] > 0
    assert info["parameters_after"]["total"] == info["parameters_before"]["total"] - info["removed_parameters"]
    assert info["shrunk_vs_zeroed_max_logit_difference"] < 1e-5
    removal = Removal.from_json(info["removed"])
    base = load_model(str(arith_dir))
    removal.count(removal.neurons, base.arch.n_layers)  # uniform widths, or it raises
    small = load_model(str(out / "checkpoint"))
    inputs = encode(small.tokenizer, ["3 + 4 = 7\n2 + 2 = ", "5 + 1 = "], padding_side="left")
    assert reload_difference(small.model, out / "checkpoint", inputs) == 0.0
    with torch.no_grad(), zeroed(base.model, removal):
        reference = base.model(**inputs).logits
    with torch.no_grad():
        assert (small.model(**inputs).logits - reference)[inputs["attention_mask"].bool()].abs().max() < 1e-5
    size = lambda d: sum(f.stat().st_size for f in d.glob("*.safetensors"))  # noqa: E731
    base.model.save_pretrained(out / "base-copy")
    assert size(out / "checkpoint") < size(out / "base-copy")
    html = (out / "report.html").read_text()
    assert "<table>" in html and "What attribution removed" in html and "95% Wilson intervals" in html
    for layer in removal.layers:
        assert f"<td>{layer}</td><td>the whole layer</td>" in html


def test_an_interrupted_search_resumes_to_the_same_result(pruned_run, arith_dir):
    out, result = pruned_run
    rounds = sorted((out / "steps").glob("attribution_round_*.json"))
    for name in [rounds[-1].name, "attribution_search.json", "evaluate_attribution.json", "checkpoint.json",
                 "report.json"]:
        (out / "steps" / name).unlink()
    _, again = run_recipe("recipes/prune.yaml", [f"model={arith_dir}", *FAST,
                                                            "baselines=[random, magnitude]"], log=lambda _m: None, out=out)
    recomputed = [s["name"] for s in again["steps"] if not s["cached"]]
    assert rounds[-1].stem in recomputed and not any(r.stem in recomputed for r in rounds[:-1])
    assert again["summary"]["rows"] == result["summary"]["rows"]


def test_a_changed_setting_reruns_only_the_steps_that_read_it(arith_dir, tmp_path):
    """Steps are keyed on their own inputs: a new retain reruns the search and what follows it,
    never the data split, the base validation or the base evaluation."""
    kind = "prune"
    out = tmp_path / "run"
    base = [f"model={arith_dir}", *FAST, "baselines=[]"]
    run_recipe(f"recipes/{kind}.yaml", base, log=lambda _m: None, out=out)
    _, changed = run_recipe(f"recipes/{kind}.yaml", base + ["prune.retain=0.5"], log=lambda _m: None, out=out)
    cached = {s["name"] for s in changed["steps"] if s["cached"]}
    rerun = {s["name"] for s in changed["steps"] if not s["cached"]}
    assert {"data", "base_validation", "evaluate_base"} <= cached
    assert {"attribution_round_01", "attribution_search", "checkpoint", "report"} <= rerun
    # A damaged step file is recomputed, not fatal; a run of another recipe kind is refused.
    (out / "steps" / "evaluate_base.json").write_text('{"key": ')
    _, again = run_recipe(f"recipes/{kind}.yaml", base + ["prune.retain=0.5"], log=lambda _m: None, out=out)
    recomputed = {s["name"] for s in again["steps"] if not s["cached"]}
    assert "evaluate_base" in recomputed and not recomputed & {"data", "base_validation", "attribution_search"}
    with pytest.raises(UserError, match="holds a run of the 'prune' recipe"):
        run_recipe("recipes/icl-heads.yaml", ["model=" + str(arith_dir)], log=lambda _m: None, out=out)


def test_magnitude_and_wanda_scores_follow_their_definitions(tokenizer):
    model = tiny.tiny_model("qwen2")
    arch = Arch(model)
    layer, k = 1, 7
    mag = magnitude_scores(model)
    parts = [weight_out_rows(m)[k] for m in arch.mlp_in(layer)] + [weight_in_slice(arch.mlp_out(layer), k)[0]]
    assert torch.allclose(mag.neurons[layer, k], torch.cat(parts).norm(), rtol=1e-5)
    from editor.tasks.examples import Example
    examples = [Example("1 + 2 = ", "3"), Example("4 + 4 = ", "8")]
    coefs = []
    h = arch.mlp_out(layer).register_forward_pre_hook(lambda m, a: coefs.append(a[0][0, :, k]))
    for e in examples:
        model(**encode(tokenizer, [e.prompt + e.answer]))
    h.remove()
    x_norm = torch.cat(coefs).norm()
    wanda = wanda_scores(model, tokenizer, examples, batch_size=2)
    x_in = []
    h = arch.mlp_in(layer)[0].register_forward_pre_hook(lambda m, a: x_in.append(a[0][0]))
    for e in examples:
        model(**encode(tokenizer, [e.prompt + e.answer]))
    h.remove()
    in_norm = torch.cat(x_in).norm(dim=0)
    expected = sum((weight_out_rows(m)[k].abs() * in_norm).sum() for m in arch.mlp_in(layer))
    expected = expected + weight_in_slice(arch.mlp_out(layer), k)[0].abs().sum() * x_norm
    assert torch.allclose(wanda.neurons[layer, k], expected.detach(), rtol=1e-4)


@pytest.mark.parametrize("args,message", [
    (["--units", "neurons,wings"], "prune.prune.units[1]: expected one of"),
    (["--retain", "1.5"], "prune.retain: in (0, 1]"),
    (["--retain", "0"], "prune.retain: in (0, 1]"),
    (["--method", "block-influence", "--units", "neurons"], "block-influence scores layers only"),
    (["--keep-general", "-1"], "max_guard_increase: > 0"),
    (["--max-guard-increase", "0.5"], "--max-guard-increase is now --keep-general"),
    (["--task", "poetry"], "--task is now --data"),
    (["--data", "poetry"], "prune keeps the built-in arithmetic task or a .jsonl/.csv task file"),
    (["--test", "t.jsonl"], "--test and --delimiter are for a task file"),
    (["--set", "data.heldout_formats=[[4, 1]]", "--set", "data.formats=[[4, 1]]"], "is also in data.formats"),
    (["--set", "data.formats=[[9, 1]]"], "data.formats: template must be 0-4"),
])
def test_prune_bad_input_is_one_line_and_writes_nothing(args, message, tmp_path):
    out = tmp_path / "out"
    result = CliRunner().invoke(main, ["prune", "--model", str(tmp_path / "no-model"), "--out", str(out), *args])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert not out.exists()


def test_prune_refuses_an_existing_directory_that_is_not_a_run(tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "mine.txt").write_text("keep me")
    result = CliRunner().invoke(main, ["prune", "--out", str(out)])
    assert result.exit_code == 2 and "not an lmedit run directory" in result.output
    assert (out / "mine.txt").read_text() == "keep me" and len(list(out.iterdir())) == 1


def test_verify_rebuilds_the_shrunk_checkpoint(pruned_run):
    out, _ = pruned_run
    result = CliRunner().invoke(main, ["verify", str(out / "checkpoint")])
    assert result.exit_code == 0, result.output
    assert "rebuilding the shrunk model" in result.output and "max |logit difference| = 0" in result.output


def test_shipped_recipe_is_valid():
    from editor.recipes import load_recipe

    cfg = load_recipe("recipes/prune.yaml")
    assert cfg.recipe == "prune" and cfg.prune.method == "attribution" and cfg.data.n_test >= 500


def test_rejected_layers_are_not_proposed_again():
    from editor.prune.scores import UnitScores
    from editor.prune.search import propose

    arch = Arch(tiny.tiny_model("llama"))
    scores = UnitScores(torch.rand(3, arch.d_ffn(0)), torch.rand(3, arch.n_kv_heads), torch.tensor([0.5, 0.1, 0.9]))
    assert propose("layers", arch, Removal(), scores, 1).layers == [1]
    assert propose("layers", arch, Removal(), scores, 1, rejected=[1]).layers == [0]
    assert propose("layers", arch, Removal(), scores, 1, rejected=[0, 1, 2]) is None
    step = propose("neurons", arch, Removal(), scores, 5)
    assert all(len(v) == 5 for v in step.neurons.values()) and len(step.neurons) == 3


def test_lora_recovery_searches_deeper_and_keeps_the_cut(arith_dir, tmp_path):
    """With recovery the search stops at search_retain; the LoRA is merged into the SHRUNK model, so the
    checkpoint keeps the smaller shapes, and the recovered model's validation accuracy is reported."""
    out = tmp_path / "rec"
    _, result = run_recipe("recipes/prune.yaml",
                           [f"model={arith_dir}", *FAST, "baselines=[]", "prune.search_retain=0.6",
                            "recover.method=lora", "recover.steps=4", "recover.rank=2"], log=lambda _m: None, out=out)
    summary = result["summary"]
    floor = 0.6 * summary["base_val_accuracy"]
    trace = json.loads((out / "search_trace.json").read_text())["attribution"]
    assert all(r["val_accuracy"] >= floor - 1e-12 for r in trace if r["taken"])
    pruned = summary["rows"][1]
    tries = summary["recovery_tries"]["attribution"]
    assert tries and tries[-1]["qualifies"] and not any(t["qualifies"] for t in tries[:-1])
    sizes = [t["removed_parameters"] for t in tries]
    assert sizes == sorted(sizes, reverse=True) and len(set(sizes)) == len(sizes)
    # the kept cut is the recovered model the rule accepted: validation >= retain (0.9) x the base's
    assert pruned["non_embedding_removed"] > 0 and pruned["val_retained_after_recovery"] >= 0.9 - 1e-3
    manifest = json.loads((out / "checkpoint" / "edit_manifest.json").read_text())
    assert manifest["prune"]["recovery"]["val_accuracy"] == tries[-1]["val_accuracy"]
    assert manifest["prune"]["removed_parameters"] == tries[-1]["removed_parameters"]
    assert manifest["prune"]["recovery_tries"] == tries
    small = load_model(str(out / "checkpoint"))
    assert sum(p.numel() for p in small.model.parameters()) == manifest["prune"]["parameters_after"]["total"]
    assert not any("lora" in name for name, _ in small.model.named_parameters())
    verified = CliRunner().invoke(main, ["verify", str(out / "checkpoint")])
    assert verified.exit_code == 0, verified.output
    assert "shapes: all" in verified.output and "max |logit difference| = 0" in verified.output
    import shutil  # a manifest whose removal does not give the checkpoint's shapes fails verification

    tampered = shutil.copytree(out / "checkpoint", tmp_path / "tampered")
    manifest["prune"]["removed"] = Removal().to_json()
    (tampered / "edit_manifest.json").write_text(json.dumps(manifest))
    failed = CliRunner().invoke(main, ["verify", str(tampered)])
    assert failed.exit_code == 1 and "differ from the shrunk base's shapes" in failed.output
    with pytest.raises(UserError, match=r"search_retain: in \(0, retain\]"):
        run_recipe("recipes/prune.yaml", [f"model={arith_dir}", "prune.search_retain=0.99"],
                   log=lambda _m: None, out=tmp_path / "bad")


def test_a_cut_that_recovery_does_not_repair_backs_off_or_is_not_shipped(arith_dir, tmp_path):
    """A LoRA that cannot learn (lr 1e-9) leaves the search's deep cuts (search_retain 0.3) below
    retain = 1.0: the recipe backs off to smaller cuts of earlier rounds and ships the first that
    keeps the rule; with one try allowed, it ships nothing rather than a cut that broke the task."""
    sets = [f"model={arith_dir}", *FAST, "baselines=[]", "prune.retain=1.0", "prune.search_retain=0.3",
            "recover.method=lora", "recover.steps=2", "recover.rank=2", "recover.lr=0.000000001"]
    _, result = run_recipe("recipes/prune.yaml", sets, log=lambda _m: None, out=tmp_path / "a")
    summary = result["summary"]
    tries = summary["recovery_tries"]["attribution"]
    assert len(tries) >= 2 and not tries[0]["qualifies"] and tries[0]["val_accuracy"] < summary["base_val_accuracy"]
    manifest = json.loads((tmp_path / "a" / "checkpoint" / "edit_manifest.json").read_text())
    shipped = manifest["prune"]["removed_parameters"]
    if tries[-1]["qualifies"]:
        assert shipped == tries[-1]["removed_parameters"] < tries[0]["removed_parameters"]
        assert tries[-1]["val_accuracy"] >= summary["base_val_accuracy"] - 1e-12
    else:
        assert shipped == 0
    _, result = run_recipe("recipes/prune.yaml", [*sets, "recover.tries=1"], log=lambda _m: None,
                           out=tmp_path / "b")
    assert [t["qualifies"] for t in result["summary"]["recovery_tries"]["attribution"]] == [False]
    assert result["summary"]["rows"][1]["non_embedding_removed"] == 0
    manifest = json.loads((tmp_path / "b" / "checkpoint" / "edit_manifest.json").read_text())
    assert manifest["prune"]["removed_parameters"] == 0 and manifest["prune"]["recovery"] is None


def test_search_retain_constrains_only_a_recovering_prune(tmp_path):
    """search_retain is the search's rule only with recovery: without it a retain below the default
    search_retain is valid; with it the default search_retain above retain is refused, named."""
    from editor.recipes.prune import _settings
    from editor.recipes.prune_command import prune_config

    cfg = prune_config(out=tmp_path / "a", retain=0.4, recover="none")
    assert _settings(cfg, "attribution").retain == 0.4
    with pytest.raises(UserError, match=r"search_retain: in \(0, retain\], got 0.5"):
        prune_config(out=tmp_path / "b", retain=0.4)
    assert _settings(prune_config(out=tmp_path / "c", retain=0.4, search_retain=0.3), "attribution").retain == 0.3


def test_a_round_after_one_that_took_nothing_reuses_its_scores(arith_dir, monkeypatch):
    """Scores are computed once per distinct pruned model: a round that follows a round that took
    nothing sees the same model and reuses them; the search ends where it ends without the reuse."""
    import editor.prune.search as search
    from editor.model.loading import load_model
    from editor.tasks.arithmetic import split_prompts

    lm = load_model(str(arith_dir))
    sets = split_prompts({"score": 16, "val": 40}, {"score": 1, "val": 2}, shots=1, seed=0)
    settings = search.SearchSettings(units=["neurons", "layers"], retain=1.0, max_rounds=6, batch_size=16)
    base = search.measure(lm.model, lm.tokenizer, sets["val"], 16, False)
    calls = []
    real = search.unit_scores

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "unit_scores", counting)
    state, trace, accepted = search.run_search(lm.model, lm.tokenizer, settings, sets["score"], sets["val"], base,
                                               log=lambda _m: None, progress=False)
    idle = sum(1 for prev in trace[:-1] if prev["taken"] is None)
    assert idle >= 1, trace  # the test needs a round after one that took nothing
    assert len(calls) == len(trace) - idle
    assert len(accepted) == sum(1 for row in trace if row["taken"])
    scores = search._scores  # the same search scoring every round afresh: the same trace
    monkeypatch.setattr(search, "_scores", lambda *args: scores(*args[:-1], None))
    _, fresh, _ = search.run_search(lm.model, lm.tokenizer, settings, sets["score"], sets["val"], base,
                                    log=lambda _m: None, progress=False)
    assert fresh == trace and len(calls) == 2 * len(trace) - idle


@pytest.mark.parametrize("method", ["attribution", "wanda", "magnitude"])
def test_searching_on_shrunk_copies_gives_the_search_of_the_zeroed_model(method, arith_dir, monkeypatch):
    """The search scores and validates on shrunk copies (fast); scored and measured in place on the
    zeroed model (the reference) every round reads the same accuracies and takes the same moves."""
    import editor.prune.search as search
    from editor.model.loading import load_model
    from editor.tasks.arithmetic import split_prompts

    lm = load_model(str(arith_dir))
    sets = split_prompts({"score": 16, "val": 40}, {"score": 1, "val": 2}, shots=1, seed=0)
    settings = search.SearchSettings(method, retain=0.9, max_rounds=5, batch_size=16, neuron_step=0.25)
    base = search.measure(lm.model, lm.tokenizer, sets["val"], 16, False)
    state, trace, _ = search.run_search(lm.model, lm.tokenizer, settings, sets["score"], sets["val"], base,
                                        log=lambda _m: None, progress=False)
    assert sum(1 for row in trace if row["taken"]) >= 2, trace  # the test needs moves taken
    fast, fast_scores = search.measure_removal, search.scores_without
    monkeypatch.setattr(search, "measure_removal", lambda *args, **kw: fast(*args, **kw, shrunk=False))
    monkeypatch.setattr(search, "scores_without", lambda *args, **kw: fast_scores(*args, **kw, shrunk=False))
    state_ref, trace_ref, _ = search.run_search(lm.model, lm.tokenizer, settings, sets["score"], sets["val"], base,
                                                log=lambda _m: None, progress=False)
    assert trace == trace_ref and state.to_json() == state_ref.to_json()
    removal = state.removal  # and the scores of the kept units themselves
    assert removal != Removal()
    small = fast_scores(lm.model, lm.tokenizer, removal, method, sets["score"], 16, 0, False)
    ref = fast_scores(lm.model, lm.tokenizer, removal, method, sets["score"], 16, 0, False, shrunk=False)
    if method in ("magnitude", "wanda"):  # a layer sums its REMAINING units (zeroed ones kept their input rows)
        ref.layers = (torch.where(torch.isfinite(small.neurons), ref.neurons, 0).sum(1)
                      + torch.where(torch.isfinite(small.groups), ref.groups, 0).sum(1))
    for name in ("neurons", "groups", "layers"):
        got, want = getattr(small, name), getattr(ref, name)
        kept = torch.isfinite(got)
        assert kept.any() and bool((~kept).any()) == bool(removal.layers or getattr(removal, name))
        torch.testing.assert_close(got[kept], want[kept], rtol=1e-4, atol=1e-6)


def test_validations_stopped_early_take_the_moves_of_full_validations(arith_dir, monkeypatch):
    """A move's validation stops once the move is certain to fail (and skips the guard): the search
    takes the same moves as with every row scored, in fewer forward passes."""
    import editor.evaluation.scoring as scoring
    import editor.prune.search as search
    from editor.model.loading import load_model
    from editor.tasks.arithmetic import split_prompts

    lm = load_model(str(arith_dir))
    sets = split_prompts({"score": 16, "val": 40}, {"score": 1, "val": 2}, shots=1, seed=0)
    settings = search.SearchSettings("attribution", retain=0.9, max_rounds=5, batch_size=8, neuron_step=0.5,
                                     max_guard_increase=1.0)
    base = search.measure(lm.model, lm.tokenizer, sets["val"], 8, True)
    forwards, real = [], scoring._forward
    monkeypatch.setattr(scoring, "_forward", lambda *a, **kw: forwards.append(1) or real(*a, **kw))
    runs = {}
    for early in (True, False):
        forwards.clear()
        full = search.measure_removal
        monkeypatch.setattr(search, "measure_removal", lambda *a, **kw: full(*a, **kw, early=early))
        runs[early] = (*search.run_search(lm.model, lm.tokenizer, settings, sets["score"], sets["val"], base,
                                          log=lambda _m: None, progress=False)[:2], len(forwards))
        monkeypatch.setattr(search, "measure_removal", full)
    (state, trace, n_early), (state_ref, trace_ref, n_full) = runs[True], runs[False]
    assert state.to_json() == state_ref.to_json()
    assert [row["taken"] for row in trace] == [row["taken"] for row in trace_ref]
    floor = settings.retain * base["val_accuracy"]
    stopped = 0
    for row, ref in zip(trace, trace_ref):
        for got, want in zip(row["tried"], ref["tried"]):
            assert got.get("qualifies") == want.get("qualifies")
            if got.get("val_bound"):  # stopped early: a bound above the exact accuracy, both below the floor
                stopped += 1
                assert want["val_accuracy"] <= got["val_accuracy"] < floor and "guard_perplexity" not in got
            else:
                assert got.get("val_accuracy") == want.get("val_accuracy")
    assert stopped >= 1 and n_early < n_full, trace  # the test needs a move that failed early


def test_a_failed_recovery_backs_off_to_earlier_rounds():
    """The cuts tried after recovery: the last round's, then the rounds nearest 2/3 and 1/3 of its
    removed parameters, each once, largest first."""
    from editor.recipes.prune import _backoff

    arch = Arch(tiny.tiny_model("llama"))
    rounds = [Removal(neurons={l: list(range(k)) for l in range(arch.n_layers)}) for k in range(1, 10)]
    picked = [len(r.neurons[0]) for r in _backoff(rounds, arch, 3)]
    assert picked == [9, 6, 3]
    assert [len(r.neurons[0]) for r in _backoff(rounds[:2], arch, 3)] == [2, 1]
    assert _backoff([], arch, 3) == []


def test_the_pruned_checkpoint_runs_in_llama_cpp(pruned_run, tmp_path):
    """The checkpoint `lmedit prune` wrote, exported to GGUF, computes in llama.cpp what it computes
    in transformers (token ids in; the tiny model has no llama.cpp tokenizer)."""
    from test_gguf import TOLERANCE, llama_logits, no_vocab_gguf

    from editor.edit.gguf import export_gguf

    out, _ = pruned_run
    exported = export_gguf(str(out / "checkpoint"), tmp_path / "p.gguf", "f32", no_vocab_gguf(tmp_path / "t.gguf"),
                           log=lambda _m: None)
    small = load_model(str(out / "checkpoint"))
    tokens = small.tokenizer("3 + 4 = 7\n2 + 2 = ")["input_ids"]
    with torch.no_grad():
        want = small.model(torch.tensor([tokens])).logits[0]
    got = llama_logits(exported.path, tokens)
    assert (got.argmax(-1) == want.argmax(-1)).all() and (got - want).abs().max().item() < TOLERANCE


def test_json_output_of_run_and_prune(pruned_run, arith_dir, tmp_path):
    """--json prints the summary machine-readably: a finished run resumes from its cache and prints the
    same rows; `lmedit prune --json` prints its rows and checkpoint."""
    out, result = pruned_run
    sets = [x for s in [f"model={arith_dir}", *FAST, "baselines=[random, magnitude]"] for x in ("--set", s)]
    again = CliRunner().invoke(main, ["run", "recipes/prune.yaml", "--out", str(out), "--json", *sets])
    assert again.exit_code == 0, again.output
    data = json.loads(again.stdout)
    assert data["summary"]["rows"] == result["summary"]["rows"] and all(s["cached"] for s in data["steps"])
    fast = [x for s in FAST for x in ("--set", s)]
    pruned = CliRunner().invoke(main, ["prune", "--model", str(arith_dir), "--out", str(tmp_path / "p"), "--json",
                                       "--retain", "0.9", *fast])
    assert pruned.exit_code == 0, pruned.output
    summary = json.loads(pruned.stdout)
    assert summary["rows"][0]["model"] == "base" and summary["checkpoint"].endswith("checkpoint")


def test_generalisation_table_holds_out_whole_formats_and_neighbours(pruned_run):
    """Held-out formats use only TEST queries in a phrasing no search prompt has; every figure equals
    the harness's answer accuracy of the saved checkpoint on the same rows (another code path)."""
    from editor.evaluation.harness import ArithmeticConfig, evaluate_model
    from editor.recipes.run import step_result
    from editor.tasks.examples import Example

    out, result = pruned_run
    data = step_result(out, "data")
    table = result["summary"]["generalisation"]["attribution"]
    assert [r["set"] for r in table] == ["format '3 + 5 = ', 2 shots", "subtraction", "two-digit-sums"]
    query = lambda r: (r["meta"]["op"], r["meta"]["a"], r["meta"]["b"])  # noqa: E731
    searched = {query(r) for k in ("score", "val") for r in data[k]}
    held = data["heldout"]["format '3 + 5 = ', 2 shots"]
    assert not {query(r) for r in held} & searched and all(r["meta"]["shots"] == 2 for r in held)
    assert {query(r) for r in held} <= {query(r) for r in data["test"]}
    assert {r["meta"]["op"] for r in data["heldout"]["subtraction"]} == {"-"}
    small = load_model(str(out / "checkpoint"))
    for row in table:
        rows = [Example(r["prompt"], r["answer"], r["meta"]) for r in data["heldout"][row["set"]]]
        ev = evaluate_model(small.model, small.tokenizer, {"arithmetic": ArithmeticConfig(n=len(rows), examples=rows)},
                            progress=False)
        assert ev.tasks["arithmetic"].measures["answer_accuracy"].value == pytest.approx(row["attribution"], abs=1e-4)
    assert "Generalisation: held-out formats" in (out / "report.html").read_text()


def test_keep_general_holds_for_the_shipped_recovered_model(arith_dir, tmp_path):
    """--keep-general X: every recovered cut is measured on the guard too, and the checkpoint that is
    shipped has guard perplexity <= (1 + X) x the base's (recomputed here from the saved files)."""
    from editor.prune.search import guard_perplexity

    out = tmp_path / "general"
    sets = [x for s in [*FAST, "baselines=[]", "prune.search_retain=0.6", "recover.method=lora", "recover.steps=4",
                        "recover.rank=2"] for x in ("--set", s)]
    got = CliRunner().invoke(main, ["prune", "--model", str(arith_dir), "--out", str(out), "--retain", "0.9",
                                    "--keep-general", "0.5", "--json", *sets])
    assert got.exit_code == 0, got.output
    summary = json.loads(got.stdout)
    tries = summary["recovery_tries"]["attribution"]
    assert tries and all("guard_perplexity" in t for t in tries)
    base_val = json.loads((out / "steps" / "base_validation.json").read_text())["result"]
    limit = 1.5 * base_val["guard_perplexity"]
    assert all(t["qualifies"] == (t["guard_perplexity"] <= limit and t["val_accuracy"] >= 0.9 *
                                  base_val["val_accuracy"] - 1e-12) for t in tries)
    shipped = load_model(str(out / "checkpoint"))
    base = load_model(str(arith_dir))
    assert guard_perplexity(shipped.model, shipped.tokenizer) <= 1.5 * guard_perplexity(base.model, base.tokenizer) + 1e-6
    manifest = json.loads((out / "checkpoint" / "edit_manifest.json").read_text())["prune"]
    if manifest["recovery"]:
        assert manifest["recovery"]["general_share"] == 0.5
    assert "general_perplexity" in summary["rows"][0]


def test_recovery_mixes_general_text_evenly():
    from editor.recipes.prune import _interleave

    mixed = _interleave(list("aaaaaa"), list("bbb"))
    assert sorted(mixed) == sorted("aaaaaabbb") and mixed == list("aabaabaab")
    assert _interleave([], [1, 2]) == [1, 2] and _interleave([1], []) == [1]
