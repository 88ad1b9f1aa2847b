"""Indirect-object identification (IOI; Wang et al. 2022) as contrast pairs, from names and templates
of our own: "When Mary and John went to the market, John handed a basket to" -> " Mary".

The corrupt prompt repeats the OTHER name ("..., Mary handed a basket to" -> " John"): same tokens
but one, so positions line up, and the logit difference ``logit(" Mary") - logit(" John")`` flips
sign between the two (the clean - corrupt gap patching divides by). Every name is one token with its
leading space in the default model's and Gemma 3's tokenizers; a tokenizer that splits one makes
the pair's lengths differ, which patching refuses in one line.
"""

from __future__ import annotations

import random

from editor.tasks.examples import Example

NAMES = ("Mary John James Sarah Michael David Anna Emma Tom Paul Peter Lisa Kate Mark Jack Alice Daniel Laura "
         "Susan Robert Rachel Kevin Linda Brian Helen George Karen Steven Nancy Eric").split()

TEMPLATES = (
    "When {a} and {b} went to the market, {s} handed a basket to",
    "After {a} and {b} finished the game, {s} passed the ball to",
    "While {a} and {b} were cooking dinner, {s} gave a spoon to",
    "Yesterday {a} and {b} visited the museum, and {s} showed a map to",
    "Once {a} and {b} arrived at the party, {s} brought a gift to",
    "Since {a} and {b} were working late, {s} offered a coffee to",
)


def build(n: int = 64, seed: int = 0) -> list[Example]:
    """``n`` seeded pairs cycling through the templates; each pair's names are its ``group``."""
    rng = random.Random(seed)
    out = []
    for i in range(n):
        a, b = rng.sample(NAMES, 2)
        s, io = (a, b) if rng.random() < 0.5 else (b, a)  # which name is repeated (the subject)
        template = TEMPLATES[i % len(TEMPLATES)]
        out.append(Example(template.format(a=a, b=b, s=s), f" {io}", {
            "corrupt_prompt": template.format(a=a, b=b, s=io), "corrupt_answer": f" {s}",
            "group": "-".join(sorted((a, b))), "template": i % len(TEMPLATES)}))
    return out
