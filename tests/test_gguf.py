"""GGUF export, read back by the gguf package and run by llama.cpp (llama-cpp-python, built by the
Makefile's test target), against transformers on the same tokens."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import tiny
from editor.cli import main
from editor.edit.checkpoint import describe_source, save_checkpoint
from editor.edit.gguf import _permute, export_gguf
from editor.edit.plan import EditPlan
from editor.edit.shrink import Removal, shrink
from editor.edit.weights import apply_plan
from editor.errors import UserError
from editor.model.loading import load_model

GGUF_FAMILIES = ["llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "gemma3_text"]
# llama.cpp keeps its key/value cache in f16 by default (logits then differ by about 2e-2 on the
# default model); with an f32 cache the f32 export agrees to about 6e-5. Tolerance: 1e-3.
F32_CACHE = {"type_k": 0, "type_v": 0}  # GGML_TYPE_F32
TOLERANCE = 1e-3
TOKENS = [5, 17, 30, 4, 12, 40, 41, 9, 22, 3]  # token ids: the tiny models run without a tokenizer


def no_vocab_gguf(path):
    """A GGUF whose tokenizer is llama.cpp's "none" (dummy tokens): enough to run token ids."""
    import gguf

    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_tokenizer_model("none")
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


def tiny_checkpoint(family, tmp_path, shrunk=False):
    model = tiny.tiny_model(family)
    if family == "gemma2":  # llama.cpp scales attention by head_dim^-0.5; the tiny config's scalar is 256
        model = gemma2_with_scalar(model.config.head_dim)
    src = tiny.save_dir(model, tmp_path / f"{family}-base")
    lm = load_model(str(src))
    if shrunk:
        small, _ = shrink(lm.model, Removal(layers=[1], groups={0: [1], 2: [1]}, neurons={0: [0, 5, 7, 11], 2: [1, 2, 3, 4]}))
        return tiny.save_dir(small, tmp_path / f"{family}-small"), small
    plan = EditPlan(note="test").zero("head", ["1.2"]).scale("neuron", ["0.3"], 0.5)
    apply_plan(lm.model, plan)
    out = save_checkpoint(lm.model, lm.tokenizer, tmp_path / f"{family}-edit", plan, describe_source(lm))
    return out, lm.model


def gemma2_with_scalar(scalar):
    from transformers import AutoModelForCausalLM

    config = tiny.CONFIGS["gemma2"]()
    config.query_pre_attn_scalar = scalar
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="eager").eval()
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model


def read(path):
    import gguf

    reader = gguf.GGUFReader(str(path))
    tensors = {t.name: np.array(t.data).reshape(tuple(reversed([int(x) for x in t.shape]))) for t in reader.tensors}
    return reader, tensors


@pytest.mark.parametrize("family", GGUF_FAMILIES)
def test_export_carries_weights_config_and_manifest(family, tmp_path):
    ckpt, model = tiny_checkpoint(family, tmp_path)
    out = export_gguf(str(ckpt), tmp_path / "m.gguf", "f32", no_vocab_gguf(tmp_path / "tok.gguf"), log=lambda _m: None)
    reader, tensors = read(out.path)
    arch = out.architecture
    field = lambda key: reader.fields[key].contents()  # noqa: E731
    cfg = model.config
    assert field(f"{arch}.block_count") == cfg.num_hidden_layers
    assert field(f"{arch}.feed_forward_length") == cfg.intermediate_size
    assert field(f"{arch}.attention.head_count_kv") == cfg.num_key_value_heads
    manifest = json.loads(field("lmedit.manifest"))
    assert manifest["plan"]["edits"]  # the file says what was edited
    sd = model.state_dict()
    q = torch.from_numpy(tensors["blk.1.attn_q.weight"].copy())
    expected = _permute(sd["model.layers.1.self_attn.q_proj.weight"], cfg.num_attention_heads) \
        if arch == "llama" else sd["model.layers.1.self_attn.q_proj.weight"]
    assert torch.equal(q, expected)
    assert torch.equal(torch.from_numpy(tensors["blk.0.ffn_down.weight"].copy()), sd["model.layers.0.mlp.down_proj.weight"])


def test_a_gemma2_scale_llama_cpp_would_not_reproduce_is_refused(tmp_path):
    src = tiny.save_dir(gemma2_with_scalar(256), tmp_path / "g2")
    with pytest.raises(UserError, match="assumes query_pre_attn_scalar = head_dim"):
        export_gguf(str(src), tmp_path / "x.gguf", "f32", no_vocab_gguf(tmp_path / "tok.gguf"), log=lambda _m: None)
    assert not (tmp_path / "x.gguf").exists()


