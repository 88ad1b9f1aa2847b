"""Attribution in one process or spread over Ray workers, with the same numbers either way.

A *scorer* runs the attribution primitives (gradient estimates, the exact ablation scan, static head
scores, neuron scores, CNA). ``LocalScorer`` calls them on a model in memory; ``RayScorer`` splits
the prompts into contiguous shards (whole batches, so every batch is the one the single process
would form) and, for the ablation scan, the heads as well, runs the shards on Ray actors that
loaded the model once (editor/distributed.py), and merges the results EXACTLY:

* columns that are means over prompts: the prompt-weighted mean of the shards' means;
* ``std``: Chan's pooled form, ``M2 = sum M2_i + sum n_i (mean_i - mean)^2`` (no cancellation);
* ``top{k}_count``: the sum;
* head-subset scans (NaN where a shard did not scan): per head, over the shards that scanned it.

A column with no rule is an error, not a silent guess. ``auto_head_scores`` and ``add_specificity``
(editor/attribution/confirm.py) take a scorer, so the composed methods run on either.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from editor.attribution.results import ComponentScores
from editor.errors import UserError
from editor.tasks.examples import Example

MEAN_COLUMNS = {"mean", "coef_mean", "logp_drop", "acc_drop", "ablated_acc", "logp_drop_estimate", "abs_estimate",
                "diff", "importance_a", "importance_b", "coef_a", "coef_b"}
MEAN_META = ("base_acc", "base_logp", "exact_sum_fraction")
PER_PROMPT = {"topk_values", "topk_index"}  # one row per prompt: shards concatenate


# Local --------------------------------------------------------------------------------------------
@dataclass
class LocalScorer:
    """The primitives on a model in memory."""

    model: object
    tokenizer: object
    batch_size: int = 16
    progress: bool = True

    def gradient(self, examples: list[Example], kind: str = "head") -> ComponentScores:
        from editor.attribution.gradient import gradient_scores

        return gradient_scores(self.model, self.tokenizer, examples, kind, self.batch_size, self.progress)

    def scan(self, examples: list[Example], heads: list[tuple[int, int]] | None = None) -> ComponentScores:
        from editor.attribution.heads import head_ablation_scan

        return head_ablation_scan(self.model, self.tokenizer, examples, self.batch_size, progress=self.progress,
                                  heads=heads)

    def static(self, examples: list[Example], target: str = "auto") -> ComponentScores:
        from editor.attribution.heads import head_logprob_increase

        return head_logprob_increase(self.model, self.tokenizer, examples, target=target, batch_size=self.batch_size,
                                     progress=self.progress)

    def neurons(self, examples: list[Example], **kwargs) -> ComponentScores:
        from editor.attribution.neurons import neuron_logprob_increase

        return neuron_logprob_increase(self.model, self.tokenizer, examples, batch_size=self.batch_size,
                                       progress=self.progress, **kwargs)

    def cna(self, examples: list[Example], model_b: str | None = None, load=None, **kwargs) -> ComponentScores:
        from editor.attribution.cna import cna

        if model_b is not None:
            kwargs["model_b"] = load(model_b).model
        return cna(self.model, self.tokenizer, examples, batch_size=self.batch_size, progress=self.progress, **kwargs)

    def tokens(self, scores: ComponentScores, top: int) -> dict[str, list[str]]:
        from editor.attribution.vocab import leading_tokens
        from editor.model.arch import Arch

        return leading_tokens(Arch(self.model), self.tokenizer, scores, top)

    def grid(self) -> tuple[int, int]:
        """(layers, heads)."""
        from editor.model.arch import Arch

        arch = Arch(self.model)
        return arch.n_layers, arch.n_heads

    def guard(self, n: int, seed: int) -> list[Example]:
        from editor.tasks.guard import guard_windows

        return guard_windows(self.tokenizer, n, seed=seed)


# Ray ----------------------------------------------------------------------------------------------
@dataclass
class RayScorer:
    """The primitives over a :class:`editor.distributed.RayPool`, merged to the single-process result."""

    pool: object
    model: str
    batch_size: int = 16
    progress: bool = True
    log: object = None
    _grid: tuple[int, int] | None = field(default=None, repr=False)

    @property
    def workers(self) -> int:
        return len(self.pool.actors)

    def _submit(self, jobs: list[dict], desc: str, unit: str) -> list[ComponentScores]:
        """Run ``jobs`` on the pool behind one progress bar over their weights (prompts or layers)."""
        from editor.progress import progress_bar

        bar = progress_bar(sum(j["weight"] for j in jobs), f"{desc} ({self.workers} Ray workers)", unit,
                           enabled=self.progress)
        try:
            return self.pool.run_shards("editor.attribution.sharded:run_shard", jobs, desc, progress=bar.update)
        finally:
            bar.close()

    def _run(self, op: str, examples: list[Example], desc: str, heads=None, **kwargs) -> ComponentScores:
        shards = prompt_shards(len(examples), self.workers, self.batch_size)
        head_parts = head_shards(heads, self.workers) if op == "scan" else [None]
        jobs, counts = [], []
        for lo, hi in shards:
            for part in head_parts:
                job = {"op": op, "model": self.model, "examples": examples[lo:hi], "batch_size": self.batch_size,
                       "weight": hi - lo, **kwargs}
                if "examples_b" in kwargs:
                    job["examples_b"] = kwargs["examples_b"][lo:hi]
                if op == "scan":
                    job["heads"] = part
                jobs.append(job)
                counts.append(hi - lo)
        unit = "prompt" if len(head_parts) == 1 else "prompt x head shard"
        return merge_shards(self._submit(jobs, desc, unit), counts, prompts=len(examples))

    def gradient(self, examples: list[Example], kind: str = "head") -> ComponentScores:
        return self._run("gradient", examples, "gradient", kind=kind)

    def scan(self, examples: list[Example], heads: list[tuple[int, int]] | None = None) -> ComponentScores:
        if heads is None:
            return self._run("scan", examples, "ablation scan", heads=self._all_heads())
        return self._run("scan", examples, "ablation scan", heads=heads)

    def static(self, examples: list[Example], target: str = "auto") -> ComponentScores:
        return self._run("static", examples, "head scores", target=target)

    def neurons(self, examples: list[Example], **kwargs) -> ComponentScores:
        return self._by_layers("neurons", examples, "neuron scores", **kwargs)

    def cna(self, examples: list[Example], model_b: str | None = None, load=None, **kwargs) -> ComponentScores:
        return self._by_layers("cna", examples, "CNA", model_b=model_b, **kwargs)

    def _by_layers(self, op: str, examples: list[Example], desc: str, layers=None, **kwargs) -> ComponentScores:
        """Neuron scores split by LAYER: their largest cost, a neurons x vocabulary product per layer,
        does not depend on the prompts, so prompt shards would each pay it again; layer shards pay
        it once (the capture pass, the cheap part, runs on every worker)."""
        layers = list(range(self.grid()[0])) if layers is None else list(layers)
        groups = layer_shards(layers, self.workers)
        if len(groups) < 2:
            return self._run(op, examples, desc, layers=layers, **kwargs)
        jobs = [{"op": op, "model": self.model, "examples": examples, "batch_size": self.batch_size, "layers": group,
                 "weight": len(group), **kwargs} for group in groups]
        return merge_layer_shards(self._submit(jobs, desc, "layer"))

    def grid(self) -> tuple[int, int]:
        """(layers, heads) of the model, read once on a worker."""
        if self._grid is None:
            self._grid = self._one("grid")
        return self._grid

    def tokens(self, scores: ComponentScores, top: int) -> dict[str, list[str]]:
        return self._one("tokens", scores=scores, top=top)

    def guard(self, n: int, seed: int) -> list[Example]:
        return self._one("guard", n=n, seed=seed)

    def _one(self, op: str, **kwargs):
        """A small job on one worker (it holds the model; the driver need not)."""
        return self.pool.run_shards("editor.attribution.sharded:run_small", [{"op": op, "model": self.model, **kwargs}],
                                    op)[0]

    def _all_heads(self) -> list[tuple[int, int]]:
        layers, heads = self.grid()
        return [(layer, head) for layer in range(layers) for head in range(heads)]


def run_small(load, op: str, model: str, **kwargs):
    """Runs on a Ray worker: :meth:`LocalScorer.tokens` or :meth:`LocalScorer.guard`."""
    lm = load(model)
    return getattr(LocalScorer(lm.model, lm.tokenizer, progress=False), op)(**kwargs)


def run_shard(load, op: str, model: str, examples: list[Example], batch_size: int, **kwargs) -> ComponentScores:
    """Runs on a Ray worker: one primitive on one shard of prompts (and heads), no progress bars."""
    lm = load(model)
    scorer = LocalScorer(lm.model, lm.tokenizer, batch_size, progress=False)
    if op == "cna":
        return scorer.cna(examples, load=load, **kwargs)
    if op == "scan":
        return scorer.scan(examples, heads=[tuple(h) for h in kwargs["heads"]])
    return getattr(scorer, op)(examples, **kwargs)


def scorer_for(executor: str, load, model: str, batch_size: int, workers: int = 2, address: str | None = None,
               spec=None, progress: bool = True, log=None):
    """(scorer, closer): a LocalScorer on ``load()``'s model, or a RayScorer over a new pool."""
    if executor == "local":
        lm = load()
        return LocalScorer(lm.model, lm.tokenizer, batch_size, progress), lambda: None
    if executor != "ray":
        raise UserError(f"unknown executor {executor!r}: local or ray")
    from editor.distributed import ModelSpec, RayPool

    pool = RayPool(workers, address, spec or ModelSpec(), log=log)
    return RayScorer(pool, model, batch_size, progress, log), pool.close


