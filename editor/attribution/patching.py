"""Activation patching from counterfactual prompts: which components carry the difference between
a clean prompt and its corrupted twin ("When Mary and John went to the store, John gave a drink to"
vs the same with the names swapped)?

Each pair is run twice, clean and corrupt (the same length in tokens, so positions line up under
the same left padding). One component's activation in the TARGET run is replaced by its value in
the SOURCE run and the metric is read at the last position:

* noising: target = clean, source = corrupt (how much does the clean behaviour depend on it?);
* denoising: target = corrupt, source = clean (how much of it does the component alone restore?).

The metric is the logit difference ``logit(answer) - logit(corrupt_answer)`` at the first answer
token when every pair has a corrupt answer (the IOI convention), else ``log p(answer)``; either, or
accuracy (the answer is the top token; exact patching only: it has no gradient), can be asked for. Each
component gets ``effect`` = patched metric - target metric (mean over pairs) and ``normalised``:
the share of the clean - corrupt gap it destroys (noising) or restores (denoising), so 1 is "all of
it" in both directions and components rank the same way.

Units (the sites a patch replaces): ``heads`` (a head's slice of the attention output projection's
input), ``neurons`` (an FFN neuron's coefficient: one input feature of the MLP output projection),
``attn`` and ``mlp`` (a layer's attention / MLP output), ``resid`` (the residual stream at a
layer's input), ``queries`` and ``keys`` (a head's query, a key/value group's key: its features of
the query / key projection's output, before any rotary embedding); each at every position at once,
or position by position (``positions``: a layers x positions table, counted from the end of the prompt).

Methods: :func:`patch_exact` (one forward per site, batched as the ablation scan is: layers below the
patched one are read from the target run's cache and the sites of one layer run as copies of the
batch), tied by tests to :func:`patch_exact_naive` (a full forward per site). The estimates
(attribution patching, ``auto``) live in :mod:`editor.attribution.patch_estimates`, AtP* in
:mod:`editor.attribution.atpstar`; mean, resample and zero ablation in
:mod:`editor.attribution.ablations`.
"""

from __future__ import annotations

import inspect
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from editor.attribution.ablations import MeanAccumulator, paired, replaced
from editor.attribution.patch_metrics import check_metric, read_metric
from editor.attribution.heads import layer_inputs, resume_at
from editor.attribution.results import ComponentScores
from editor.errors import UserError
from editor.evaluation.scoring import pad_token_id
from editor.model.arch import Arch
from editor.model.capture import model_device, token_batch
from editor.progress import progress_bar
from editor.tasks.examples import Example, answer_ids, fit_to_tokenizer

UNITS = ("heads", "neurons", "attn", "mlp", "resid", "queries", "keys")
KINDS = {"heads": "head", "neurons": "neuron", "attn": "attn", "mlp": "mlp", "resid": "resid", "queries": "query",
         "keys": "key"}
DIRECTIONS = ("noising", "denoising")


@dataclass
class Pairs:
    """Tokenised contrast pairs: clean and corrupt prompt ids (equal lengths), the answer's first token
    and, for the logit difference, the corrupt answer's first token (None: log-probability metric)."""

    clean: list[list[int]]
    corrupt: list[list[int]]
    answer: list[int]
    wrong: list[int] | None
    ablation: str = "corrupt"  # what replaces an activation (editor/attribution/ablations.py)
    means: dict[int, torch.Tensor] | None = None  # the task's mean activations, for ``mean``
    chosen: str | None = None  # one of METRICS; None: the logit difference where it can be read

    @property
    def metric(self) -> str:
        if self.chosen is not None:
            return self.chosen
        return "logit_difference" if self.wrong is not None else "answer_logprob"

    def shortest(self) -> int:
        return min(map(len, self.clean))


