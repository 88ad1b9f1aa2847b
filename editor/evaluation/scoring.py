"""Batched, padded model scoring: continuation log-probabilities, greedy answers, text perplexity.

Rows are sorted by length so a batch pads little; position ids count real tokens only, so left and
right padding give the same numbers (checked in the tests).
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Callable

import torch

from editor.model.capture import model_device, pad_rows, position_ids  # noqa: F401  (pad_rows: imported from here too)
from editor.progress import progress_bar
from editor.errors import UserError
from editor.tasks.examples import answer_ids


@dataclass
class Continuation:
    """Teacher-forced scores of one continuation, per token: gold id, log-probability, model's top-1."""

    targets: list[int]
    logprobs: list[float]
    top1: list[int]
    next_top1: int | None = None  # the model's top-1 after the whole continuation (when asked for)

    @property
    def correct(self) -> list[bool]:
        return [t == p for t, p in zip(self.targets, self.top1)]

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))


def _forward(model, inputs: dict, keep_last: int | None) -> torch.Tensor:
    params = inspect.signature(model.forward).parameters
    extra = {"position_ids": position_ids(inputs["attention_mask"])} if "position_ids" in params else {}
    if keep_last is not None and "logits_to_keep" in params:
        extra["logits_to_keep"] = keep_last
    logits = model(**inputs, **extra, use_cache=False).logits
    return logits if keep_last is None else logits[:, -keep_last:]


def context_length(model) -> int | None:
    """Longest input the model's position embeddings allow (None when unknown)."""
    config = model.config
    for name in ("max_position_embeddings", "n_positions", "n_ctx"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    return None


def _check_context(model, longest: int) -> None:
    limit = context_length(model)
    if limit is not None and longest > limit:
        raise UserError(f"an input of {longest} tokens exceeds the model's context of {limit} tokens; "
                        "use fewer demonstrations or shorter prompts")


def pad_token_id(tokenizer) -> int:
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    return 0 if pad is None else pad


@torch.no_grad()
def score_continuations(model, tokenizer, prompts: list[str], continuations: list[str], batch_size: int = 32,
                        padding_side: str = "left", progress: bool = True, desc: str = "scoring",
                        next_token: bool = False, stop: Callable[[list], bool] | None = None) -> list[Continuation]:
    """Log-probability of each continuation token after its prompt, and whether it was the top-1.

    The input for (prompt, continuation) is the prompt followed by all but the last continuation
    token, so pairs that share that input (single-token candidates of one prompt) share a forward.
    ``next_token`` feeds the whole continuation and also returns the top-1 token after it (what
    greedy decoding emits next when every continuation token was the top-1).
    ``stop(out)``, asked after every batch, ends the scoring early (pairs not reached stay None):
    the batches it did run are the same batches, so their numbers equal a full run's.
    """
    if len(prompts) != len(continuations):
        raise ValueError("prompts and continuations differ in length")
    seq_index: dict[tuple[int, ...], int] = {}
    pairs = []  # (sequence index, continuation ids)
    for prompt, cont in zip(prompts, continuations):
        p_ids = tokenizer(prompt)["input_ids"]
        c_ids = answer_ids(tokenizer, prompt, cont)
        if not c_ids or not p_ids:
            raise UserError(f"empty prompt or continuation: {prompt!r} + {cont!r}")
        seq = tuple(p_ids + (c_ids if next_token else c_ids[:-1]))
        pairs.append((seq_index.setdefault(seq, len(seq_index)), c_ids))
    seqs = list(seq_index)
    users: list[list[int]] = [[] for _ in seqs]  # pairs reading each sequence
    for j, (s, _) in enumerate(pairs):
        users[s].append(j)
    extra = int(next_token)  # the position after the continuation
    need = [max(len(pairs[j][1]) for j in users[s]) + extra for s in range(len(seqs))]  # positions kept from the end
    order = sorted(range(len(seqs)), key=lambda s: len(seqs[s]))
    _check_context(model, len(seqs[order[-1]]))
    out: list[Continuation | None] = [None] * len(pairs)
    device, pad = model_device(model), pad_token_id(tokenizer)
    bar = progress_bar(len(seqs), desc, "seq", progress)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        inputs = pad_rows([list(seqs[s]) for s in chunk], pad, padding_side, device)
        k = max(need[s] for s in chunk)
        logits = _forward(model, inputs, k if padding_side == "left" else None)
        for i, s in enumerate(chunk):
            end = k if padding_side == "left" else len(seqs[s])
            logp = logits[i, end - need[s]:end].float().log_softmax(-1).cpu()
            after = int(logp[-1].argmax()) if next_token else None
            for j in users[s]:
                c_ids = pairs[j][1]
                rows, target = logp[need[s] - extra - len(c_ids):need[s] - extra], torch.tensor(c_ids)
                lp = rows.gather(-1, target[:, None])[:, 0]
                out[j] = Continuation(c_ids, lp.tolist(), rows.argmax(-1).tolist(), after)
        bar.update(len(chunk))
        if stop is not None and stop(out):
            break
    bar.close()
    return out  # type: ignore[return-value]


def answer_matches(generated: str, answer: str) -> bool:
    """The greedy text starts with the answer and the answer is not the prefix of a longer number/word."""
    text, gold = generated.strip(), answer.strip()
    return text.startswith(gold) and (len(text) == len(gold) or not text[len(gold)].isalnum())


def match_from_teacher_forcing(tokenizer, answer: str, scored: Continuation) -> bool | None:
    """Greedy exact match read off a teacher-forced pass (``next_token``), or None when only
    generation can tell.

    When every answer token is the model's top-1, greedy decoding emits exactly those tokens and then
    ``next_top1``; whether the answer is a whole number or word is decided by the first character
    that token adds. So generation is needed only where an answer token was not the top-1 (another
    tokenization of the same text could still match) or the next token adds no character.
    """
    if scored.next_top1 is None or not all(scored.correct):
        return None
    head = tokenizer.decode(scored.targets, skip_special_tokens=True)
    text = tokenizer.decode(scored.targets + [scored.next_top1], skip_special_tokens=True)
    if len(text) <= len(head) or not text.startswith(head):
        return None
    return answer_matches(text, answer)


@torch.no_grad()
def greedy_answers(model, tokenizer, prompts: list[str], max_new_tokens: int, batch_size: int = 32,
                   progress: bool = True, desc: str = "generating") -> list[str]:
    """Greedy continuations (decoded, special tokens dropped) of each prompt, left-padded batches."""
    device, pad = model_device(model), pad_token_id(tokenizer)
    encoded = [tokenizer(p)["input_ids"] for p in prompts]
    order = sorted(range(len(prompts)), key=lambda i: len(encoded[i]))
    _check_context(model, len(encoded[order[-1]]) + max_new_tokens)
    out: list[str] = [""] * len(prompts)
    bar = progress_bar(len(prompts), desc, "prompt", progress)
    for start in range(0, len(order), batch_size):
        chunk = order[start:start + batch_size]
        inputs = pad_rows([encoded[i] for i in chunk], pad, "left", device)
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                                   pad_token_id=pad, temperature=None, top_p=None, top_k=None)
        new = generated[:, inputs["input_ids"].shape[1]:]
        for i, row in zip(chunk, new):
            out[i] = tokenizer.decode(row, skip_special_tokens=True)
        bar.update(len(chunk))
    bar.close()
    return out


