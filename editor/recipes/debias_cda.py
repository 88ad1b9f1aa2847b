"""CDA for the gender-debias recipe: a LoRA fine-tuned on counterfactually augmented data.

Counterfactual data augmentation (Zmigrod et al. 2019; as a debiasing baseline in Meade et al.
2022) trains on text in which every gendered word also appears swapped. Here the text is the choose
split's prompts with their answers, both directions (each profession after "A woman ..." and after
"A man ...", each occupation followed by " she" and by " he"), plus gendered sentences of the
in-context pool and their swaps, mixed half and half with general English text (the rows pruning's
recovery trains on) so the model stays a language model. The LoRA has recovery's settings; its
number of steps is chosen on validation, up to recovery's budget. The control is the same LoRA
trained on the same rows without the counterfactuals (only the stereotyped pairings).

The adapter is merged into the weights for evaluation and for the checkpoint, and the weights are
put back afterwards; training is seeded, so the test and the checkpoint retrain the validated pick.
"""

from __future__ import annotations

import random
import re
from contextlib import contextmanager
from typing import Iterator

import torch

from editor.lora.train import LoraSettings, train_lora
from editor.tasks import gender, icl
from editor.tasks.examples import Example
from editor.tasks.general import general_rows
from editor.tasks.kinds import TaskData, as_completion

PAIRS = [("he", "she"), ("him", "her"), ("his", "her"), ("himself", "herself"), ("man", "woman"), ("men", "women"),
         ("boy", "girl"), ("boys", "girls"), ("father", "mother"), ("son", "daughter"), ("brother", "sister"),
         ("husband", "wife"), ("king", "queen"), ("male", "female"), ("mr", "mrs"), ("sir", "madam")]
# "her" is both "him" and "his": it becomes "his" before a word that is not a verb-like ending, else "him".
SWAP = {a: b for a, b in PAIRS} | {b: a for a, b in PAIRS if b != "her"}
WORD = re.compile(r"\b(" + "|".join(sorted(set(SWAP) | {"her"}, key=len, reverse=True)) + r")\b", re.IGNORECASE)


def swap_gender(text: str) -> str:
    """Every gendered word of ``PAIRS`` swapped, keeping capitalisation ("her" -> "his" before a
    word, "him" at the end of a clause)."""
    def repl(m: re.Match) -> str:
        word, lower = m.group(0), m.group(0).lower()
        if lower == "her":
            after = text[m.end():m.end() + 2]
            new = "his" if re.match(r" [a-zA-Z]", after) else "him"
        else:
            new = SWAP[lower]
        return new.capitalize() if word[0].isupper() else new

    return WORD.sub(repl, text)


def task_rows(templates: list[int], occupations: list[tuple[str, str]], counterfactual: bool) -> list[Example]:
    """The choose split's prompts with their answers: every pairing (``counterfactual``) or only the
    stereotyped ones (the control)."""
    prof = gender.build([gender.TEMPLATES[i] for i in templates], occupations)
    pron = gender.build_pronouns([gender.PRONOUN_TEMPLATES[i] for i in templates], occupations)
    return [e for e in prof + pron if counterfactual or e.meta["gender"] == e.meta["lean"]]


def pool_rows(counterfactual: bool) -> list[Example]:
    sentences = [s for s in icl.load_pool("builtin").sentences if WORD.search(s)]
    texts = sentences + ([swap_gender(s) for s in sentences] if counterfactual else [])
    return as_completion(TaskData("pool", "text", [Example(t) for t in texts], "pool"))


def training_rows(templates: list[int], occupations: list[tuple[str, str]], counterfactual: bool,
                  seed: int) -> list[Example]:
    """Task and pool rows, and as many general-text rows (seeded draw)."""
    gendered = task_rows(templates, occupations, counterfactual) + pool_rows(counterfactual)
    general = as_completion(TaskData("general", "text", general_rows("train"), "general"))
    general = random.Random(seed).sample(general, min(len(general), len(gendered)))
    return gendered + general


@contextmanager
def merged_lora(model, tokenizer, settings: LoraSettings, rows: list[Example]) -> Iterator[None]:
    """``model`` with a LoRA trained on ``rows`` merged into its weights; the weights are restored after."""
    originals = {name: (p.detach().clone(), p.requires_grad) for name, p in model.named_parameters()}
    peft_model, _ = train_lora(model, tokenizer, settings, rows, progress=True)
    peft_model.merge_and_unload()
    try:
        yield
    finally:
        with torch.no_grad():
            for name, p in model.named_parameters():
                p.copy_(originals[name][0])
                p.requires_grad_(originals[name][1])
