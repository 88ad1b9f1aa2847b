"""Recipe ``prune`` (and ``lmedit prune``): the smallest model that keeps the task.

Searches (editor.prune.search) for the largest removal of neurons, key/value groups and layers that
keeps validation accuracy >= ``retain`` x the base's, shrinks the model physically
(editor.edit.shrink), optionally recovers it with a merged LoRA, and reports held-out TEST numbers
against the same search driven by the standard pruners' scores (random, magnitude, Wanda, ShortGPT
block influence). Scoring, validation and test prompts have disjoint arithmetic queries.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from typing import ClassVar, Literal

import torch

from editor.edit.checkpoint import describe_source, save_checkpoint
from editor.edit.shrink import Removal, parameter_counts, removed_parameters, shrink, zeroed
from editor.errors import UserError
from editor.evaluation.harness import ArithmeticConfig, GuardConfig, compare, evaluate_model
from editor.evaluation.results import Evaluation
from editor.evaluation.stats import wilson
from editor.io import write_text_atomic
from editor.model.capture import encode
from editor.prune.scores import DEFAULT_BASELINES, LAYER_ONLY, METHODS, UNITS
from editor.prune.search import SearchSettings, measure, run_search
from editor.recipes.common import MODEL_SETTINGS, Common
from editor.recipes import generalisation
from editor.recipes.generalisation import heldout_sets
from editor.plots import line_plot
from editor.recipes.report import Report, index_ranges
from editor.recipes.run import Run
from editor.tasks import arithmetic
from editor.evaluation.kinds import SCORERS, FileConfig, task_name
from editor.tasks.examples import Example
from editor.tasks.general import general_rows
from editor.tasks.kinds import TaskData, as_completion, check_disjoint, read_task, split_rows

Method = Literal[METHODS]  # the registered score methods (editor/prune/scores.py)


@dataclass
class Data:
    # A user's task file of any kind (docs/tasks.md) instead of the arithmetic prompts: its rows are
    # split score : val : test by ``query_shares`` (whole ``group``s at a time, seeded), each set
    # capped at its n_*; the LoRA recovery trains on the scoring rows.
    file: str | None = None
    test_file: str | None = None  # an explicit held-out test set: the file is then split score : val only
    delimiter: str | None = None  # between glued prompts and answers (editor.tasks.examples.join_answers)
    files_sha256: str | None = None  # set by lmedit: what the files held (a changed file is a new data step)
    digits: int = 1
    ops: str = "+"
    # [template, shots] pairs (editor.tasks.arithmetic.TEMPLATES) the scoring, validation, training
    # and test prompts cycle through: a behaviour in several phrasings, not one template.
    formats: list[list[int]] = field(default_factory=lambda: [[4, 4], [4, 1], [3, 4], [2, 4]])
    # Whole formats no search or recovery prompt uses, and neighbouring tasks: the report's
    # generalisation table (test queries, n_heldout prompts each).
    heldout_formats: list[list[int]] = field(default_factory=lambda: [[0, 4], [1, 4], [4, 2], [3, 2]])
    neighbours: list[Literal["subtraction", "two-digit-sums"]] = field(
        default_factory=lambda: ["subtraction", "two-digit-sums"])
    n_heldout: int = 200
    n_general: int = 100  # paragraphs of held-out general text in every evaluation (there are 73)
    n_score: int = 64  # calibration / attribution prompts
    n_val: int = 200  # the search's stopping rule
    n_test: int = 500  # the reported numbers
    n_train: int = 400  # LoRA recovery prompts (the scoring queries, other demonstrations)
    # Queries split score : val : test; the validation set is large enough that the search's many
    # decisions do not fit it (docs/pruning.md).
    query_shares: list[int] = field(default_factory=lambda: [1, 2, 2])


@dataclass
class Prune:
    method: Method = "attribution"
    units: list[Literal["neurons", "heads", "layers"]] = field(default_factory=lambda: list(UNITS))
    retain: float = 0.95
    # The search's own stopping rule when LoRA recovery follows (ignored without recovery; null =
    # retain): the search cuts while validation stays >= search_retain x base, then the RECOVERED
    # model must keep validation >= retain x base, or the cut backs off to an earlier round.
    search_retain: float | None = 0.5
    max_guard_increase: float | None = None
    neuron_step: float = 0.125
    min_neuron_step: float = 0.0625  # 96 of 1536: a smaller move costs a whole round for about 1% of the model
    layer_tries: int = 4
    max_rounds: int = 60


@dataclass
class Recover:
    method: Literal["none", "lora"] = "lora"
    tries: int = 3  # recovered cuts tried (the search's last, then about 2/3 and 1/3 of it) before giving up
    steps: int = 80  # batch_size prompts per step; batch 8 (half the time) recovered validation 0.620 vs 0.675
    rank: int = 8
    lr: float = 0.001
    # Share of the recovery's training rows that are general text (editor.tasks.general), so the
    # recovered model stays a language model; null: 0.5 when prune.max_guard_increase is set, else 0.
    general: float | None = None

    def general_share(self, guarded: bool) -> float:
        return self.general if self.general is not None else (0.5 if guarded else 0.0)


@dataclass
class PruneRecipe(Common):
    RAY: ClassVar[bool] = False
    RAY_WHY: ClassVar[str] = "its search re-scores the pruned model in one process"
    data: Data = field(default_factory=Data)
    prune: Prune = field(default_factory=Prune)
    recover: Recover = field(default_factory=Recover)
    baselines: list[Method] = field(default_factory=lambda: list(DEFAULT_BASELINES))
    save_checkpoint: bool = True

    def check(self, where: str) -> None:
        super().check(where)
        if not 0 < self.prune.retain <= 1:
            raise UserError(f"{where}.prune.retain: in (0, 1], got {self.prune.retain}")
        recovering = self.recover.method != "none"  # search_retain is the search's rule only then
        if recovering and self.prune.search_retain is not None and not 0 < self.prune.search_retain <= self.prune.retain:
            raise UserError(f"{where}.prune.search_retain: in (0, retain], got {self.prune.search_retain} "
                            f"(retain {self.prune.retain}; --search-retain sets it)")
        if not self.prune.units or len(set(self.prune.units)) != len(self.prune.units):
            raise UserError(f"{where}.prune.units: one or more distinct of {', '.join(UNITS)}")
        for method in [self.prune.method, *self.baselines]:
            if method in LAYER_ONLY and "layers" not in self.prune.units:
                raise UserError(f"{where}: {method} scores layers only; include 'layers' in prune.units")
        if self.prune.max_guard_increase is not None and not self.prune.max_guard_increase > 0:
            raise UserError(f"{where}.prune.max_guard_increase: > 0 (0.5: at most 1.5x the base perplexity)")
        if not 0 < self.prune.min_neuron_step <= self.prune.neuron_step < 1:
            raise UserError(f"{where}.prune: 0 < min_neuron_step <= neuron_step < 1")
        if not 1 <= self.prune.layer_tries <= 1000:
            raise UserError(f"{where}.prune.layer_tries: 1-1000")
        if not 1 <= self.prune.max_rounds <= 1000:
            raise UserError(f"{where}.prune.max_rounds: 1-1000")
        for name in ("n_score", "n_val", "n_test", "n_train", "n_heldout", "n_general"):
            if not 1 <= getattr(self.data, name) <= 100_000:
                raise UserError(f"{where}.data.{name}: 1-100000")
        for key in ("formats", "heldout_formats"):
            pairs = getattr(self.data, key)
            if key == "formats" and not pairs:
                raise UserError(f"{where}.data.formats: one or more [template, shots] pairs")
            for pair in pairs:
                if len(pair) != 2:
                    raise UserError(f"{where}.data.{key}: [template, shots] pairs, got {pair}")
                arithmetic.check_format(*pair, where=f"{where}.data.{key}")
        overlap = [p for p in self.data.heldout_formats if p in self.data.formats]
        if overlap:
            raise UserError(f"{where}.data.heldout_formats: {overlap[0]} is also in data.formats; a held-out "
                            "format is one the search and recovery never see")
        if len(self.data.query_shares) != 3 or any(x < 1 for x in self.data.query_shares):
            raise UserError(f"{where}.data.query_shares: three positive integers (score, val, test)")
        if self.data.digits not in (1, 2):
            raise UserError(f"{where}.data.digits: 1 or 2")
        self._check_files(where)
        r = self.recover
        if min(r.steps, r.rank) < 1 or not r.lr > 0 or not 1 <= r.tries <= 10:
            raise UserError(f"{where}.recover: steps and rank >= 1, lr > 0, tries 1-10")
        if r.general is not None and not 0 <= r.general < 1:
            raise UserError(f"{where}.recover.general: a share in [0, 1), got {r.general}")


    def _check_files(self, where: str) -> None:
        """A user's task files are read (and refused) here, before any model loads."""
        from editor.io import sha256_of

        d = self.data
        if d.file is None:
            if d.test_file is not None or d.delimiter is not None:
                raise UserError(f"{where}.data: test_file and delimiter are for a task file (data.file)")
            d.files_sha256 = None
            return
        task = read_task(d.file, d.delimiter)
        if d.test_file is not None:
            test = read_task(d.test_file, d.delimiter)
            if test.kind != task.kind:
                raise UserError(f"{where}.data.test_file: {d.test_file} is a {test.kind} file but {d.file} is a "
                                f"{task.kind} file; a test set is the same task")
            check_disjoint(task.rows, test.rows, d.test_file)
        file_splits(task, d, self.seed, d.file)  # too few rows: one line, before any model loads
        d.files_sha256 = sha256_of([d.file, *([d.test_file] if d.test_file else [])])


