"""Shipped bias benchmarks (CrowS-Pairs, WinoBias, StereoSet) as stereotype tasks, and their scoring
tied to a direct computation of each sentence's log-probability."""

import json

import pytest
import torch
from click.testing import CliRunner

import tiny
from editor.cli import main
from editor.errors import UserError
from editor.evaluation.harness import evaluate_model, file_configs
from editor.evaluation.kinds import validation_score
from editor.tasks import load_examples
from editor.tasks.kinds import read_task
from editor.tasks.shipped import SHIPPED


def _sentence_logprob(model, tokenizer, sentence: str, prompt: str = "") -> tuple[float, int]:
    """Summed log-probability of the sentence's tokens after the prompt, or after the EOS token
    (the char tokenizer adds no BOS), and the number of tokens scored."""
    context = tokenizer(prompt)["input_ids"] if prompt else [tokenizer.eos_token_id]
    ids = tokenizer(prompt + sentence)["input_ids"][len(context) if prompt else 0:]
    full = torch.tensor([context + ids])
    with torch.no_grad():
        logp = model(full).logits[0].float().log_softmax(-1)
    return sum(logp[len(context) + i - 1, t].item() for i, t in enumerate(ids)), len(ids)


def test_stereotype_measures_equal_a_direct_computation(tokenizer, tmp_path):
    model = tiny.arithmetic_model("llama", steps=40)
    rows = [{"stereotype": "1 + 1 = 2", "anti_stereotype": "1 + 1 = 3", "unrelated": "1 + 1 = 9 9"},
            {"stereotype": "2 + 2 = 4", "anti_stereotype": "2 + 2 = 44", "unrelated": "2 + 2 = 1"},
            {"stereotype": "3 + 4 = 7", "anti_stereotype": "3 + 4 = 1", "unrelated": "3 + 4 = 77"},
            {"prompt": "5 + 1 = ", "stereotype": "6", "anti_stereotype": "5"}]
    path = tmp_path / "probe.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    got = evaluate_model(model, tokenizer, file_configs([str(path)], None, []), progress=False).tasks["probe"]
    direct = [{k: _sentence_logprob(model, tokenizer, r[k], r.get("prompt", "")) for k in r if k != "prompt"}
              for r in rows]
    m = got.measures
    assert m["stereotype_score"].per_unit == [float(d["stereotype"][0] > d["anti_stereotype"][0]) for d in direct]
    per_token = [d["stereotype"][0] / d["stereotype"][1] > d["anti_stereotype"][0] / d["anti_stereotype"][1]
                 for d in direct]
    assert m["stereotype_score_per_token"].per_unit == [float(p) for p in per_token]
    assert m["logprob_difference"].per_unit == pytest.approx(
        [d["stereotype"][0] - d["anti_stereotype"][0] for d in direct], abs=1e-4)
    mean = lambda d, k: d[k][0] / d[k][1]  # noqa: E731
    lms = [((mean(d, "stereotype") > mean(d, "unrelated")) + (mean(d, "anti_stereotype") > mean(d, "unrelated"))) / 2
           for d in direct[:3]]
    assert m["lm_score"].per_unit == pytest.approx(lms)
    ss = sum(per_token[:3]) / 3
    assert m["icat"].value == pytest.approx(sum(lms) / 3 * min(ss, 1 - ss) / 0.5)
    assert m["icat"].low <= m["icat"].value <= m["icat"].high
    share = m["stereotype_score"].value
    assert validation_score(model, tokenizer, "stereotype", read_task(path).rows, 2).value == pytest.approx(
        1 - 2 * abs(share - 0.5))


@pytest.mark.parametrize("name, rows, unrelated", [("crows-pairs-gender", 262, False), ("winobias", 792, False),
                                                   ("stereoset-gender", 253, True)])
def test_each_shipped_benchmark_reads_by_name_as_a_stereotype_task(name, rows, unrelated):
    task = read_task(name)
    assert (task.name, task.kind, len(task)) == (name, "stereotype", rows)
    groups = [e.meta["group"] for e in task.rows]
    assert len(set(groups)) == len(groups)
    assert all(("unrelated" in e.meta) == unrelated and e.answer != e.meta["anti_stereotype"] for e in task.rows)
    if name == "winobias":  # pro and anti differ only in gendered pronouns, but for 10 pairs of the source's
        pronouns = {"he", "she", "his", "her", "him", "hers", "himself", "herself"}
        other = 0
        for e in task.rows:
            a, b = e.answer.split(), e.meta["anti_stereotype"].split()
            changed = {w.strip(".,").lower() for x, y in zip(a, b) if x != y for w in (x, y)}
            other += not (len(a) == len(b) and changed and changed <= pronouns)
        assert other == 10
    assert name in SHIPPED


def test_evaluate_takes_a_benchmark_by_name_and_other_commands_refuse_it_in_one_line(tiny_dir, tmp_path):
    out = tmp_path / "ev"
    got = CliRunner().invoke(main, ["evaluate", "--model", str(tiny_dir), "--data", "crows-pairs-gender", "--out",
                                    str(out), "--json"])
    assert got.exit_code == 0, got.output
    result = json.loads((out / "evaluation.json").read_text())
    task = result["tasks"]["crows-pairs-gender"]
    assert task["config"]["kind"] == "stereotype" and task["measures"]["stereotype_score"]["n"] == 262
    with pytest.raises(UserError, match="compares whole sentences"):
        load_examples("crows-pairs-gender")
    got = CliRunner().invoke(main, ["attribute", "heads", "--model", str(tiny_dir), "--data", "stereoset-gender",
                                    "--out", str(tmp_path / "a")])
    assert got.exit_code == 2 and "compares whole sentences" in got.stderr and got.stderr.count("\n") == 1
