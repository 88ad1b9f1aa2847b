"""What a patch puts in place of a component's activation: the counterfactual's, or an ablation's.

* ``corrupt`` (default): the activation on the row's ``corrupt_prompt`` (activation patching);
* ``resample``: the activation on ANOTHER prompt of the task, of the same length in tokens (a seeded
  pairing; resample-ablation, Chan et al. 2022): what the component carries beyond what any prompt
  of the task gives it;
* ``mean``: its mean over the task's prompts at each position (counted from the end of the prompt,
  the way left padding aligns them): mean-ablation, which keeps the component's typical output;
* ``zero``: zeros, the ablation ``attribute heads`` scans (a zero the model never sees in training
  can exaggerate an effect; mean and resample are the usual checks of that).

Each is a source for the same exact, gradient and AtP* machinery (``editor.attribution.patching``):
``resample`` as contrast pairs, ``mean`` and ``zero`` as a replacement of the recorded activations.
"""

from __future__ import annotations

import random

import torch

from editor.errors import UserError
from editor.tasks.examples import Example

ABLATIONS = ("corrupt", "resample", "mean", "zero")


def paired(tokenizer, examples: list[Example], ablation: str, seed: int = 0) -> list[Example]:
    """The rows a patching run uses: as given (``corrupt``), each prompt paired with another of the same
    length (``resample``), or with itself (``mean``, ``zero``: the source run is the clean run, whose
    activations :func:`replaced` then overwrites)."""
    if ablation not in ABLATIONS:
        raise UserError(f"unknown ablation {ablation!r}; choose from {', '.join(ABLATIONS)}")
    if ablation == "corrupt":
        return examples
    if ablation != "resample":
        return [Example(e.prompt, e.answer, {**(e.meta or {}), "corrupt_prompt": e.prompt}) for e in examples]
    by_length: dict[int, list[int]] = {}
    for i, e in enumerate(examples):
        by_length.setdefault(len(tokenizer(e.prompt)["input_ids"]), []).append(i)
    rng = random.Random(seed)
    partner = {}
    for length, rows in by_length.items():
        if len(rows) < 2:
            raise UserError(f"--ablation resample pairs each prompt with another of the same length in tokens; "
                            f"row {rows[0] + 1} is the only one of {length} tokens")
        order = rng.sample(rows, len(rows))
        partner.update({a: b for a, b in zip(order, order[1:] + order[:1])})  # a cycle: nobody draws itself
    return [Example(e.prompt, e.answer, {**(e.meta or {}), "corrupt_prompt": examples[partner[i]].prompt})
            for i, e in enumerate(examples)]


def replaced(store: dict[int, torch.Tensor], ablation: str, means: dict[int, torch.Tensor] | None) -> dict:
    """The recorded source activations (``[batch, positions, features]`` per layer) as the ablation
    wants them: unchanged, zeros, or the task's mean at each position from the end."""
    if ablation == "zero":
        return {l: torch.zeros_like(v) for l, v in store.items()}
    if ablation == "mean":
        return {l: means[l][-v.shape[1]:].to(v.device, v.dtype).expand_as(v) for l, v in store.items()}
    return store


class MeanAccumulator:
    """Sums of each layer's activation by position, over real tokens only, for prompts of up to
    ``length`` tokens aligned at their end (left padding puts every batch's last token last)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.sums: dict[int, torch.Tensor] = {}
        self.counts = torch.zeros(length, dtype=torch.float64)

    def add(self, store: dict[int, torch.Tensor], attention_mask: torch.Tensor) -> None:
        mask = attention_mask.to(torch.float64)
        width = mask.shape[1]
        self.counts[-width:] += mask.sum(0)
        for l, v in store.items():
            total = self.sums.setdefault(l, torch.zeros(self.length, v.shape[-1], dtype=torch.float64))
            total[-width:] += (v.double() * mask[..., None]).sum(0)

    def means(self) -> dict[int, torch.Tensor]:
        """Per layer ``[positions, features]`` in prompt order (the last row is the last position)."""
        counts = self.counts.clamp(min=1)[:, None]
        return {l: s / counts for l, s in self.sums.items()}