def contrast_pairs(tokenizer, examples: list[Example]) -> Pairs:
    """The pairs of a contrast task (``corrupt_prompt`` in every row), checked: equal token lengths,
    and an answer whose first token differs from the corrupt answer's."""
    fitted = fit_to_tokenizer(tokenizer, examples)
    clean, corrupt, answer, wrong = [], [], [], []
    for i, (given, e) in enumerate(zip(examples, fitted), 1):
        meta = e.meta or {}
        if "corrupt_prompt" not in meta:
            raise UserError(f"row {i}: patching needs a 'corrupt_prompt' in every row (a contrast-pair file, "
                            "see docs/tasks.md)")
        if not e.answer:
            raise UserError(f"row {i}: patching needs an 'answer' to read the metric on")
        # Whitespace the answer lent its prompt (a tokenizer that makes it a token of its own) goes to the
        # corrupt prompt too, and comes off the corrupt answer, so the twins stay aligned.
        lent = e.prompt[len(given.prompt):]
        ids, other = tokenizer(e.prompt)["input_ids"], tokenizer(meta["corrupt_prompt"] + lent)["input_ids"]
        if len(ids) != len(other):
            raise UserError(f"row {i}: the corrupt prompt is {len(other) - len(ids):+d} tokens longer than the "
                            "prompt; patching needs pairs of the same length in tokens")
        clean.append(ids)
        corrupt.append(other)
        answer.append(answer_ids(tokenizer, e.prompt, e.answer)[0])
        if "corrupt_answer" in meta:
            wrong_answer = meta["corrupt_answer"]
            wrong_answer = wrong_answer[len(lent):] if lent and wrong_answer.startswith(lent) else wrong_answer
            wrong.append(answer_ids(tokenizer, e.prompt, wrong_answer)[0])
            if wrong[-1] == answer[-1]:
                raise UserError(f"row {i}: the answer and the corrupt answer start with the same token; the logit "
                                "difference needs different first tokens")
    return Pairs(clean, corrupt, answer, wrong if len(wrong) == len(examples) else None)


def prepare(model, tokenizer, examples: list[Example], unit: str, direction: str = "noising",
            ablation: str = "corrupt", seed: int = 0, batch_size: int = 16, metric: str | None = None) -> Pairs:
    """The pairs of a patching run with its ablation (:mod:`editor.attribution.ablations`): resampled
    partners, or the task's mean activations (one pass over the clean prompts) for ``mean``."""
    if ablation in ("mean", "zero") and direction != "noising":
        raise UserError(f"--ablation {ablation} replaces activations of the clean run: it has no denoising direction")
    pairs = contrast_pairs(tokenizer, paired(tokenizer, examples, ablation, seed))
    pairs.ablation, pairs.chosen = ablation, check_metric(metric, examples)
    if ablation == "mean":
        arch, acc = Arch(model), MeanAccumulator(max(map(len, pairs.clean)))
        for target, _, _, _ in _batches(model, tokenizer, pairs, batch_size, "noising"):
            store, _ = _source_run(model, arch, unit, target, False)
            acc.add({l: v.cpu() for l, v in store.items()}, target["attention_mask"].cpu())
        pairs.means = acc.means()
    return pairs


# Where each unit lives: the module whose input (pre) or output (post) a patch replaces, and the
# features of that tensor one site owns.
def _point(arch: Arch, unit: str, layer: int) -> tuple[torch.nn.Module, str]:
    if unit in ("queries", "keys"):
        return arch.layer_module(layer, arch.spec.attn_qkv[0 if unit == "queries" else 1]), "post"
    if unit == "heads":
        return arch.attn_out(layer), "pre"
    if unit == "neurons":
        return arch.mlp_out(layer), "pre"
    if unit == "attn":
        return arch.attn_out(layer), "post"
    if unit == "mlp":
        return arch.mlp_out(layer), "post"
    return arch.layers[layer], "pre"


def _features(arch: Arch, unit: str, index: int | None) -> slice | list[int]:
    """The features of ``unit``'s tensor that site ``index`` owns (None: every site's at once)."""
    if unit in ("queries", "keys"):
        role = "q" if unit == "queries" else "k"
        picked = range(_per_layer(arch, unit)) if index is None else [index]
        return [f for i in picked for f in arch.qk_features(role, i)]
    if index is None:
        return slice(None)
    if unit == "heads":
        return arch.head_slice(index)
    return slice(index, index + 1) if unit == "neurons" else slice(None)


