"""Recipe ``gender-debias``: an edit that lowers gender bias where it was NOT chosen, in both directions.

Bias is measured in two directions that every table keeps apart (``editor.tasks.gender``):
profession given gender ("A woman works as a" -> " nurse") and gender given occupation ("The
nurse said that" -> " she"). Occupations carry a lean from labour statistics, and are split per
lean (equal counts, so no overall pronoun preference leaks into the mean) into three disjoint sets;
the 12 templates of each direction are split the same way:

* choose: the components are scored here (CNA, gradient attribution);
* validate: every choice the recipe makes (method, k, factor) is made here;
* test: never used for any choice; the report, the manifest and the README show these numbers.

Methods: CNA between woman and man prompts (the paper's, neurons), gradient attribution of the
stereotype contrast of both directions (neurons), and the same for neurons and heads ranked
together. Each is swept over k and the edit factor (0 zeroes, another value rescales). Every
method's pick is also compared with random components of the same kinds and counts on the test set.
The guard text's perplexity bounds every choice; one unrelated task (arithmetic) is measured too.
"""

from __future__ import annotations

import random
import json
from pathlib import Path
from dataclasses import dataclass, field
from typing import Literal

import torch

from editor.attribution.gradient import weighted_effects
from editor.edit.plan import EditPlan
from editor.errors import UserError
from editor.evaluation.harness import (
    ArithmeticConfig, GenderConfig, GuardConfig, IclConfig, PronounConfig, file_configs, parse_indices)
from editor.evaluation.kinds import FileConfig
from editor.io import write_text_atomic
from editor.recipes.common import MODEL_SETTINGS, Common, checkpoint_step, evaluation_step, layer_range
from editor.recipes.gender_debias_report import SPLITS, _rounded, relative, report as write_report, verdict_of
from editor.recipes.debias_baselines import BASELINES, Baselines, label, size
from editor.recipes import debias_fasp
from editor.recipes.debias_probes import check_probes, probe_objective, probe_splits
from editor.recipes.run import Run
from editor.tasks.shipped import SHIPPED
from editor.tasks import gender, icl
from editor.tasks.examples import Example

Method = Literal["cna", "gradient", "gradient-heads", "fasp"]
METHODS: tuple[str, ...] = ("cna", "gradient", "gradient-heads", "fasp")
DEFAULT_METHODS = METHODS[:3]  # fasp is opt-in: its exact scan of every head is slow (docs/bias.md)
N_TEMPLATES = len(gender.TEMPLATES)
assert N_TEMPLATES == len(gender.PRONOUN_TEMPLATES), "both directions split the same template indices"


@dataclass
class Split:
    fractions: list[float] = field(default_factory=lambda: [0.4, 0.3, 0.3])  # occupations per lean: choose/validate/test
    choose_templates: str | int = "0-3"  # template indices (both directions) for choosing components
    validate_templates: str | int = "4-7"  # ... for choosing method, k and factor
    test_templates: str | int = "8-11"  # ... for the reported numbers only
    occupations: str | None = None  # CSV occupation,percent_women; null: the built-in labour-statistics list


@dataclass
class Select:
    methods: list[Method] = field(default_factory=lambda: list(DEFAULT_METHODS))
    layers: list[int] | None = None  # [first, last] layers whose components may be edited; null = all
    ks: list[int] = field(default_factory=lambda: [5, 20, 50, 100, 200])
    factors: list[float] = field(default_factory=lambda: [0.0, 0.5, 0.75])  # 0 zeroes; another value rescales
    penalties: list[float] = field(default_factory=lambda: [0.0, 1.0, 3.0])  # gradient methods: capability penalty
    capability_sentences: int = 96  # plain sentences whose estimated loss increase the penalty counts
    max_perplexity_increase: float = 0.02  # relative guard perplexity increase allowed (validation)
    random_seeds: list[int] = field(default_factory=lambda: [1, 2, 3])
    fasp_protect: list[float] = field(default_factory=lambda: [0.2, 0.5])  # FASP's gamma: share of heads kept for performance
    # Projection baselines of the MLP output (editor.recipes.debias_projections), swept over layer sets
    # ([first, last]; null: middle third, last third, all) and, for dama, ranks.
    baselines: list[Literal["leace", "dama", "cda"]] = field(default_factory=lambda: list(BASELINES))
    projection_layers: list[list[int]] | None = None
    dama_ranks: list[int] = field(default_factory=lambda: [1, 4, 16])
    cda_steps: list[int] = field(default_factory=lambda: [40, 80])  # LoRA steps, up to pruning's recovery budget


