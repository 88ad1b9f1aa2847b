"""Comparative Neuron Analysis: the same neuron importance in two conditions, ranked by the difference.

Conditions (docs/methods.md): (a) the model vs the model with some heads zeroed, (b) prompt set A vs
prompt set B aligned pair by pair ("woman" vs "man"), (c) two models (base vs fine-tuned). Each
neuron gets both importances (mean log-probability increase), both mean coefficients, and
``diff = importance_a - importance_b``. Targets: the gold answer token when every prompt has one,
else each condition's own top-1 prediction.
"""

from __future__ import annotations

from editor.attribution.neurons import neuron_logprob_increase
from editor.attribution.results import ComponentScores
from editor.edit.plan import EditPlan
from editor.edit.weights import intervene
from editor.errors import UserError
from editor.tasks.examples import Example


def cna(model, tokenizer, examples: list[Example], *, examples_b: list[Example] | None = None,
        ablate: EditPlan | None = None, model_b=None, context_b=None, scores_b: ComponentScores | None = None,
        kind: str = "mlp", **score_kwargs) -> ComponentScores:
    """Exactly one of ``examples_b``, ``ablate``, ``model_b``, ``context_b`` or ``scores_b`` defines condition B.

    ``context_b`` makes B the same model inside that context manager factory, e.g. a peft model's
    ``disable_adapter`` (base vs LoRA without a second copy of the weights). ``scores_b`` is condition
    B already scored by :func:`neuron_logprob_increase` (one base model against many adapters).
    """
    given = [x is not None for x in (examples_b, ablate, model_b, context_b, scores_b)]
    if sum(given) != 1:
        raise UserError("CNA needs exactly one second condition: paired prompts, heads to zero, or a second model")
    a = neuron_logprob_increase(model, tokenizer, examples, kind=kind, **score_kwargs)
    if examples_b is not None:
        if len(examples_b) != len(examples):
            raise UserError(f"paired prompt sets differ in size: {len(examples)} vs {len(examples_b)}")
        mode, b = "paired_prompts", neuron_logprob_increase(model, tokenizer, examples_b, kind=kind, **score_kwargs)
    elif ablate is not None:
        mode = "heads_zeroed"
        with intervene(model, ablate):
            b = neuron_logprob_increase(model, tokenizer, examples, kind=kind, **score_kwargs)
    elif scores_b is not None:
        if scores_b.shape != a.shape or scores_b.meta.get("layers") != a.meta.get("layers"):
            raise UserError("precomputed condition B was scored on other layers or another model shape")
        mode, b = "precomputed", scores_b
    elif context_b is not None:
        mode = "same_model_in_context"
        with context_b():
            b = neuron_logprob_increase(model, tokenizer, examples, kind=kind, **score_kwargs)
    else:
        mode, b = "two_models", neuron_logprob_increase(model_b, tokenizer, examples, kind=kind, **score_kwargs)
    return ComponentScores(
        kind=a.kind, method="cna", primary="diff",
        columns={"diff": a.columns["mean"] - b.columns["mean"], "importance_a": a.columns["mean"],
                 "importance_b": b.columns["mean"], "coef_a": a.columns["coef_mean"], "coef_b": b.columns["coef_mean"]},
        meta={"mode": mode, "condition_b": ablate.to_json() if ablate is not None else None,
              "a": a.meta, "b": b.meta},
    )
