"""Attribution and evaluation spread over shards: the merge is exact, on shards run here and on a real
local Ray instance (2 workers) started by these tests; a dying worker's shard is retried once."""

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import tiny
from same import local_ray, results
from editor.attribution.confirm import add_specificity, auto_head_scores
from editor.tasks.guard import guard_windows
from editor.attribution.sharded import (LocalScorer, head_shards, layer_shards, merge_layer_shards, merge_shards,
                                       prompt_shards)
from editor.cli import main
from editor.edit.plan import EditPlan
from editor.tasks.arithmetic import generate

TOL = 1e-6


def close(a, b, tol=TOL):
    assert a.columns.keys() == b.columns.keys()
    for name in a.columns:
        x, y = a.columns[name], b.columns[name]
        assert torch.equal(torch.isnan(x), torch.isnan(y)), name
        assert torch.nan_to_num(x - y).abs().max() <= tol * max(1.0, float(torch.nan_to_num(y).abs().max())), name


@pytest.fixture(scope="module")
def setup():
    model = tiny.tiny_model("llama").eval()
    return LocalScorer(model, tiny.char_tokenizer(), batch_size=4, progress=False), generate(18, 1, "+-", seed=3)


def sharded(scorer, examples, op, workers=3, **kwargs):
    """What RayScorer does, by hand: contiguous whole-batch shards, merged."""
    shards = prompt_shards(len(examples), workers, scorer.batch_size)
    parts = [getattr(scorer, op)(examples[lo:hi], **kwargs) for lo, hi in shards]
    return merge_shards(parts, [hi - lo for lo, hi in shards], prompts=len(examples))


def test_prompt_shards_are_whole_batches_covering_every_prompt():
    assert prompt_shards(18, 3, 4) == [(0, 8), (8, 12), (12, 18)]
    assert prompt_shards(3, 4, 4) == [(0, 3)]  # fewer batches than workers
    for n, workers, batch in ((100, 7, 16), (17, 2, 1), (64, 8, 8)):
        shards = prompt_shards(n, workers, batch)
        assert shards[0][0] == 0 and shards[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(shards, shards[1:]))
        assert all(lo % batch == 0 for lo, _ in shards)
    heads = [(l, h) for l in range(3) for h in range(4)]
    assert sum(head_shards(heads, 5), []) == heads and len(head_shards(heads, 5)) == 5


@pytest.mark.parametrize("op", ["gradient", "static", "neurons"])
def test_prompt_shards_merge_to_the_single_run(setup, op):
    scorer, examples = setup
    kwargs = {"kind": "head"} if op == "gradient" else {}
    whole = getattr(scorer, op)(examples, **kwargs)
    merged = sharded(scorer, examples, op, **kwargs)
    close(merged, whole)
    assert merged.meta["prompts"] == whole.meta["prompts"] == len(examples)
    for name, vector in whole.vectors.items():  # static heads' mean outputs (for the vocabulary projection)
        assert (merged.vectors[name] - vector).abs().max() < 1e-5


def test_a_scan_split_by_prompts_and_heads_merges_to_the_single_scan(setup):
    scorer, examples = setup
    whole = scorer.scan(examples)
    heads = [(l, h) for l in range(whole.shape[0]) for h in range(whole.shape[1])]
    parts, counts = [], []
    for lo, hi in prompt_shards(len(examples), 2, scorer.batch_size):
        for part in head_shards(heads, 2):
            parts.append(scorer.scan(examples[lo:hi], heads=part))
            counts.append(hi - lo)
    merged = merge_shards(parts, counts, prompts=len(examples))
    close(merged, whole)
    assert merged.meta["base_acc"] == pytest.approx(whole.meta["base_acc"], abs=1e-7)


def test_cna_shards_merge_in_both_conditions(setup):
    scorer, examples = setup
    for kwargs in ({"ablate": EditPlan().zero("head", ["0.1"])}, {"examples_b": generate(18, 1, "+-", seed=9)}):
        whole = scorer.cna(examples, **kwargs)
        shards = prompt_shards(len(examples), 2, scorer.batch_size)
        parts = [scorer.cna(examples[lo:hi], **{k: (v[lo:hi] if k == "examples_b" else v) for k, v in kwargs.items()})
                 for lo, hi in shards]
        close(merge_shards(parts, [hi - lo for lo, hi in shards]), whole)


