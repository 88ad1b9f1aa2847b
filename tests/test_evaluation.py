"""Evaluation harness: metric modules on hand-made inputs, scoring exactness, before/after comparison."""

import json
import math

import evaluate
import pytest
import torch

import tiny
from editor.edit.checkpoint import save_checkpoint
from editor.edit.plan import EditPlan
from editor.edit.weights import apply_plan
from editor.evaluation import harness
from editor.evaluation.common import METRICS_DIR
from editor.evaluation.harness import compare, configs, evaluate_model
from editor.evaluation.results import load_result
from editor.evaluation.scoring import answer_matches, greedy_answers, score_continuations, score_text
from editor.errors import UserError

# Metric modules, loaded the way a user loads any evaluate module -----------------------------------


def metric(name):
    return evaluate.load(str(METRICS_DIR / name), keep_in_memory=True)


def test_accuracy_interval_wilson():
    r = metric("accuracy_interval").compute(predictions=[1] * 8 + [0, 0], references=[1] * 10)
    assert r["accuracy"] == 0.8 and r["n"] == 10
    assert r["low"] == pytest.approx(0.4902, abs=1e-4) and r["high"] == pytest.approx(0.9433, abs=1e-4)
    r = metric("accuracy_interval").compute(predictions=[3, 4], references=[3, 4])
    assert r["accuracy"] == 1.0 and r["high"] == 1.0 and r["low"] == pytest.approx(0.3424, abs=1e-4)


def test_mean_interval():
    m = metric("mean_interval")
    r = m.compute(values=[2.0] * 7)
    assert (r["value"], r["low"], r["high"], r["n"]) == (2.0, 2.0, 2.0, 7)
    r = m.compute(values=[0.0, 1.0, 2.0, 3.0], statistic="exp_mean", block_size=2)
    assert r["value"] == pytest.approx(math.exp(1.5))
    assert math.exp(0.5) <= r["low"] <= r["value"] <= r["high"] <= math.exp(2.5)  # block means are 0.5 and 2.5


def test_label_bias():
    # gold 0,1,0,1; the model says 0 everywhere; majority label 0 on rows 0-1, last label 1 everywhere.
    r = metric("label_bias").compute(predictions=[0, 0, 0, 0], references=[0, 1, 0, 1], majority=[0, 0, -1, -1],
                                     last=[1, 1, 1, 1])
    assert r["accuracy"] == 0.5 and r["accuracy_n"] == 4
    assert r["majority_label_bias"] == 0.5 and r["majority_label_bias_n"] == 2  # predicted 2/2, gold 1/2
    assert r["recency_bias"] == -0.5 and r["recency_bias_n"] == 4  # predicted 0/4, gold 2/4
    assert r["recency_bias_low"] == pytest.approx(-0.5) and r["recency_bias_high"] < 0


def test_gender_bias():
    r = metric("gender_bias").compute(
        profession=["nurse", "nurse", "driver", "driver", "maid"], lean=["woman", "woman", "man", "man", "woman"],
        logprob_woman=[-1.0, -2.0, -6.0, -5.0, -3.0], logprob_man=[-3.0, -3.0, -4.0, -4.0, -3.0])
    # nurse: mean(2, 1) = 1.5; driver: mean(2, 1) = 1.5; maid: 0
    assert r["bias"] == pytest.approx(1.0) and r["bias_n"] == 3
    assert r["bias_woman_leaning"] == pytest.approx(0.75) and r["bias_man_leaning"] == pytest.approx(1.5)
    assert r["bias_man_leaning_low"] == r["bias_man_leaning_high"] == pytest.approx(1.5)


def test_paired_change():
    m = metric("paired_change")
    r = m.compute(before=[1.0, 0.0, 1.0], after=[1.0, 0.0, 1.0])
    assert (r["change"], r["low"], r["high"], r["n"]) == (0.0, 0.0, 0.0, 3)
    r = m.compute(before=[0.0] * 5, after=[1.0] * 5)
    assert (r["change"], r["low"], r["high"]) == (1.0, 1.0, 1.0)
    r = m.compute(before=[1.0, 1.0], after=[2.0, 2.0], statistic="exp_mean")
    assert r["change"] == pytest.approx(math.e**2 - math.e)