def _per_layer(arch: Arch, unit: str) -> int:
    """How many sites of ``unit`` one layer has (at one position)."""
    return {"heads": arch.n_heads, "neurons": arch.d_ffn(0), "queries": arch.n_heads,
            "keys": arch.n_kv_heads}.get(unit, 1)


def site_features(arch: Arch, unit: str, width: int) -> torch.Tensor:
    """``[sites per layer, features each]``: the feature indices of every site of one layer of
    ``unit``, whose tensor has ``width`` features (what a per-site sum of per-feature terms reads)."""
    per = _per_layer(arch, unit)
    if unit in ("queries", "keys"):
        return torch.tensor([_features(arch, unit, i) for i in range(per)])
    return torch.arange(width).view(per, -1)


def sites(arch: Arch, unit: str, positions: int | None) -> list[tuple[int, int, int | None]]:
    """Every site ``(layer, index, position)`` of ``unit``: position None = every position; with
    ``positions`` = P, one site per position -P..-1 (counted from the end of the prompt)."""
    if unit not in UNITS:
        raise UserError(f"unknown unit {unit!r}; choose from {', '.join(UNITS)}")
    if unit == "resid" and positions is None:
        raise UserError("patching the whole residual stream replays the source run; patch it by position")
    where = [None] if positions is None else list(range(-positions, 0))
    return [(l, i, p) for l in range(arch.n_layers) for i in range(_per_layer(arch, unit)) for p in where]


def _first_key(kwargs: dict) -> str:
    """The activation's name when a module is called with keywords only (decoder layers: hidden_states)."""
    return "hidden_states" if "hidden_states" in kwargs else next(iter(kwargs))


@contextmanager
def _recorded(arch: Arch, unit: str, store: dict[int, torch.Tensor]):
    """Keep ``unit``'s tensor of every layer for one forward pass (in the graph, when it has one)."""
    def keep(layer):
        def pre(module, args, kwargs):
            store[layer] = args[0] if args else kwargs[_first_key(kwargs)]

        def post(module, args, output):
            store[layer] = output[0] if isinstance(output, tuple) else output
        return pre, post

    handles = []
    for layer in range(arch.n_layers):
        module, side = _point(arch, unit, layer)
        pre, post = keep(layer)
        handles.append(module.register_forward_pre_hook(pre, with_kwargs=True) if side == "pre"
                       else module.register_forward_hook(post))
    try:
        yield store
    finally:
        for h in handles:
            h.remove()


@contextmanager
def _patched(arch: Arch, unit: str, layer: int, group: list[tuple[int, int | None]], source: torch.Tensor,
             alpha: float = 1.0):
    """Copy ``i`` of the replicated batch has site ``group[i]`` (index, position) of ``layer`` taken
    from ``source`` (the source run's tensor, ``[batch, positions, features]``); ``alpha`` < 1 moves
    it only that far from the target's value (for the derivative the gradient method estimates)."""
    module, side = _point(arch, unit, layer)
    mask = torch.zeros(len(group), 1, *source.shape[1:], dtype=torch.bool)
    for i, (index, position) in enumerate(group):
        mask[i, 0, slice(None) if position is None else position, _features(arch, unit, index)] = True

    def swap(x):
        r = len(group)
        shaped = x.view(r, source.shape[0], *x.shape[1:])
        src = source.to(x.device, x.dtype).unsqueeze(0)
        new = src if alpha == 1.0 else shaped + alpha * (src - shaped)
        return torch.where(mask.to(x.device), new, shaped).view_as(x)

    def pre(module, args, kwargs):
        if args:
            return (swap(args[0]), *args[1:]), kwargs
        key = _first_key(kwargs)
        return args, {**kwargs, key: swap(kwargs[key])}

    def post(module, args, output):
        if isinstance(output, tuple):
            return (swap(output[0]), *output[1:])
        return swap(output)

    handle = (module.register_forward_pre_hook(pre, with_kwargs=True) if side == "pre"
              else module.register_forward_hook(post))
    try:
        yield
    finally:
        handle.remove()