@dataclass
class TextScores:
    """Per predicted token of a text: negative log-likelihood and the model's top-1 token id."""

    nll: list[float]
    top1: list[int]


@torch.no_grad()
def text_windows(model, tokenizer, text: str, window: int = 256) -> list[list[int]]:
    """The token windows :func:`score_text` scores (a window of w tokens predicts w - 1 of them)."""
    ids = tokenizer(text)["input_ids"]
    window = min(window, context_length(model) or window)
    windows = [ids[i:i + window] for i in range(0, len(ids), window)]
    return [w for w in windows if len(w) > 1]


def score_text(model, tokenizer, text: str, window: int = 256, batch_size: int = 1, progress: bool = True,
               desc: str = "guard text") -> TextScores:
    """Next-token NLL over ``text`` in consecutive windows of ``window`` tokens (each window's first
    token has no context and is not scored). Windows are long enough to keep the CPU busy one at a
    time; batching them only adds a large logits tensor."""
    windows = text_windows(model, tokenizer, text, window)
    device, pad = model_device(model), pad_token_id(tokenizer)
    nll, top1 = [], []
    bar = progress_bar(len(windows), desc, "window", progress)
    for start in range(0, len(windows), batch_size):
        chunk = windows[start:start + batch_size]
        inputs = pad_rows(chunk, pad, "right", device)
        logits = _forward(model, inputs, None)
        for i, w in enumerate(chunk):
            rows = logits[i, :len(w) - 1].float()
            target = torch.tensor(w[1:], device=rows.device)
            nll.extend(torch.nn.functional.cross_entropy(rows, target, reduction="none").tolist())
            top1.extend(rows.argmax(-1).tolist())
        bar.update(len(chunk))
    bar.close()
    return TextScores(nll, top1)