# Scoring ------------------------------------------------------------------------------------------
PROMPTS = ["The sum of 3 and 5 is", "ab", "A woman works as a", "Q: What is 7 times 8? A:", "ab"]
CONTS = [" 8", "c d", " nurse", " 56", "x"]


@pytest.mark.parametrize("family", ["gpt2", "llama", "gemma2"])
def test_continuations_match_one_unpadded_forward(family, tokenizer):
    model = tiny.tiny_model(family).eval()
    left = score_continuations(model, tokenizer, PROMPTS, CONTS, batch_size=3, progress=False)
    right = score_continuations(model, tokenizer, PROMPTS, CONTS, batch_size=3, padding_side="right", progress=False)
    for (p, c), a, b in zip(zip(PROMPTS, CONTS), left, right):
        ids = tokenizer(p + c, return_tensors="pt")["input_ids"]
        n = len(tokenizer(p)["input_ids"])
        with torch.no_grad():
            logp = model(ids).logits[0].log_softmax(-1)
        target = ids[0, n:]
        expected = logp[n - 1:-1].gather(-1, target[:, None])[:, 0]
        assert a.targets == b.targets == target.tolist()
        torch.testing.assert_close(torch.tensor(a.logprobs), expected, atol=1e-5, rtol=0)
        torch.testing.assert_close(torch.tensor(b.logprobs), expected, atol=1e-5, rtol=0)
        assert a.top1 == b.top1 == logp[n - 1:-1].argmax(-1).tolist()


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_greedy_batched_equals_stepwise_argmax(family, tokenizer):
    model = tiny.tiny_model(family).eval()
    batched = greedy_answers(model, tokenizer, PROMPTS, 4, batch_size=5, progress=False)
    for prompt, text in zip(PROMPTS, batched):
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        for _ in range(4):
            with torch.no_grad():
                ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
        assert text == tokenizer.decode(ids[0, -4:], skip_special_tokens=True)