def _batches(model, tokenizer, pairs: Pairs, batch_size: int, direction: str):
    """(target inputs, source inputs, answer ids, wrong ids or None) per batch, left-padded alike."""
    if direction not in DIRECTIONS:
        raise UserError(f"unknown direction {direction!r}; choose noising or denoising")
    device, pad = model_device(model), pad_token_id(tokenizer)
    target, source = (pairs.clean, pairs.corrupt) if direction == "noising" else (pairs.corrupt, pairs.clean)
    for start in range(0, len(target), batch_size):
        part = slice(start, start + batch_size)
        answer = torch.tensor(pairs.answer[part], device=device)
        wrong = torch.tensor(pairs.wrong[part], device=device) if pairs.wrong is not None else None
        yield (token_batch(model, target[part], pad, device),
               token_batch(model, source[part], pad, device), answer, wrong)


def _last_logits(model, inputs: dict, keep_last: bool) -> torch.Tensor:
    extra = {"logits_to_keep": 1} if keep_last else {}
    return model(**inputs, use_cache=False, **extra).logits[:, -1]


@torch.no_grad()
def _source_run(model, arch: Arch, unit: str, inputs: dict, keep_last: bool,
                pairs: Pairs | None = None) -> tuple[dict, torch.Tensor]:
    """The source run's activations of every layer (as ``pairs``' ablation replaces them) and logits."""
    store: dict[int, torch.Tensor] = {}
    with _recorded(arch, unit, store):
        logits = _last_logits(model, inputs, keep_last)
    return (store if pairs is None else replaced(store, pairs.ablation, pairs.means)), logits


@torch.no_grad()
def patch_exact(model, tokenizer, examples: list[Example], unit: str = "heads", direction: str = "noising",
                positions: int | None = None, batch_size: int = 16, sites_per_pass: int | None = None,
                alpha: float = 1.0, progress: bool = True, only: list[int] | None = None, ablation: str = "corrupt",
                seed: int = 0, metric: str | None = None) -> ComponentScores:
    """Exact activation patching of every site of ``unit`` (see the module docstring); ``only``: the
    indices (into :func:`sites`) to patch, the others left NaN (``patch_auto``'s confirmation)."""
    arch = Arch(model)
    pairs = prepare(model, tokenizer, examples, unit, direction, ablation, seed, batch_size, metric)
    _check_positions(pairs, positions)
    all_sites = sites(arch, unit, positions)
    chosen = set(range(len(all_sites)) if only is None else only)
    by_layer = {l: [(k, i, p) for k, (ll, i, p) in enumerate(all_sites) if ll == l and k in chosen]
                for l in range(arch.n_layers)}
    by_layer = {l: v for l, v in by_layer.items() if v}
    per_pass = sites_per_pass or min(32, max(len(v) for v in by_layer.values()))
    keep_last = "logits_to_keep" in inspect.signature(model.forward).parameters
    target_m, source_m, patched = [], [], []
    bar = progress_bar(len(pairs.answer), f"patching {unit} ({direction})", "pair", progress)
    for target, source, answer, wrong in _batches(model, tokenizer, pairs, batch_size, direction):
        n = answer.shape[0]
        src, src_logits = _source_run(model, arch, unit, source, keep_last, pairs)
        with layer_inputs(arch) as (hidden, is_tuple):
            tgt_logits = _last_logits(model, target, keep_last)
        out = torch.full((n, len(all_sites)), float("nan"), dtype=torch.float64)
        for layer, group_all in by_layer.items():
            for first in range(0, len(group_all), per_pass):
                group = group_all[first:first + per_pass]
                r = len(group)
                rep = {k: v.repeat(r, *([1] * (v.dim() - 1))) for k, v in target.items()}
                with resume_at(arch, layer, hidden[layer].repeat(r, 1, 1), is_tuple[0]), \
                        _patched(arch, unit, layer, [(i, p) for _, i, p in group], src[layer], alpha):
                    logits = _last_logits(model, rep, keep_last)
                got = read_metric(logits, answer.repeat(r), None if wrong is None else wrong.repeat(r), pairs.metric)
                out[:, [k for k, _, _ in group]] = got.view(r, n).T.cpu()
        target_m.append(read_metric(tgt_logits, answer, wrong, pairs.metric).cpu())
        source_m.append(read_metric(src_logits, answer, wrong, pairs.metric).cpu())
        patched.append(out)
        bar.update(n)
    bar.close()
    return _result(arch, unit, direction, positions, "exact", pairs, torch.cat(target_m), torch.cat(source_m),
                   torch.cat(patched) - torch.cat(target_m)[:, None], tokenizer)


