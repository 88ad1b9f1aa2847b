"""Bad input, table-driven: every case must exit 2 with exactly one line on stderr, no traceback, and
leave nothing behind (the working folder and the model store are compared before and after).

Each case is (command line, a fragment of the expected message). ``{model}`` is a tiny Llama saved
as a Hugging Face folder, ``{files}`` a folder of prepared bad files (see ``bad_files``)."""

import json
import shlex
from pathlib import Path

import pytest

import tiny

M = "--model {model}"
CASES = [
    # model names, devices, dtypes -------------------------------------------------------------
    ("models info {files}/missing-dir", "no such model directory"),
    ("models info {files}/empty-dir", "not a Hugging Face model directory"),
    ("models info {files}/notes.txt", "not a Hugging Face model directory"),
    ("models info {files}/missing.gguf", "GGUF file not found"),
    ("models info 'not a model!'", "valid hub id"),
    ("models info smollm2-135", "did you mean 'smollm2-135m'"),
    ("models info {model} --device tpu", "unknown device"),
    ("models info {model} --device cuda:x", "unknown device"),
    ("models info {model} --dtype int8", "Invalid value for '--dtype'"),
    ("models info {files}/corrupt-model", "could not load"),
    ("models info {files}/pickle-model", "pickle"),
    ("models pull nope", "unknown store alias"),
    ("models pull smollm2-135m --wheel {files}/missing.whl", "not found"),
    ("models pull smollm2-135m --wheel {files}/notes.txt", "sha256"),
    # edit: components -------------------------------------------------------------------------
    ("edit " + M + " --zero-heads 3-1", "LAYER.INDEX"),
    ("edit " + M + " --zero-heads a.b", "LAYER.INDEX"),
    ("edit " + M + " --zero-heads 3.", "LAYER.INDEX"),
    ("edit " + M + " --zero-heads .1", "LAYER.INDEX"),
    ("edit " + M + " --zero-heads -1.2", "LAYER.INDEX"),
    ("edit " + M + " --zero-heads 1.2.3", "LAYER.INDEX"),
    ("edit " + M + " --zero-heads 1.²", "LAYER.INDEX"),
    ("edit " + M + " --zero-heads ².1", "LAYER.INDEX"),
    ("edit " + M + " --zero-heads 1.١", "LAYER.INDEX"),
    ("edit " + M + " --zero-heads 99.0", "out of range"),
    ("edit " + M + " --zero-heads 0.99", "out of range"),
    ("edit " + M + " --zero-neurons 0.100000", "out of range"),
    ("edit " + M + " --zero-neurons 99.0", "out of range"),
    ("edit " + M + " --zero-heads ,", "nothing to edit"),
    ("edit " + M + " --zero-heads ''", "--zero-heads is empty"),
    ("edit " + M, "nothing to edit"),
    ("edit " + M + " --scale-heads 1.1", "LAYER.INDEX=FACTOR"),
    ("edit " + M + " --scale-heads 1.1=", "not a number"),
    ("edit " + M + " --scale-heads 1.1=x", "not a number"),
    ("edit " + M + " --scale-heads 1.1=nan", "finite"),
    ("edit " + M + " --scale-heads 1.1=inf", "finite"),
    ("edit " + M + " --scale-heads 1.1=-inf", "finite"),
    ("edit " + M + " --scale-heads 1.1=1e999", "finite"),
    ("edit " + M + " --scale-neurons 1.1=nan", "finite"),
    ("edit " + M + " --scale-neurons 1.1=1=2", "not a number"),
    # edit: plan and score files ----------------------------------------------------------------
    ("edit " + M + " --plan {files}/missing.json", "not found"),
    ("edit " + M + " --plan {files}/invalid.json", "not valid JSON"),
    ("edit " + M + " --plan {files}/binary.bin", "plan"),
    ("edit " + M + " --plan {files}/latin1.json", "plan"),
    ("edit " + M + " --plan {files}/list.json", "plan"),
    ("edit " + M + " --plan {files}/plan-unknown-op.json", "op"),
    ("edit " + M + " --plan {files}/plan-number-target.json", "target"),
    ("edit " + M + " --plan {files}/plan-nan-factor.json", "NaN is not a JSON number"),
    ("edit " + M + " --plan {files}/plan-string-factor.json", "factor"),
    ("edit " + M + " --plan {files}/plan-unknown-key.json", "unknown"),
    ("edit " + M + " --plan {files}/plan-edits-not-list.json", "edits"),
    ("edit " + M + " --plan {files}/plan-bad-layers.json", "layers"),
    ("edit " + M + " --plan {files}/plan-null.json", "plan"),
    ("edit " + M + " --plan {files}/empty.json", "plan"),
    ("edit " + M + " --zero-heads 0.1 --scores {files}/invalid.json", "scores"),
    ("edit " + M + " --zero-heads 0.1 --scores {files}/latin1.json", "scores"),
    ("edit " + M + " --zero-heads 0.1 --scores {files}/binary.bin", "scores"),
    ("edit " + M + " --zero-heads 0.1 --out {files}/notes.txt", "is a file"),
    ("edit " + M + " --zero-heads 0.1 --out {files}/existing-out", "--force"),
    ("edit " + M + " --zero-heads 0.1 --out {files}/notes.txt/sub", "cannot write"),
    ("edit --model {files}/missing-dir --zero-heads 0.1", "no such model directory"),
    # verify -------------------------------------------------------------------------------------
    ("verify {files}/missing-dir", "does not exist"),
    ("verify {files}/empty-dir", "manifest"),
    ("verify {files}/ckpt-invalid-manifest", "manifest"),
    ("verify {files}/ckpt-binary-manifest", "manifest"),
    ("verify {files}/ckpt-list-manifest", "manifest"),
    ("verify {files}/ckpt-no-source", "source"),
    ("verify {files}/ckpt-bad-plan", "plan"),
    # attribute ----------------------------------------------------------------------------------
    ("attribute heads " + M + " --n 0", "--n"),
    ("attribute heads " + M + " --n -3", "--n"),
    ("attribute heads " + M + " --n 99999999999", "--n"),
    ("attribute heads " + M + " --top 0", "--top"),
    ("attribute heads " + M + " --batch-size 0", "--batch-size"),
    ("attribute heads " + M + " --method magic", "--method"),
    ("attribute heads " + M + " --target best", "--target"),
    ("attribute heads " + M + " --data arithmetic:abc", "arithmetic:"),
    ("attribute heads " + M + " --data arithmetic:0", "arithmetic:"),
    ("attribute heads " + M + " --data arithmetic:99", "arithmetic:"),
    ("attribute heads " + M + " --data nosuchtask", "nosuchtask"),
    ("attribute heads " + M + " --data {files}/missing.jsonl", "not found"),
    ("attribute heads " + M + " --data {files}/empty.jsonl", "no rows"),
    ("attribute heads " + M + " --data {files}/malformed.jsonl", "line"),
    ("attribute heads " + M + " --data {files}/no-prompt.jsonl", "prompt"),
    ("attribute heads " + M + " --data {files}/latin1.jsonl", "UTF-8"),
    ("attribute heads " + M + " --data {files}/no-prompt.csv", "prompt"),
    ("attribute heads " + M + " --data {files}/latin1.csv", "UTF-8"),
    ("attribute heads " + M + " --data {files}/list-lines.jsonl", "line"),
    ("attribute heads " + M + " --data {files}/notes.txt", ".jsonl"),
    ("attribute heads " + M + " --out {files}/notes.txt", "is a file"),
    ("attribute neurons " + M + " --layers 5-3", "layers"),
    ("attribute neurons " + M + " --executor ray --ray-address 127.0.0.1:1", "cannot reach the Ray cluster"),
    ("attribute heads " + M + " --executor ray --ray-address nonsense", "write HOST:PORT"),
    ("attribute cna --ablate-heads 0.1 -m /nonexistent --executor ray --ray-address 127.0.0.1:1", "no such model"),
    ("attribute neurons " + M + " --executor ray --query", "--query runs in one process"),
    ("attribute neurons " + M + " --executor dask", "executor"),
    ("attribute neurons " + M + " --executor ray --workers 0", "workers"),
    ("attribute neurons " + M + " --max-memory cpu=1GiB", "--max-memory needs --device auto"),
    ("attribute heads " + M + " --device auto --max-memory cpu=lots", "bad --max-memory size"),
    ("edit " + M + " --zero-heads 0.1 --device auto --max-memory gpu=1GB", "bad --max-memory device"),
    ("evaluate " + M + " --executor ray --ray-address 127.0.0.1:1 --alone", "cannot reach the Ray cluster"),
    ("attribute neurons " + M + " --layers abc", "layers"),
    ("attribute neurons " + M + " --layers 0-99999999999", "layer"),
    ("attribute neurons " + M + " --layers 99", "layer"),
    ("attribute neurons " + M + " --layers -1", "layers"),
    ("attribute neurons " + M + " --layers 1,,2", "layers"),
    ("attribute neurons " + M + " --layers ²", "layers"),
    ("attribute neurons " + M + " --layers ''", "layers"),
    ("attribute neurons " + M + " --kind ffn", "--kind"),
    ("attribute neurons " + M + " --n 0", "--n"),
    ("attribute cna " + M, "exactly one of"),
    ("attribute cna " + M + " --ablate-heads 99.0", "out of range"),
    ("attribute cna " + M + " --ablate-heads x", "LAYER.INDEX"),
    ("attribute cna " + M + " --data-b {files}/missing.jsonl", "not found"),
    ("attribute cna " + M + " --data-b {files}/empty.jsonl", "no rows"),
    ("attribute cna " + M + " --model-b {files}/missing-dir", "no such model directory"),
    ("attribute cna " + M + " --layers 3-1 --ablate-heads 0.1", "layers"),
    # evaluate -----------------------------------------------------------------------------------
    ("evaluate " + M + " --data guard --out {files}/earlier-results", "already holds evaluation.json"),
    ("attribute heads " + M + " --out {files}/earlier-results", "already holds heads_auto.json"),
    ("attribute heads " + M + " --method static --out {files}/earlier-results", "already holds heads_static.csv"),
    ("attribute heads " + M + " --method both --out {files}/earlier-results", "already holds heads_static.csv"),
    ("attribute neurons " + M + " --out {files}/earlier-results", "already holds neurons_logprob.json"),
    ("attribute cna " + M + " --data-b arithmetic:2 --out {files}/earlier-results", "already holds neurons_cna.json"),
    ("attribute heads " + M + " --method exact", "Invalid value for '--method'"),
    ("attribute heads " + M + " --control arithmetic", "is the task itself"),
    ("attribute heads " + M + " --control nosuch", "unknown data"),
    ("attribute neurons " + M + " --method gradient --kind attn", "--kind mlp"),
    ("attribute neurons " + M + " --method gradient --layers 99", "out of range"),
    ("attribute circuit " + M + " --target-drop 0", "--target-drop"),
    ("attribute circuit " + M + " --target-drop 1", "--target-drop"),
    ("attribute circuit " + M + " --target-drop nan", "--target-drop"),
    ("attribute circuit " + M + " --beam 0", "--beam"),
    ("attribute circuit " + M + " --candidates 0", "--candidates"),
    ("attribute circuit " + M + " --heldout 0", "--heldout"),
    ("attribute circuit " + M + " --data {files}/empty.jsonl", "no rows"),
    ("attribute circuit " + M + " --out {files}/earlier-results --data arithmetic", "already holds"),
    ("serve --host 0.0.0.0", "needs --tokens"),
    ("serve --host 10.1.2.3 --port 8555", "needs --tokens"),
    ("serve --tokens {files}/missing.txt", "tokens file not found"),
    ("serve --tokens {files}/notes.txt", "shorter than 16"),
    ("serve --tokens {files}/empty.jsonl", "no 'USER TOKEN' lines"),
    ("serve --tokens {files}/latin1.json", "UTF-8"),
    ("serve --port 0", "--port"),
    ("serve --workers 0", "--workers"),
    ("serve --executor k8s", "--executor"),
    ("serve --home {files}/notes.txt", "is a file"),
    ("jobs list", "no token"),
    ("jobs --server http://127.0.0.1:9 --token abcdefghijklmnopqrstu list", "cannot reach the service"),
    ("jobs --server http://127.0.0.1:9 --token abcdefghijklmnopqrstu submit icl-heads --set nokey",
     "bad --set"),
    ("jobs --server http://127.0.0.1:9 --token abcdefghijklmnopqrstu submit icl-heads --set 'seed=[1'",
     "not valid YAML"),  # read by the one KEY=VALUE parser (editor/settings.py) before any request
    ("jobs --server http://127.0.0.1:9 --token abcdefghijklmnopqrstu submit attribute heads --nope 1",
     "no such option '--nope'"),  # a command's options, read off its own definition before any request
    ("jobs --server http://127.0.0.1:9 --token abcdefghijklmnopqrstu submit edit --zero-heads 0.1 --out x",
     "set by the service"),
    ("jobs status", "Missing argument"),
    ("evaluate " + M + " --data nosuch", "nosuch"),
    ("evaluate " + M + " --data ''", "empty"),
    ("evaluate " + M + " --tasks guard", "--tasks is now --data"),  # one spelling per option (issue 27)
    ("evaluate " + M + " --data guard --quiet", "lmedit --quiet evaluate"),
    ("evaluate " + M + " --data arithmetic,arithmetic,nosuch", "nosuch"),
    ("evaluate " + M + " --set arithmetic.nope=1", "nope"),
    ("evaluate " + M + " --set arithmetic.n=0", "arithmetic.n"),
    ("evaluate " + M + " --set arithmetic.n=-5", "arithmetic.n"),
    ("evaluate " + M + " --set arithmetic.n=99999999999", "arithmetic.n"),
    ("evaluate " + M + " --set arithmetic.n=abc", "arithmetic.n"),
    ("evaluate " + M + " --set arithmetic.digits=9", "digits"),
    ("evaluate " + M + " --set arithmetic.ops=%", "ops"),
    ("evaluate " + M + " --set guard.window=-1", "window"),
    ("evaluate " + M + " --set guard.window=0", "window"),
    ("evaluate " + M + " --set guard.block=0", "block"),
    ("evaluate " + M + " --set icl.k=0", "icl.k"),
    ("evaluate " + M + " --set gender.templates=5-3", "templates"),
    ("evaluate " + M + " --set gender.templates=99", "templates"),
    ("evaluate " + M + " --set noequals", "TASK.KEY=VALUE"),
    ("evaluate " + M + " --set nosuch.n=1", "nosuch"),
    ("evaluate " + M + " --set arithmetic.data={files}/missing.jsonl", "missing.jsonl"),
    ("evaluate " + M + " --set arithmetic.data={files}/malformed.jsonl", "line"),
    ("evaluate " + M + " --against {files}/missing-dir", "no such model directory"),
    ("evaluate " + M + " --batch-size 0", "--batch-size"),
    ("evaluate " + M + " --out {files}/notes.txt", "is a file"),
    # run: recipe files and overrides ------------------------------------------------------------
    ("run {files}/missing.yaml", "no recipe file"),
    ("run nosuchrecipe", "no recipe file"),
    ("run {files}/invalid.yaml", "not valid YAML"),
    ("run {files}/list.yaml", "mapping"),
    ("run {files}/latin1.yaml", "UTF-8"),
    ("run {files}/binary.bin", "recipe"),
    ("run {files}/bomb.yaml", "recipe"),
    ("run {files}/empty.yaml", "mapping"),
    ("run icl-heads --set colour=red", "unknown key 'colour'"),
    ("run icl-heads --set data.n_eval=0", "n_eval"),
    ("run icl-heads --set data.n_eval=-1", "n_eval"),
    ("run icl-heads --set data.n_eval=99999999999", "n_eval"),
    ("run icl-heads --set data.n_score=0", "n_score"),
    ("run icl-heads --set batch_size=0", "batch_size"),
    ("run icl-heads --set seed=abc", "seed"),
    ("run icl-heads --set cut.fractions=[2]", "fractions"),
    ("run icl-heads --set cut.fractions=[nan]", "fractions"),
    ("run icl-heads --set rescale.factors=[.inf]", "finite"),
    ("run icl-heads --set rescale.factors=[.nan]", "finite"),
    ("run icl-heads --set name=../x", "plain directory name"),
    ("run icl-heads --set name=" + "x" * 300, "name"),
    ("run icl-heads --set 'name=a\\x00b'", "name"),
    ("run icl-heads --set name=", "name"),
    ("run icl-heads --set 'model='", "model"),
    ("run icl-heads --set device=tpu", "device"),
    ("run icl-heads --device tpu", "device"),
    ("run icl-heads --set 'data.n_eval=[1'", "not valid YAML"),
    ("run icl-heads --set =1", "key"),
    ("run icl-heads --set data=5", "data"),
    ("run icl-heads --set cut.rank_by=magic", "rank_by"),
    ("run icl-heads --out {files}/notes.txt", "is a file"),
    ("run icl-heads --out {files}/empty-dir --fresh", "not an lmedit run directory"),
    ("run gender-debias --set select.ks=[0]", "ks"),
    ("run gender-debias --set select.factors=[1e999]", "expected a number"),
    ("run gender-debias --set select.layers=[5,3]", "layers"),
    ("run gender-debias --set split.fractions=[0.5,0.5]", "fractions"),
    ("run gender-debias --set split.choose_templates=0-3 --set split.test_templates=2-5", "disjoint"),
    ("run gender-debias --set split.occupations={files}/missing.csv", "missing.csv"),
    ("run prune --set prune.retain=0", "retain"),
    ("run prune --set prune.retain=1.5", "retain"),
    ("run prune --set prune.retain=.nan", "retain"),
    ("run prune --set prune.units=[]", "units"),
    ("run prune --set prune.units=[fins]", "units"),
    ("run prune --set prune.method=magic", "method"),
    ("run prune --set recover.lr=.nan", "lr"),
    ("run prune --set data.query_shares=[1,2]", "query_shares"),
    ("run arithmetic-keep-only --set neurons.keep_fraction=0", "keep_fraction"),
    ("run arithmetic-keep-only --set neurons.layers=[0,99999999999]", "layers"),
    # prune --------------------------------------------------------------------------------------
    ("prune " + M + " --out p --retain 0", "retain"),
    ("prune " + M + " --out p --retain 1.5", "retain"),
    ("prune " + M + " --out p --retain nan", "retain"),
    ("prune " + M + " --out p --units fins", "units"),
    ("prune " + M + " --out p --units ''", "units"),
    ("prune " + M + " --out p --method magic", "--method"),
    ("prune " + M + " --out p --baselines magic", "magic"),
    ("prune " + M + " --out p --task poetry", "--task"),
    ("prune " + M + " --out p --keep-general -1", "max_guard_increase"),
    ("prune " + M + " --out p --search-retain 2", "search_retain"),
    ("prune " + M + " --out {files}/notes.txt", "is a file"),
    ("prune " + M, "--out"),
    # lora ---------------------------------------------------------------------------------------
    ("lora train " + M + " --layers 0 --lr nan", "learning rate"),
    ("lora train " + M + " --layers 0 --lr 0", "learning rate"),
    ("lora train " + M + " --layers 0 --lr -1", "learning rate"),
    ("lora train " + M + " --layers 0 --targets ''", "target"),
    ("lora train " + M + " --layers 0 --targets xyz", "xyz"),
    ("lora train " + M + " --layers 99", "layer"),
    ("lora train " + M + " --layers 3-1", "layers"),
    ("lora train " + M + " --layers 0 --steps 0", "--steps"),
    ("lora train " + M + " --layers 0 --rank 0", "--rank"),
    ("lora train " + M + " --layers 0 --n-train 99999999999", "--n-train"),
    ("lora compare --adapter {files}/missing-dir", "does not exist"),
    ("lora compare --adapter {files}/empty-dir", "adapter"),
    ("lora compare --adapter {files}/empty-dir --data {files}/missing.jsonl", "adapter"),
    # export, recipes ----------------------------------------------------------------------------
    ("export gguf {model} --out x.bin", ".gguf"),
    ("export gguf {model} --out x.gguf --type q2", "--type"),
    ("export gguf {model} --out x.gguf", "--tokenizer-from"),
    ("export gguf {model} --out x.gguf --tokenizer-from {files}/missing.gguf", "not found"),
    ("export gguf {model} --out x.gguf --tokenizer-from {files}/notes.txt", "GGUF"),
    ("export gguf {files}/missing-dir --out x.gguf", "no such model directory"),
    ("export gguf {model} --out {files}/notes.txt/x.gguf", "directory"),
    ("recipes show nosuch", "no recipe file"),
    ("recipes show", "Missing argument"),
    # a single-value option given twice, a component given twice: an error, never last-wins ----------
    ("edit --model {model} --zero-heads 0.1 --zero-heads 1.2", "--zero-heads is given twice"),
    ("edit --model {model} --zero-heads=0.1 --zero-heads 1.2", "--zero-heads is given twice"),
    ("edit --model {model} --zero-heads 0.1 --verify --no-verify", "--verify and --no-verify are both given"),
    ("edit --model {model} --zero-heads 0.1,0.1", "head 0.1 is edited twice"),
    ("edit --model {model} --zero-neurons 1.5 --scale-neurons 1.5=0.5", "neuron 1.5 is edited twice"),
    ("edit --model {model} -m {model} --zero-heads 0.1", "is given twice"),
    ("attribute heads --model {model} --n 4 --n 8", "--n is given twice"),
    ("attribute neurons --model {model} --data arithmetic --data icl", "--data is given twice"),
    ("evaluate --model {model} --out a --out b", "--out is given twice"),
    ("lora train --model {model} --layers 0 --layers 1", "--layers is given twice"),
    ("export gguf {model} --out x.gguf --type f16 --type f32", "--type is given twice"),
    ("prune --model {model} --retain 0.9 --retain 0.8", "--retain is given twice"),
]


