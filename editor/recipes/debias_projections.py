"""The gender-debias recipe's projection baselines: LEACE and a DAMA-style nullspace projection.

Both act on the MLP output of a set of layers and are fitted on the choose split's prompts (both
directions), each labelled by the gender its context codes: the subject's in "A woman works as a",
the occupation's lean in "The nurse said that". The representation is the MLP output at the last
prompt token, where the next word is predicted.

* ``leace`` (Belrose et al. 2023, the ``concept-erasure`` package): the least-squares eraser
  x - P(x - mean) after which no linear function of x predicts the label; one direction for a
  binary label, per layer.
* ``dama`` (after Limisiewicz et al. 2024): the ``rank`` directions of the MLP output most
  covariant with the label (partial least squares, deflated one at a time) projected out through
  the origin, ``I - U U^T`` folded into the output projection. DAMA's causal-tracing choice of layers
  and its separate fitting of keys and values are not reproduced: the layer set and the rank are
  chosen on validation as every other method's settings are.

Their random control is the same map with random orthonormal directions in the same layers.
"""

from __future__ import annotations

import torch

from editor.edit.projection import Projection
from editor.model.arch import Arch
from editor.model.capture import encode, model_device, with_position_ids
from editor.tasks import gender

PROJECTION_METHODS: tuple[str, ...] = ("leace", "dama")


def concept_prompts(templates: list[int], occupations: list[tuple[str, str]]) -> tuple[list[str], list[int]]:
    """Unique prompts of both directions and their label (1: the context codes a woman)."""
    prof = gender.build([gender.TEMPLATES[i] for i in templates], occupations)
    pron = gender.build_pronouns([gender.PRONOUN_TEMPLATES[i] for i in templates], occupations)
    labelled: dict[str, int] = {}
    for e in prof:
        labelled[e.prompt] = int(e.meta["gender"] == "woman")
    for e in pron:
        labelled[e.prompt] = int(e.meta["lean"] == "woman")
    return list(labelled), list(labelled.values())


@torch.no_grad()
def mlp_outputs(model, tokenizer, prompts: list[str], layers: list[int], batch_size: int) -> dict[int, torch.Tensor]:
    """Each layer's MLP output at every prompt's last token (left padding: position -1), float32."""
    arch, got = Arch(model), {l: [] for l in layers}
    hooks = [arch.mlp_out(l).register_forward_hook(lambda _m, _i, out, l=l: got[l].append(out[:, -1].float().cpu()))
             for l in layers]
    try:
        for start in range(0, len(prompts), batch_size):
            inputs = encode(tokenizer, prompts[start:start + batch_size], model_device(model), padding_side="left")
            model(**with_position_ids(model, inputs), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return {l: torch.cat(v) for l, v in got.items()}


def fit(method: str, outputs: dict[int, torch.Tensor], labels: list[int], layers: list[int],
        rank: int = 1) -> list[Projection]:
    z = torch.tensor(labels)
    if method == "leace":
        from concept_erasure import LeaceFitter

        out = []
        for l in layers:
            eraser = LeaceFitter.fit(outputs[l].double(), z).eraser
            out.append(Projection(l, eraser.proj_left.float(), eraser.proj_right.T.float(), eraser.bias.float(),
                                  "leace"))
        return out
    return [Projection(l, u, u, None, "dama") for l in layers for u in [pls_directions(outputs[l], z.float(), rank)]]


def pls_directions(x: torch.Tensor, y: torch.Tensor, rank: int) -> torch.Tensor:
    """The first ``rank`` PLS weight vectors of a single response (NIPALS with deflation of x),
    orthonormal, as the columns of a d x rank matrix."""
    x = (x - x.mean(0)).double()
    y = (y - y.mean()).double()
    weights = []
    for _ in range(min(rank, x.shape[0] - 1, x.shape[1])):
        w = x.T @ y
        if w.norm() < 1e-12:
            break
        w = w / w.norm()
        t = x @ w
        loading = x.T @ t / (t @ t)
        x = x - torch.outer(t, loading)
        weights.append(w)
    q, _ = torch.linalg.qr(torch.stack(weights, 1))
    return q.float()


def random_like(projections: list[Projection], seed: int) -> list[Projection]:
    """The same layers and ranks (and LEACE's centring), random orthonormal directions."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for p in projections:
        q, _ = torch.linalg.qr(torch.randn(p.a.shape[0], p.a.shape[1], generator=g))
        out.append(Projection(p.layer, q, q, p.mean, f"random like {p.method}"))
    return out
