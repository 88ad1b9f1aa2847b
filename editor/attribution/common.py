"""Shared pieces of the attribution loops: prompt batches, target tokens, progress bars."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator

import torch

from editor.errors import UserError
from editor.model.capture import encode
from editor.progress import progress_bar
from editor.tasks.examples import Example, fit_to_tokenizer, gold_token_ids

TARGETS = ("auto", "gold", "top1")


@dataclass
class PromptBatch:
    """A left-padded batch of prompts and the gold token of each (None where there is no answer)."""

    start: int
    examples: list[Example]
    inputs: dict
    gold: list[int | None]

    def targets(self, logits: torch.Tensor, mode: str) -> torch.Tensor:
        """Target token per row: the gold answer token, or the model's own top-1 prediction."""
        if mode not in TARGETS:
            raise UserError(f"unknown target {mode!r}; choose one of {', '.join(TARGETS)}")
        top1 = logits.argmax(-1)
        if mode == "top1" or (mode == "auto" and any(g is None for g in self.gold)):
            return top1
        if any(g is None for g in self.gold):
            raise UserError("target 'gold' needs an answer for every prompt; score the model's own top-1 token instead (target 'top1')")
        return torch.tensor(self.gold, device=logits.device)


def prompt_batches(tokenizer, examples: list[Example], batch_size: int, device, desc: str = "prompts",
                   progress: bool = True) -> Iterator[PromptBatch]:
    """Left-padded batches (the last real token is then the last position of every row)."""
    if not examples:
        raise UserError("no prompts to score")
    if batch_size < 1:
        raise UserError("batch size must be at least 1")
    examples = fit_to_tokenizer(tokenizer, examples)
    gold = gold_token_ids(tokenizer, examples)
    bar = progress_bar(total=len(examples), desc=desc, unit="prompt", enabled=progress)
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        inputs = encode(tokenizer, [e.prompt for e in chunk], device=device, padding_side="left")
        yield PromptBatch(start, chunk, inputs, gold[start:start + batch_size])
        bar.update(len(chunk))
    bar.close()