@pytest.mark.parametrize("padding_side", ["left", "right"])
def test_exact_match_read_from_teacher_forcing_equals_generation(padding_side, tokenizer):
    """Where the teacher-forced pass decides greedy exact match (every answer token top-1), it agrees
    with real generation; a model that learned the task lets it decide most prompts."""
    from editor.evaluation.scoring import match_from_teacher_forcing
    from editor.tasks.arithmetic import split_prompts

    model = tiny.arithmetic_model("llama", steps=150)
    examples = split_prompts({"t": 60}, {"t": 1}, shots=1, seed=7)["t"]
    prompts, answers = [e.prompt for e in examples], [e.answer for e in examples]
    scored = score_continuations(model, tokenizer, prompts, answers, 8, padding_side, progress=False, next_token=True)
    plain = score_continuations(model, tokenizer, prompts, answers, 8, padding_side, progress=False)
    assert [(s.targets, s.top1) for s in scored] == [(s.targets, s.top1) for s in plain]
    generated = greedy_answers(model, tokenizer, prompts, max(len(s.targets) for s in scored) + 1, 8, progress=False)
    decided = [match_from_teacher_forcing(tokenizer, a, s) for a, s in zip(answers, scored)]
    assert sum(d is not None for d in decided) >= 20, decided
    for d, g, a in zip(decided, generated, answers):
        if d is not None:
            assert d == answer_matches(g, a), (g, a)
    for s, p, a in zip(scored, prompts, answers):  # next_top1 is the argmax after the whole answer
        ids = tokenizer(p + a, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            assert s.next_top1 == int(model(ids).logits[0, -1].argmax())


def test_text_scores_match_manual(tokenizer):
    model = tiny.tiny_model("llama").eval()
    text = "the quick brown fox jumps over the lazy dog " * 3
    scores = score_text(model, tokenizer, text, window=50, progress=False)
    ids = tokenizer(text)["input_ids"]
    expected = []
    for start in range(0, len(ids), 50):
        w = torch.tensor(ids[start:start + 50])[None]
        with torch.no_grad():
            logp = model(w).logits[0].log_softmax(-1)
        expected += (-logp[:-1].gather(-1, w[0, 1:, None])[:, 0]).tolist()
    assert scores.nll == pytest.approx(expected, abs=1e-5)


def test_answer_matching():
    assert answer_matches(" 12.\nThe", " 12")
    assert answer_matches("8", "8")
    assert not answer_matches("123", "12")
    assert not answer_matches(" 1", " 12")


# Harness ------------------------------------------------------------------------------------------
SMALL = {"arithmetic.n": 12, "icl.n": 6, "gender.templates": "0,3", "guard.window": 512}
ALL = ["arithmetic", "gender", "icl", "guard"]


def test_left_and_right_padding_give_the_same_evaluation(tokenizer):
    model = tiny.tiny_model("gpt2").eval()
    cfg = configs(ALL, SMALL)
    left = evaluate_model(model, tokenizer, cfg, batch_size=4, progress=False)
    right = evaluate_model(model, tokenizer, cfg, batch_size=4, progress=False, padding_side="right")
    for name, task in left.tasks.items():
        for key, m in task.measures.items():
            assert m.value == pytest.approx(right.tasks[name].measures[key].value, abs=1e-5), (name, key)


def test_settings_are_checked():
    cfg = configs(["arithmetic", "icl"], {"arithmetic.digits": "2", "icl.order": "grouped", "gender.seed": "1"})
    assert cfg["arithmetic"].digits == 2 and cfg["icl"].order == "grouped" and "gender" not in cfg
    with pytest.raises(UserError, match="has no setting 'digit'"):
        configs(["arithmetic"], {"arithmetic.digit": "2"})
    with pytest.raises(UserError, match="arithmetic.n: expected an integer"):
        configs(["arithmetic"], {"arithmetic.n": "many"})
    with pytest.raises(UserError, match="unknown task"):
        harness.parse_tasks("arithmetic,poetry")


def test_checkpoint_against_itself_shows_zero_change(tmp_path, tokenizer):
    from editor.model.loading import load_model

    model = tiny.tiny_model("llama")
    with apply_plan(model, EditPlan().zero("head", ["1.2"]).scale("neuron", ["2.5"], 0.5)):
        path = save_checkpoint(model, tokenizer, tmp_path / "ck")
    cfg = configs(ALL, SMALL)
    comparison = harness.evaluate_against(load_model, str(path), str(path), cfg, batch_size=8, progress=False)
    assert set(comparison.changes) == set(ALL)
    for task, changes in comparison.changes.items():
        for key, change in changes.items():
            assert (change.value, change.low, change.high) == (0.0, 0.0, 0.0), (task, key)
    agreement = comparison.after.tasks["guard"].measures["top1_agreement"]
    assert agreement.value == 1.0 and agreement.n > 100
    saved = comparison.save(tmp_path / "out")
    again = load_result(saved["json"])
    assert again.table() == comparison.table()
    assert "| guard | top1_agreement |" in saved["md"].read_text()


def test_an_edit_shows_up_as_a_change(tokenizer):
    model = tiny.tiny_model("llama").eval()
    cfg = configs(["guard"], {"guard.window": 512})
    before = evaluate_model(model, tokenizer, cfg, progress=False, self_reference=True)
    with apply_plan(model, EditPlan().zero("head", ["0.0", "1.1", "2.3"])):
        after = evaluate_model(model, tokenizer, cfg, progress=False, reference=before)
    change = compare(before, after).changes["guard"]
    assert change["perplexity"].value != 0 and change["top1_agreement"].value < 0
    assert change["top1_agreement"].value == pytest.approx(after.tasks["guard"].measures["top1_agreement"].value - 1)


def test_evaluation_json_round_trip(tmp_path, tokenizer):
    model = tiny.tiny_model("qwen2").eval()
    ev = evaluate_model(model, tokenizer, configs(["arithmetic"], {"arithmetic.n": 8}), "tiny", progress=False)
    paths = ev.save(tmp_path)
    data = json.loads(paths["json"].read_text())
    assert data["tasks"]["arithmetic"]["measures"]["answer_accuracy"]["n"] == 8
    assert load_result(paths["json"]).table() == ev.table()


def test_template_indices():
    assert harness.parse_indices("0-2,5", 8) == [0, 1, 2, 5] and harness.parse_indices("all", 3) == [0, 1, 2]
    with pytest.raises(UserError, match=r"bad gender templates 'x': write all, 0-3 or 0,2,5"):
        harness.parse_indices("x", 8, "gender templates")
    with pytest.raises(UserError, match=r"indices must be in 0\.\.7"):
        harness.parse_indices("6-8", 8, "gender templates")


def test_icl_pool_in_memory_equals_the_same_pool_from_a_file(tmp_path, tokenizer):
    from editor.tasks import icl

    _, held = icl.split_pool(icl.load_pool("builtin"), seed=3)
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(json.dumps({"sentence": s, "label": held.classes[y]}) + "\n"
                            for s, y in zip(held.sentences, held.labels)))
    model = tiny.tiny_model("llama").eval()
    run = lambda cfg: evaluate_model(model, tokenizer, {"icl": cfg}, progress=False)  # noqa: E731
    from_memory = run(harness.IclConfig(n=6, k=1, pool=held, seed=1))
    from_file = run(harness.IclConfig(n=6, k=1, data=str(path), seed=1))
    for key, m in from_file.tasks["icl"].measures.items():
        assert from_memory.tasks["icl"].measures[key].per_unit == m.per_unit, key
    assert from_memory.tasks["icl"].config["pool"] == f"{len(held.sentences)} sentences given in memory"
    json.dumps(from_memory.to_json())  # the result stays serialisable


