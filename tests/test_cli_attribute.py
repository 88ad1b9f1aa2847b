"""``lmedit attribute`` on a tiny local model with a local data file."""

import json

from click.testing import CliRunner

from editor.cli import main


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def _data(tmp_path, name="data.jsonl", gender="woman"):
    path = tmp_path / name
    rows = [{"prompt": f"A {gender} is a", "answer": " nurse"}, {"prompt": "12+3=", "answer": "15"},
            {"prompt": "7*8=", "answer": "56"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return path


def test_attribute_heads_writes_json_csv_png(tiny_dir, tmp_path):
    out = tmp_path / "out"
    result = run("attribute", "heads", "--model", tiny_dir, "--data", _data(tmp_path), "--method", "both",
                 "--top", "3", "--out", out)
    assert result.exit_code == 0, result.output
    assert "rank" in result.output and "accuracy without ablation" in result.output
    assert "top tokens of the leading components" in result.output
    # The passes ahead, said before the work, from the config (3 prompts in one batch of 16).
    assert "scoring 12 heads, 3 prompts, static: 1 batch(es) x 1 forward" in result.output
    assert "scoring 12 heads, 3 prompts, ablation: 1 batch(es) x (1 + 3 forward passes, each over 4 copies" \
        in result.output
    assert result.output.index("scoring 12 heads") < result.output.index("rank")
    for stem in ("heads_static", "heads_ablation"):
        data = json.loads((out / f"{stem}.json").read_text())
        assert data["kind"] == "head" and data["shape"] == [3, 4]
        assert (out / f"{stem}.csv").is_file() and (out / f"{stem}.png").stat().st_size > 1000
    static = json.loads((out / "heads_static.json").read_text())
    assert static["meta"]["prompts"] == 3 and static["meta"]["data"].endswith("data.jsonl")


def test_attribute_neurons_with_query_and_csv_data(tiny_dir, tmp_path):
    csv = tmp_path / "d.csv"
    csv.write_text("prompt,answer\n12+3=,15\n7*8=,56\nab,c\n")
    out = tmp_path / "out"
    result = run("attribute", "neurons", "--model", tiny_dir, "--data", csv, "--layers", "1-2", "--query",
                 "--out", out)
    assert result.exit_code == 0, result.output
    assert "top tokens" in result.output and "query neurons" in result.output
    # The passes ahead, from the config (2 scored layers of 48 neurons, 3 prompts in one batch of 16).
    assert ("scoring 96 FFN neurons, 3 prompts, logprob: 1 batch(es) x 1 forward, then per layer one "
            "[neurons x vocabulary] product shared by the prompts; --query: 1 more forward batch(es)") in result.output
    assert result.output.index("scoring 96") < result.output.index("top tokens")
    data = json.loads((out / "neurons_logprob.json").read_text())
    assert data["meta"]["layers"] == [1, 2]
    assert all(r["layer"] in (1, 2) for r in data["top"][:5])
    assert (out / "neurons_query.csv").is_file()


def test_attribute_cna_modes(tiny_dir, tmp_path):
    a, b = _data(tmp_path, "a.jsonl", "woman"), _data(tmp_path, "b.jsonl", "man")
    for extra in (["--data-b", b], ["--ablate-heads", "1.1"], ["--model-b", tiny_dir]):
        out = tmp_path / f"cna{len(extra[1].__str__())}"
        result = run("attribute", "cna", "--model", tiny_dir, "--data", a, *extra, "--out", out)
        assert result.exit_code == 0, result.output
        condition = {"--data-b": "paired prompts", "--ablate-heads": "heads zeroed", "--model-b": "a second model"}
        assert f"scoring 2 conditions (B: {condition[extra[0]]}) x 144 FFN neurons, 3 prompts, logprob" in result.output
        data = json.loads((out / "neurons_cna.json").read_text())
        assert set(data["columns"]) == {"diff", "importance_a", "importance_b", "coef_a", "coef_b"}
    result = run("attribute", "cna", "--model", tiny_dir, "--data", a)
    assert result.exit_code == 2 and "exactly one" in result.output


def test_attribute_user_errors(tiny_dir, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"question": "no prompt"}\n')
    for args, message in [(["--data", bad], "has none of the fields a task needs"), (["--data", tmp_path / "nope.jsonl"], "not found"),
                          (["--data", _data(tmp_path), "--layers", "x-3"], "bad --layers"),
                          (["--data", _data(tmp_path), "--layers", "1-3"], "layer 3 is out of range (the model has 3"),
                          (["--data", _data(tmp_path), "--layers", "3", "--method", "gradient"], "layer 3 is out of range")]:
        result = run("attribute", "neurons", "--model", tiny_dir, *args)
        assert result.exit_code == 2, result.output
        assert message in result.output and "Traceback" not in result.output
        assert "scoring" not in result.output  # refused before the model loaded: the plan is never said


def test_cna_loads_the_second_model_with_the_first_ones_settings(tiny_dir, tmp_path):
    """The same model twice in bfloat16: both conditions score alike, so every difference is exactly 0
    (a second model loaded in float32, as it once was, differs from the first in every neuron)."""
    out = tmp_path / "cna"
    result = run("attribute", "cna", "--model", tiny_dir, "--model-b", tiny_dir, "--dtype", "bfloat16",
                 "--data", _data(tmp_path), "--out", out)
    assert result.exit_code == 0, result.output
    data = json.loads((out / "neurons_cna.json").read_text())
    assert all(r["diff"] == 0 for r in data["top"]) and any(r["importance_a"] != 0 for r in data["top"])
