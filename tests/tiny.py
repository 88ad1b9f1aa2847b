"""Tiny randomly initialised models, one per family of the architecture table, and a char tokenizer."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast
from transformers import (GPT2Config, GPTJConfig, GPTNeoXConfig, LlamaConfig, MistralConfig, Qwen2Config,
                          Qwen3Config, GemmaConfig, Gemma2Config, Gemma3TextConfig)

VOCAB = ["<pad>", "<eos>", "<unk>"] + list(string.digits + string.ascii_letters + " +-*/=:?.,'")
V = len(VOCAB)
COMMON_LLAMA = dict(vocab_size=V, hidden_size=32, intermediate_size=48, num_hidden_layers=3,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                    pad_token_id=0, eos_token_id=1, bos_token_id=1)

# name -> config factory. Gemma entries use head_dim != hidden/heads on purpose.
CONFIGS = {
    "gpt2": lambda: GPT2Config(vocab_size=V, n_embd=32, n_layer=3, n_head=4, n_positions=1024,
                               pad_token_id=0, eos_token_id=1, bos_token_id=1),
    "gptj": lambda: GPTJConfig(vocab_size=V, n_embd=32, n_layer=3, n_head=4, rotary_dim=4, n_positions=1024,
                               pad_token_id=0, eos_token_id=1, bos_token_id=1),
    "gpt_neox": lambda: GPTNeoXConfig(vocab_size=V, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                                      num_attention_heads=4, use_parallel_residual=True, attention_bias=True,
                                      max_position_embeddings=1024, pad_token_id=0, eos_token_id=1, bos_token_id=1),
    "gpt_neox_sequential": lambda: GPTNeoXConfig(vocab_size=V, hidden_size=32, intermediate_size=64,
                                                 num_hidden_layers=3, num_attention_heads=4,
                                                 use_parallel_residual=False, max_position_embeddings=1024,
                                                 pad_token_id=0, eos_token_id=1, bos_token_id=1),
    "llama": lambda: LlamaConfig(**COMMON_LLAMA),
    "mistral": lambda: MistralConfig(**COMMON_LLAMA),
    "qwen2": lambda: Qwen2Config(**COMMON_LLAMA),
    "qwen3": lambda: Qwen3Config(**COMMON_LLAMA, head_dim=8),
    "gemma": lambda: GemmaConfig(**COMMON_LLAMA, head_dim=16),
    "gemma2": lambda: Gemma2Config(**COMMON_LLAMA, head_dim=16, final_logit_softcapping=30.0,
                                   attn_logit_softcapping=50.0, sliding_window=8),
    "gemma3_text": lambda: Gemma3TextConfig(**COMMON_LLAMA, head_dim=16, sliding_window=8, query_pre_attn_scalar=16),
}
FAMILIES = list(CONFIGS)


def tiny_model(family: str, seed: int = 0, attn_implementation: str = "eager"):
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(CONFIGS[family](), attn_implementation=attn_implementation)
    # Random init leaves norms at 1 (or 0 for Gemma) and biases at 0: perturb them so the tests
    # exercise every term (biases, norm weights, Gemma's 1 + weight).
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def char_tokenizer() -> PreTrainedTokenizerFast:
    from tokenizers import Tokenizer, models, pre_tokenizers, decoders

    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(VOCAB)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<unk>")


TRAINED = Path(__file__).parent / "data"


def arithmetic_model(family: str = "llama", steps: int = 300, seed: int = 0):
    """A tiny model trained on one-shot one-digit addition in the pruning recipe's format, so that
    pruning has an accuracy to keep (random models score 0).

    The trained weights are shipped (``tests/data``, ~100 kB each) rather than trained per run:
    300 optimiser steps amplify the last-bit differences between CPUs' float32 kernels into a
    different model, so every test that reads its accuracy or its scores would test a different
    model on each kind of machine. ``python tests/tiny.py`` retrains them."""
    path = TRAINED / f"arith-{family}-steps{steps}-seed{seed}.safetensors"
    model = tiny_model(family, seed)
    if path.exists():
        from safetensors.torch import load_model
        load_model(model, str(path))
        return model.eval()
    return train_arithmetic(model, steps, seed)


def train_arithmetic(model, steps: int, seed: int):
    """Full fine-tuning (a few seconds) of ``model`` on one-shot one-digit addition."""
    from editor.lora.train import _batch
    from editor.tasks.arithmetic import split_prompts

    tok = char_tokenizer()
    train = split_prompts({"train": 2000}, {"train": 1}, shots=1, seed=1000 + seed)["train"]
    torch.manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        start = (step * 32) % len(train)
        loss = model(**_batch(tok, train[start:start + 32], "cpu")).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def save_dir(model, path):
    """``model`` and the char tokenizer saved as a Hugging Face directory; returns ``path``."""
    model.save_pretrained(path)
    char_tokenizer().save_pretrained(path)
    return path


if __name__ == "__main__":  # regenerate the shipped trained weights
    from safetensors.torch import save_model

    TRAINED.mkdir(exist_ok=True)
    for family, steps, seed in [("llama", 300, 0), ("llama", 150, 0)]:
        trained = train_arithmetic(tiny_model(family, seed), steps, seed)
        save_model(trained, str(TRAINED / f"arith-{family}-steps{steps}-seed{seed}.safetensors"))