@torch.no_grad()
def patch_exact_naive(model, tokenizer, examples: list[Example], unit: str = "heads", direction: str = "noising",
                      positions: int | None = None, batch_size: int = 16, alpha: float = 1.0,
                      ablation: str = "corrupt", seed: int = 0, metric: str | None = None) -> torch.Tensor:
    """Reference: one full forward of the target batch per site; the ``[pairs, sites]`` patched metric."""
    arch = Arch(model)
    pairs = prepare(model, tokenizer, examples, unit, direction, ablation, seed, batch_size, metric)
    rows = []
    for target, source, answer, wrong in _batches(model, tokenizer, pairs, batch_size, direction):
        src, _ = _source_run(model, arch, unit, source, False, pairs)
        got = []
        for layer, index, position in sites(arch, unit, positions):
            with _patched(arch, unit, layer, [(index, position)], src[layer], alpha):
                got.append(read_metric(model(**target, use_cache=False).logits[:, -1], answer, wrong, pairs.metric).cpu())
        rows.append(torch.stack(got, 1))
    return torch.cat(rows)


def _check_positions(pairs: Pairs, positions: int | None) -> None:
    if positions is not None and not 1 <= positions <= pairs.shortest():
        raise UserError(f"--positions {positions}: the shortest prompt has {pairs.shortest()} tokens")


def _result(arch: Arch, unit: str, direction: str, positions: int | None, method: str, pairs: Pairs,
            target: torch.Tensor, source: torch.Tensor, effect: torch.Tensor, tokenizer) -> ComponentScores:
    """``effect``: ``[pairs, sites]`` patched - target metric. ``normalised`` divides the mean effect
    by the clean - corrupt gap (signed so that 1 = the whole gap destroyed or restored)."""
    clean, corrupt = (target, source) if direction == "noising" else (source, target)
    gap = float(clean.mean() - corrupt.mean())
    sign = -1.0 if direction == "noising" else 1.0
    per_layer = effect.shape[1] // arch.n_layers
    shape = (arch.n_layers, per_layer)
    mean = effect.mean(0).view(shape)
    kind = KINDS[unit] + ("_position" if positions else "")
    meta = {"unit": unit, "direction": direction, "metric": pairs.metric, "pairs": len(pairs.answer),
            "ablation": pairs.ablation, "clean_metric": float(clean.mean()), "corrupt_metric": float(corrupt.mean()),
            "gap": gap}
    if pairs.ablation in ("zero", "mean"):  # no counterfactual run: ``normalised`` is the metric's drop
        meta.update(corrupt_metric=None, gap=None, normalised="drop of the metric when the site is ablated")
        normalised = -mean
    else:
        normalised = sign * mean / gap if gap else torch.zeros(shape)
    if positions and unit in ("heads", "queries", "keys"):
        meta["index"] = f"{KINDS[unit]} * positions + (position + positions)"
    if positions:
        ids = pairs.clean[0][-positions:]
        meta["positions"] = [f"{p}:{tokenizer.decode([t])}" for p, t in zip(range(-positions, 0), ids)]
    return ComponentScores(kind=kind, method=f"patch_{method}", primary="normalised",
                           columns={"normalised": normalised,
                                    "effect": mean, "std": effect.std(0, unbiased=False).view(shape)},
                           meta=meta, vectors={"per_pair": effect})