def test_layer_shards_merge_to_the_single_run(setup):
    """Neuron scores and CNA split by layer (what Ray does for them): every column, top-k counts
    recounted from each prompt's top k."""
    scorer, examples = setup
    whole = scorer.neurons(examples)
    layers = list(range(whole.shape[0]))
    assert sum(layer_shards(layers, 2), []) == layers
    merged = merge_layer_shards([scorer.neurons(examples, layers=g) for g in layer_shards(layers, 2)])
    close(merged, whole)
    assert merged.columns["top10_count"].sum() == whole.columns["top10_count"].sum() > 0
    assert merged.meta["layers"] == whole.meta["layers"] == layers
    for kwargs in ({"ablate": EditPlan().zero("head", ["0.1"])}, {"examples_b": generate(18, 1, "+-", seed=9)}):
        whole = scorer.cna(examples, **kwargs)
        close(merge_layer_shards([scorer.cna(examples, layers=g, **kwargs) for g in layer_shards(layers, 3)]), whole)


def test_a_column_without_a_merge_rule_is_refused(setup):
    scorer, examples = setup
    a = scorer.gradient(examples[:4])
    a.columns["ratio"] = a.columns["abs_estimate"]
    with pytest.raises(ValueError, match="no exact merge rule for the score column 'ratio'"):
        merge_shards([a, a], [4, 4])


class ShardingScorer(LocalScorer):
    """Every primitive computed shard by shard and merged: the composed methods must not notice."""

    def gradient(self, examples, kind="head"):
        return sharded(LocalScorer(self.model, self.tokenizer, self.batch_size, False), examples, "gradient", kind=kind)

    def scan(self, examples, heads=None):
        return sharded(LocalScorer(self.model, self.tokenizer, self.batch_size, False), examples, "scan", heads=heads)


def test_auto_and_specificity_on_a_sharding_scorer_equal_the_single_run(setup):
    scorer, examples = setup
    control, guard = generate(8, 1, "*", seed=5), guard_windows(scorer.tokenizer, 8, length=12)
    ours = ShardingScorer(scorer.model, scorer.tokenizer, scorer.batch_size, False)
    single = auto_head_scores(None, None, examples, top=3, scorer=scorer)
    merged = auto_head_scores(None, None, examples, top=3, scorer=ours)
    close(merged, single)
    add_specificity(single, None, None, control, guard, scorer=scorer)
    add_specificity(merged, None, None, control, guard, scorer=ours)
    close(merged, single)


# A real local Ray instance -------------------------------------------------------------------------
@pytest.fixture(scope="module")
def ray_address():
    with local_ray() as address:
        yield address


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    return tiny.save_dir(tiny.tiny_model("llama"), tmp_path_factory.mktemp("ray") / "tiny")


def lmedit(*args, env=None):
    result = CliRunner().invoke(main, [str(a) for a in args], env=env)
    return result


def scores_of(path: Path):
    from editor.attribution.results import ComponentScores

    return ComponentScores.from_json(json.loads(path.read_text()))


def both(tmp_path, ray_address, *command):
    """The same command in this process and on 2 Ray workers; their output folders."""
    local, remote = tmp_path / "local", tmp_path / "ray"
    r = lmedit(*command, "--out", local)
    assert r.exit_code == 0, r.output
    r = lmedit(*command, "--out", remote, "--executor", "ray", "--ray-address", ray_address, "--workers", 2)
    assert r.exit_code == 0, r.output
    return local, remote


@pytest.mark.slow
def test_ray_head_scores_equal_the_single_process(tmp_path, ray_address, model_dir):
    local, remote = both(tmp_path, ray_address, "attribute", "heads", "-m", model_dir, "--data", "arithmetic",
                         "--n", 12, "--batch-size", 4, "--top", 3, "--method", "auto")
    close(scores_of(remote / "heads_auto.json"), scores_of(local / "heads_auto.json"))
    local, remote = both(tmp_path / "static", ray_address, "attribute", "heads", "-m", model_dir, "--n", 12,
                         "--batch-size", 4, "--method", "both", "--no-specificity")
    for stem in ("heads_static", "heads_ablation"):
        close(scores_of(remote / f"{stem}.json"), scores_of(local / f"{stem}.json"))


@pytest.mark.slow
def test_ray_neuron_and_cna_scores_equal_the_single_process(tmp_path, ray_address, model_dir):
    local, remote = both(tmp_path, ray_address, "attribute", "neurons", "-m", model_dir, "--n", 12, "--batch-size", 4)
    close(scores_of(remote / "neurons_logprob.json"), scores_of(local / "neurons_logprob.json"))
    local, remote = both(tmp_path / "cna", ray_address, "attribute", "cna", "-m", model_dir, "--n", 12,
                         "--batch-size", 4, "--ablate-heads", "0.1,1.2")
    close(scores_of(remote / "neurons_cna.json"), scores_of(local / "neurons_cna.json"))