MINIMUM = {"score": 4, "val": 8, "test": 8}  # rows per set of a user's file


def file_splits(task: TaskData, d: Data, seed: int, where: str) -> dict[str, list[Example]]:
    shares = dict(zip(("score", "val", "test"), d.query_shares))
    if d.test_file is not None:
        del shares["test"]
    sets = split_rows(task.rows, shares, seed, where, MINIMUM)
    caps = {"score": d.n_score, "val": d.n_val, "test": d.n_test}
    return {name: rows[:caps[name]] for name, rows in sets.items()}


# What a search reads (prune.method is not among them: each method's search is keyed by its name).
SEARCH_READS = (*MODEL_SETTINGS, "seed", "prune.units", "prune.retain", "prune.search_retain",
                "prune.max_guard_increase", "prune.neuron_step", "prune.min_neuron_step", "prune.layer_tries",
                "prune.max_rounds", "recover.method")
EVALUATION_READS = (*MODEL_SETTINGS, "seed", "recover")


def _settings(cfg: PruneRecipe, method: str) -> SearchSettings:
    units = ["layers"] if method in LAYER_ONLY else list(cfg.prune.units)
    p = cfg.prune
    rule = p.search_retain if cfg.recover.method != "none" and p.search_retain else p.retain
    return SearchSettings(method, units, rule, p.max_guard_increase, p.neuron_step, p.min_neuron_step,
                          p.layer_tries, p.max_rounds, cfg.batch_size, cfg.seed, _kind(cfg))