def test_unsupported_family_is_one_line_and_leaves_no_file(tmp_path):
    src = tiny.save_dir(tiny.tiny_model("gpt2"), tmp_path / "gpt2")
    tok = no_vocab_gguf(tmp_path / "tok.gguf")
    result = CliRunner().invoke(main, ["export", "gguf", str(src), "--out", str(tmp_path / "x.gguf"),
                                       "--tokenizer-from", str(tok)])
    assert result.exit_code == 2 and "does not support the 'gpt2' family" in result.output
    assert "Traceback" not in result.output and sorted(p.name for p in tmp_path.iterdir()) == ["gpt2", "tok.gguf"]
    no_source = CliRunner().invoke(main, ["export", "gguf", str(src), "--out", str(tmp_path / "y.gguf")])
    assert no_source.exit_code == 2 and "--tokenizer-from" in no_source.output


def llama_logits(path, tokens):
    llama_cpp = pytest.importorskip("llama_cpp")  # installed by `make test`
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=256, n_threads=2, verbose=False, **F32_CACHE)
    llm.eval(tokens)
    scores = torch.tensor(np.array(llm.scores[: len(tokens)]), dtype=torch.float32)
    llm.close()
    return scores


@pytest.mark.parametrize("family", GGUF_FAMILIES)
@pytest.mark.parametrize("shrunk", [False, True], ids=["edited", "shrunk"])
def test_llama_cpp_runs_the_export_like_transformers(family, shrunk, tmp_path):
    ckpt, model = tiny_checkpoint(family, tmp_path, shrunk)
    refused = {"qwen2": "heads removed cannot be exported",  # llama.cpp's qwen2 fixes q at hidden x hidden
               "gemma2": "broke the pattern"}  # llama.cpp alternates sliding/full layers from layer 0
    if shrunk and family in refused:
        with pytest.raises(UserError, match=refused[family]):
            export_gguf(str(ckpt), tmp_path / "m.gguf", "f32", no_vocab_gguf(tmp_path / "tok.gguf"), log=lambda _m: None)
        assert not (tmp_path / "m.gguf").exists()
        return
    out = export_gguf(str(ckpt), tmp_path / "m.gguf", "f32", no_vocab_gguf(tmp_path / "tok.gguf"), log=lambda _m: None)
    got = llama_logits(out.path, TOKENS)
    with torch.no_grad():
        want = model(torch.tensor([TOKENS])).logits[0]
    assert got.shape == want.shape
    assert (got.argmax(-1) == want.argmax(-1)).all()
    assert (got - want).abs().max().item() < TOLERANCE


PROMPTS = ["The capital of France is", "3 + 5 = 8\n2 + 4 = "]


@pytest.fixture(scope="module")
def default_exports(tmp_path_factory):
    """The default model as f32 GGUF: base, a zeroed-heads edit, and a physically shrunk model."""
    root = tmp_path_factory.mktemp("gguf")
    lm = load_model("smollm2-135m")
    models = {}
    base = export_gguf("smollm2-135m", root / "base.gguf", "f32", log=lambda _m: None)
    models["base"] = (base.path, None)
    plan = EditPlan(note="zero heads").zero("head", ["3.1", "5.2", "12.0", "20.4"])
    with apply_plan(lm.model, plan):
        edited = save_checkpoint(lm.model, lm.tokenizer, root / "edit", plan, describe_source(lm))
    models["edit"] = (export_gguf(str(edited), root / "edit.gguf", "f32", log=lambda _m: None).path, plan)
    removal = Removal(layers=[29], groups={l: [2] for l in range(29)}, neurons={l: list(range(0, 1536, 4)) for l in range(29)})
    small, _ = shrink(lm.model, removal)
    shrunk = save_checkpoint(small, lm.tokenizer, root / "shrunk", EditPlan(note="shrunk"), describe_source(lm))
    models["shrunk"] = (export_gguf(str(shrunk), root / "shrunk.gguf", "f32", log=lambda _m: None).path, small)
    return lm, models


