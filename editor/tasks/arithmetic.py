"""Arithmetic prompts of the CNA paper: two operands, four operations, four templates each."""

from __future__ import annotations

import random

from editor.errors import UserError
from editor.tasks.examples import Example

# Templates 0-3 are the CNA paper's; 4 is a spaced equation ("3 + 5 = "), the form on which the
# default model is best (few-shot one-digit addition: about 0.7 answer accuracy against 0.35-0.45
# for the others), used by the pruning recipe.
TEMPLATES = {
    "+": ["The sum of {a} and {b} is", "Q: What is {a} plus {b}? A:", "{a} plus {b} is", "{a}+{b}=", "{a} + {b} = "],
    "-": ["The difference between {a} and {b} is", "Q: What is {a} minus {b}? A:", "{a} minus {b} is", "{a}-{b}=",
          "{a} - {b} = "],
    "*": ["The product of {a} and {b} is", "Q: What is {a} times {b}? A:", "{a} times {b} is", "{a}*{b}=",
          "{a} * {b} = "],
    "/": ["The ratio of {a} and {b} is", "Q: What is {a} divides {b}? A:", "{a} divides {b} is", "{a}/{b}=",
          "{a} / {b} = "],
}
PAPER_TEMPLATES = 4  # generate() cycles over the paper's four
OPERAND_STYLES = ("numerals", "words")

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten", "eleven",
         "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen", "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]