def _kind(cfg: PruneRecipe) -> str:
    return read_task(cfg.data.file, cfg.data.delimiter).kind if cfg.data.file else "completion"


def task_label(cfg: PruneRecipe) -> str:
    """The task as every table and JSON names it: ``arithmetic``, or a user's file by its name."""
    return task_name(cfg.data.file) if cfg.data.file else "arithmetic"


def _data(cfg: PruneRecipe) -> dict:
    d = cfg.data
    if d.file is not None:
        task = read_task(d.file, d.delimiter)
        sets = file_splits(task, d, cfg.seed, d.file)
        if d.test_file is not None:
            sets["test"] = read_task(d.test_file, d.delimiter).rows[:d.n_test]
        sets["train"] = as_completion(TaskData(task.name, task.kind, sets["score"], d.file))[:d.n_train]
        sets["score"] = as_completion(TaskData(task.name, task.kind, sets["score"], d.file))
        return {"kind": task.kind, **{name: [e.to_json() for e in rows] for name, rows in sets.items()}}
    shares = dict(zip(("score", "val", "test"), d.query_shares))
    sets = arithmetic.split_prompts({"score": d.n_score, "val": d.n_val, "test": d.n_test, "train": d.n_train},
                                    shares, d.digits, d.ops, seed=cfg.seed, share={"train": "score"},
                                    formats=d.formats)
    out = {name: [e.to_json() for e in examples] for name, examples in sets.items()}
    out["heldout"] = {name: [e.to_json() for e in rows] for name, rows in heldout_sets(d, shares, cfg.seed).items()}
    return out


def _examples(records: list[dict]) -> list[Example]:
    return [Example(r["prompt"], r.get("answer"), r.get("meta")) for r in records]


def _recover(run: Run, cfg: PruneRecipe, model, train: list[Example]):
    """LoRA on every layer of the SHRUNK model, trained on the training prompts (and, by
    ``recover.general``, general text: its first half continued by its second) and merged."""
    from editor.lora.train import LoraSettings, train_lora
    from editor.model.arch import Arch

    share = cfg.recover.general_share(cfg.prune.max_guard_increase is not None)
    if share:
        text = as_completion(TaskData("general", "text", general_rows("train"), "general"))
        wanted = round(len(train) * share / (1 - share))
        train = _interleave(train, [text[i % len(text)] for i in range(wanted)])

    settings = LoraSettings(layers=list(range(Arch(model).n_layers)), rank=cfg.recover.rank, alpha=2 * cfg.recover.rank,
                            steps=cfg.recover.steps, lr=cfg.recover.lr, batch_size=cfg.batch_size, seed=cfg.seed)
    peft_model, result = train_lora(model, run.model.tokenizer, settings, train, progress=True)
    return peft_model.merge_and_unload().eval(), result.to_json()