@dataclass
class GenderDebias(Common):
    split: Split = field(default_factory=Split)
    select: Select = field(default_factory=Select)
    arithmetic_n: int = 200  # one-digit addition prompts of the capability check (and half as many icl prompts)
    save_checkpoint: bool = True
    save_if_test_worse: bool = False  # save the validation pick even if test bias does not fall
    # Shipped benchmarks measured on the test split's base, every method's pick and its first random control.
    benchmarks: list[str] = field(default_factory=lambda: ["crows-pairs-gender", "winobias", "stereoset-gender"])
    probes: str | None = None  # a contrast file of the user's own bias probes (editor.recipes.debias_probes)

    def check(self, where: str) -> None:
        super().check(where)
        s = self.select
        if not s.ks or any(k < 1 for k in s.ks):
            raise UserError(f"{where}.select.ks: a non-empty list of positive integers")
        if not (s.methods or s.baselines) or not s.factors or any(f == 1.0 for f in s.factors):
            raise UserError(f"{where}.select: methods (or baselines) and factors must be non-empty; "
                            "factor 1 changes nothing")
        if any(len(l) != 2 or not 0 <= l[0] <= l[1] for l in s.projection_layers or []) or s.projection_layers == []:
            raise UserError(f"{where}.select.projection_layers: a list of [first, last] with 0 <= first <= last")
        if not s.dama_ranks or any(r < 1 for r in s.dama_ranks) or not s.cda_steps or any(x < 1 for x in s.cda_steps):
            raise UserError(f"{where}.select.dama_ranks, cda_steps: non-empty lists of positive integers")
        if self.probes is not None:
            check_probes(self.probes, f"{where}.probes")
            probe_splits(self.probes, tuple(self.split.fractions), self.seed)  # too few rows: refused now
        unknown = [b for b in self.benchmarks if b not in SHIPPED]
        if unknown:
            raise UserError(f"{where}.benchmarks: unknown {', '.join(unknown)}; shipped: {', '.join(SHIPPED)}")
        if not s.penalties or any(p < 0 for p in s.penalties) or s.capability_sentences < 1:
            raise UserError(f"{where}.select: penalties must be a non-empty list of numbers >= 0, "
                            "capability_sentences >= 1")
        if not s.fasp_protect or any(not 0 <= g < 1 for g in s.fasp_protect):
            raise UserError(f"{where}.select.fasp_protect: a non-empty list of shares in [0, 1)")
        if s.max_perplexity_increase < 0:
            raise UserError(f"{where}.select.max_perplexity_increase: must be >= 0")
        f = self.split.fractions
        if len(f) != 3 or any(x <= 0 for x in f) or sum(f) > 1 + 1e-9:
            raise UserError(f"{where}.split.fractions: three positive shares (choose, validate, test) summing to <= 1")
        if self.arithmetic_n < 1:
            raise UserError(f"{where}.arithmetic_n: must be >= 1")
        if s.layers is not None and (len(s.layers) != 2 or not 0 <= s.layers[0] <= s.layers[1]):
            raise UserError(f"{where}.select.layers: [first, last] with 0 <= first <= last, got {s.layers}")
        if self.split.occupations is not None and not Path(self.split.occupations).is_file():
            raise UserError(f"{where}.split.occupations: no such file {self.split.occupations}")
        seen: dict[int, str] = {}
        for name in SPLITS:
            key = f"{name}_templates"
            setattr(self.split, key, str(getattr(self.split, key)))
            for i in parse_indices(getattr(self.split, key), N_TEMPLATES, f"{where}.split.{key}"):
                if i in seen:
                    raise UserError(f"{where}.split.{key}: template {i} is also in {seen[i]}; splits must be disjoint")
                seen[i] = key


def contrast_examples(templates: list[int], occupations: list[tuple[str, str]]) -> tuple[list[Example], list[float]]:
    """Both directions' prompts with weights whose weighted log-probability sum is bias(profession) +
    bias(pronoun): each direction's mean gap toward the stereotype over its (template, occupation) pairs."""
    prof = gender.build([gender.TEMPLATES[i] for i in templates], occupations)
    pron = gender.build_pronouns([gender.PRONOUN_TEMPLATES[i] for i in templates], occupations)
    examples, weights = [], []
    for direction in (prof, pron):
        pairs = len(direction) / 2
        for e in direction:
            sign = 1.0 if e.meta["gender"] == e.meta["lean"] else -1.0
            examples.append(e)
            weights.append(sign / pairs)
    return examples, weights


