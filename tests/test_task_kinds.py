"""The task interface: one reader for every kind of user file, scoring tied to direct computations,
seeded group-disjoint splits, and `prune` / `lora train` / `evaluate` on a user's file."""

import json
import math

import pytest
import torch
from click.testing import CliRunner

import tiny
from editor.cli import main
from editor.errors import UserError
from editor.evaluation.harness import evaluate_model, file_configs
from editor.evaluation.kinds import FileConfig, validation_score
from editor.tasks.arithmetic import split_prompts
from editor.tasks.examples import Example
from editor.tasks.kinds import as_completion, check_disjoint, read_task, split_rows


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def arith_dir(tmp_path_factory):
    return tiny.save_dir(tiny.arithmetic_model("llama"), tmp_path_factory.mktemp("models") / "tiny-arith")


@pytest.fixture(scope="module")
def sums_file(tmp_path_factory):
    """One-shot sums in the tiny model's format, grouped by query (a + b)."""
    rows = split_prompts({"all": 120}, {"all": 1}, 1, "+", 4, 1, seed=5)["all"]
    return _jsonl(tmp_path_factory.mktemp("data") / "sums.jsonl",
                  [{"prompt": e.prompt, "answer": e.answer, "group": f"{e.meta['a']}+{e.meta['b']}"} for e in rows])


# Reading -------------------------------------------------------------------------------------------
def test_each_kind_is_read_from_its_fields(tmp_path):
    text = read_task(_jsonl(tmp_path / "notes.jsonl", [{"text": "a b c d"}]))
    choice = read_task(_jsonl(tmp_path / "quiz.jsonl", [{"prompt": "2+2=", "choices": ["3", "4"], "label": 1}]))
    contrast = read_task(_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "p", "answer": " a", "corrupt_answer": " b"}]))
    completion = read_task(_jsonl(tmp_path / "cities.jsonl", [{"prompt": "p ", "answer": "x", "group": 3}]))
    assert [t.kind for t in (text, choice, contrast, completion)] == ["text", "choice", "contrast", "completion"]
    assert [t.name for t in (text, choice, contrast, completion)] == ["notes", "quiz", "pairs", "cities"]
    assert choice.rows[0].answer == "4" and choice.rows[0].meta["choices"] == ["3", "4"]
    assert contrast.rows[0].meta["corrupt_answer"] == " b" and completion.rows[0].meta == {"group": 3}
    csv = tmp_path / "quiz.csv"
    csv.write_text("prompt,choices,label\nSky is ,blue|green,blue\n")
    assert read_task(csv).rows[0].meta == {"choices": ["blue", "green"], "label": 0}
    halves = as_completion(text)[0]
    assert halves.prompt + halves.answer == "a b c d" and halves.answer.startswith(" ")


@pytest.mark.parametrize("rows, message", [
    ([{"prompt": "a", "answer": "b"}, {"text": "t"}], "row 1 is a completion row but row 2 is a text row"),
    ([{"prompt": "a", "choices": ["x", "y"]}], "has no 'label'"),
    ([{"prompt": "a"}], "has no 'answer' (kinds and their fields: text: text; choice: prompt, choices, label; "
                        "contrast: prompt, answer, corrupt_prompt or corrupt_answer; stereotype: stereotype, "
                        "anti_stereotype; completion: prompt, answer)"),
    ([{"question": "a"}], "row 1 has none of the fields a task needs (question)"),
    ([{"prompt": "a", "answer": "  "}], "'answer' is empty"),
    ([{"prompt": "a", "choices": ["x", "y"], "label": 2}], "'label' should be the index (0-1) or the text"),
    ([{"prompt": "a", "choices": ["x", "x"], "label": 0}], "'choices' repeats a choice"),
    ([{"prompt": "a", "answer": " b", "corrupt_answer": " b"}], "'corrupt_answer' equals 'answer'"),
    ([{"prompt": "a", "answer": ["b"]}], "'answer' should be text, got list"),
    ([{"stereotype": "He is a nurse.", "anti_stereotype": "He is a nurse."}], "two of stereotype, anti_stereotype are the same"),
    ([{"stereotype": "She cooks.", "unrelated": "Blue cooks."}], "has no 'anti_stereotype'"),
])
def test_bad_rows_are_one_line_naming_the_field(tmp_path, rows, message):
    with pytest.raises(UserError) as err:
        read_task(_jsonl(tmp_path / "bad.jsonl", rows))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_glued_choices_get_the_note_and_the_delimiter(tmp_path):
    path = _jsonl(tmp_path / "quiz.jsonl", [{"prompt": "Sky is", "choices": ["blue", "red"], "label": "blue"}])
    notes = []
    assert read_task(path, note=notes.append).rows[0].meta["choices"] == ["blue", "red"]
    assert len(notes) == 1 and "2 of 2 answers" in notes[0]
    spaced = read_task(path, delimiter=" ").rows[0]
    assert spaced.meta["choices"] == [" blue", " red"] and spaced.answer == " blue"