@pytest.mark.slow
@pytest.mark.parametrize("case", ["base", "edit", "shrunk"])
def test_llama_cpp_agrees_with_transformers_on_the_default_model(default_exports, case):
    """Same tokens from both tokenizers; top-1 agreement at every position; f32 logits within
    TOLERANCE (measured 6e-5 with an f32 cache: llama.cpp sums in another order)."""
    lm, models = default_exports
    path, what = models[case]
    llama_cpp = pytest.importorskip("llama_cpp")
    llm = llama_cpp.Llama(model_path=str(path), logits_all=True, n_ctx=256, n_threads=2, verbose=False, **F32_CACHE)
    for prompt in PROMPTS:
        tokens = llm.tokenize(prompt.encode(), add_bos=False, special=False)
        assert tokens == lm.tokenizer(prompt)["input_ids"]
        llm.reset()
        llm.eval(tokens)
        got = torch.tensor(np.array(llm.scores[: len(tokens)]), dtype=torch.float32)
        ids = torch.tensor([tokens])
        with torch.no_grad():
            if case == "edit":
                with apply_plan(lm.model, what):
                    want = lm.model(ids).logits[0]
            else:
                want = (what if case == "shrunk" else lm.model)(ids).logits[0]
        assert (got.argmax(-1) == want.argmax(-1)).all()
        assert (got - want).abs().max().item() < TOLERANCE, (got - want).abs().max().item()
        if case != "base":  # the edit is visible in llama.cpp: its logits moved where transformers' did
            with torch.no_grad():
                plain = lm.model(ids).logits[0]
            assert (plain - want).abs().max().item() > 1e-2
    meta = json.loads(llm.metadata.get("lmedit.manifest", "null") or "null")
    llm.close()
    assert (meta is None) == (case == "base")


def test_half_and_q8_exports_are_smaller_and_close(tmp_path):
    """f16 and q8_0 (measured on the tiny Llama: 1.7e-4 and 5.2e-3 max logit difference)."""
    ckpt, model = tiny_checkpoint("llama", tmp_path)
    tok = no_vocab_gguf(tmp_path / "tok.gguf")
    with torch.no_grad():
        want = model(torch.tensor([TOKENS])).logits[0]
    sizes = {}
    for kind, tolerance in [("f32", TOLERANCE), ("f16", 5e-3), ("q8_0", 5e-2)]:
        out = export_gguf(str(ckpt), tmp_path / f"{kind}.gguf", kind, tok, log=lambda _m: None)
        sizes[kind] = out.path.stat().st_size
        got = llama_logits(out.path, TOKENS)
        assert (got - want).abs().max().item() < tolerance, kind
    assert sizes["f32"] > sizes["f16"] > sizes["q8_0"]


def test_cli_export_writes_once_and_needs_force_to_replace(tmp_path):
    ckpt, _ = tiny_checkpoint("llama", tmp_path)
    tok = no_vocab_gguf(tmp_path / "tok.gguf")
    args = ["export", "gguf", str(ckpt), "--out", str(tmp_path / "m.gguf"), "--type", "f32", "--tokenizer-from", str(tok)]
    first = CliRunner().invoke(main, args)
    assert first.exit_code == 0 and "llama-cli -m" in first.output and (tmp_path / "m.gguf").is_file()
    again = CliRunner().invoke(main, args)
    assert again.exit_code == 2 and "--force" in again.output
    assert CliRunner().invoke(main, [*args, "--force"]).exit_code == 0
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".m.gguf")]  # no temp file left


@pytest.mark.parametrize("kind", ["f32", "q8_0"])
def test_verify_checks_an_exports_tensors_against_the_hash_it_records(kind, tmp_path):
    """An export records the sha256 of its tensors as stored; `lmedit verify FILE.gguf` recomputes it
    from the file, so one changed byte of one tensor fails (exit 1), and so does a manifest missing
    a field; a GGUF lmedit did not write is one line (exit 2)."""
    from click.testing import CliRunner

    from editor.cli import main
    from editor.edit.gguf import TENSORS_SHA256

    ckpt, _ = tiny_checkpoint("llama", tmp_path)
    out = export_gguf(str(ckpt), tmp_path / "m.gguf", kind, no_vocab_gguf(tmp_path / "tok.gguf"), log=lambda _m: None)
    good = CliRunner().invoke(main, ["verify", str(out.path)])
    assert good.exit_code == 0 and "tensors match the recorded sha256" in good.output, good.output
    import gguf

    last = gguf.GGUFReader(out.path).tensors[-1]
    data = bytearray(out.path.read_bytes())
    data[last.data_offset + last.n_bytes // 2] ^= 0x10  # one bit inside the last tensor's data
    bad = tmp_path / "changed.gguf"
    bad.write_bytes(bytes(data))
    got = CliRunner().invoke(main, ["verify", str(bad)])
    assert got.exit_code == 1 and TENSORS_SHA256 in got.stderr and got.stderr.count("\n") == 1, got.output
    foreign = CliRunner().invoke(main, ["verify", str(tmp_path / "tok.gguf")])
    assert foreign.exit_code == 2 and "not a GGUF exported by lmedit" in foreign.stderr