# Component rankings -------------------------------------------------------------------------------
def _ranked(values: dict[str, torch.Tensor], layers: list[int], k: int) -> list[dict]:
    """The ``k`` components whose zeroing lowers the bias most (most negative estimated change)."""
    items = []
    for kind, table in values.items():
        for l in layers:
            for i, v in enumerate(table[l].tolist()):
                items.append((v, kind, f"{l}.{i}"))
    items.sort(key=lambda x: (x[0], x[1], x[2]))
    return [{"kind": kind, "component": name, "estimate": v} for v, kind, name in items[:k]]


def rank_components(run: Run, cfg: GenderDebias, method: str, split: dict, layers: list[int],
                    k: int) -> dict[str, list[dict]]:
    """penalty -> the ``k`` components whose editing should lower the bias most (CNA: penalty 0 only)."""
    lm = run.model
    templates = parse_indices(cfg.split.choose_templates, N_TEMPLATES)
    occupations = [tuple(o) for o in split["choose"]]
    if method == "cna":  # the paper's: neuron importance with the lean's gender minus with the other
        prompts = gender.build([gender.TEMPLATES[t] for t in templates], occupations)
        key = lambda e: (e.meta["template"], e.meta["profession"])  # noqa: E731 - pairs A and B row by row
        a = sorted((e for e in prompts if e.meta["gender"] == e.meta["lean"]), key=key)
        b = sorted((e for e in prompts if e.meta["gender"] != e.meta["lean"]), key=key)
        scores = run.scorer.cna(a, examples_b=b, layers=layers, target="gold")  # here or on Ray workers
        diff = scores.columns["diff"]
        table = torch.zeros(lm.arch.n_layers, diff.shape[-1])
        table[layers] = torch.as_tensor(diff).float()[:len(layers)]
        return {"0": _ranked({"neuron": -table}, layers, k)}  # largest CNA difference first; no penalty
    examples, weights = contrast_examples(templates, occupations)
    if cfg.probes:  # the user's probes join the objective
        extra = probe_objective(probe_splits(cfg.probes, tuple(cfg.split.fractions), cfg.seed)["choose"])
        examples, weights = examples + extra[0], weights + extra[1]
    if method == "fasp":  # its "penalty" is the share of heads protected for performance
        bias, loss = debias_fasp.head_effects(lm.model, lm.tokenizer, (examples, weights),
                                              capability_examples(cfg.select.capability_sentences), cfg.batch_size)
        return debias_fasp.rankings(bias, loss, layers, cfg.select.fasp_protect, k)
    bias = weighted_effects(lm.model, lm.tokenizer, examples, weights, cfg.batch_size)
    examples, weights = capability_examples(cfg.select.capability_sentences)
    loss = weighted_effects(lm.model, lm.tokenizer, examples, weights, cfg.batch_size)
    kinds = ["neuron", "head"] if method == "gradient-heads" else ["neuron"]
    out = {}
    for penalty in cfg.select.penalties:
        values = {kind: _penalised(getattr(bias, kind + "s"), getattr(loss, kind + "s"), penalty, layers)
                  for kind in kinds}
        out[f"{penalty:g}"] = _ranked(values, layers, k)
    return out


def capability_examples(n: int) -> tuple[list[Example], list[float]]:
    """Plain English sentences (the built-in in-context pool, every other one) as first word ->
    rest, weighted (-1/n) so the weighted log-probability sum is the mean loss per sentence."""
    sentences = icl.load_pool("builtin").sentences[::2][:n]
    examples = [Example(s.split(" ", 1)[0], " " + s.split(" ", 1)[1]) for s in sentences if " " in s]
    return examples, [-1.0 / len(examples)] * len(examples)


def _penalised(bias: torch.Tensor, loss: torch.Tensor, penalty: float, layers: list[int]) -> torch.Tensor:
    """Estimated bias change plus ``penalty`` x the estimated loss increase, the loss term rescaled to
    the bias term's spread over the editable components (so penalty 1 weighs both alike)."""
    if penalty == 0:
        return bias
    scale = bias[layers].std() / loss[layers].std().clamp_min(1e-12)
    return bias + penalty * scale * loss


