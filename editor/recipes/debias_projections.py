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
from editor.errors import UserError
from editor.model.loading import local_config
from editor.evaluation.harness import parse_indices
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


class Projections:
    """A recipe's projection baselines: their validation grid, and their fits, made on first use (a
    run whose validation steps are all cached never collects the MLP outputs)."""

    def __init__(self, run, select, templates: str, occupations: list, batch_size: int):
        self.run, self.templates, self.occupations, self.batch_size = run, templates, occupations, batch_size
        self._outputs, self._fits = None, {}
        self.grid: list[dict] = []
        if select.baselines:
            config = local_config(run.recipe["model"])  # the grid names the plan's steps: no load for it
            n = config.num_hidden_layers if config is not None else run.model.arch.n_layers
            for m in select.baselines:
                self.grid += settings(m, n, select.projection_layers, select.dama_ranks)

    @staticmethod
    def width(setting: dict) -> int:
        return setting["layers"][1] - setting["layers"][0] + 1

    def fitted(self, setting: dict) -> list[Projection]:
        key = label(setting)
        if key not in self._fits:
            lm = self.run.model
            first, last = setting["layers"]
            if last >= lm.arch.n_layers:
                raise UserError(f"select.projection_layers: [{first}, {last}] is past the model's last layer "
                                f"({lm.arch.n_layers - 1})")
            if self._outputs is None:
                templates = parse_indices(self.templates, len(gender.TEMPLATES))
                prompts, labels = concept_prompts(templates, [tuple(o) for o in self.occupations])
                outputs = mlp_outputs(lm.model, lm.tokenizer, prompts, list(range(lm.arch.n_layers)), self.batch_size)
                self._outputs = (outputs, labels)
            self._fits[key] = fit(setting["method"], *self._outputs, list(range(first, last + 1)), setting["rank"])
        return self._fits[key]


def settings(method: str, n_layers: int, layer_sets: list[list[int]] | None, ranks: list[int]) -> list[dict]:
    """The validation grid of a projection method: layer sets (default: the middle third, the last
    third, all layers) x ranks (LEACE's rank is 1 for a binary label)."""
    sets = layer_sets or [[n_layers // 3, 2 * n_layers // 3 - 1], [2 * n_layers // 3, n_layers - 1], [0, n_layers - 1]]
    return [{"method": method, "layers": list(s), "rank": r}
            for s in sets for r in ([1] if method == "leace" else sorted(set(ranks)))]


def label(setting: dict) -> str:
    first, last = setting["layers"]
    return f"{setting['method']}_L{first}-{last}_r{setting['rank']}"