def _interleave(a: list, b: list) -> list:
    """``a`` and ``b`` mixed evenly in a fixed order (LoRA batches take consecutive rows): row k of
    the mix is from ``b`` when ``b``'s share so far would otherwise fall behind its share overall."""
    out, i, j, total = [], 0, 0, len(a) + len(b)
    for k in range(total):
        if j < len(b) and (i >= len(a) or (j + 1) * total <= (k + 1) * len(b)):
            out.append(b[j])
            j += 1
        else:
            out.append(a[i])
            i += 1
    return out


_BUILT: dict = {}  # (run directory, removal) -> (model, info): LoRA recovery trains once per process
_KEPT: set = set()  # keys held for the checkpoint step; any other model is held until the next is built


def _pruned_model(run: Run, cfg: PruneRecipe, removal: Removal, train: list[Example], val: list[Example],
                  keep: bool = False):
    """The shrunk model, LoRA-recovered when asked (with the recovered model's validation accuracy:
    the rule it must meet). The last model built is held (its evaluation follows its recovery step);
    `keep` also holds it for the checkpoint step, so recovery trains once per removal."""
    key = (str(run.out), json.dumps(removal.to_json(), sort_keys=True))
    if key not in _BUILT:
        for old in [k for k in _BUILT if k not in _KEPT]:
            del _BUILT[old]
        _BUILT[key] = _build_pruned(run, cfg, removal, train, val)
    if keep:
        _KEPT.clear()
        _KEPT.add(key)
        for old in [k for k in _BUILT if k != key]:
            del _BUILT[old]
    return _BUILT[key]


def _backoff(accepted: list[Removal], arch, tries: int) -> list[Removal]:
    """The cuts a failed recovery falls back to: the search's last, then the taken rounds whose removed
    parameters are nearest (tries-1)/tries, ..., 1/tries of it (each tried once, largest first)."""
    if not accepted:
        return []
    sizes = [removed_parameters(arch, r) for r in accepted]
    picked = []
    for i in range(tries):
        target = sizes[-1] * (tries - i) / tries
        index = min(range(len(accepted)), key=lambda j: (abs(sizes[j] - target), -j))
        if index not in picked:
            picked.append(index)
    return [accepted[i] for i in picked]


def _recovered_cut(run: Run, cfg: PruneRecipe, method: str, accepted: list[Removal], train, val,
                   base_val: dict) -> dict:
    """The largest searched cut whose LoRA-recovered model keeps validation >= retain x base: a search
    run to ``search_retain`` relies on recovery, and this is where that reliance is checked."""
    floor = cfg.prune.retain * base_val["val_accuracy"]
    limit = _guard_limit(cfg, base_val)
    tried = []
    for removal in _backoff(accepted, run.model.arch, cfg.recover.tries):
        _, info = _pruned_model(run, cfg, removal, train, val, keep=method == cfg.prune.method)
        accuracy, guard = info["recovery"]["val_accuracy"], info["recovery"].get("guard_perplexity")
        ok = accuracy >= floor - 1e-12 and (limit is None or guard <= limit)
        tried.append({"removed_parameters": removed_parameters(run.model.arch, removal), "val_accuracy": accuracy,
                      **({"guard_perplexity": guard} if limit is not None else {}), "qualifies": ok})
        run.log(f"  {method}: recovered cut of {tried[-1]['removed_parameters']:,} parameters: validation accuracy "
                f"{accuracy:.3f} (floor {floor:.3f})"
                + (f", guard perplexity {guard:.2f} (limit {limit:.2f})" if limit is not None else "")
                + (": keeps the rule" if ok else ": fails the rule"))
        if tried[-1]["qualifies"]:
            return {"removal": removal.to_json(), "tried": tried}
    return {"removal": Removal().to_json(), "tried": tried}


def _guard_limit(cfg: PruneRecipe, base_val: dict) -> float | None:
    """--keep-general X: the shipped model's guard perplexity may be at most (1 + X) x the base's."""
    x = cfg.prune.max_guard_increase
    return None if x is None else base_val["guard_perplexity"] * (1 + x)