def plan_for(components: list[dict], factor: float, note: str) -> EditPlan:
    plan = EditPlan(note=note)
    for kind in ("head", "neuron"):
        names = [c["component"] for c in components if c["kind"] == kind]
        if names:
            plan.scale(kind, names, factor)
    return plan


def random_like(components: list[dict], layers: list[int], n_heads: int, width: int, seed: int) -> list[dict]:
    """Random components of the same kinds and counts, from the same layers."""
    rng = random.Random(seed)
    out = []
    for kind, count_of_kind in (("head", n_heads), ("neuron", width)):
        count = sum(c["kind"] == kind for c in components)
        pool = [f"{l}.{i}" for l in layers for i in range(count_of_kind)]
        out += [{"kind": kind, "component": name} for name in rng.sample(pool, count)]
    return out


# Selection ----------------------------------------------------------------------------------------
def select(rows: list[dict], base: dict, max_increase: float) -> dict | None:
    """The validation row with the smallest worse-direction relative bias among those within the
    guard limit that lower the bias in BOTH directions; ties go to fewer components. None: none qualifies."""
    limit = base["perplexity"] * (1 + max_increase)
    ok = [r for r in rows if r["perplexity"] <= limit and max(relative(r, base)) < 1]
    if not ok:
        return None
    return min(ok, key=lambda r: (max(relative(r, base)), r["k"], r["factor"] != 0, r["method"]))


# The run ------------------------------------------------------------------------------------------
def _files(run: Run, split: dict) -> dict[str, str]:
    paths = {}
    for name in SPLITS:
        path = run.path("data", f"{name}.jsonl")
        write_text_atomic(path, "".join(json.dumps({"profession": p, "lean": lean}) + "\n" for p, lean in split[name]))
        paths[name] = str(path)
    return paths


