"""Recipes end to end on a tiny model: outputs, caching and resume, schema errors, the HTML report."""

import json
import re
import subprocess

import pytest
import torch
from click.testing import CliRunner

from editor.cli import main
from editor.edit.checkpoint import reload_difference
from editor.errors import UserError
from editor.model.capture import encode
from editor.model.loading import load_model
from editor.recipes import load_recipe, run_recipe
from same import chromium

RECIPES = {
    "arithmetic-keep-only": ["data.n_score=6", "data.n_eval=10", "neurons.layers=[1, 2]", "random_seeds=[1, 2]",
                         "heads.zero_fraction=0.25", "neurons.keep_fraction=0.2"],
    "gender-debias": ["select.ks=[2, 6]", "select.factors=[0.0]", "select.methods=[cna, gradient-heads, fasp]",
                      "select.fasp_protect=[0.25]",
                      "select.random_seeds=[1]", "arithmetic_n=4", "select.max_perplexity_increase=1.0",
                      "select.penalties=[1]", "select.capability_sentences=8",
                      "select.baselines=[dama, cda]", "select.dama_ranks=[1]", "select.cda_steps=[3]",
                      "select.projection_layers=[[1, 2]]",
                      "benchmarks=[]", "save_if_test_worse=true"],
    "icl-heads": ["data.n_score=4", "data.n_eval=6", "cut.fractions=[0.1, 0.25]", "cut.random_seeds=[1, 2]",
                  "rescale.fraction=0.1", "rescale.factors=[0.5]"],
    "lora-compare": ["layer_groups=[[0], [2]]", "lora.steps=4", "data.n_train=24", "data.n_eval=8",
                     "data.n_compare=4"],
    "prune-then-lora": ["lora_layers=[0]", "prune_layers=[1, 2]", "keep_fraction=0.2", "lora.steps=4",
                        "data.n_train=24", "data.n_eval=8", "data.n_compare=4", "random_seeds=[1]"],
}
WITH_CHECKPOINT = {"arithmetic-keep-only"}  # gender-debias saves one only when an edit qualifies: test_debias.py
WITH_REMOVALS = {"arithmetic-keep-only", "prune-then-lora"}
WITH_SCORES = {"arithmetic-keep-only", "icl-heads"}


def overrides(kind, model):
    return [f"model={model}", "batch_size=4", *RECIPES[kind]]


def quiet(_msg):
    pass


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory):
    import tiny

    return tiny.save_dir(tiny.tiny_model("llama"), tmp_path_factory.mktemp("models") / "tiny-llama")


@pytest.mark.parametrize("kind", list(RECIPES))
def test_recipe_end_to_end(kind, tiny_model_dir, tmp_path):
    out = tmp_path / kind
    target, result = run_recipe(f"recipes/{kind}.yaml", overrides(kind, tiny_model_dir), log=quiet, out=out)
    assert target == out and all(not s["cached"] for s in result["steps"])
    for name in ("recipe.yaml", "report.html", "steps/recipe.sha256"):
        assert (out / name).is_file(), name
    if kind in WITH_SCORES:
        assert any(out.glob("evaluation*.json")) and any((out / "attribution").glob("*.json"))
    html = (out / "report.html").read_text()
    assert "<table>" in html and html.count("data:image/png;base64,") >= 1 and "http" not in html.split("<script>")[0]
    headline = result["summary"]["headline"]
    assert headline and html.index("class='headline'") < html.index("<table>")  # the page opens with it
    assert re.search(r"\[-?[0-9.]+, -?[0-9.]+\]", headline), headline  # its main result carries an interval
    if kind in WITH_REMOVALS:
        assert "What was removed" in html or "removed</th>" in html
    digest = (out / "steps" / "recipe.sha256").read_text().strip()
    assert "Reproduce" in html and f"lmedit run {out / 'recipe.yaml'}" in html and digest in html
    if kind in WITH_CHECKPOINT:
        lm = load_model(str(out / "checkpoint"))
        manifest = json.loads((out / "checkpoint" / "edit_manifest.json").read_text())
        assert manifest["plan"]["edits"] and manifest["recipe"]["recipe"] == kind
        inputs = encode(lm.tokenizer, ["A woman works as a", "12+3="], padding_side="left")
        assert reload_difference(lm.model, out / "checkpoint", inputs) == 0.0
        base = load_model(str(tiny_model_dir))
        with torch.no_grad():
            assert not torch.equal(base.model(**inputs).logits, lm.model(**inputs).logits)  # the edit is in the weights
    # A second run finds every step done; deleting the last two resumes only those.
    _, again = run_recipe(f"recipes/{kind}.yaml", overrides(kind, tiny_model_dir), log=quiet, out=out)
    assert all(s["cached"] for s in again["steps"])
    assert again["summary"] == result["summary"]
    (out / "steps" / "report.json").unlink()
    _, resumed = run_recipe(f"recipes/{kind}.yaml", overrides(kind, tiny_model_dir), log=quiet, out=out)
    assert [s["name"] for s in resumed["steps"] if not s["cached"]] == ["report"]