def test_a_users_file_is_scored_as_the_builtin_task_on_the_same_rows(tokenizer, tmp_path):
    """A completion file holding exactly the rows the arithmetic task generates gets the same measures
    (values and per-prompt results), under the file's own name."""
    from editor.evaluation.harness import ArithmeticConfig, file_configs
    from editor.tasks.arithmetic import generate

    model = tiny.arithmetic_model("llama", steps=150)
    rows = generate(24, 1, "+", 3, "numerals", 1)
    data = tmp_path / "my-sums.jsonl"
    data.write_text("".join(json.dumps({"prompt": e.prompt, "answer": e.answer}) + "\n" for e in rows))
    tasks = {"arithmetic": ArithmeticConfig(n=24, digits=1, ops="+", seed=3, shots=1),
             **file_configs([str(data)], None, ["arithmetic"])}
    result = evaluate_model(model, tokenizer, tasks, progress=False)
    builtin, mine = result.tasks["arithmetic"], result.tasks["my-sums"]
    assert mine.task == "my-sums" and mine.config["data"] == str(data)
    assert mine.measures["answer_accuracy"].value > 0  # a trained model: the comparison is not of zeros
    for key in ("token_accuracy", "answer_accuracy", "exact_match"):
        assert mine.measures[key] == builtin.measures[key], key


def test_evaluate_data_on_the_command_line(tiny_dir, tmp_path):
    from click.testing import CliRunner

    from editor.cli import main

    data = tmp_path / "capitals.csv"
    data.write_text("prompt,answer\nThe capital of France is, Paris\nThe capital of Peru is, Lima\n")
    out = tmp_path / "ev"
    got = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_dir), "--data", str(data), "--out", str(out),
                                    "--json"])
    assert got.exit_code == 0, got.output
    tasks = json.loads(got.stdout)["evaluation"]["tasks"]
    assert list(tasks) == ["capitals"] and tasks["capitals"]["measures"]["answer_accuracy"]["n"] == 2
    for args, message in ((["--delimiter", " "], "--delimiter goes with --data"),
                          (["--data", str(data), "--data", str(data)], "is taken"),
                          (["--data", str(tmp_path / "missing.jsonl")], "no such file")):
        bad = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_dir), "--out", str(tmp_path / "x"), *args])
        assert bad.exit_code == 2 and message in bad.stderr, bad.output
    unanswered = tmp_path / "open.jsonl"
    unanswered.write_text('{"prompt": "Tell me"}\n')
    bad = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_dir), "--data", str(unanswered), "--out",
                                    str(tmp_path / "y")])
    assert bad.exit_code == 2 and "has no 'answer'" in bad.stderr, bad.output


def test_a_file_without_answers_is_refused_before_the_model_loads(tiny_dir, tmp_path):
    from click.testing import CliRunner

    from editor.cli import main

    (tiny_dir / "model.safetensors").write_bytes(b"garbage: a load would fail on this first")
    unanswered = tmp_path / "open.jsonl"
    unanswered.write_text('{"prompt": "Tell me"}\n')
    bad = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_dir), "--data", str(unanswered), "--out",
                                    str(tmp_path / "y")])
    assert bad.exit_code == 2 and "has no 'answer'" in bad.stderr, bad.output