# Sharding and merging -----------------------------------------------------------------------------
def layer_shards(layers: list[int], parts: int) -> list[list[int]]:
    """Contiguous runs of ``layers`` for at most ``parts`` workers."""
    return contiguous_runs(layers, parts)


def _scored_layers(part: ComponentScores) -> list[int]:
    """The layers a neuron result scored (CNA keeps them in each condition's meta)."""
    return part.meta.get("layers") or part.meta.get("a", {}).get("layers")


def merge_layer_shards(parts: list[ComponentScores]) -> ComponentScores:
    """One neuron result from results over disjoint layer sets (all prompts each): every layer's
    rows from the shard that scored it; top-k counts recounted from each prompt's top k over the
    union (the global top k of a prompt lies within the union of the shards' top k's)."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    columns = {}
    for name, column in first.columns.items():
        merged = torch.zeros_like(column)
        for part in parts:
            rows = _scored_layers(part)
            merged[rows] = part.columns[name][rows]
        columns[name] = merged
    meta = dict(first.meta)
    layers = sorted(l for p in parts for l in _scored_layers(p))
    for key in ("a", "b"):  # CNA: each condition's own meta
        if isinstance(meta.get(key), dict) and "layers" in meta[key]:
            meta[key] = {**meta[key], "layers": layers}
    if "layers" in meta:
        meta["layers"] = layers
    if meta.get("exact_sum_fraction") is not None:
        sizes = [len(p.meta["layers"]) for p in parts]
        meta["exact_sum_fraction"] = sum(s * p.meta["exact_sum_fraction"] for s, p in zip(sizes, parts)) / sum(sizes)
    vectors = {}
    count_column = next((c for c in columns if c.startswith("top") and c.endswith("_count")), None)
    if count_column is not None:
        k = meta["topk"]
        values = torch.cat([p.vectors["topk_values"] for p in parts], dim=1)
        index = torch.cat([p.vectors["topk_index"] for p in parts], dim=1)
        best = values.topk(k, dim=1)
        chosen = index.gather(1, best.indices)
        counts = torch.zeros(columns[count_column].numel())
        counts.scatter_add_(0, chosen.flatten(), torch.ones(chosen.numel()))
        columns[count_column] = counts.view_as(columns[count_column])
        vectors = {"topk_values": best.values, "topk_index": chosen}
    return ComponentScores(first.kind, first.method, first.primary, columns, meta, vectors)



def prompt_shards(n: int, workers: int, batch_size: int) -> list[tuple[int, int]]:
    """Contiguous ``[lo, hi)`` ranges of whole batches, as even as whole batches allow."""
    batches = math.ceil(n / batch_size)
    shards = min(workers, batches)
    bounds = [round(i * batches / shards) for i in range(shards + 1)]
    return [(bounds[i] * batch_size, min(n, bounds[i + 1] * batch_size)) for i in range(shards)]


def head_shards(heads: list[tuple[int, int]], parts: int) -> list[list[tuple[int, int]]]:
    """``heads`` in ``parts`` contiguous runs (a layer's heads stay together where they can)."""
    return contiguous_runs(heads, parts)


def contiguous_runs(items: list, parts: int) -> list[list]:
    """``items`` cut into at most ``parts`` contiguous runs of near-equal length, in order."""
    parts = max(1, min(parts, len(items)))
    bounds = [round(i * len(items) / parts) for i in range(parts + 1)]
    return [items[bounds[i]:bounds[i + 1]] for i in range(parts)]


def merge_shards(parts: list[ComponentScores], counts: list[int], prompts: int | None = None) -> ComponentScores:
    """One result from results over disjoint prompt shards (``counts`` prompts each) and/or head
    subsets (NaN where unscanned; every prompt shard split into the same head subsets): equal to
    the single run up to float rounding. ``prompts``: the distinct prompts behind all parts."""
    if len(parts) == 1:
        return parts[0]
    first = parts[0]
    weights = torch.tensor(counts, dtype=torch.float64)
    columns = {}
    for name in first.columns:
        if name == "std":
            continue  # after the means: it needs them
        stack = torch.stack([p.columns[name].double() for p in parts])  # [S, L, I]
        if name == "exact":
            columns[name] = stack.amax(0).float()
        elif name in MEAN_COLUMNS:
            columns[name] = _weighted_mean(stack, weights).float()
        elif name.startswith("top") and name.endswith("_count"):
            columns[name] = stack.sum(0).float()
        else:
            raise UserError(f"no exact merge rule for the score column {name!r}")
    if "std" in first.columns:
        columns["std"] = _pooled_std([p.columns["mean"].double() for p in parts],
                                     [p.columns["std"].double() for p in parts], weights).float()
    meta = dict(first.meta)
    prompts = sum(counts) if prompts is None else prompts
    for key in ("a", "b"):  # CNA: each condition's own meta
        if isinstance(meta.get(key), dict) and "prompts" in meta[key]:
            meta[key] = {**meta[key], "prompts": prompts}
    if "prompts" in meta:
        meta["prompts"] = prompts
    for key in MEAN_META:
        if meta.get(key) is not None:
            meta[key] = float(sum(w * p.meta[key] for w, p in zip(counts, parts)) / sum(counts))
    vectors = {name: (torch.cat([p.vectors[name] for p in parts]) if name in PER_PROMPT else
                      _weighted_mean(torch.stack([p.vectors[name].double() for p in parts]), weights).float())
               for name in first.vectors}
    return ComponentScores(first.kind, first.method, first.primary, {k: columns[k] for k in first.columns},
                           meta, vectors)


def _weighted_mean(stack: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Per element, the weighted mean over the shards whose value is not NaN (NaN if none)."""
    w = weights.view(-1, *([1] * (stack.dim() - 1))).expand_as(stack)
    present = ~torch.isnan(stack)
    w = torch.where(present, w, torch.zeros_like(w))
    total = w.sum(0)
    value = (torch.where(present, stack, torch.zeros_like(stack)) * w).sum(0) / total
    return torch.where(total > 0, value, torch.full_like(value, float("nan")))


def _pooled_std(means: list[torch.Tensor], stds: list[torch.Tensor], weights: torch.Tensor) -> torch.Tensor:
    """Population std of the union from each shard's mean and population std (Chan et al.)."""
    mean = _weighted_mean(torch.stack(means), weights)
    m2 = sum(n * (s ** 2 + (m - mean) ** 2) for n, m, s in zip(weights.tolist(), means, stds))
    return torch.sqrt(m2 / weights.sum())
