"""Train a peft LoRA adapter on arithmetic (answer tokens only), save it and a merged checkpoint."""

from __future__ import annotations

import math

import dataclasses
from contextlib import contextmanager
import random
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from editor.model.capture import model_device, position_ids
from editor.progress import progress_bar
from editor.errors import UserError
from editor.evaluation.scoring import pad_rows, pad_token_id
from editor.model.arch import Arch
from editor.tasks.arithmetic import split_arithmetic
from editor.tasks.examples import Example, answer_ids, fit_to_tokenizer


@dataclass
class Adapter:
    """The adapter and how it is trained: the one LoRA settings class (``lmedit lora train``, the
    LoRA recipes' ``lora:`` section and pruning's recovery all use it)."""

    targets: list[str] = field(default_factory=lambda: ["q", "k", "v", "o"])
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.0
    steps: int = 150
    lr: float = 1e-3
    batch_size: int = 16

    def check(self, where: str | None = None) -> None:
        """``where``: the recipe key, as the recipe schema passes it (messages start with it)."""
        def fail(message: str):
            raise UserError(f"{where}: {message}" if where else message)

        for name in ("rank", "steps", "batch_size"):
            if getattr(self, name) < 1:
                fail(f"LoRA {name} must be >= 1")
        if not (math.isfinite(self.lr) and self.lr > 0):
            fail(f"LoRA learning rate must be a finite number > 0, got {self.lr}")
        if not (math.isfinite(self.dropout) and 0 <= self.dropout < 1):
            fail(f"LoRA dropout must be in [0, 1), got {self.dropout}")
        if not self.targets:
            fail("LoRA needs at least one target projection (q, k, v, o, mlp_in, mlp_out)")
        from editor.model.arch import Arch

        unknown = [t for t in self.targets if t not in Arch.PROJECTION_ROLES]
        if unknown:
            fail(f"unknown LoRA target {unknown[0]!r}; choose from {', '.join(Arch.PROJECTION_ROLES)}")


@dataclass
class LoraSettings(Adapter):
    """An adapter on ``layers``, trained on generated arithmetic or on a user's task file
    (``lmedit lora train``)."""

    layers: list[int] = field(default_factory=list)
    digits: int = 2
    n_train: int = 2000
    n_eval: int = 200
    seed: int = 0
    data: str | None = None  # a task file of any kind instead of arithmetic: split train : eval = 4 : 1 by group
    test_file: str | None = None  # an explicit held-out file instead of the split
    delimiter: str | None = None
    data_sha256: str | None = None  # set by lmedit: what the files held when the adapter was trained

    def check(self, where: str | None = None) -> None:
        if not self.layers:
            raise UserError("LoRA needs at least one layer")
        for name in ("n_train", "n_eval"):
            if getattr(self, name) < 1:
                raise UserError(f"LoRA {name} must be >= 1")
        super().check(where)
        if self.data is None and (self.test_file or self.delimiter is not None):
            raise UserError("--test and --delimiter are for a task file (--data FILE)")
        if self.data is not None:
            from editor.io import sha256_of

            split_examples(self)  # a bad file or too few rows: refused before any model loads
            self.data_sha256 = sha256_of([self.data, *([self.test_file] if self.test_file else [])])


def split_task(settings: LoraSettings):
    """A task file's training and held-out rows, in the file's own kind: split train : eval = 4 : 1
    by the rows' ``group`` (seeded), or the file and ``test_file``. Returns (task, train, held)."""
    from editor.tasks.kinds import check_disjoint, read_task, split_rows

    task = read_task(settings.data, settings.delimiter)
    if settings.test_file:
        held = read_task(settings.test_file, settings.delimiter)
        if held.kind != task.kind:
            raise UserError(f"{settings.test_file} is a {held.kind} file but {settings.data} is a {task.kind} file")
        check_disjoint(task.rows, held.rows, settings.test_file)
        train_rows, held_rows = task.rows, held.rows
    else:
        sets = split_rows(task.rows, {"train": 4, "eval": 1}, settings.seed, settings.data, {"train": 4, "eval": 4})
        train_rows, held_rows = sets["train"], sets["eval"]
    return task, train_rows[:settings.n_train], held_rows[:settings.n_eval]