def _build_pruned(run: Run, cfg: PruneRecipe, removal: Removal, train: list[Example], val: list[Example]):
    """The shrunk model, recovered when asked; the recovered model is measured by the same rule as
    the search (validation, and the guard under --keep-general): the rule holds for what is shipped."""
    lm = run.model
    small, notes = shrink(lm.model, removal)
    info = {"notes": notes, "recovery": None}
    if cfg.recover.method == "lora" and removed_parameters(lm.arch, removal):  # nothing cut: nothing to recover
        small, info["recovery"] = _recover(run, cfg, small, train)
        guarded = cfg.prune.max_guard_increase is not None
        got = measure(small, lm.tokenizer, val, cfg.batch_size, guarded, _kind(cfg))
        info["recovery"]["val_accuracy"] = got["val_accuracy"]
        if guarded:
            info["recovery"]["guard_perplexity"] = got["guard_perplexity"]
        info["recovery"]["general_share"] = cfg.recover.general_share(guarded)
    return small, info


def _tasks(run: Run, cfg: PruneRecipe, test: list[Example]) -> dict:
    """The test prompts go to the harness in memory; data/test.jsonl keeps a copy for the reader."""
    write_text_atomic(run.path("data", "test.jsonl"), "".join(json.dumps({"prompt": e.prompt, "answer": e.answer,
                                                                         **(e.meta or {})}) + "\n" for e in test))
    general = {GENERAL: FileConfig(data=GENERAL, kind="text", examples=general_rows("heldout")[:cfg.data.n_general])}
    if cfg.data.file:
        task = FileConfig(data=cfg.data.file, n=len(test), kind=_kind(cfg), examples=test)
        return {task_label(cfg): task, "guard": GuardConfig(), **general}
    return {"arithmetic": ArithmeticConfig(n=len(test), examples=test), "guard": GuardConfig(), **general}


# Held-out general text (editor.tasks.general): a capability measure no rule reads (the guard is
# what --keep-general constrains, so it is not an independent test; this is).
GENERAL = "general-text"


def _base_validation(run: Run, cfg: PruneRecipe, val: list[Example]) -> dict:
    guard = cfg.prune.max_guard_increase is not None

    def compute():
        lm = run.model
        got = measure(lm.model, lm.tokenizer, val, cfg.batch_size, guard, _kind(cfg))
        if got["val_accuracy"] == 0:
            raise UserError(f"{cfg.model} answers none of the {len(val)} validation prompts of {task_label(cfg)}; "
                            "there is no accuracy to retain (choose a task the model can do)")
        return got

    return run.step("base_validation", compute, reads=(*MODEL_SETTINGS, "prune.max_guard_increase"), uses=("data",))


def _search(run: Run, cfg: PruneRecipe, method: str, score, val, train, base_val: dict):
    """One method's search (each round a cached step), then, with recovery, the largest of its cuts
    that recovers. Returns (removal, trace, the step the removal comes from, the recovered cuts tried)."""
    run.log(f"search: {method}")
    lm = run.model
    rounds: list[str] = []

    def round_step(name, fn):  # a round depends on the data, the base and its own earlier rounds
        result = run.step(name, fn, reads=SEARCH_READS, uses=("data", "base_validation", *rounds))
        rounds.append(name)
        return result

    state, trace, accepted = run_search(lm.model, lm.tokenizer, _settings(cfg, method), score, val, base_val,
                                        step=round_step, log=run.log)
    run.step(f"{method}_search", lambda: {"removal": state.removal.to_json(), "rounds": len(trace)},
             reads=SEARCH_READS, uses=tuple(rounds))
    if cfg.recover.method == "none":
        return state.removal, trace, f"{method}_search", None
    cut = run.step(f"{method}_recovery", lambda: _recovered_cut(run, cfg, method, accepted, train, val, base_val),
                   reads=(*SEARCH_READS, "recover"), uses=(f"{method}_search",))
    return Removal.from_json(cut["removal"]), trace, f"{method}_recovery", cut["tried"]


