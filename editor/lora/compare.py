"""What fine-tuning changed: coefficients of the top CNA neurons (LoRA model vs base), tables 9/10
of the CNA paper, and the accuracy of both models."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

from editor.attribution.cna import cna
from editor.evaluation.common import load_metric
from editor.evaluation.results import Measure
from editor.evaluation.scoring import answer_matches, greedy_answers, score_continuations
from editor.io import write_bytes_atomic, write_json_atomic, write_text_atomic
from editor.tables import markdown_table
from editor.tasks.examples import Example, fit_to_tokenizer

TOPS = (10, 20, 30, 50)


@dataclass
class CoefficientShift:
    """Per top neuron: both importances and coefficients; averages over the top N; both accuracies."""

    rows: list[dict]
    averages: list[dict]
    accuracy: dict[str, Measure]
    meta: dict = field(default_factory=dict)

    def to_json(self) -> dict:
        return {"rows": self.rows, "averages": self.averages,
                "accuracy": {k: asdict(m) | {"per_unit": None} for k, m in self.accuracy.items()}, "meta": self.meta}

    def markdown(self) -> str:
        acc = {k: m.cell() for k, m in self.accuracy.items()}
        return (f"# LoRA vs base: coefficients of the top CNA neurons\n\n"
                f"Token accuracy on {self.meta.get('prompts')} prompts: base {acc['base']}, LoRA {acc['lora']}.\n\n"
                f"## Averages over the top N neurons\n\n{markdown_table(self.averages, list(self.averages[0]))}\n\n"
                f"## Top neurons\n\n{markdown_table(self.rows[:20], list(self.rows[0]))}\n")

    def plot(self) -> bytes:
        from editor.plots import bar_plot

        groups = {}
        for a in self.averages:
            groups[f"top {a['top']}: mean"] = [a["relative_increase"]]
            groups[f"top {a['top']}: |mean|"] = [a["magnitude_change"]]
        return bar_plot(groups, "relative change, LoRA vs base", "coefficients of the top CNA neurons")

    def save(self, out: str | Path, stem: str = "lora_compare") -> dict[str, Path]:
        out = Path(out)
        paths = {"json": out / f"{stem}.json", "md": out / f"{stem}.md", "png": out / f"{stem}.png"}
        write_json_atomic(paths["json"], self.to_json())
        write_text_atomic(paths["md"], self.markdown())
        write_bytes_atomic(paths["png"], self.plot())
        return paths


def token_accuracy(model, tokenizer, examples: list[Example], batch_size: int = 32, progress: bool = True) -> Measure:
    """Teacher-forced accuracy over answer tokens (the CNA paper's unit), with a Wilson interval."""
    examples = fit_to_tokenizer(tokenizer, examples)
    scored = score_continuations(model, tokenizer, [e.prompt for e in examples], [e.answer for e in examples],
                                 batch_size, progress=progress, desc="accuracy")
    hits = [ok for s in scored for ok in s.correct]
    r = load_metric("accuracy_interval").compute(predictions=[int(h) for h in hits], references=[1] * len(hits))
    return Measure(r["accuracy"], r["low"], r["high"], r["n"], "answer token", "higher", [float(h) for h in hits])


def exact_match(model, tokenizer, examples: list[Example], batch_size: int = 32, progress: bool = True) -> Measure:
    """Greedy generation gives the whole answer (the harness's exact match), per prompt, with a Wilson
    interval: what a user of the model sees, beside the teacher-forced token accuracy."""
    examples = fit_to_tokenizer(tokenizer, examples)
    max_new = max(len(tokenizer(e.answer, add_special_tokens=False)["input_ids"]) for e in examples) + 1
    greedy = greedy_answers(model, tokenizer, [e.prompt for e in examples], max_new, batch_size, progress=progress,
                            desc="exact match")
    hits = [answer_matches(g, e.answer) for g, e in zip(greedy, examples)]
    r = load_metric("accuracy_interval").compute(predictions=[int(h) for h in hits], references=[1] * len(hits))
    return Measure(r["accuracy"], r["low"], r["high"], r["n"], "prompt", "higher", [float(h) for h in hits])


def _relative(after: float, before: float) -> float:
    return (after - before) / max(abs(before), 1e-6)


def coefficient_shift(base_model, lora_model, tokenizer, examples: list[Example], layers: list[int] | None = None,
                      top: int = 50, batch_size: int = 16, progress: bool = True, base_scores=None,
                      base_accuracy: Measure | None = None) -> CoefficientShift:
    """CNA with condition A = the LoRA model and B = the base: neurons whose importance rose most.

    ``base_model=None``: ``lora_model`` is a peft model and the base is it with the adapter disabled.
    ``base_scores`` / ``base_accuracy``: the base's neuron scores and accuracy on ``examples``,
    computed once when many adapters are compared with one base.
    """
    if base_scores is not None:
        condition_b = {"scores_b": base_scores}
    else:
        condition_b = {"context_b": lora_model.disable_adapter} if base_model is None else {"model_b": base_model}
    scores = cna(lora_model, tokenizer, examples, layers=layers, target="gold", batch_size=batch_size,
                 progress=progress, **condition_b)
    scored_layers = scores.meta["a"]["layers"]
    rows = []
    for name in scores.ranked_names(scored_layers)[:max(top, *TOPS)]:
        layer, index = map(int, name.split("."))
        c = {k: float(v[layer, index]) for k, v in scores.columns.items()}
        rows.append({"neuron": name, "importance_lora": round(c["importance_a"], 6),
                     "importance_base": round(c["importance_b"], 6), "coef_base": round(c["coef_b"], 6),
                     "coef_lora": round(c["coef_a"], 6), "increase": round(c["coef_a"] - c["coef_b"], 6),
                     "relative_increase": round(_relative(c["coef_a"], c["coef_b"]), 6)})
    averages = average_shifts(rows)
    if base_accuracy is None and base_model is None:
        with lora_model.disable_adapter():
            base_accuracy = token_accuracy(lora_model, tokenizer, examples, progress=progress)
    elif base_accuracy is None:
        base_accuracy = token_accuracy(base_model, tokenizer, examples, progress=progress)
    accuracy = {"base": base_accuracy, "lora": token_accuracy(lora_model, tokenizer, examples, progress=progress)}
    return CoefficientShift(rows, averages, accuracy, {"prompts": len(examples), "layers": scored_layers})


def average_shifts(rows: list[dict]) -> list[dict]:
    """Over the top N rows: mean coefficients, mean increase, the relative change of the mean
    coefficient, and of the mean |coefficient| (gated MLP coefficients are signed, so a mean of
    per-neuron ratios would be dominated by neurons whose base coefficient is near zero)."""
    out = []
    for n in TOPS:
        part = rows[:n]
        base, lora = _mean(r["coef_base"] for r in part), _mean(r["coef_lora"] for r in part)
        base_abs, lora_abs = _mean(abs(r["coef_base"]) for r in part), _mean(abs(r["coef_lora"]) for r in part)
        out.append({"top": n, "coef_base": base, "coef_lora": lora, "increase": _mean(r["increase"] for r in part),
                    "relative_increase": round(_relative(lora, base), 6),
                    "magnitude_change": round(_relative(lora_abs, base_abs), 6)})
    return out


def _mean(values) -> float:
    values = list(values)
    return round(sum(values) / len(values), 6) if values else float("nan")