@pytest.mark.slow
def test_ray_evaluation_equals_the_single_process(tmp_path, ray_address, model_dir):
    command = ["evaluate", "-m", model_dir, "--data", "arithmetic,icl,guard", "--set", "arithmetic.n=10",
               "--set", "icl.n=6", "--batch-size", 4, "--alone"]
    local, remote = both(tmp_path, ray_address, *command)
    a, b = (results((d / "evaluation.json").read_text(), d) for d in (local, remote))
    assert a == b
    # An edited checkpoint against its base: both models on each worker, changes recomputed on merge.
    edited = tmp_path / "edited"
    assert lmedit("edit", "-m", model_dir, "--zero-heads", "1.0,2.3", "--out", edited).exit_code == 0
    command = ["evaluate", "-m", edited, "--against", model_dir, "--data", "arithmetic,guard,icl",
               "--set", "arithmetic.n=10", "--set", "icl.n=6", "--batch-size", 4]
    local, remote = both(tmp_path / "against", ray_address, *command)
    a, b = (results((d / "evaluation.json").read_text(), d) for d in (local, remote))
    assert a == b and a["changes"]  # paired changes present and equal


@pytest.mark.slow
def test_a_dead_worker_is_retried_once_then_reported(tmp_path, ray_address, model_dir):
    command = ["attribute", "neurons", "-m", model_dir, "--n", 12, "--batch-size", 4, "--executor", "ray",
               "--ray-address", ray_address, "--workers", 2]
    r = lmedit(*command, "--out", tmp_path / "plain")
    assert r.exit_code == 0, r.output
    once = {"LMEDIT_CRASH_AT": "ray.shard", "LMEDIT_CRASH_ONCE": str(tmp_path / "crashed")}
    r = lmedit(*command, "--out", tmp_path / "retried", env=once)
    assert r.exit_code == 0, r.output
    assert (tmp_path / "crashed").exists()  # a worker did die
    close(scores_of(tmp_path / "retried" / "neurons_logprob.json"), scores_of(tmp_path / "plain" / "neurons_logprob.json"))
    r = lmedit(*command, "--out", tmp_path / "dead", env={"LMEDIT_CRASH_AT": "ray.shard"})
    assert r.exit_code == 2
    assert "failed twice" in r.output and "Traceback" not in r.output
    assert not (tmp_path / "dead" / "neurons_logprob.json").exists()


@pytest.mark.slow
def test_ray_on_the_default_model_equals_the_single_process(tmp_path, ray_address):
    local, remote = both(tmp_path, ray_address, "attribute", "neurons", "--n", 8, "--layers", "28-29",
                         "--batch-size", 4)
    close(scores_of(remote / "neurons_logprob.json"), scores_of(local / "neurons_logprob.json"))
    local, remote = both(tmp_path / "heads", ray_address, "attribute", "heads", "--n", 8, "--batch-size", 4,
                         "--method", "gradient", "--no-specificity")
    close(scores_of(remote / "heads_gradient.json"), scores_of(local / "heads_gradient.json"))


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["arithmetic-keep-only", "icl-heads", "gender-debias"])
def test_a_recipe_with_executor_ray_equals_the_local_run(kind, tmp_path, ray_address, model_dir):
    """--set executor=ray: the attribution steps run on Ray workers; everything the run reports is
    the local run's (timings and the run's own path aside). The heads.method=ablation variant
    exercises the scan, the default static scores and CNA."""
    from test_recipes import RECIPES

    from editor.recipes import run_recipe

    sets = [f"model={model_dir}", "batch_size=4", *RECIPES[kind]]
    if kind == "arithmetic-keep-only":
        sets += ["heads.method=ablation", "neurons.method=cna"]
    runs = {}
    for executor, extra in (("local", []), ("ray", ["executor=ray", f"ray_address={ray_address}", "workers=2"])):
        out, lines = tmp_path / executor, []
        _, result = run_recipe(f"recipes/{kind}.yaml", sets + extra, log=lines.append, out=out)
        runs[executor] = results(json.dumps(result["summary"]), out)
        assert any("Ray workers" in line for line in lines) == (executor == "ray")
    assert runs["ray"] == runs["local"]