def run(run: Run, cfg: PruneRecipe) -> dict:
    methods = list(dict.fromkeys([cfg.prune.method, *cfg.baselines]))
    recover = cfg.recover.method != "none"
    run.plan(["data", "base_validation", "evaluate_base",
              *[s for m in methods for s in (f"{m}_search", *([f"{m}_recovery"] if recover else []), f"evaluate_{m}")],
              "checkpoint", "report"])
    data = run.step("data", lambda: _data(cfg), reads=("data", "seed"), uses=())
    score, val, test, train = (_examples(data[k]) for k in ("score", "val", "test", "train"))
    base_val = _base_validation(run, cfg, val)
    run.log(f"base validation accuracy {base_val['val_accuracy']:.3f}; keep >= {cfg.prune.retain} x that")
    tasks = _tasks(run, cfg, test)
    heldout = {name: _examples(rows) for name, rows in data.get("heldout", {}).items()}

    def evaluate_base():
        lm = run.model
        return {"evaluation": evaluate_model(lm.model, lm.tokenizer, tasks, f"{cfg.model} [base]", cfg.batch_size,
                                             self_reference=True).to_json(),
                "parameters": parameter_counts(lm.model),
                "heldout": generalisation.accuracy(lm.model, lm.tokenizer, heldout, cfg.batch_size)}

    base = run.step("evaluate_base", evaluate_base, reads=MODEL_SETTINGS, uses=("data",))
    base_eval = Evaluation.from_json(base["evaluation"])
    removals, traces, results, tried = {}, {}, {}, {}
    for method in methods:  # search, recover, evaluate: the recovered model is evaluated while it is held
        removals[method], traces[method], chosen_by, tried[method] = _search(run, cfg, method, score, val, train,
                                                                              base_val)

        def evaluate_pruned(method=method):
            small, info = _pruned_model(run, cfg, removals[method], train, val, keep=method == cfg.prune.method)
            ev = evaluate_model(small, run.model.tokenizer, tasks, f"{cfg.model} [{method}]", cfg.batch_size,
                                reference=base_eval)
            return {"evaluation": ev.to_json(), "parameters": parameter_counts(small), **info,
                    "heldout": generalisation.accuracy(small, run.model.tokenizer, heldout, cfg.batch_size)}

        results[method] = run.step(f"evaluate_{method}", evaluate_pruned, reads=EVALUATION_READS,
                                   uses=("data", chosen_by))
    _write_traces(run, traces)
    main_method = cfg.prune.method
    pruned_eval = Evaluation.from_json(results[main_method]["evaluation"])
    comparison = compare(base_eval, pruned_eval, cfg.seed)
    comparison.save(run.out, "evaluation")
    summary = _summary(cfg, base, results, removals, base_val, tried, len(test))
    summary["n_val"] = len(val)
    summary["generalisation"] = {m: generalisation.table(base["heldout"], r["heldout"], m)
                                 for m, r in results.items() if base.get("heldout")}
    checkpoint = _checkpoint_step(run, cfg, removals[main_method], train, val, test, summary, traces[main_method])
    summary["checkpoint"] = checkpoint
    report = run.step("report", lambda: _report(run, cfg, comparison, summary, traces, removals[main_method]))
    summary["headline"] = report.get("headline")  # printed first by lmedit run
    return summary


def _checkpoint_step(run: Run, cfg: PruneRecipe, removal: Removal, train, val, test: list[Example], summary: dict,
                     trace) -> str | None:
    def compute():
        if not cfg.save_checkpoint:
            return {"path": None}
        lm = run.model
        small, info = _pruned_model(run, cfg, removal, train, val)
        inputs = encode(lm.tokenizer, [e.prompt for e in test[:8]], padding_side="left")
        shrink_check = None
        if info["recovery"] is None:  # the shrunk model must compute what the zeroed one does
            with torch.no_grad(), zeroed(lm.model, removal):
                reference = lm.model(**inputs).logits
            with torch.no_grad():
                got = small(**inputs).logits
            shrink_check = (got - reference)[inputs["attention_mask"].bool()].abs().max().item()
        extra = {"recipe": run.recipe, "prune": {
            "method": cfg.prune.method, "units": cfg.prune.units, "retain": cfg.prune.retain,
            "removed": removal.to_json(), "removed_parameters": removed_parameters(lm.arch, removal),
            "parameters_before": parameter_counts(lm.model), "parameters_after": parameter_counts(small),
            "shrunk_vs_zeroed_max_logit_difference": shrink_check, "notes": info["notes"],
            "recovery": info["recovery"],
            "recovery_tries": summary["recovery_tries"].get(cfg.prune.method), "data": {k: v for k, v in run.recipe["data"].items()},
            "seed": cfg.seed, "results": summary["rows"], "generalisation": summary.get("generalisation"),
            "search_rounds": len(trace)}}
        path = save_checkpoint(small, lm.tokenizer, run.path("checkpoint"), None, describe_source(lm),
                               scores=None, force=True, extra=extra)
        return {"path": str(path)}

    return run.step("checkpoint", compute)["path"]


