"""The CLI on a tiny local model: edit, verify, info; user errors are one line with exit status 2."""

import json

import pytest
from click.testing import CliRunner

from editor.cli import main


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def test_every_command_has_help():
    for args in [[], ["models"], ["models", "list"], ["models", "pull"], ["models", "info"], ["edit"], ["verify"],
                 ["evaluate"], ["run"]]:
        result = run(*args, "--help")
        assert result.exit_code == 0, args
        assert "Usage:" in result.output


def test_info_on_local_directory(tiny_dir):
    result = run("models", "info", tiny_dir, "--json")
    assert result.exit_code == 0, result.output
    info = json.loads(result.output[result.output.index("{"):])
    assert (info["family"], info["layers"], info["heads"], info["kv_heads"], info["head_dim"], info["ffn"]) == \
        ("llama", 3, 4, 2, 8, 48)
    assert info["parameters"] > 0 and info["dtype"] == "float32"


def test_edit_then_verify(tiny_dir, tmp_path):
    out = tmp_path / "edited"
    plan = tmp_path / "plan.json"
    plan.write_text(json.dumps({"edits": [{"op": "zero_neuron", "target": "2.7"}]}))
    scores = tmp_path / "scores.json"
    scores.write_text(json.dumps([{"head": "0.1", "score": 1.5}]))
    result = run("edit", "--model", tiny_dir, "--zero-heads", "0.1,1.2", "--scale-neurons", "1.3=0.5",
                 "--plan", plan, "--scores", scores, "--out", out)
    assert result.exit_code == 0, result.output
    assert "max |logit difference| = 0" in result.output
    manifest = json.loads((out / "edit_manifest.json").read_text())
    assert [e["target"] for e in manifest["plan"]["edits"]] == ["2.7", "0.1", "1.2", "1.3"]
    assert manifest["scores"] == [{"head": "0.1", "score": 1.5}]
    assert manifest["source"]["model"] == str(tiny_dir)
    assert set(manifest["source"]["weights_sha256"]) == {"model.safetensors"}
    result = run("verify", out)
    assert result.exit_code == 0, result.output
    assert "max |logit difference| = 0" in result.output
    # a checkpoint whose weights no longer match its plan fails verification with exit 1 (not 2)
    from safetensors.torch import load_file, save_file

    from editor.edit.checkpoint import weight_files_sha256

    weights = load_file(out / "model.safetensors")
    name = next(k for k in weights if k.endswith("down_proj.weight"))
    weights[name] = weights[name] + 0.5
    save_file(weights, out / "model.safetensors", metadata={"format": "pt"})
    result = run("verify", out)
    assert result.exit_code == 1 and "does not match the manifest's sha256" in result.output
    # ... and with the manifest's hash rewritten to match, the rebuild still catches it
    manifest["weights_sha256"] = weight_files_sha256(out)
    (out / "edit_manifest.json").write_text(json.dumps(manifest))
    result = run("verify", out)
    assert result.exit_code == 1 and "differs from the rebuilt model" in result.output
    # a second edit into the same directory needs --force
    result = run("edit", "--model", tiny_dir, "--zero-heads", "0.1", "--out", out, "--no-verify")
    assert result.exit_code == 2 and "--force" in result.output


@pytest.mark.parametrize("args, message", [
    (["edit", "--zero-heads", "3-1"], "LAYER.INDEX"),
    (["edit", "--scale-neurons", "3.1"], "LAYER.INDEX=FACTOR"),
    (["edit", "--scale-neurons", "3.1=big"], "not a number"),
    (["edit"], "nothing to edit"),
    (["edit", "--model", "./no/such/dir", "--zero-heads", "0.1"], "no such model"),
    (["edit", "--model", "missing.gguf", "--zero-heads", "0.1"], "GGUF file not found"),
    (["edit", "--plan", "nothing.json"], "plan file not found"),
    (["models", "pull", "nope"], "unknown store alias"),
    (["models", "info", "./nothing-here"], "no such model"),
])
def test_user_errors_are_one_line_exit_2(args, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) <= 2  # "loading ..." and the error line


def test_edit_errors_on_component_out_of_range(tiny_dir, tmp_path):
    result = run("edit", "--model", tiny_dir, "--zero-heads", "0.9", "--out", tmp_path / "x")
    assert result.exit_code == 2
    assert "out of range" in result.output
    assert not (tmp_path / "x").exists()


def test_unknown_family_names_the_table(tmp_path):
    from transformers import OPTConfig, OPTForCausalLM

    path = tmp_path / "opt"
    OPTForCausalLM(OPTConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, ffn_dim=32, num_attention_heads=2,
                             word_embed_proj_dim=16)).save_pretrained(path)
    import tiny

    tiny.char_tokenizer().save_pretrained(path)
    result = run("models", "info", path)
    assert result.exit_code == 2
    assert "'opt' is not in the architecture table" in result.output and "gpt2" in result.output
    assert "editor/model/arch.py" in result.output


