"""The gender-debias recipe's baselines from the literature, beside its attribution methods: LEACE
and a DAMA-style projection (``debias_projections``) and CDA with a LoRA (``debias_cda``). Each has a
validation grid of settings; a setting, applied, changes the model in place and puts it back, so
the recipe evaluates, tests and saves a baseline as it does an edit plan."""

from __future__ import annotations

from editor.edit.projection import Projection, fold
from editor.errors import UserError
from editor.evaluation.harness import parse_indices
from editor.lora.train import LoraSettings
from editor.model.loading import local_config
from editor.recipes import debias_cda
from editor.recipes.debias_projections import PROJECTION_METHODS, concept_prompts, fit, mlp_outputs, random_like
from editor.tasks import gender

BASELINES: tuple[str, ...] = (*PROJECTION_METHODS, "cda")


def settings(method: str, n_layers: int, select) -> list[dict]:
    """A method's validation grid. Projections: layer sets (default: the middle third, the last
    third, all layers) x ranks (LEACE's is 1 for a binary label). CDA: LoRA steps."""
    if method == "cda":
        return [{"method": "cda", "steps": s} for s in sorted(set(select.cda_steps))]
    sets = select.projection_layers or [[n_layers // 3, 2 * n_layers // 3 - 1], [2 * n_layers // 3, n_layers - 1],
                                        [0, n_layers - 1]]
    return [{"method": method, "layers": list(s), "rank": r}
            for s in sets for r in ([1] if method == "leace" else sorted(set(select.dama_ranks)))]


def label(setting: dict) -> str:
    if setting["method"] == "cda":
        return f"cda_s{setting['steps']}"
    first, last = setting["layers"]
    return f"{setting['method']}_L{first}-{last}_r{setting['rank']}"


def size(setting: dict) -> int:
    """What a setting spends, for ties between settings: directions removed, or training steps."""
    if setting["method"] == "cda":
        return setting["steps"]
    return setting["rank"] * (setting["layers"][1] - setting["layers"][0] + 1)


class Baselines:
    """A run's baseline grid, and what applies each setting (projections are fitted on first use:
    a run whose baseline steps are all cached never collects MLP outputs)."""

    def __init__(self, run, select, templates: str, occupations: list, batch_size: int, seed: int, lora: dict):
        self.run, self.select, self.batch_size, self.seed, self.lora = run, select, batch_size, seed, lora
        self.templates = parse_indices(templates, len(gender.TEMPLATES))
        self.occupations = [tuple(o) for o in occupations]
        self._outputs, self._fits = None, {}
        self.grid: list[dict] = []
        if select.baselines:
            config = local_config(run.recipe["model"])  # the grid names the plan's steps: no load for it
            n = config.num_hidden_layers if config is not None else run.model.arch.n_layers
            for m in select.baselines:
                self.grid += settings(m, n, select)

    def setting(self, name: str) -> dict:
        return next(v for v in self.grid if label(v) == name)

    def fitted(self, setting: dict) -> list[Projection]:
        key = label(setting)
        if key not in self._fits:
            lm = self.run.model
            first, last = setting["layers"]
            if last >= lm.arch.n_layers:
                raise UserError(f"select.projection_layers: [{first}, {last}] is past the model's last layer "
                                f"({lm.arch.n_layers - 1})")
            if self._outputs is None:
                prompts, labels = concept_prompts(self.templates, self.occupations)
                outputs = mlp_outputs(lm.model, lm.tokenizer, prompts, list(range(lm.arch.n_layers)), self.batch_size)
                self._outputs = (outputs, labels)
            self._fits[key] = fit(setting["method"], *self._outputs, list(range(first, last + 1)), setting["rank"])
        return self._fits[key]

    def modifier(self, setting: dict, control_seed: int | None = None):
        """``model -> context manager`` applying the setting (or, with ``control_seed``, its control:
        random directions in the same layers; CDA's LoRA on the rows without counterfactuals)."""
        if setting["method"] == "cda":
            def cda(model):
                lm = self.run.model
                seed = self.seed if control_seed is None else control_seed
                lora = LoraSettings(layers=list(range(lm.arch.n_layers)), steps=setting["steps"], seed=seed,
                                    **self.lora)
                rows = debias_cda.training_rows(self.templates, self.occupations, control_seed is None, self.seed)
                return debias_cda.merged_lora(model, lm.tokenizer, lora, rows)
            return cda
        if control_seed is None:
            return lambda model: fold(model, self.fitted(setting))
        return lambda model: fold(model, random_like(self.fitted(setting), control_seed))

    def describe(self, setting: dict) -> list[dict]:
        """What the checkpoint's manifest records of a chosen setting."""
        if setting["method"] == "cda":
            return [{"method": "cda", "steps": setting["steps"], "lora": self.lora,
                     "merged": "a LoRA trained on counterfactually augmented rows, merged into the weights"}]
        first, last = setting["layers"]  # from the setting: describing a pick must not refit it
        return [{"layer": l, "site": "MLP output", "rank": setting["rank"], "affine": setting["method"] == "leace",
                 "method": setting["method"]} for l in range(first, last + 1)]
