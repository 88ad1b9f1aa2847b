"""Gradient rankings, confirmed exactly where they matter, with a specificity column.

``--method gradient``: attribution patching (editor/attribution/gradient.py) scores every head and
neuron from one forward and one backward pass per batch. It is a first-order estimate: a head whose
removal is cushioned or amplified by later layers can be mis-ranked.

``--method auto`` (the default for heads): the gradient estimate for every head, then the exact
ablation scan of the best ``confirm`` candidates only (3x the rows asked for), so the printed top
rows are exact and the scan costs a fraction of the full one. Confirmed rows rank first and carry
``exact = 1``; the others keep their estimate and ``exact = 0``.

Specificity: a head that hurts arithmetic may hurt everything. Each row also gets the drop it causes
on a control task (an unrelated task) and on the guard text (next-token log-likelihood, nats per
token), and ``specificity = task drop - max(control drop, guard drop)`` in the same unit (nats):
positive means it hurts the task more than anything else measured.
"""

from __future__ import annotations

import torch

from editor.attribution.gradient import top_heads
from editor.attribution.results import ComponentScores
from editor.tasks.examples import Example


def auto_head_scores(model, tokenizer, examples: list[Example], top: int = 20, factor: int = 3,
                     batch_size: int = 16, progress: bool = True, scorer=None) -> ComponentScores:
    """Gradient estimate for every head, exact ablation for the ``factor * top`` best of them.
    ``scorer``: where the primitives run (editor/attribution/sharded.py); default: ``model`` here."""
    from editor.attribution.sharded import LocalScorer

    scorer = scorer or LocalScorer(model, tokenizer, batch_size, progress)
    estimate = scorer.gradient(examples, "head")
    candidates = top_heads(estimate, factor * top)
    exact = scorer.scan(examples, heads=candidates)
    confirmed = torch.zeros(estimate.shape)
    for layer, head in candidates:
        confirmed[layer, head] = 1.0
    mask = confirmed.bool()
    logp = torch.where(mask, exact.columns["logp_drop"], estimate.columns["logp_drop_estimate"])
    acc = torch.where(mask, exact.columns["acc_drop"], torch.zeros_like(logp))
    return ComponentScores(
        kind="head", method="auto", primary="logp_drop",
        columns={"logp_drop": logp, "acc_drop": acc, "logp_drop_estimate": estimate.columns["logp_drop_estimate"],
                 "exact": confirmed},
        meta={**exact.meta, "prompts": len(examples), "confirmed": len(candidates),
              "note": "rows with exact=1 were ablated exactly (logp_drop, acc_drop); others are gradient estimates"})


def add_specificity(scores: ComponentScores, model, tokenizer, control: list[Example], guard: list[Example],
                    batch_size: int = 16, progress: bool = True, scorer=None) -> ComponentScores:
    """Add ``control_drop``, ``guard_drop`` and ``specificity`` columns to a head ranking: exact (the
    same ablation scan) on rows marked exact, gradient estimates elsewhere. ``scorer``: as in
    :func:`auto_head_scores`."""
    from editor.attribution.sharded import LocalScorer

    scorer = scorer or LocalScorer(model, tokenizer, batch_size, progress)
    exact_rows = scores.columns.get("exact", torch.zeros(scores.shape)).bool()
    heads = [(int(l), int(h)) for l, h in exact_rows.nonzero().tolist()]
    columns = {}
    for name, examples in (("control_drop", control), ("guard_drop", guard)):
        value = scorer.gradient(examples, "head").columns["logp_drop_estimate"]
        if heads:
            scan = scorer.scan(examples, heads=heads)
            value = torch.where(exact_rows, scan.columns["logp_drop"], value)
        columns[name] = value
    task = scores.columns[scores.primary]
    columns["specificity"] = task - torch.maximum(columns["control_drop"], columns["guard_drop"])
    scores.columns.update(columns)
    scores.meta["specificity"] = ("task drop - max(control drop, guard drop), nats; control: "
                                  f"{len(control)} prompts, guard: {len(guard)} next-token windows")
    return scores