def test_models_list(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITOR_HOME", str(tmp_path))
    result = run("models", "list", "--json")
    assert result.exit_code == 0
    rows = {row["alias"]: row for row in json.loads(result.output)}
    assert set(rows) == {"smollm2-135m", "gemma3-270m"} and not any(r["cached"] for r in rows.values())
    assert "Gemma Terms of Use" in rows["gemma3-270m"]["license"] and rows["smollm2-135m"]["license"] == "Apache-2.0"


def test_a_mistyped_model_name_fails_at_once_with_the_closest_alias(monkeypatch):
    """Offline (as in CI) a name that is no alias, path or cached hub id fails without hub retries."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    result = CliRunner().invoke(main, ["models", "info", "smollm2-135"])
    assert result.exit_code == 2 and "did you mean 'smollm2-135m'" in result.output
    assert "hub is unreachable" in result.output and "Traceback" not in result.output
    bad = CliRunner().invoke(main, ["models", "info", "not a model!"])
    assert bad.exit_code == 2 and "valid hub id" in bad.output


def test_default_output_names_say_which_run_they_come_from():
    from editor.cli.options import _model_stem

    assert _model_stem("checkpoints/gender-debias/checkpoint") == "gender-debias"
    assert _model_stem("checkpoints/prune/checkpoint/") == "prune"
    assert _model_stem("checkpoints/lora/x/merged") == "x-merged"
    assert _model_stem("HuggingFaceTB/SmolLM2-135M") == "SmolLM2-135M" and _model_stem("m/b.gguf") == "b"


def test_verify_refuses_a_source_that_changed_since_the_edit(tiny_dir, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    source = tmp_path / "source"
    shutil.copytree(tiny_dir, source)
    out = tmp_path / "edited"
    assert run("edit", "--model", source, "--zero-heads", "0.1", "--out", out, "--no-verify").exit_code == 0
    assert run("verify", out).exit_code == 0
    weights = load_file(source / "model.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] * 1.01
    save_file(weights, source / "model.safetensors", metadata={"format": "pt"})
    result = run("verify", out)
    assert result.exit_code == 1 and "not the one this checkpoint was made from" in result.output


def test_json_output_and_quiet(tiny_dir, tmp_path, monkeypatch):
    """--json: one JSON document on stdout, the same results the files hold; --quiet: no notes or step lines."""
    import json

    runner = CliRunner()
    got = runner.invoke(main, ["attribute", "heads", "--model", str(tiny_dir), "--n", "6", "--top", "3", "--json",
                               "--out", str(tmp_path / "a")])
    assert got.exit_code == 0, got.output
    doc = json.loads(got.stdout)
    (result,) = doc["results"]
    saved = json.loads((tmp_path / "a" / "heads_auto.json").read_text())
    assert result["name"] == "heads_auto" and result["top"] == saved["top"][:3]
    got = runner.invoke(main, ["edit", "--model", str(tiny_dir), "--zero-heads", "0.1", "--out", str(tmp_path / "c"),
                               "--json"])
    assert got.exit_code == 0, got.output
    edited = json.loads(got.stdout)
    assert edited["checkpoint"] == str(tmp_path / "c") and edited["identical"] and edited["plan"]["edits"]
    got = runner.invoke(main, ["verify", str(tmp_path / "c"), "--json"])
    assert got.exit_code == 0 and json.loads(got.stdout) == {"checkpoint": str(tmp_path / "c"),
                                                              "max_logit_difference": 0.0, "identical": True}
    got = runner.invoke(main, ["evaluate", "--model", str(tmp_path / "c"), "--data", "guard", "--set",
                               "guard.window=64", "--json", "--out", str(tmp_path / "e")])
    assert got.exit_code == 0, got.output
    doc = json.loads(got.stdout)
    assert doc["against"] == str(tiny_dir) and doc["evaluation"] == json.loads((tmp_path / "e" / "evaluation.json").read_text())
    for name in ("LMEDIT_QUIET", "TQDM_DISABLE"):  # --quiet sets them; restored after the test
        monkeypatch.setenv(name, "0")
    quiet = runner.invoke(main, ["--quiet", "run", "recipes/icl-heads.yaml", "--out", str(tmp_path / "r"), "--set",
                                 f"model={tiny_dir}", "--set", "data.n_score=4", "--set", "data.n_eval=6", "--set",
                                 "cut.fractions=[0.1]", "--set", "cut.random_seeds=[1]", "--set", "rescale.factors=[0.5]"])
    assert quiet.exit_code == 0, quiet.output
    assert quiet.stderr == "" and "summary" in quiet.stdout
