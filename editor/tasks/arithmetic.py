"""Arithmetic prompts of the CNA paper: two operands, four operations, four templates each."""

from __future__ import annotations

import random

from editor.errors import UserError
from editor.tasks.examples import Example

TEMPLATES = {
    "+": ["The sum of {a} and {b} is", "Q: What is {a} plus {b}? A:", "{a} plus {b} is", "{a}+{b}="],
    "-": ["The difference between {a} and {b} is", "Q: What is {a} minus {b}? A:", "{a} minus {b} is", "{a}-{b}="],
    "*": ["The product of {a} and {b} is", "Q: What is {a} times {b}? A:", "{a} times {b} is", "{a}*{b}="],
    "/": ["The ratio of {a} and {b} is", "Q: What is {a} divides {b}? A:", "{a} divides {b} is", "{a}/{b}="],
}
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
    return prompt, (str(result) if prompt.endswith("=") else f" {result}")


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
        t = (i // len(ops)) % 4
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