def test_two_runs_never_write_one_directory(tiny_model_dir, tmp_path):
    """A second process on a locked run directory fails at once, naming the holder."""
    from editor.recipes.run import Run

    run = Run.open(tmp_path / "run", {"recipe": "icl-heads", "name": "x"}, log=quiet)
    try:
        got = subprocess.run([".venv/bin/lmedit", "run", "recipes/icl-heads.yaml", "--out", str(tmp_path / "run"),
                              *sum((["--set", o] for o in overrides("icl-heads", tiny_model_dir)), [])],
                             capture_output=True, text=True, timeout=120)
    finally:
        run.close()
    assert got.returncode == 2 and got.stderr.count("\n") == 1
    assert f"in use by pid {__import__('os').getpid()}" in got.stderr, got.stderr


@pytest.mark.parametrize("change,message", [
    (["heads.kep_fraction=0.1"], "unknown key 'kep_fraction'; known keys: method, zero_fraction"),
    (["colour=red"], "unknown key 'colour'"),
    (["heads.method=magic"], "arithmetic-keep-only.yaml.heads.method: expected one of 'ablation' | 'static'"),
    (["data.n_eval=many"], "data.n_eval: expected an integer"),
    (["random_seeds=3"], "random_seeds: expected a list of an integer"),
    (["neurons.keep_fraction=0"], "keep_fraction: in (0, 1]"),
    (["name=../x"], "a plain directory name"),
    (["recipe=bake"], "'recipe' must be one of"),
    (["seed"], "write KEY=VALUE"),
    (["executor=dask"], "executor: expected one of 'local' | 'ray'"),
    (["executor=ray", "workers=0"], "workers 1-4096"),
])
def test_schema_errors_name_the_key(change, message):
    with pytest.raises(UserError) as err:
        load_recipe("recipes/arithmetic-keep-only.yaml", change)
    assert message in str(err.value)


@pytest.mark.parametrize("kind", ["prune", "lora-compare", "prune-then-lora"])
def test_recipes_that_cannot_shard_refuse_executor_ray(kind):
    with pytest.raises(UserError, match="executor: ray is not available for this recipe"):
        load_recipe(f"recipes/{kind}.yaml", ["executor=ray"])
    load_recipe(f"recipes/{kind}.yaml", ["executor=local"])


def test_every_shipped_recipe_is_valid():
    for kind in RECIPES:
        cfg = load_recipe(f"recipes/{kind}.yaml")
        assert cfg.recipe == kind and cfg.model == "smollm2-135m"


def test_cli_run_reports_errors_in_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("recipe: icl-heads\nname: x\ncut:\n  fractions: [0.01]\n  rank: static\n")
    result = CliRunner().invoke(main, ["run", str(bad)])
    assert result.exit_code == 2 and "Error: bad.yaml.cut: unknown key 'rank'" in result.output
    assert "Traceback" not in result.output


def test_cli_run_prints_steps_and_summary(tiny_model_dir, tmp_path):
    args = ["run", "recipes/icl-heads.yaml", "--out", str(tmp_path / "r")]
    for item in overrides("icl-heads", tiny_model_dir):
        args += ["--set", item]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert "steps:" in result.output and "summary:" in result.output and "report.html" in result.output
    assert result.stdout.startswith("Zeroing the top")  # the headline comes first


@pytest.mark.skipif(chromium() is None, reason="chromium is not installed (make test installs the Debian packages "
                    "chromium and chromium-driver where it runs as root with apt)")
def test_report_renders_in_headless_chromium(tiny_model_dir, tmp_path):
    browser = chromium()
    out = tmp_path / "ih"
    run_recipe("recipes/icl-heads.yaml", overrides("icl-heads", tiny_model_dir), log=quiet, out=out)
    # No network: a page that needed any would fail to load its images here.
    dom = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                          "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}",
                          "--virtual-time-budget=10000", "--dump-dom", (out / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=120).stdout
    body = re.search(r"<body([^>]*)>", dom).group(1)
    attrs = dict(re.findall(r'data-([a-z-]+)="(\d+)"', body))
    assert int(attrs["images"]) >= 3 and attrs["images-ok"] == attrs["images"]
    assert int(attrs["tables"]) >= 3 and attrs["tables-shown"] == attrs["tables"]


def test_steps_run_inside_a_step_do_not_change_later_keys(tiny_model_dir, tmp_path):
    """A step computed inside another (random_pruning runs random_seed1, 2) is skipped entirely when
    the outer step is cached; later steps must not see a different input list because of it."""
    kind = "arithmetic-keep-only"
    out = tmp_path / "run"
    run_recipe(f"recipes/{kind}.yaml", overrides(kind, tiny_model_dir), log=quiet, out=out)
    (out / "steps" / "report.json").unlink()
    logs = []
    _, again = run_recipe(f"recipes/{kind}.yaml", overrides(kind, tiny_model_dir), log=logs.append, out=out)
    assert [s["name"] for s in again["steps"] if not s["cached"]] == ["report"]
    assert not [line for line in logs if "computing it again" in line]