def split_examples(settings: LoraSettings) -> tuple[list[Example], list[Example]]:
    """Training and held-out rows as prompt/answer pairs (what the adapter trains on): generated
    arithmetic (no operation/operand pair in both), or a task file's :func:`split_task`."""
    from editor.tasks.kinds import TaskData, as_completion

    if settings.data is None:
        return split_arithmetic(settings.n_train, settings.n_eval, settings.digits, settings.seed)
    task, train_rows, held_rows = split_task(settings)
    pairs = lambda rows: as_completion(TaskData(task.name, task.kind, rows, settings.data))  # noqa: E731
    return pairs(train_rows), pairs(held_rows)


def task_measure(model, tokenizer, settings: LoraSettings, progress: bool = True) -> dict | None:
    """A task file's held-out rows scored as their kind is (choice accuracy by summed log-probability,
    text perplexity, ...: :mod:`editor.evaluation.kinds`), its headline measure; None for arithmetic."""
    from editor.evaluation.common import Context
    from editor.evaluation.kinds import SCORERS

    if settings.data is None:
        return None
    task, _, held = split_task(settings)
    scorer = SCORERS[task.kind]
    result = scorer.evaluate(Context(model, tokenizer, settings.batch_size, progress), held, task.name, {})
    return {"task": task.name, "kind": task.kind, "measure": scorer.headline,
            **dataclasses.asdict(result.measures[scorer.headline]) | {"per_unit": None}}


def lora_config(model, settings: LoraSettings):
    from peft import LoraConfig
    from transformers.pytorch_utils import Conv1D

    arch = Arch(model)
    outside = [layer for layer in settings.layers if not 0 <= layer < arch.n_layers]
    if outside:
        raise UserError(f"LoRA layer {outside[0]} is out of range (the model has {arch.n_layers} layers)")
    names = [n for layer in settings.layers for n in arch.projection_names(layer, settings.targets)]
    conv = [isinstance(model.get_submodule(n), Conv1D) for n in names]
    if any(conv) and not all(conv):
        raise UserError("cannot mix Conv1D and Linear targets in one adapter")
    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                      target_modules=names, fan_in_fan_out=all(conv), bias="none", task_type="CAUSAL_LM")