def _measure_row(ev: dict, task: str, key: str) -> dict:
    m = ev["tasks"][task]["measures"][key]
    return {"value": round(m["value"], 4), "low": round(m["low"], 4), "high": round(m["high"], 4)}


def _summary(cfg, base, results, removals, base_val, tried: dict, n_test: int) -> dict:
    """One row per model: parameters, the task's headline measure with its interval and the share of
    the base's it keeps (base / pruned for a lower-is-better measure such as perplexity), the task's
    other measures, and the guard perplexity."""
    before = base["parameters"]
    task, head = task_label(cfg), headline(cfg)
    rows = []
    for name, res in [("base", base), *results.items()]:
        ev, params = res["evaluation"], res["parameters"]
        top = _measure_row(ev, task, head)
        row = {"model": name, "parameters": params["total"], "non_embedding": params["non_embedding"],
               "non_embedding_removed": round(1 - params["non_embedding"] / before["non_embedding"], 4),
               head: top["value"], f"{head}_95": [top["low"], top["high"]]}
        for key in ev["tasks"][task]["measures"]:
            if key != head:
                row[key] = _measure_row(ev, task, key)["value"]
        row["guard_perplexity"] = round(ev["tasks"]["guard"]["measures"]["perplexity"]["value"], 3)
        if GENERAL in ev["tasks"]:
            row["general_perplexity"] = round(ev["tasks"][GENERAL]["measures"]["perplexity"]["value"], 3)
        row["layers_removed"] = len(removals[name].layers) if name in removals else 0
        recovery = res.get("recovery") or {}
        if "val_accuracy" in recovery:  # after LoRA recovery: the validation rule the result must meet
            row["val_retained_after_recovery"] = round(recovery["val_accuracy"] / base_val["val_accuracy"], 3)
        rows.append(row)
    lower = SCORERS[_kind(cfg)].better == "lower"
    base_value = rows[0][head]
    for r in rows:
        r["retained"] = (round((base_value / r[head]) if lower else (r[head] / base_value), 3)
                         if base_value and r[head] else None)
    return {"method": cfg.prune.method, "retain": cfg.prune.retain, "task": task, "kind": _kind(cfg),
            "measure": head, "base_val_accuracy": base_val["val_accuracy"],
            "n_test": n_test, "rows": rows,
            "recovery_tries": {m: t for m, t in tried.items() if t}}


def headline(cfg: PruneRecipe) -> str:
    """The measure the prune reports lead with: the task kind's (editor.evaluation.kinds)."""
    return SCORERS[_kind(cfg)].headline


def columns(rows: list[dict], head: str) -> list[str]:
    """The summary table's columns: sizes, the headline with its interval and retained share, the
    task's other measures, the guard."""
    fixed = ["model", "non_embedding", "non_embedding_removed", "layers_removed", head, f"{head}_95", "retained"]
    last = ["guard_perplexity", "general_perplexity"]
    rest = [k for k in rows[0] if k not in fixed and k not in ("parameters", *last) and k != "val_retained_after_recovery"]
    return fixed + rest + [k for k in last if k in rows[0]]


def _write_traces(run: Run, traces: dict) -> None:
    from editor.io import write_json_atomic

    write_json_atomic(run.path("search_trace.json"), traces)
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["method", "round", "taken", "removed_parameters", "val_accuracy", "guard_perplexity"])
    for method, trace in traces.items():
        for row in trace:
            writer.writerow([method, row["round"], row["taken"] or "", row["removed_parameters"],
                             round(row["val_accuracy"], 4), row.get("guard_perplexity") or ""])
    write_text_atomic(run.path("search_trace.csv"), buf.getvalue())


def curve_png(traces: dict, base_non_embedding: int, base_accuracy: float, n_val: int, title: str,
              y_label: str = "validation answer accuracy") -> bytes:
    """Validation score against the share of non-embedding parameters removed, one line per method,
    each point with its 95% Wilson interval over the ``n_val`` validation prompts (an accuracy's;
    ``n_val`` 0: no intervals, as for 1 / perplexity)."""
    series, errors = {}, {}
    for method, trace in traces.items():
        taken = [row for row in trace if row["taken"]]
        ys = [base_accuracy] + [r["val_accuracy"] for r in taken]
        series[method] = ([0.0] + [100 * r["removed_parameters"] / base_non_embedding for r in taken], ys)
        if n_val:
            intervals = [wilson(round(y * n_val), n_val) for y in ys]
            errors[method] = ([lo for lo, _ in intervals], [hi for _, hi in intervals])
    return line_plot(series, "non-embedding parameters removed (%)", y_label, title, errors=errors or None)


