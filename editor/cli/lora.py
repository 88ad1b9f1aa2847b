"""`lmedit export gguf` and `lmedit lora`."""

from __future__ import annotations

from pathlib import Path

import click

from editor.errors import UserError
from editor.io import read_json
from editor.model.store import DEFAULT_MODEL
from editor.ranges import MAX_PROMPTS
from editor.cli.core import (
    LmeditGroup, MAX_BATCH, SEED, _components_raw, _info, _log, _model_name, _record, _say, json_option, main,
    model_options)
from editor.cli.options import _DELIMITER, _delimiter, _examples, _layers_of, _model_stem, _renamed


# export -----------------------------------------------------------------------------------------
@main.group(cls=LmeditGroup)
def export():
    """Write a model in another format (GGUF for llama.cpp, Ollama, LM Studio)."""


@export.command("gguf")
@json_option
@click.argument("model")
@click.option("--out", type=click.Path(dir_okay=False, path_type=Path), required=True, help="The .gguf file to write.")
@click.option("--type", "kind", type=click.Choice(["f32", "f16", "q8_0"]), default="f16", show_default=True,
              help="Weight type (norms and biases stay f32).")
@click.option("--tokenizer-from", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="A GGUF of the same tokenizer, for models not made from one [default: found via the manifest].")
@click.option("--force", is_flag=True, help="Replace an existing file.")
def export_gguf_cmd(model, out, kind, tokenizer_from, force):
    """Export MODEL (a checkpoint directory, store alias or .gguf) as a GGUF llama.cpp runs."""
    from editor.edit.gguf import export_gguf

    exported = export_gguf(model, out, kind, tokenizer_from, log=_log, force=force)
    _say(f"run it: llama-cli -m {out} -p 'The capital of France is'  (Ollama: FROM {out.resolve()} in a Modelfile)")
    _record("gguf", {"path": str(exported.path), "architecture": exported.architecture, "type": kind,
                     "tensors": exported.tensors, "tokenizer_from": str(exported.tokenizer_from)})


# lora -------------------------------------------------------------------------------------------
@main.group(cls=LmeditGroup)
def lora():
    """Train LoRA adapters with peft and compare neuron coefficients with the base model."""


@lora.command("train")
@json_option
@model_options
@click.option("--data", "-d", default="arithmetic", show_default=True, metavar="arithmetic|FILE",
              help="Train on generated arithmetic, or on a .jsonl/.csv task file of any kind (docs/tasks.md), split "
                   "train:held-out = 4:1 by its rows' 'group' (seeded).")
@click.option("--test", "test_file", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="An explicit held-out file of the same kind (the --data file is then all training rows).")
@_DELIMITER
@click.option("--task", hidden=True, expose_value=False, callback=_renamed("--task", "--data"))
@click.option("--layers", required=True, help="Layers that get adapters, e.g. 3 or 0-2 or 1,5.")
@click.option("--targets", default="q,k,v,o", show_default=True,
              help="Projections per layer: q, k, v, o (attention), mlp_in, mlp_out.")
@click.option("--rank", type=click.IntRange(1, 4096), default=8, show_default=True)
@click.option("--alpha", type=click.IntRange(1, 1_000_000), default=16, show_default=True)
@click.option("--steps", type=click.IntRange(1, 1_000_000), default=150, show_default=True)
@click.option("--lr", type=float, default=1e-3, show_default=True)
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=16, show_default=True)
@click.option("--digits", type=click.IntRange(1, 3), default=2, show_default=True, help="Arithmetic operand digits.")
@click.option("--n-train", type=click.IntRange(1, MAX_PROMPTS), default=2000, show_default=True,
              help="Training prompts at most.")
@click.option("--n-eval", type=click.IntRange(1, MAX_PROMPTS), default=200, show_default=True,
              help="Held-out prompts at most (no arithmetic operation/operand pair, no file group, shared with training).")
