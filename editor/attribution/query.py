"""Query neurons: lower-layer FFN neurons that activate important value neurons.

For an FFN value neuron v (layer l_v, neuron k_v) its keys are the rows of the MLP input
projections that produce its coefficient, times the gain of the norm the MLP reads: for gated MLPs
the ``gate`` and ``up`` rows (docs/methods.md notes that the reference notebook used the
down-projection column here, a bug), otherwise the ``fc_in`` row. For an attention value neuron
(head h, dimension j) the key is row ``kv(h) * head_dim + j`` of the value projection times the
attention input-norm gain; the value is read at every source position, and like the reference we
score the lower neurons' output at the read position. A lower neuron (l < l_v, k) writes
``m_k f_k`` into the residual at the read position; its query score is

    sum over value neurons v of  score_v * sum over keys of <m_k f_k, key_v>,

averaged over prompts. The norm's per-prompt scale is positive and common to all candidates of a
prompt, so it is left out (as in the reference). Families with fused QKV projections (GPT-2,
GPT-NeoX) have no ``attn_v`` table entry, so their attention value neurons have no keys here.
"""

from __future__ import annotations

import torch

from editor.attribution.common import prompt_batches
from editor.model.capture import model_device
from editor.attribution.readout import norm_weight
from editor.attribution.results import ComponentScores
from editor.errors import UserError
from editor.model.arch import Arch, weight_in_slice, weight_out_rows
from editor.model.capture import capture
from editor.tasks.examples import Example


def value_keys(arch: Arch, layer: int, index: int, kind: str = "neuron") -> torch.Tensor:
    """``[n_keys, d]``: the projection rows that produce value neuron ``layer.index``, times the norm gain."""
    if kind == "neuron":
        gain = norm_weight(arch, arch.mlp_input_norm(layer))
        return torch.stack([weight_out_rows(p)[index].detach().float() * gain for p in arch.mlp_in(layer)])
    if arch.spec.attn_v is None:
        raise UserError(f"{arch.model_type} fuses its Q, K and V projections; query neurons of attention value "
                        "neurons need an attn_v entry in the architecture table")
    head, dim = divmod(index, arch.head_dim)
    kv_head = head // (arch.n_heads // arch.n_kv_heads)
    row = weight_out_rows(arch.layer_module(layer, arch.spec.attn_v))[kv_head * arch.head_dim + dim]
    return (row.detach().float() * norm_weight(arch, arch.layer_module(layer, arch.spec.attn_norm)))[None]


@torch.no_grad()
def query_neurons(model, tokenizer, examples: list[Example], values: ComponentScores, top_values: int = 10,
                  batch_size: int = 16, progress: bool = True) -> ComponentScores:
    """Score every FFN neuron below the top ``top_values`` value neurons of ``values``.

    ``values``: FFN ("neuron") or attention ("attn_neuron") value-neuron scores; ranked by their primary column.
    """
    arch = Arch(model)
    chosen = values.ranked(top_values)
    keys = [(r["layer"], r[values.primary], value_keys(arch, r["layer"], r["index"], values.kind)) for r in chosen]
    # per lower layer: sum_v score_v * sum_keys <f_k, key_v>, for every neuron k of that layer
    weights = torch.zeros(arch.n_layers, arch.d_ffn())
    for layer in range(arch.n_layers):
        F = weight_in_slice(arch.mlp_out(layer), slice(None)).detach().float()  # [d_ffn, d]
        for v_layer, score, K in keys:
            if layer < v_layer:
                weights[layer] += score * (F @ K.T).sum(1)
    total = torch.zeros_like(weights)
    n = 0
    for batch in prompt_batches(tokenizer, examples, batch_size, model_device(model), "query neurons", progress):
        got = capture(model, batch.inputs, what=["neuron_coef"])
        total += (got.neuron_coef.float().cpu() * weights).sum(0)
        n += len(batch.examples)
    return ComponentScores(kind="neuron", method="query", primary="query_score",
                           columns={"query_score": total / n, "key_weight": weights},
                           meta={"value_neurons": [r[values.kind] for r in chosen], "prompts": n})