def _removed_rows(removal: Removal) -> list[dict]:
    """Every removed component, one row per touched layer."""
    touched = set(removal.layers) | {l for l, v in removal.groups.items() if v} | {l for l, v in removal.neurons.items() if v}
    rows = []
    for layer in sorted(touched):
        if layer in removal.layers:
            rows.append({"layer": layer, "removed": "the whole layer"})
            continue
        parts = []
        if removal.groups.get(layer):
            parts.append(f"key/value groups {sorted(removal.groups[layer])}")
        if removal.neurons.get(layer):
            neurons = sorted(removal.neurons[layer])
            parts.append(f"{len(neurons)} FFN neurons: {index_ranges(neurons)}")
        rows.append({"layer": layer, "removed": "; ".join(parts)})
    return rows


def _rule(cfg: PruneRecipe) -> str:
    if cfg.recover.method == "none":
        return f"the search kept validation accuracy >= {cfg.prune.retain} x the base's"
    return (f"the search cut while validation accuracy stayed >= {_settings(cfg, cfg.prune.method).retain} x the "
            f"base's, then the LoRA-recovered model had to keep validation >= {cfg.prune.retain} x the base's "
            f"(else an earlier round's cut was recovered instead)")


def _report(run: Run, cfg: PruneRecipe, comparison, summary: dict, traces: dict, removal: Removal) -> dict:
    rows = summary["rows"]
    main = next(r for r in rows if r["model"] == cfg.prune.method)
    head = summary["measure"]
    task = (f"the {summary['kind']} task {summary['task']} ({cfg.data.file})" if cfg.data.file else
            f"few-shot {cfg.data.digits}-digit arithmetic ({cfg.data.ops})")
    rep = Report(f"prune: {cfg.model}, {summary['task']}")
    rep.paragraph(
        f"Pruned {cfg.model} for {task} by {cfg.prune.method}: "
        f"{100 * main['non_embedding_removed']:.1f}% of the non-embedding parameters removed physically "
        f"({main['layers_removed']} layers), test {head.replace('_', ' ')} {rows[0][head]:.3f} -> "
        f"{main[head]:.3f} (95% interval {main[head + '_95']}) on {summary['n_test']} held-out "
        f"rows; {_rule(cfg)}.")
    rep.heading("Every method, the same search, the same shrink (test prompts)")
    rep.table(rows, columns(rows, head) + (["val_retained_after_recovery"] if cfg.recover.method != "none" else []))
    if summary.get("recovery_tries"):
        rep.heading("Recovered cuts tried (validation, largest first)")
        rep.table([{"method": m, **t} for m, tries in summary["recovery_tries"].items() for t in tries],
                  ["method", "removed_parameters", "val_accuracy", "qualifies"])
    text = summary["kind"] == "text"
    label = "validation 1 / perplexity" if text else "validation accuracy"
    rep.image(curve_png(traces, rows[0]["non_embedding"], summary["base_val_accuracy"],
                        0 if text else summary["n_val"], f"{label} as the search removes parameters", label),
              f"{label[0].upper() + label[1:]} after each accepted round, by method"
              + ("" if text else f"; bars: 95% Wilson intervals over the {summary['n_val']} validation rows"))
    if summary.get("generalisation"):
        main_rows = summary["generalisation"][cfg.prune.method]
        rep.heading("Generalisation: held-out formats and neighbouring tasks (answer accuracy, test queries)")
        rep.paragraph("Formats no scoring, validation or recovery prompt used, and tasks the search never saw; "
                      f"searched formats: {', '.join(arithmetic.format_name(t, k) for t, k in cfg.data.formats)}.")
        rep.table(main_rows, ["set", "base", "base_95", cfg.prune.method, f"{cfg.prune.method}_95", "retained", "n"])
        if len(summary["generalisation"]) > 1:
            rep.table([{"method": m, **{r["set"]: r["retained"] for r in rows}}
                       for m, rows in summary["generalisation"].items()],
                      ["method", *[r["set"] for r in main_rows]])
    rep.heading("Base vs pruned (paired, test prompts)")
    rep.comparison(comparison)
    rep.heading(f"What {cfg.prune.method} removed")
    rep.table(_removed_rows(removal), ["layer", "removed"])
    if summary.get("checkpoint"):
        rep.paragraph(f"Checkpoint: {summary['checkpoint']} (a smaller model; loads with "
                      "AutoModelForCausalLM.from_pretrained).")
    return rep.finish(run)