@click.option("--seed", type=SEED, default=0, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory [default: checkpoints/lora/<model>-L<layers>].")
@click.option("--force", is_flag=True, help="Overwrite an existing output directory.")
def lora_train(load, data, test_file, layers, targets, rank, alpha, steps, lr, batch_size, digits, n_train, n_eval,
               seed, out, force):
    """Train a LoRA adapter, evaluate it on held-out prompts, save the adapter and a merged checkpoint."""
    layer_list = _layers_of(layers)  # config only, before torch and peft load
    from editor.lora.train import LoraSettings, check_lora_out, train_and_save

    settings = LoraSettings(layers=layer_list, targets=_components_raw(targets), rank=rank, alpha=alpha, steps=steps,
                            lr=lr, batch_size=batch_size, digits=digits, n_train=n_train, n_eval=n_eval, seed=seed,
                            data=None if data == "arithmetic" else data,
                            test_file=str(test_file) if test_file else None, delimiter=_delimiter())
    if settings.data is not None and not settings.data.endswith((".jsonl", ".csv")):
        raise click.UsageError(f"--data {data!r}: lora train takes the built-in arithmetic task or a .jsonl/.csv file")
    settings.check()
    model = _model_name()
    out = out or Path("checkpoints") / "lora" / f"{_model_stem(model)}-L{layers.replace(',', '_')}"
    check_lora_out(out, force)
    summary = train_and_save(load(), settings, out, force=force, log=_log)
    _say(f"adapter: {out / 'adapter'}\nmerged checkpoint: {out / 'merged'}\n"
         f"token accuracy {summary['accuracy_before']['value']:.3f} -> {summary['accuracy_after']['value']:.3f}")
    _record("adapter", str(out / "adapter"))
    _record("merged", str(out / "merged"))
    _record("summary", summary)


@lora.command("compare")
@json_option
@click.option("--model", "-m", "--base", "base", default=None,
              help="The base model [default: the one named in the adapter's adapter_config.json].")
@click.option("--adapter", required=True, type=click.Path(exists=True, file_okay=False, path_type=Path),
              help="A peft adapter directory (e.g. checkpoints/lora/NAME/adapter).")
@click.option("--data", "-d", default="heldout", show_default=True,
              help="heldout (the adapter's held-out arithmetic prompts, from its lora.json), a built-in task "
                   "(arithmetic:2) or a .jsonl/.csv file with prompt and answer.")
@click.option("--n", "n_prompts", type=click.IntRange(1, MAX_PROMPTS), default=64, show_default=True)
@click.option("--seed", type=SEED, default=0, show_default=True, help="Seed of a built-in task.")
@click.option("--layers", help="Layers whose neurons are compared, e.g. 17-29 [default: all].")
@click.option("--batch-size", type=click.IntRange(1, MAX_BATCH), default=16, show_default=True)
@click.option("--out", type=click.Path(file_okay=False, path_type=Path),
              help="Output directory [default: the adapter's parent directory].")
@click.option("--device", default="cpu", show_default=True)
def lora_compare(base, adapter, data, n_prompts, seed, layers, batch_size, out, device):
    """Coefficients of the top CNA neurons (LoRA vs base), averages over the top 10/20/30/50, accuracies."""
    from editor.lora.compare import coefficient_shift
    from editor.lora.train import heldout_examples, load_adapter
    from editor.model.loading import load_model
    from editor.tables import format_table

    from editor.model.names import check_model_name

    config = Path(adapter) / "adapter_config.json"
    if not config.is_file():
        raise UserError(f"{adapter} is not a peft adapter directory (no adapter_config.json)")
    base = base or read_json(config, "adapter config").get("base_model_name_or_path") or DEFAULT_MODEL
    check_model_name(base)
    examples = heldout_examples(adapter, n_prompts) if data == "heldout" else _examples(data, n_prompts, seed)
    layer_list = _layers_of(layers, base)
    _info(f"loading {base} once; the base is the same model with the adapter switched off ...")
    base_lm = load_model(base, device=device)
    lora_model = load_adapter(base_lm.model, adapter, merge=False)
    shift = coefficient_shift(None, lora_model, base_lm.tokenizer, examples, layer_list, batch_size=batch_size)
    _say(format_table(shift.averages, list(shift.averages[0]), right=True))
    _say(f"token accuracy: base {shift.accuracy['base'].cell()}, LoRA {shift.accuracy['lora'].cell()}")
    paths = shift.save(out or Path(adapter).parent)
    _say("wrote " + ", ".join(str(p) for p in paths.values()))
    _record("compare", shift.to_json())
    _record("files", {k: str(v) for k, v in paths.items()})