def number_words(n: int) -> str:
    """English words for 0 <= n < 10**9: 342 -> 'three hundred forty-two'."""
    if not 0 <= n < 10**9:
        raise ValueError(f"number_words covers 0..999999999, got {n}")
    if n < 20:
        return _ONES[n]
    if n < 100:
        return _TENS[n // 10] + ("" if n % 10 == 0 else "-" + _ONES[n % 10])
    if n < 1000:
        rest = n % 100
        return _ONES[n // 100] + " hundred" + ("" if rest == 0 else " " + number_words(rest))
    for size, name in ((10**6, "million"), (10**3, "thousand")):
        if n >= size:
            rest = n % size
            return number_words(n // size) + f" {name}" + ("" if rest == 0 else " " + number_words(rest))
    raise AssertionError("unreachable")


def _operands(op: str, digits: int, rng: random.Random) -> tuple[int, int, int]:
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    while True:
        a, b = rng.randint(lo, hi), rng.randint(lo, hi)
        if op == "+":
            return a, b, a + b
        if op == "-" and a >= b:
            return a, b, a - b
        if op == "*":
            return a, b, a * b
        if op == "/" and b != 0 and a % b == 0:
            return a, b, a // b


def _render(op: str, t: int, a: int, b: int, result: int, operands: str) -> tuple[str, str]:
    fmt = number_words if operands == "words" else str
    prompt = TEMPLATES[op][t].format(a=fmt(a), b=fmt(b))
    # Answers are numerals in both styles; after a word ("is", "A:") the model writes a space first.
    return prompt, (str(result) if prompt.endswith(("=", " ")) else f" {result}")


def generate(n: int = 64, digits: int = 1, ops: str = "+-*/", seed: int = 0, operands: str = "numerals",
             shots: int = 0) -> list[Example]:
    """``n`` examples cycling over operations and templates; answers are exact integers.

    Results are non-negative and divisions exact, so every answer is a plain numeral. ``operands``
    writes the operands as numerals or English words. ``shots`` > 0 prefixes each prompt with that
    many solved examples of the same operation and template, one per line, never the query itself.
    """
    if digits not in (1, 2, 3):
        raise UserError(f"arithmetic digits must be 1, 2 or 3, got {digits}")
    if operands not in OPERAND_STYLES:
        raise UserError(f"arithmetic operands must be one of {', '.join(OPERAND_STYLES)}, got {operands!r}")
    if not ops or any(op not in TEMPLATES for op in ops):
        raise UserError(f"arithmetic ops must be characters of '+-*/', got {ops!r}")
    if shots < 0:
        raise UserError("shots must be >= 0")
    rng = random.Random(seed)
    shot_rng = random.Random(f"{seed}-shots")  # queries do not depend on the number of shots
    out = []
    for i in range(n):
        op = ops[i % len(ops)]
        t = (i // len(ops)) % PAPER_TEMPLATES
        a, b, result = _operands(op, digits, rng)
        prompt, answer = _render(op, t, a, b, result, operands)
        prefix = []
        while len(prefix) < shots:
            sa, sb, sr = _operands(op, digits, shot_rng)
            if (sa, sb) != (a, b):
                p, ans = _render(op, t, sa, sb, sr, operands)
                prefix.append(p + ans + "\n")
        meta = {"op": op, "template": t, "a": a, "b": b, "result": result, "operands": operands, "shots": shots}
        out.append(Example("".join(prefix) + prompt, answer, meta))
    return out


def queries(digits: int, ops: str) -> list[tuple[str, int, int, int]]:
    """Every valid (operation, a, b, result) with ``digits``-digit operands (results >= 0, exact division)."""
    lo, hi = (0 if digits == 1 else 10 ** (digits - 1)), 10**digits - 1
    out = []
    for op in ops:
        for a in range(lo, hi + 1):
            for b in range(lo, hi + 1):
                if op == "+":
                    out.append((op, a, b, a + b))
                elif op == "-" and a >= b:
                    out.append((op, a, b, a - b))
                elif op == "*":
                    out.append((op, a, b, a * b))
                elif op == "/" and b != 0 and a % b == 0:
                    out.append((op, a, b, a // b))
    return out


def format_name(template: int, shots: int, op: str = "+") -> str:
    """A prompt format as a reader sees it: '"3 + 5 = ", 4 shots'."""
    example = TEMPLATES[op][template].format(a=3, b=5)
    return f"{example!r}, {shots} shot{'s' if shots != 1 else ''}"


def check_format(template: int, shots: int, where: str = "arithmetic") -> None:
    if not 0 <= template < len(TEMPLATES["+"]):
        raise UserError(f"{where}: template must be 0-{len(TEMPLATES['+']) - 1}, got {template}")
    if not 0 <= shots <= 64:
        raise UserError(f"{where}: shots must be 0-64, got {shots}")


def split_prompts(sizes: dict[str, int], fractions: dict[str, float], digits: int = 1, ops: str = "+",
                  template: int = 4, shots: int = 4, seed: int = 0,
                  share: dict[str, str] | None = None,
                  formats: list[tuple[int, int]] | None = None) -> dict[str, list[Example]]:
    """Prompt sets whose QUERIES are disjoint: the (operation, a, b) pairs are shuffled once and cut
    by ``fractions``; each set then cycles over its own queries with fresh few-shot prefixes until it
    has ``sizes[name]`` prompts (one-digit addition has only 100 queries, so a query recurs within a
    set under different demonstrations, never across sets). ``share`` lets a set take another set's
    queries (LoRA training prompts use the scoring queries). Demonstrations come from all queries of
    the same operation and are never the query itself. ``formats``: (template, shots) pairs the
    prompts cycle through (default: the one ``template`` with ``shots``), so a set is a behaviour in
    several phrasings, not one template; the queries do not depend on the formats."""
    if digits not in (1, 2, 3):
        raise UserError(f"arithmetic digits must be 1, 2 or 3, got {digits}")
    if not ops or any(op not in TEMPLATES for op in ops) or len(set(ops)) != len(ops):
        raise UserError(f"arithmetic ops must be distinct characters of '+-*/', got {ops!r}")
    formats = [tuple(f) for f in formats] if formats else [(template, shots)]
    for t, k in formats:
        check_format(t, k)
    if digits == 3:
        raise UserError("query splits enumerate every query; use one or two digits")
    pool = queries(digits, ops)
    rng = random.Random(f"split-{seed}")
    rng.shuffle(pool)
    by_op = {op: [q for q in pool if q[0] == op] for op in ops}
    total = sum(fractions.values())
    own, start = {}, 0
    for name, fraction in fractions.items():
        count = max(1, round(len(pool) * fraction / total))
        own[name] = pool[start:start + count]
        start += count
        if not own[name]:
            raise UserError(f"arithmetic split {name!r} has no queries left; use more digits or fewer sets")
    for name, other in (share or {}).items():
        own[name] = own[other]
    out = {}
    for name, size in sizes.items():
        shot_rng = random.Random(f"shots-{seed}-{name}")
        examples = []
        for i in range(size):
            op, a, b, result = own[name][i % len(own[name])]
            template, shots = formats[i % len(formats)]
            prefix = []
            while len(prefix) < shots:
                _, sa, sb, sr = by_op[op][shot_rng.randrange(len(by_op[op]))]
                if (sa, sb) != (a, b):
                    p, ans = _render(op, template, sa, sb, sr, "numerals")
                    prefix.append(p + ans + "\n")
            prompt, answer = _render(op, template, a, b, result, "numerals")
            meta = {"op": op, "template": template, "a": a, "b": b, "result": result, "shots": shots, "split": name}
            examples.append(Example("".join(prefix) + prompt, answer, meta))
        out[name] = examples
    return out


def split_arithmetic(n_train: int, n_eval: int, digits: int, seed: int) -> tuple[list[Example], list[Example]]:
    """Training and evaluation prompts from the generator; no (operation, a, b) appears in both."""
    held = generate(n_eval, digits, seed=seed + 104729)
    seen = {(e.meta["op"], e.meta["a"], e.meta["b"]) for e in held}
    pool = generate(n_train * 2 + 64, digits, seed=seed)
    train = [e for e in pool if (e.meta["op"], e.meta["a"], e.meta["b"]) not in seen][:n_train]
    if len(train) < n_train:
        raise UserError(f"only {len(train)} training prompts differ from the evaluation prompts; use fewer")
    return train, held
