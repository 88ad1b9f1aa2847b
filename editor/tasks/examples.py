"""Prompt/answer examples: from a built-in task or a local JSONL/CSV file, and their gold tokens."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

from editor.errors import UserError


@dataclass(frozen=True)
class Example:
    prompt: str
    answer: str | None = None
    meta: dict | None = None

    def to_json(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}


def _from_records(records: list[dict], where: str) -> list[Example]:
    out = []
    for i, rec in enumerate(records):
        if not isinstance(rec, dict) or not isinstance(rec.get("prompt"), str) or not rec["prompt"]:
            raise UserError(f"{where}: record {i + 1} has no non-empty 'prompt' field")
        answer = rec.get("answer")
        meta = {k: v for k, v in rec.items() if k not in ("prompt", "answer")} or None
        out.append(Example(rec["prompt"], None if answer in (None, "") else str(answer), meta))
    if not out:
        raise UserError(f"{where}: no examples")
    return out


def read_file(path: str | Path) -> list[Example]:
    """A ``.jsonl`` (one object per line) or ``.csv`` (header row) file with ``prompt`` and optional ``answer``."""
    from editor.io import read_records

    return _from_records(read_records(path, "data file"), str(path))


def join_answers(examples: list[Example], delimiter: str | None, where: str, note=None) -> list[Example]:
    """Each answer is scored on its tokens as they follow the prompt in ``prompt + answer`` (the way
    lm-evaluation-harness joins context and target), so "Paris" after "The capital of France is"
    is scored as the tokens of "isParis", not of " Paris". With ``delimiter`` (e.g. " ") it is put
    between each prompt and answer that are glued (no whitespace at the seam; a row that has one is
    kept as written); without one, glued rows are reported through ``note`` in one line: a silent
    wrong token is worse than a warning."""
    if delimiter is not None and delimiter.strip():
        raise UserError(f"--delimiter {delimiter!r} should be whitespace (e.g. ' '), not text")
    def is_glued(ex: Example) -> bool:
        return bool(ex.answer) and not ex.answer[0].isspace() and not ex.prompt[-1].isspace()

    if delimiter:
        return [Example(ex.prompt, delimiter + ex.answer, ex.meta) if is_glued(ex) else ex for ex in examples]
    glued = [ex for ex in examples if is_glued(ex)]
    if glued and note is not None and delimiter is None:
        ex = glued[0]
        note(f"note: {len(glued)} of {len(examples)} answers in {where} are joined to their prompt with no space "
             f"(e.g. {ex.prompt[-20:] + ex.answer!r}) and scored on those tokens; pass --delimiter ' ' to put a "
             "space between prompt and answer")
    return examples


def answer_ids(tokenizer, prompt: str, answer: str) -> list[int]:
    prompt_ids = tokenizer(prompt)["input_ids"]
    full_ids = tokenizer(prompt + answer)["input_ids"]
    if len(full_ids) > len(prompt_ids) and full_ids[: len(prompt_ids)] == prompt_ids:
        return full_ids[len(prompt_ids):]
    return tokenizer(answer, add_special_tokens=False)["input_ids"]  # answer merged with the prompt's end


def fit_to_tokenizer(tokenizer, examples: list[Example]) -> list[Example]:
    """Move a leading space of the answer into the prompt when the tokenizer makes it its own token.

    " 12" is one token for GPT-2 but " ", "1", "2" for SmolLM; the answer's first token should be
    its first digit or word, not a bare space, so the prompt takes the space in that case.
    """
    out = []
    for ex in examples:
        if ex.answer and ex.answer[0].isspace() and ex.answer.strip():
            ids = answer_ids(tokenizer, ex.prompt, ex.answer)
            if len(ids) > 1 and not tokenizer.decode(ids[:1]).strip():
                stripped = ex.answer.lstrip()
                ex = Example(ex.prompt + ex.answer[: len(ex.answer) - len(stripped)], stripped, ex.meta)
        out.append(ex)
    return out


def gold_token_ids(tokenizer, examples: list[Example]) -> list[int | None]:
    """First token of each answer as the model would see it right after the prompt."""
    return [None if ex.answer is None else answer_ids(tokenizer, ex.prompt, ex.answer)[0] for ex in examples]


def to_dataset(examples: list[Example]):
    """A ``datasets.Dataset`` with ``prompt``, ``answer`` and the meta fields as columns."""
    import datasets

    return datasets.Dataset.from_list([{"prompt": e.prompt, "answer": e.answer, **(e.meta or {})} for e in examples])


def from_dataset(ds, prompt: str = "prompt", answer: str | None = "answer") -> list[Example]:
    """Examples from any ``datasets.Dataset`` (or list of dicts) with a prompt column and an optional answer."""
    records = [{"prompt": r[prompt], "answer": r.get(answer) if answer else None,
                **{k: v for k, v in r.items() if k not in (prompt, answer)}} for r in ds]
    return _from_records(records, "dataset")