def _prompt_answer_rows(tokenizer, examples: list[Example]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each prompt followed by its answer, and of the answer alone."""
    answers = [answer_ids(tokenizer, e.prompt, e.answer) for e in examples]
    return [tokenizer(e.prompt)["input_ids"] + a for e, a in zip(examples, answers)], answers


def _batch(tokenizer, examples: list[Example], device) -> dict:
    """Right-padded prompt + answer with labels on the answer tokens only: the transformers loss, and
    the exact reference of :func:`answer_loss` (tests tie them)."""
    rows, answers = _prompt_answer_rows(tokenizer, examples)
    labels = [[-100] * (len(row) - len(a)) + a for row, a in zip(rows, answers)]
    inputs = pad_rows(rows, pad_token_id(tokenizer), "right", device)
    lab = torch.full_like(inputs["input_ids"], -100)
    for i, row in enumerate(labels):
        lab[i, :len(row)] = torch.tensor(row)
    inputs["labels"] = lab
    inputs["position_ids"] = position_ids(inputs["attention_mask"])
    return inputs


def answer_loss(model, tokenizer, examples: list[Example], device) -> torch.Tensor:
    """Mean cross-entropy of the answer tokens after their prompts: the loss of :func:`_batch` with
    logits computed at the answer positions only.

    Rows are left-padded so every answer ends at the last position; the model returns logits for the
    last ``longest answer + 1`` positions (``logits_to_keep``), not for every prompt token: no
    [batch, length, vocabulary] tensor and gradient (160 MB each for 16 prompts of ~50 tokens and
    SmolLM2's 49,152 tokens). On 2 CPU cores a recovery step takes the same time either way (2.9 s
    on the half-pruned default model: with the embeddings frozen that projection's backward is cheap).
    """
    rows, answers = _prompt_answer_rows(tokenizer, examples)
    inputs = pad_rows(rows, pad_token_id(tokenizer), "left", device)
    inputs["position_ids"] = position_ids(inputs["attention_mask"])
    keep = max(map(len, answers)) + 1
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits[:, -keep:-1].float()
    # Answer token j of row i is predicted at kept position keep - 1 - len(answer) + j.
    picks = [(i, keep - 1 - len(a) + j, t) for i, a in enumerate(answers) for j, t in enumerate(a)]
    rows_i, cols, targets = (torch.tensor(x, device=logits.device) for x in zip(*picks))
    return torch.nn.functional.cross_entropy(logits[rows_i, cols], targets)


@dataclass
class TrainResult:
    losses: list[float]
    seconds: float
    trainable_parameters: int
    target_modules: list[str]

    def to_json(self) -> dict:
        return dataclasses.asdict(self)


def train_lora(model, tokenizer, settings: LoraSettings, train: list[Example], progress: bool = True):
    """Wrap ``model`` with a fresh LoRA adapter and train it; returns (peft model, TrainResult).

    Deterministic for a seed: adapter initialisation and batch order come from ``settings.seed``.
    """
    from editor.model.offload import require_in_memory

    require_in_memory(model, "LoRA training")
    from peft import get_peft_model

    settings.check()
    config = lora_config(model, settings)
    torch.manual_seed(settings.seed)
    peft_model = get_peft_model(model, config)
    train = fit_to_tokenizer(tokenizer, train)
    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=settings.lr, weight_decay=0.0)
    order = list(range(len(train)))
    rng = random.Random(settings.seed)
    device, losses, cursor = model_device(peft_model), [], len(order)
    peft_model.train()
    bar = progress_bar(settings.steps, "LoRA training", "step", progress)
    start = time.perf_counter()
    for _ in range(settings.steps):
        if cursor + settings.batch_size > len(order):
            rng.shuffle(order)
            cursor = 0
        chunk = [train[i] for i in order[cursor:cursor + settings.batch_size]]
        cursor += settings.batch_size
        loss = answer_loss(peft_model, tokenizer, chunk, device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.detach().item())
        bar.update(1)
        bar.set_postfix(loss=f"{losses[-1]:.3f}")
    bar.close()
    peft_model.eval()
    # peft keeps the targets as a set, ordered by the process's string-hash seed: sorted, the result
    # is the same in every process that runs the same settings
    modules = sorted(config.target_modules)
    return peft_model, TrainResult(losses, round(time.perf_counter() - start, 1), sum(p.numel() for p in params),
                                   modules)


def save_adapter(peft_model, out: Path) -> Path:
    """peft format (``adapter_model.safetensors`` + ``adapter_config.json``), written atomically;
    what is replaced must be a peft adapter (inside an output folder already proven ours)."""
    from editor.io import atomic_directory

    with atomic_directory(out, ours=lambda p: (p / "adapter_config.json").is_file(), what="a peft adapter") as tmp:
        peft_model.save_pretrained(tmp, safe_serialization=True)
    return out


def load_adapter(model, adapter: str | Path, merge: bool = True):
    """``model`` with the peft adapter at ``adapter`` applied (merged into a plain model by default)."""
    from peft import PeftModel

    adapter = Path(adapter)
    if not (adapter / "adapter_config.json").is_file():
        raise UserError(f"{adapter} is not a peft adapter directory (no adapter_config.json)")
    peft_model = PeftModel.from_pretrained(model, adapter)
    return peft_model.merge_and_unload() if merge else peft_model


def is_lora_output(path: Path) -> bool:
    """A folder ``train_and_save`` wrote: its ``lora.json`` summary is there."""
    from editor.io import json_object_with

    return json_object_with(path / "lora.json", {"settings", "train", "accuracy_before", "accuracy_after"})


def check_lora_out(out: str | Path, force: bool) -> Path:
    """Before any work: ``out`` is free, or ``force`` is given and it is an earlier ``lora train``
    output (or an empty directory); never a user's own folder."""
    from editor.io import check_output

    return check_output(out, force, is_lora_output, "an lmedit LoRA output (adapter/, merged/, lora.json)")


def train_and_save(loaded, settings: LoraSettings, out: str | Path, force: bool = False, progress: bool = True,
                   log=print) -> dict:
    """Train on held-apart arithmetic or task rows, evaluate before/after, save ``adapter/`` and ``merged/`` under ``out``.

    ``loaded`` (a ``LoadedModel``) is changed: its model ends up with the adapter merged in.
    """
    from editor.edit.checkpoint import describe_source, save_checkpoint
    from editor.io import write_json_atomic
    from editor.lora.compare import token_accuracy

    out = check_lora_out(out, force)
    settings.check()
    lora_config(loaded.model, settings)  # the layers and targets exist in this model, before any work
    source = describe_source(loaded)
    train, held = split_examples(settings)
    before = token_accuracy(loaded.model, loaded.tokenizer, held, progress=progress)
    task_before = task_measure(loaded.model, loaded.tokenizer, settings, progress)
    log(f"held-out token accuracy before: {before.cell()}" + _task_cell(task_before))
    peft_model, result = train_lora(loaded.model, loaded.tokenizer, settings, train, progress)
    after = token_accuracy(peft_model, loaded.tokenizer, held, progress=progress)
    task_after = task_measure(peft_model, loaded.tokenizer, settings, progress)
    log(f"held-out token accuracy after:  {after.cell()}" + _task_cell(task_after)
        + f"  (loss {result.losses[0]:.3f} -> {result.losses[-1]:.3f})")
    save_adapter(peft_model, out / "adapter")
    merged = peft_model.merge_and_unload()
    summary = {"settings": dataclasses.asdict(settings), "train": result.to_json(),
               "accuracy_before": dataclasses.asdict(before) | {"per_unit": None},
               "accuracy_after": dataclasses.asdict(after) | {"per_unit": None},
               **({"task_before": task_before, "task_after": task_after} if task_before else {})}
    save_checkpoint(merged, loaded.tokenizer, out / "merged", source=source, force=True, extra={"lora": summary})
    write_json_atomic(out / "lora.json", summary)
    return summary


def _task_cell(measure: dict | None) -> str:
    if measure is None:
        return ""
    return f"; {measure['task']} {measure['measure']} {measure['value']:.3f} [{measure['low']:.3f}, {measure['high']:.3f}]"


def heldout_examples(adapter: str | Path, n: int | None = None) -> list[Example]:
    """The evaluation prompts an adapter was NOT trained on, rebuilt from the ``lora.json`` beside it."""
    import json

    record = Path(adapter).parent / "lora.json"
    if not record.is_file():
        raise UserError(f"no {record}: give the prompts to compare on (the adapter was not trained by lmedit lora train)")
    s = json.loads(record.read_text())["settings"]
    if s.get("data"):
        from editor.io import sha256_of

        files = [s["data"], *([s["test_file"]] if s.get("test_file") else [])]
        if not all(Path(f).is_file() for f in files) or sha256_of(files) != s.get("data_sha256"):
            raise UserError(f"the adapter was trained on {' and '.join(files)}, which changed or moved since; "
                            "give the prompts to compare on with --data FILE")
        held = split_examples(LoraSettings(**{k: v for k, v in s.items() if k != "data_sha256"}))[1]
    else:
        held = split_arithmetic(s["n_train"], s["n_eval"], s["digits"], s["seed"])[1]
    return held[:n] if n else held


@contextmanager
def trained_adapter(model, tokenizer, settings: LoraSettings, train: list[Example], progress: bool = True):
    """Train an adapter on ``model`` in place, yield (peft model, TrainResult), then remove it again
    (``unload``: the base weights were never changed)."""
    peft_model, result = train_lora(model, tokenizer, settings, train, progress)
    try:
        yield peft_model, result
    finally:
        peft_model.unload()
