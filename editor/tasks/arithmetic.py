"""Arithmetic prompts of the CNA paper: two operands, four operations, four templates each."""

from __future__ import annotations

import random

from editor.tasks.examples import Example

TEMPLATES = {
    "+": ["The sum of {a} and {b} is", "Q: What is {a} plus {b}? A:", "{a} plus {b} is", "{a}+{b}="],
    "-": ["The difference between {a} and {b} is", "Q: What is {a} minus {b}? A:", "{a} minus {b} is", "{a}-{b}="],
    "*": ["The product of {a} and {b} is", "Q: What is {a} times {b}? A:", "{a} times {b} is", "{a}*{b}="],
    "/": ["The ratio of {a} and {b} is", "Q: What is {a} divides {b}? A:", "{a} divides {b} is", "{a}/{b}="],
}


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


def generate(n: int = 64, digits: int = 1, ops: str = "+-*/", seed: int = 0) -> list[Example]:
    """``n`` examples cycling over operations and templates; answers are exact integers.

    Results are non-negative and divisions exact, so every answer is a plain numeral. Templates
    that end with a word ("is", "A:") take the answer after a space, as the model would write it.
    """
    rng = random.Random(seed)
    out = []
    for i in range(n):
        op = ops[i % len(ops)]
        t = (i // len(ops)) % 4
        a, b, result = _operands(op, digits, rng)
        template = TEMPLATES[op][t]
        prompt = template.format(a=a, b=b)
        answer = str(result) if prompt.endswith("=") else f" {result}"
        out.append(Example(prompt, answer, {"op": op, "template": t, "a": a, "b": b, "result": result}))
    return out
