"""Gradient attribution (attribution patching): every head, FFN neuron and layer from one backward pass.

The metric is the summed log-probability of each prompt's gold answer tokens under teacher forcing.
For an activation ``a`` with gradient ``g = dMetric/da``, zeroing ``a`` changes the metric by about
``-a . g`` (first order; Nanda 2023, Syed et al. 2023). One forward and one backward pass over a
batch give this estimate for every component at once:

* neuron ``k`` of layer ``l``: ``a`` = its coefficient (input feature ``k`` of the MLP output
  projection) at every position;
* head ``h``: its slice of the attention output projection's input at every position;
* layer ``l``: what the block adds to the residual stream (output minus input).

Each is returned per prompt as the estimated change of the metric when the component is zeroed
(``-a . g`` summed over positions), so callers choose how to aggregate (mean, mean absolute).
It is an estimate: where it matters confirm it by exact ablation (``editor.attribution.heads``).
``finite_difference_check`` ties it to the exact effect of a tiny rescaling in the tests.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from editor.model.capture import model_device
from editor.progress import progress_bar
from editor.errors import UserError
from editor.evaluation.scoring import pad_token_id
from editor.attribution.results import ComponentScores
from editor.model.arch import Arch
from editor.model.capture import token_batch
from editor.tasks.examples import Example, answer_ids, fit_to_tokenizer


@dataclass
class GradientEffects:
    """Estimated metric change when zeroing each component, per prompt: ``[prompts, layers, ...]``."""

    neurons: torch.Tensor  # [N, layers, d_ffn]
    heads: torch.Tensor  # [N, layers, heads]
    layers: torch.Tensor  # [N, layers]
    metric: torch.Tensor  # [N] the metric itself (summed gold log-probability)


def teacher_forced(tokenizer, examples: list[Example]) -> tuple[list[list[int]], list[list[int]]]:
    """Input ids (prompt + all but the last answer token) and the answer ids of each example."""
    rows, answers = [], []
    for ex in fit_to_tokenizer(tokenizer, examples):
        if not ex.answer:
            raise UserError("gradient attribution needs an answer for every prompt")
        ans = answer_ids(tokenizer, ex.prompt, ex.answer)
        rows.append(tokenizer(ex.prompt)["input_ids"] + ans[:-1])
        answers.append(ans)
    return rows, answers


def gold_logprob(model: nn.Module, inputs: dict, answers: list[list[int]]) -> torch.Tensor:
    """``[rows]``: the summed log-probability of each row's answer tokens, which are the row's last
    ``len(answer)`` predictions (:func:`teacher_forced` rows, left-padded); differentiable."""
    keep = max(map(len, answers))
    logp = model(**inputs, use_cache=False, logits_to_keep=keep).logits[:, -keep:].float().log_softmax(-1)
    metric = torch.zeros(len(answers), device=logp.device)
    for i, ans in enumerate(answers):
        metric[i] = logp[i, keep - len(ans):].gather(-1, torch.tensor(ans, device=logp.device)[:, None]).sum()
    return metric


@contextmanager
def gradients_only_for(model: nn.Module, params=()):
    """Only ``params`` require gradients inside (none by default: only activations are
    differentiated, and the weights stay untouched); every flag restored after."""
    wanted = {id(p) for p in params}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(id(p) in wanted)
    try:
        yield
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


class _Recorder:
    """Hooks that keep the activations whose gradients are wanted, for one forward pass."""

    def __init__(self, arch: Arch):
        self.arch = arch
        self.coef: list[torch.Tensor | None] = [None] * arch.n_layers
        self.z: list[torch.Tensor | None] = [None] * arch.n_layers
        self.block_in: list[torch.Tensor | None] = [None] * arch.n_layers
        self.block_out: list[torch.Tensor | None] = [None] * arch.n_layers
        self.handles = []

    def __enter__(self) -> "_Recorder":
        arch = self.arch

        def embed_hook(module, args, output):
            return output.requires_grad_(True)  # activations downstream now carry gradients

        def store(kind: list, layer: int, from_output: bool = False):
            def pre(module, args, kwargs):
                kind[layer] = args[0] if args else next(iter(kwargs.values()))

            def post(module, args, kwargs, output):
                kind[layer] = output[0] if isinstance(output, tuple) else output

            return post if from_output else pre

        self.handles.append(arch.model.get_submodule(arch.spec.embed).register_forward_hook(embed_hook))
        for l in range(arch.n_layers):
            self.handles.append(arch.mlp_out(l).register_forward_pre_hook(store(self.coef, l), with_kwargs=True))
            self.handles.append(arch.attn_out(l).register_forward_pre_hook(store(self.z, l), with_kwargs=True))
            self.handles.append(arch.layers[l].register_forward_pre_hook(
                lambda m, a, k, l=l: self.block_in.__setitem__(l, a[0] if a else k["hidden_states"]), with_kwargs=True))
            self.handles.append(arch.layers[l].register_forward_hook(store(self.block_out, l, True), with_kwargs=True))
        return self

    def __exit__(self, *exc) -> None:
        for h in self.handles:
            h.remove()


def gradient_effects(model: nn.Module, tokenizer, examples: list[Example], batch_size: int = 16,
                     progress: bool = True, contrast: list[Example] | None = None) -> GradientEffects:
    """First-order effect of zeroing every neuron, head and layer on each prompt's gold log-probability.

    With ``contrast`` (one prompt per example, the same length in tokens: "The woman ..." for "The
    man ..."), the effect of PATCHING each component's activation from the contrast prompt instead:
    ``(a_contrast - a) . g`` (attribution patching; zeroing is the special case ``a_contrast = 0``).
    Both runs are teacher-forced on the example's own answer, so positions line up."""
    arch = Arch(model)
    rows, answers = teacher_forced(tokenizer, examples)
    other = _contrast_rows(tokenizer, examples, contrast, rows) if contrast is not None else None
    device, pad = model_device(model), pad_token_id(tokenizer)
    out_n, out_h, out_l, out_m = [], [], [], []
    bar = progress_bar(len(rows), "gradient attribution", "prompt", progress)
    with gradients_only_for(model):
        for start in range(0, len(rows), batch_size):
            chunk_rows, chunk_ans = rows[start:start + batch_size], answers[start:start + batch_size]
            inputs = token_batch(model, chunk_rows, pad, device)
            base = None
            if other is not None:  # the contrast run's activations, same padding, no gradients
                with _Recorder(arch) as base, torch.no_grad():
                    model(**token_batch(model, other[start:start + batch_size], pad, device),
                          use_cache=False, logits_to_keep=1)
            with _Recorder(arch) as rec, torch.enable_grad():
                metric = gold_logprob(model, inputs, chunk_ans)
                acts = rec.coef + rec.z + rec.block_out
                grads = torch.autograd.grad(metric.sum(), acts, allow_unused=True)
            n = arch.n_layers
            g_coef, g_z, g_out = grads[:n], grads[n:2 * n], grads[2 * n:]
            delta = lambda r, l: r.block_out[l] - r.block_in[l]  # noqa: E731  what block l adds
            neurons = torch.stack([_effect(rec.coef[l], g_coef[l], base and base.coef[l]) for l in range(n)], 1)
            heads = torch.stack([_effect(rec.z[l], g_z[l], base and base.z[l])
                                 .view(len(chunk_rows), arch.n_heads, arch.head_dim).sum(-1) for l in range(n)], 1)
            layers = torch.stack([_effect(delta(rec, l), g_out[l], base and delta(base, l)).sum(-1)
                                  for l in range(n)], 1)
            out_n.append(neurons.cpu())
            out_h.append(heads.cpu())
            out_l.append(layers.cpu())
            out_m.append(metric.detach().cpu())
            bar.update(len(chunk_rows))
    bar.close()
    return GradientEffects(torch.cat(out_n), torch.cat(out_h), torch.cat(out_l), torch.cat(out_m))


def _contrast_rows(tokenizer, examples: list[Example], contrast: list[Example], rows: list[list[int]]) -> list[list[int]]:
    """Each contrast prompt followed by its example's answer: the same length as the example's row."""
    if len(contrast) != len(examples):
        raise UserError(f"{len(contrast)} contrast prompts for {len(examples)} prompts; pair them one to one")
    out = []
    for ex, other, row in zip(fit_to_tokenizer(tokenizer, examples), fit_to_tokenizer(tokenizer, contrast), rows):
        ids = tokenizer(other.prompt)["input_ids"]
        ids = ids + row[len(tokenizer(ex.prompt)["input_ids"]):]
        if len(ids) != len(row):
            raise UserError(f"contrast prompt {other.prompt!r} is {len(ids) - len(row):+d} tokens longer than "
                            f"{ex.prompt!r}; patching needs pairs of the same length")
        out.append(ids)
    return out


def _effect(act: torch.Tensor, grad: torch.Tensor | None, patch: torch.Tensor | None = None) -> torch.Tensor:
    """``(patch - a) . g`` summed over positions, ``[batch, features]``; zeroing when ``patch`` is None."""
    if grad is None:
        return torch.zeros(act.shape[0], act.shape[-1])
    change = -act.detach().float() if patch is None else patch.detach().float() - act.detach().float()
    return (change * grad.float()).sum(1)


def weighted_effects(model: nn.Module, tokenizer, examples: list[Example], weights: list[float],
                     batch_size: int = 16, progress: bool = True) -> GradientEffects:
    """First-order effect of zeroing each component on ``sum_i weights[i] * logp(answer_i | prompt_i)``.

    A contrast is such a weighted sum: +1 on "The nurse said that" -> " she" and -1 on the same
    prompt -> " he" measures how much more likely the stereotyped pronoun is. The metric is linear
    in the per-prompt log-probabilities, so its gradient estimate is the same weighted sum of the
    per-prompt estimates (no extra backward pass). Returned tensors have no prompt axis.
    """
    if len(weights) != len(examples):
        raise UserError(f"{len(weights)} weights for {len(examples)} examples")
    per = gradient_effects(model, tokenizer, examples, batch_size, progress)
    w = torch.tensor(weights, dtype=torch.float32)
    return GradientEffects(torch.einsum("n,nlf->lf", w, per.neurons), torch.einsum("n,nlh->lh", w, per.heads),
                           torch.einsum("n,nl->l", w, per.layers), (w * per.metric).sum())


def gradient_scores(model, tokenizer, examples: list[Example], kind: str = "head", batch_size: int = 16,
                    progress: bool = True) -> ComponentScores:
    """Estimated drop of the gold answer's log-probability when each head (or FFN neuron) is zeroed."""
    effects = gradient_effects(model, tokenizer, examples, batch_size, progress)
    per = effects.heads if kind == "head" else effects.neurons
    drop = -per  # [N, L, I]: a positive drop means the component supports the answer
    return ComponentScores(kind=kind, method="gradient", primary="logp_drop_estimate",
                           columns={"logp_drop_estimate": drop.mean(0), "abs_estimate": drop.abs().mean(0)},
                           meta={"prompts": len(examples), "metric": "summed gold log-probability (teacher forced)"})


def top_heads(scores: ComponentScores, k: int, column: str | None = None) -> list[tuple[int, int]]:
    return [(r["layer"], r["index"]) for r in scores.ranked(k, by=column)]