def _tasks(cfg: GenderDebias, files: dict, split: str, arithmetic: bool, benchmarks: bool = False) -> dict:
    templates = getattr(cfg.split, f"{split}_templates")
    tasks = {"gender": GenderConfig(templates=templates, professions=files[split], seed=cfg.seed),
             "pronoun": PronounConfig(templates=templates, professions=files[split], seed=cfg.seed),
             "guard": GuardConfig()}
    if split == "test":  # the choice set again: how much of the effect is in-sample only
        t = cfg.split.choose_templates
        tasks["gender@choose"] = GenderConfig(templates=t, professions=files["choose"], seed=cfg.seed)
        tasks["pronoun@choose"] = PronounConfig(templates=t, professions=files["choose"], seed=cfg.seed)
    if arithmetic:
        tasks["arithmetic"] = ArithmeticConfig(n=cfg.arithmetic_n, digits=1, ops="+", shots=4, seed=cfg.seed)
        # A third capability, in-context classification, sized with the arithmetic check (100 by default).
        tasks["icl"] = IclConfig(n=max(1, min(100, cfg.arithmetic_n // 2)), seed=cfg.seed)
    if benchmarks:
        tasks |= file_configs(cfg.benchmarks, None, list(tasks))
    if cfg.probes:
        rows = probe_splits(cfg.probes, tuple(cfg.split.fractions), cfg.seed)[split]
        tasks["probes"] = FileConfig(data=cfg.probes, kind="contrast", examples=rows)
    return tasks


def _row(ev, **extra) -> dict:
    m = {t: ev.tasks[t].measures for t in ev.tasks}
    row = {**extra, "bias_profession": m["gender"]["bias"].value, "bias_pronoun": m["pronoun"]["bias"].value,
           "perplexity": m["guard"]["perplexity"].value}
    for key, task in (("bias_profession_95", "gender"), ("bias_pronoun_95", "pronoun")):
        row[key] = [round(m[task]["bias"].low, 4), round(m[task]["bias"].high, 4)]
    if "gender@choose" in m:
        row["bias_profession_choose"] = m["gender@choose"]["bias"].value
        row["bias_pronoun_choose"] = m["pronoun@choose"]["bias"].value
    if "arithmetic" in m:
        a = m["arithmetic"]["answer_accuracy"]
        row["arithmetic"], row["arithmetic_95"] = a.value, [round(a.low, 4), round(a.high, 4)]
    if "icl" in m:
        a = m["icl"]["accuracy"]
        row["icl"], row["icl_95"] = a.value, [round(a.low, 4), round(a.high, 4)]
    if "probes" in m:
        b = m["probes"]["logprob_difference"]
        row["bias_probes"], row["bias_probes_95"] = b.value, [round(b.low, 4), round(b.high, 4)]
    for name in SHIPPED:  # stereotype score: 0.5 is no preference
        if name in m:
            b = m[name]["stereotype_score"]
            row[name], row[f"{name}_95"] = b.value, [round(b.low, 4), round(b.high, 4)]
    return row


# What the cached steps read (Run.key): the ranking and every evaluation (the test rows, which depend on
# the validation picks, keep the default: all settings and all earlier results).
RANK_READS = (*MODEL_SETTINGS, "seed", "split", "select.layers", "select.ks", "select.penalties",
              "select.capability_sentences")
EVALUATION_READS = (*MODEL_SETTINGS, "seed", "split")


def run(run: Run, cfg: GenderDebias) -> dict:
    s = cfg.select
    ks, factors = sorted(set(s.ks)), list(dict.fromkeys(s.factors))
    penalties = {m: ["0"] if m == "cna" else [f"{p:g}" for p in dict.fromkeys(s.fasp_protect if m == "fasp" else
                                                                            s.penalties)] for m in s.methods}
    sweep = [(m, p, k, f) for m in s.methods for p in penalties[m] for k in ks for f in factors]
    names = [*s.methods, *s.baselines]
    probes = ("probes", "split.fractions") if cfg.probes else ()  # a run without probes keeps its cache keys
    tests = [f"test_{m}{r}" for m in names for r in ["", *[f"_random{x}" for x in s.random_seeds]]]
    occupations = gender.occupations(cfg.split.occupations or gender.OCCUPATIONS_CSV)
    split = run.step("split", lambda: gender.split_occupations(occupations, cfg.split.fractions, cfg.seed, SPLITS),
                     reads=("split.fractions", "split.occupations", "seed"), uses=())
    files = _files(run, split)
    project = Baselines(run, cfg.select, cfg.split.choose_templates, split["choose"], cfg.batch_size, cfg.seed,
                        {"rank": 8, "lr": 1e-3, "batch_size": cfg.batch_size})
    run.plan(["split", *[f"rank_{m}" for m in s.methods], "validate_base", *[_step(*v) for v in sweep],
              *[f"validate_{label(v)}" for v in project.grid], "test_base", *tests, "checkpoint", "report"])

    def layers() -> list[int]:
        n = run.model.arch.n_layers
        return layer_range(s.layers, n, "select.layers") if s.layers else list(range(n))

    ranked = {m: run.step(f"rank_{m}", lambda m=m: {"components": rank_components(run, cfg, m, split, layers(), max(ks))},
                          reads=(*RANK_READS, *probes, *(["select.fasp_protect"] if m == "fasp" else [])),
                          uses=("split",))["components"] for m in s.methods}
    base_val = _row(evaluation_step(run, "validate_base", _tasks(cfg, files, "validate", False),
                                    reads=(*EVALUATION_READS, *probes), uses=("split",)),
                    method="base", penalty=0.0, k=0, factor=1.0)
    rows = []
    for m, p, k, f in sweep:  # a setting's step is named by (m, p, k, f): a new grid reruns only new settings
        plan = plan_for(ranked[m][p][:k], f, _note(m, p, k, f))
        ev = evaluation_step(run, _step(m, p, k, f), _tasks(cfg, files, "validate", False), plan,
                             reads=(*EVALUATION_READS, *probes), uses=("split", f"rank_{m}"))
        rows.append(_row(ev, method=m, penalty=float(p), k=k, factor=f))
    for v in project.grid:  # named by method, layers and rank, like the sweep's settings
        ev = evaluation_step(run, f"validate_{label(v)}", _tasks(cfg, files, "validate", False),
                             reads=(*EVALUATION_READS, *probes), uses=("split",), modify=project.modifier(v))
        rows.append(_row(ev, method=v["method"], penalty=0.0, k=size(v), factor=0.0, setting=label(v)))
    picks = {m: select([r for r in rows if r["method"] == m], base_val, s.max_perplexity_increase) for m in names}
    chosen = select(rows, base_val, s.max_perplexity_increase)

    test_tasks = _tasks(cfg, files, "test", True, benchmarks=True)
    base_test = evaluation_step(run, "test_base", test_tasks, reads=(*EVALUATION_READS, *probes, "arithmetic_n", "benchmarks"),
                                uses=("split",))
    table = [_row(base_test, model="base", components=0)]
    for m, pick in picks.items():
        if pick is None:
            table.append({"model": m, "note": "no validation setting lowers both directions within the guard limit"})
            continue
        edit = _edit(m, pick, ranked, project)
        ev = evaluation_step(run, f"test_{m}", test_tasks, edit["plan"], reference=base_test, modify=edit["modify"])
        table.append(_row(ev, model=m, penalty=pick["penalty"], components=pick.get("setting", pick["k"]),
                          factor=pick["factor"]))
        for i, seed in enumerate(s.random_seeds):  # benchmarks on the first random control only (their cost)
            tasks = {k: v for k, v in test_tasks.items() if k not in ("arithmetic", "icl") and (i == 0 or k not in SHIPPED)}
            rand = _random_edit(m, pick, edit, layers(), run.model.arch, seed, project)
            ev = evaluation_step(run, f"test_{m}_random{seed}", tasks, rand["plan"], reference=base_test,
                                 modify=rand["modify"])
            name = f"{m} without counterfactuals (seed {seed})" if m == "cda" else f"random like {m} (seed {seed})"
            table.append(_row(ev, model=name, penalty=None,
                              components=pick.get("setting", pick["k"]), factor=pick["factor"]))
    base_row = table[0]
    for r in table[1:]:
        if "bias_profession" in r:
            for key, rel in zip(("reduction_profession", "reduction_pronoun", "reduction_probes"), relative(r, base_row)):
                r[key] = round(1 - rel, 4)
            r["perplexity_change"] = round(r["perplexity"] / base_row["perplexity"] - 1, 4)
    verdict, save = verdict_of(chosen, table, cfg.save_checkpoint, cfg.save_if_test_worse)
    edit = _edit(chosen["method"], chosen, ranked, project, " (chosen on validation)") if chosen else \
        {"plan": EditPlan(), "modify": None}
    folded = project.describe(project.setting(chosen["setting"])) if chosen and "setting" in chosen else []
    checkpoint = checkpoint_step(run, edit["plan"], None, save, modify=edit["modify"], extra={"debias": {
        "chosen": chosen, "verdict": verdict, "test": _rounded(table), "split": split, "folded": folded,
        "templates": {n: getattr(cfg.split, f"{n}_templates") for n in SPLITS}}})
    summary = {"chosen": chosen, "verdict": verdict, "rows": _rounded(table), "validation": rows,
               "validation_base": base_val, "checkpoint": checkpoint}
    report = run.step("report", lambda: write_report(run, cfg, split, summary, ranked))
    summary["headline"] = report.get("headline")  # printed first by lmedit run
    return summary


def _edit(method: str, pick: dict, ranked: dict, project: Baselines, why: str = "") -> dict:
    """A validation pick as what applies it: an edit plan of components, or a baseline's change."""
    if method in BASELINES:
        return {"plan": EditPlan(note=f"gender-debias: {pick['setting']}{why}"),
                "modify": project.modifier(project.setting(pick["setting"]))}
    note = _note(method, f"{pick['penalty']:g}", pick["k"], pick["factor"]) + why
    return {"plan": plan_for(ranked[method][f"{pick['penalty']:g}"][:pick["k"]], pick["factor"], note),
            "modify": None}


def _random_edit(method: str, pick: dict, edit: dict, layers: list[int], arch, seed: int, project: Baselines) -> dict:
    if method in BASELINES:
        return {"plan": None, "modify": project.modifier(project.setting(pick["setting"]), seed)}
    comps = [{"kind": e.kind, "component": e.target} for e in edit["plan"].edits]
    rand = random_like(comps, layers, arch.n_heads, arch.d_ffn(0), seed)
    return {"plan": plan_for(rand, pick["factor"], f"random {seed}"), "modify": None}


def _step(method: str, penalty: str, k: int, factor: float) -> str:
    return f"validate_{method}_p{penalty}_k{k}_x{factor:g}"


def _note(method: str, penalty: str, k: int, factor: float) -> str:
    return f"gender-debias: {method} (capability penalty {penalty}), top {k}, factor {factor:g}"