@pytest.fixture(scope="module")
def bad_files(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad")
    model = tiny.save_dir(tiny.tiny_model("llama"), root / "tiny-llama")
    f = root / "files"
    f.mkdir()
    (f / "empty-dir").mkdir()
    (f / "existing-out").mkdir()
    (f / "existing-out" / "x").write_text("x")
    (f / "notes.txt").write_text("my notes\n")
    (f / "earlier-results").mkdir()  # what attribute/evaluate would write: kept unless --force
    for name in ("evaluation.json", "heads_static.csv", "neurons_logprob.json", "neurons_cna.json", "circuit.json",
                 "heads_auto.json"):
        (f / "earlier-results" / name).write_text("{}")
    (f / "binary.bin").write_bytes(bytes(range(256)) * 4)
    (f / "invalid.json").write_text("{nope")
    (f / "latin1.json").write_bytes('{"note": "caf\xe9"}'.encode("latin-1"))
    (f / "list.json").write_text("[1, 2]")
    (f / "empty.json").write_text("")
    plans = {
        "plan-unknown-op": {"edits": [{"op": "melt_head", "target": "0.1"}]},
        "plan-number-target": {"edits": [{"op": "zero_head", "target": 3.10}]},
        "plan-nan-factor": {"edits": [{"op": "scale_head", "target": "0.1", "factor": float("nan")}]},
        "plan-string-factor": {"edits": [{"op": "scale_head", "target": "0.1", "factor": "big"}]},
        "plan-unknown-key": {"edits": [{"op": "zero_head", "target": "0.1", "colour": "red"}]},
        "plan-edits-not-list": {"edits": {"op": "zero_head"}},
        "plan-bad-layers": {"edits": [{"op": "keep_only_neurons", "layers": [2, 1], "keep": []}]},
        "plan-null": None,
    }
    for name, plan in plans.items():
        (f / f"{name}.json").write_text(json.dumps(plan))
    (f / "empty.jsonl").write_text("")
    (f / "malformed.jsonl").write_text('{"prompt": "a"}\n{"prompt": \n')
    (f / "no-prompt.jsonl").write_text('{"text": "a"}\n')
    (f / "list-lines.jsonl").write_text('[1, 2]\n')
    (f / "latin1.jsonl").write_bytes('{"prompt": "caf\xe9"}\n'.encode("latin-1"))
    (f / "no-prompt.csv").write_text("text,answer\na,b\n")
    (f / "latin1.csv").write_bytes("prompt,answer\ncaf\xe9,1\n".encode("latin-1"))
    (f / "invalid.yaml").write_text("recipe: [unclosed\n")
    (f / "list.yaml").write_text("- 1\n- 2\n")
    (f / "empty.yaml").write_text("")
    (f / "latin1.yaml").write_bytes("recipe: icl-heads\nname: caf\xe9\n".encode("latin-1"))
    (f / "bomb.yaml").write_text("a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
        f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}]\n" for i in range(8)))
    corrupt = f / "corrupt-model"
    corrupt.mkdir()
    (corrupt / "config.json").write_text((model / "config.json").read_text())
    (corrupt / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:100])
    pickled = f / "pickle-model"
    pickled.mkdir()
    (pickled / "config.json").write_text((model / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"not even a real pickle")
    for name, manifest in {"ckpt-invalid-manifest": "{nope", "ckpt-binary-manifest": bytes(range(256)),
                           "ckpt-list-manifest": "[]", "ckpt-no-source": json.dumps({"plan": {"edits": []}}),
                           "ckpt-bad-plan": json.dumps({"source": {"model": str(model)}, "plan": [1]})}.items():
        (f / name).mkdir()
        path = f / name / "edit_manifest.json"
        path.write_bytes(manifest) if isinstance(manifest, bytes) else path.write_text(manifest)
    return {"model": str(model), "files": str(f)}


def _tree(*roots: Path) -> dict:
    return {str(p): (p.stat().st_size if p.is_file() else -1)
            for root in roots if root.exists() for p in sorted(root.rglob("*"))}


@pytest.mark.parametrize("line,message", CASES, ids=[c[0][:60] for c in CASES])
def test_bad_input_is_one_line_exit_2_and_writes_nothing(line, message, bad_files, tmp_path, monkeypatch):
    """In process (CliRunner keeps stderr apart), in an empty working folder and an empty store."""
    from click.testing import CliRunner

    from editor.cli import main

    args = shlex.split(line.format(**bad_files))
    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    for key, value in {"EDITOR_HOME": str(home), "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}.items():
        monkeypatch.setenv(key, value)
    before = _tree(work, Path(bad_files["files"]), home)
    got = CliRunner().invoke(main, args)
    stderr = got.stderr
    lines = stderr.strip("\n").split("\n") if stderr.strip() else []
    assert got.exit_code == 2, (got.exit_code, stderr[-1500:], repr(got.exception))
    assert "Traceback" not in stderr and len(lines) == 1, stderr[-1500:]
    assert message.lower() in lines[0].lower(), lines[0]
    assert _tree(work, Path(bad_files["files"]), home) == before


def test_the_table_is_large_enough():
    assert len(CASES) >= 150


def test_a_corrupt_model_in_the_store_is_one_line(bad_files, tmp_path, monkeypatch):
    """The store holds the default model, but its weights are truncated (a disk fault, a killed copy
    by hand): commands that load it say so in one line and write nothing."""
    from click.testing import CliRunner

    from editor.cli import main
    from editor.model import store

    home, work = tmp_path / "home", tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    monkeypatch.setenv("EDITOR_HOME", str(home))
    cached = home / "models" / store.DEFAULT_MODEL
    cached.mkdir(parents=True)
    model = Path(bad_files["model"])
    (cached / "config.json").write_text((model / "config.json").read_text())
    (cached / "model.safetensors").write_bytes((model / "model.safetensors").read_bytes()[:100])
    (cached / store.PROVENANCE_FILE).write_text("{}")
    before = _tree(work, home)
    for args in (["models", "info", store.DEFAULT_MODEL], ["attribute", "heads", "--n", "4"],
                 ["evaluate", "--data", "guard"]):
        got = CliRunner().invoke(main, args)
        lines = got.stderr.strip("\n").split("\n")
        assert got.exit_code == 2 and len(lines) == 1 and "could not load" in lines[0], got.stderr[-800:]
    assert _tree(work, home) == before