# Splits --------------------------------------------------------------------------------------------
def test_splits_are_seeded_group_disjoint_and_say_how_many_rows_they_need():
    rows = [Example(f"q{i}", "a", {"group": i // 3}) for i in range(60)]
    sets = split_rows(rows, {"score": 1, "val": 2, "test": 2}, 7, "f.jsonl")
    assert sets == split_rows(rows, {"score": 1, "val": 2, "test": 2}, 7, "f.jsonl")
    assert sets != split_rows(rows, {"score": 1, "val": 2, "test": 2}, 8, "f.jsonl")
    groups = {name: {e.meta["group"] for e in s} for name, s in sets.items()}
    assert not groups["score"] & groups["val"] and not groups["val"] & groups["test"]
    assert not groups["score"] & groups["test"]
    assert sum(map(len, sets.values())) == 60 and [len(s) for s in sets.values()] == [12, 24, 24]
    with pytest.raises(UserError, match=r"f.jsonl: 10 rows in 4 groups are too few .* at least 20 rows"):
        split_rows(rows[:10], {"score": 1, "val": 2, "test": 2}, 0, "f.jsonl", {"score": 4, "val": 8, "test": 8})
    with pytest.raises(UserError, match="row 2 is also a row of the training data"):
        check_disjoint(rows[:5], [Example("new", "a"), rows[1]], "test.jsonl")
    with pytest.raises(UserError, match="row 1's group 0 is also in the training data"):
        check_disjoint(rows[:5], [Example("new", "a", {"group": 0})], "test.jsonl")


# Scoring, tied to direct computations ---------------------------------------------------------------
def _logprob(model, tokenizer, prompt, continuation):
    ids = tokenizer(prompt + continuation, return_tensors="pt")["input_ids"]
    n = len(tokenizer(prompt)["input_ids"])
    with torch.no_grad():
        logp = model(ids).logits[0].float().log_softmax(-1)
    return sum(logp[i - 1, ids[0, i]].item() for i in range(n, ids.shape[1]))


def test_each_kind_scores_what_a_direct_computation_gives(tokenizer, tmp_path):
    model = tiny.arithmetic_model("llama", steps=150)
    quiz = _jsonl(tmp_path / "quiz.jsonl", [
        {"prompt": "3 + 4 = ", "choices": ["7", "8", "12"], "label": 0},
        {"prompt": "1 + 1 = ", "choices": ["2", "5"], "label": 1},
        {"prompt": "5 + 2 = ", "choices": ["1", "7", "77"], "label": 2}])
    pairs = _jsonl(tmp_path / "pairs.jsonl", [
        {"prompt": "2 + 2 = ", "answer": "4", "corrupt_answer": "5"},
        {"prompt": "3 + 3 = ", "answer": "6", "corrupt_prompt": "3 + 4 = "}])
    notes = _jsonl(tmp_path / "notes.jsonl", [{"text": "1 + 2 = 3 and 2 + 2 = 4"}, {"text": "the sum of 4 and 4"}])
    tasks = file_configs([str(quiz), str(pairs), str(notes)], None, [])
    got = evaluate_model(model, tokenizer, tasks, progress=False).tasks

    rows = read_task(quiz).rows
    totals = [[_logprob(model, tokenizer, e.prompt, c) for c in e.meta["choices"]] for e in rows]
    picks = [max(range(len(t)), key=t.__getitem__) for t in totals]
    norm = [max(range(len(t)), key=lambda i: t[i] / len(e.meta["choices"][i])) for t, e in zip(totals, rows)]
    assert got["quiz"].measures["accuracy"].per_unit == [float(p == e.meta["label"]) for p, e in zip(picks, rows)]
    assert got["quiz"].measures["accuracy_norm"].per_unit == [float(p == e.meta["label"]) for p, e in zip(norm, rows)]
    assert got["quiz"].config["kind"] == "choice"

    diff = _logprob(model, tokenizer, "2 + 2 = ", "4") - _logprob(model, tokenizer, "2 + 2 = ", "5")
    effect = _logprob(model, tokenizer, "3 + 3 = ", "6") - _logprob(model, tokenizer, "3 + 4 = ", "6")
    assert got["pairs"].measures["logprob_difference"].per_unit == pytest.approx([diff], abs=1e-4)
    assert got["pairs"].measures["prompt_effect"].per_unit == pytest.approx([effect], abs=1e-4)

    nll = []
    for e in read_task(notes).rows:
        ids = tokenizer(e.prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(ids).logits[0, :-1].float()
        nll.extend(torch.nn.functional.cross_entropy(logits, ids[0, 1:], reduction="none").tolist())
    perplexity = math.exp(sum(nll) / len(nll))
    assert got["notes"].measures["perplexity"].value == pytest.approx(perplexity, rel=1e-4)
    assert validation_score(model, tokenizer, "text", read_task(notes).rows, 4).value == pytest.approx(1 / perplexity,
                                                                                                  rel=1e-4)


def _rows_of_each_kind(n: int = 24) -> dict:
    sums = split_prompts({"all": n}, {"all": 1}, 1, "+", 4, 1, seed=7)["all"]
    wrong = lambda e, k: str((int(e.answer) + k) % 10)  # noqa: E731
    return {"completion": sums,
            "choice": [Example(e.prompt, e.answer, {"choices": [e.answer, wrong(e, 1), wrong(e, 3)], "label": 0})
                       for e in sums],
            "text": [Example(e.prompt + e.answer, "", {}) for e in sums]}


@pytest.mark.parametrize("kind", ["completion", "choice", "text"])
def test_a_validation_stops_once_its_move_is_certain_to_fail(kind, tokenizer, monkeypatch):
    """With a floor, validation stops as soon as even a perfect remainder would leave the score below
    it: the verdict equals the full scoring's, the value returned bounds the exact score from above,
    and fewer forward passes ran. At or above the floor every row is scored and the value is exact."""
    import editor.evaluation.scoring as scoring

    rows = _rows_of_each_kind()[kind]
    forwards, real = [], scoring._forward
    monkeypatch.setattr(scoring, "_forward", lambda *a, **kw: forwards.append(1) or real(*a, **kw))
    trained, untrained = tiny.arithmetic_model("llama", steps=150), tiny.tiny_model("llama")
    for model, floor in ((untrained, 0.9), (trained, None)):
        forwards.clear()
        exact = validation_score(model, tokenizer, kind, rows, 4)
        full = len(forwards)
        assert exact.exact and full > 1
        if floor is None:  # at the floor: scored in full, the same number
            forwards.clear()
            assert validation_score(model, tokenizer, kind, rows, 4, floor=exact.value) == exact
            assert len(forwards) == full
            continue
        assert exact.value < floor  # the untrained model fails the floor
        forwards.clear()
        early = validation_score(model, tokenizer, kind, rows, 4, floor=floor)
        assert not early.exact and exact.value <= early.value < floor
        assert len(forwards) < full


def test_a_malformed_file_is_refused_before_the_model_loads(tiny_dir, tmp_path):
    (tiny_dir / "model.safetensors").write_bytes(b"garbage: a load would fail on this first")
    mixed = _jsonl(tmp_path / "mixed.jsonl", [{"prompt": "a", "answer": "b"}, {"text": "t"}])
    for command, extra in ((["evaluate"], []), (["prune"], []), (["lora", "train"], ["--layers", "0"]),
                           (["attribute", "heads"], [])):
        out = tmp_path / "-".join(command)
        got = CliRunner().invoke(main, [*command, "--model", str(tiny_dir), "--data", str(mixed), "--out", str(out),
                                        *extra])
        assert got.exit_code == 2 and "one kind per file" in got.stderr and got.stderr.count("\n") == 1, got.output
        assert not out.exists(), command
    got = CliRunner().invoke(main, ["prune", "--model", str(tiny_dir), "--task", "arithmetic", "--out",
                                    str(tmp_path / "p")])
    assert got.exit_code == 2 and "--task is now --data" in got.stderr


# Commands on a user's file ---------------------------------------------------------------------------
FAST = ["batch_size=16", "prune.retain=0.9", "prune.max_rounds=6", "recover.method=none", "baselines=[random]",
        "data.n_general=4"]


def test_prune_keeps_a_users_completion_task_and_names_it(arith_dir, sums_file, tmp_path):
    out = tmp_path / "run"
    sets = [x for s in FAST for x in ("--set", s)]
    got = CliRunner().invoke(main, ["prune", "--model", str(arith_dir), "--data", str(sums_file), "--out", str(out),
                                    "--json", *sets])
    assert got.exit_code == 0, got.output
    summary = json.loads(got.stdout)
    assert summary["task"] == "sums" and summary["kind"] == "completion" and summary["measure"] == "answer_accuracy"
    base, pruned = summary["rows"][:2]
    assert pruned["non_embedding_removed"] > 0 and "exact_match" in pruned
    floor = 0.9 * summary["base_val_accuracy"]
    trace = json.loads((out / "search_trace.json").read_text())["attribution"]
    assert all(r["val_accuracy"] >= floor - 1e-12 for r in trace if r["taken"])
    data = json.loads((out / "steps" / "data.json").read_text())["result"]
    groups = {k: {r["meta"]["group"] for r in data[k]} for k in ("score", "val", "test")}
    assert not groups["score"] & groups["val"] and not groups["test"] & (groups["score"] | groups["val"])
    assert summary["n_test"] == len(data["test"]) and data["kind"] == "completion"
    evaluation = json.loads((out / "steps" / "evaluate_attribution.json").read_text())["result"]["evaluation"]
    assert set(evaluation["tasks"]) == {"sums", "guard", "general-text"}
    manifest = json.loads((out / "checkpoint" / "edit_manifest.json").read_text())
    assert manifest["prune"]["data"]["file"] == str(sums_file)
    assert "prune: " in (out / "report.html").read_text()


@pytest.mark.parametrize("kind", ["choice", "text"])
def test_prune_runs_on_choice_and_text_tasks(arith_dir, tmp_path, kind):
    from editor.recipes import run_config
    from editor.recipes.prune_command import prune_config

    queries = split_prompts({"all": 40}, {"all": 1}, 1, "+", 4, 1, seed=2)["all"]
    if kind == "choice":
        rows = [{"prompt": e.prompt, "choices": [e.answer, str(int(e.answer) + 1)], "label": 0} for e in queries]
    else:
        rows = [{"text": e.prompt + e.answer} for e in queries]
    path = _jsonl(tmp_path / f"{kind}.jsonl", rows)
    cfg = prune_config(model=str(arith_dir), out=tmp_path / "run", data=str(path), units=["neurons"], recover="none",
                       overrides=["prune.retain=0.9", "prune.max_rounds=3", "batch_size=16", "data.n_general=4"])
    _, result = run_config(cfg, log=lambda _m: None, out=tmp_path / "run")
    summary = result["summary"]
    head = {"choice": "accuracy", "text": "perplexity"}[kind]
    assert summary["kind"] == kind and summary["measure"] == head
    base, pruned = summary["rows"]
    expected = pruned[head] / base[head] if kind == "choice" else base[head] / pruned[head]
    assert pruned["retained"] == pytest.approx(expected, abs=1e-3)
    trace = json.loads((tmp_path / "run" / "search_trace.json").read_text())["attribution"]
    assert all(r["val_accuracy"] >= 0.9 * summary["base_val_accuracy"] - 1e-12 for r in trace if r["taken"])


def test_prune_refuses_too_small_a_file_before_loading(tmp_path):
    small = _jsonl(tmp_path / "small.jsonl", [{"prompt": f"{i} + 1 = ", "answer": str(i + 1)} for i in range(9)])
    got = CliRunner().invoke(main, ["prune", "--model", str(tmp_path / "no-model"), "--data", str(small), "--out",
                                    str(tmp_path / "p")])
    assert got.exit_code == 2 and "9 rows in 9 groups are too few" in got.stderr and "at least 20 rows" in got.stderr
    assert not (tmp_path / "p").exists()


def test_lora_train_on_a_users_file_and_compare_on_its_held_out_rows(arith_dir, sums_file, tmp_path):
    from editor.lora.train import LoraSettings, heldout_examples, split_examples

    out = tmp_path / "lora"
    got = CliRunner().invoke(main, ["lora", "train", "--model", str(arith_dir), "--data", str(sums_file), "--layers",
                                    "1", "--steps", "3", "--batch-size", "8", "--out", str(out), "--json"])
    assert got.exit_code == 0, got.output
    record = json.loads((out / "lora.json").read_text())
    assert record["settings"]["data"] == str(sums_file) and record["settings"]["data_sha256"]
    train, held = split_examples(LoraSettings(layers=[1], data=str(sums_file)))
    assert heldout_examples(out / "adapter") == held
    assert not {e.meta["group"] for e in train} & {e.meta["group"] for e in held}
    assert record["accuracy_before"]["n"] == sum(len(e.answer) for e in held)  # one char token per answer char
    from editor.evaluation.common import Context  # the kind's own measure, tied to the saved merged model
    from editor.evaluation.kinds import SCORERS
    from editor.model.loading import load_model

    merged = load_model(str(out / "merged"))
    again = SCORERS["completion"].evaluate(Context(merged.model, merged.tokenizer, 8, False), held, "sums", {})
    assert record["task_after"]["measure"] == "answer_accuracy" and record["task_after"]["task"] == "sums"
    assert record["task_after"]["value"] == pytest.approx(again.measures["answer_accuracy"].value)
    assert record["task_after"]["n"] == len(held) and "answer_accuracy" in got.output
    sums_file_copy = tmp_path / "sums.jsonl"
    sums_file_copy.write_text(sums_file.read_text())
    with pytest.raises(UserError, match="changed or moved"):
        record["settings"]["data"] = str(tmp_path / "gone.jsonl")
        (out / "lora.json").write_text(json.dumps(record))
        heldout_examples(out / "adapter")


def test_lora_train_reports_a_choice_task_by_choice_accuracy(arith_dir, tmp_path):
    """A multiple-choice file trains on prompt + right choice and is measured as choices are (summed
    log-probability of each choice), not by answer tokens alone."""
    rows = _rows_of_each_kind(40)["choice"]
    quiz = _jsonl(tmp_path / "quiz.jsonl", [{"prompt": e.prompt, **e.meta} for e in rows])
    out = tmp_path / "lora"
    got = CliRunner().invoke(main, ["lora", "train", "--model", str(arith_dir), "--data", str(quiz), "--layers", "1",
                                    "--steps", "2", "--batch-size", "8", "--out", str(out)])
    assert got.exit_code == 0, got.output
    record = json.loads((out / "lora.json").read_text())
    assert {k: record["task_before"][k] for k in ("task", "kind", "measure", "n")} == {
        "task": "quiz", "kind": "choice", "measure": "accuracy", "n": 8}
    assert "quiz accuracy" in got.output
