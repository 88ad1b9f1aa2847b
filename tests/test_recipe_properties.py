"""Property test: any override of any packaged recipe either validates or fails with one UserError
(never another exception), whatever the key path and the YAML value."""

from hypothesis import given, settings
from hypothesis import strategies as st

from editor.errors import UserError
from editor.recipes import load_recipe
from editor.recipes.library import packaged

RECIPES = sorted(packaged())
KEYS = ["model", "seed", "batch_size", "device", "dtype", "name", "out", "data", "data.n_eval", "data.n_score",
        "data.n_test", "data.digits", "prune.retain", "prune.units", "prune.method", "select.ks", "select.factors",
        "select.layers", "split.fractions", "cut.fractions", "rescale.factors", "neurons.layers", "lora.steps",
        "recover.lr", "colour", "data.nope", "a.b.c"]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**15, 10**15), st.floats(allow_nan=True),
                    st.text(max_size=20), st.sampled_from(["[1, 2]", "[5, 3]", "{a: 1}", "[", "'", "0-3", "nan"]))
VALUES = st.one_of(SCALARS.map(lambda v: "" if v is None else str(v)), st.lists(SCALARS, max_size=3).map(str))


@settings(max_examples=300, deadline=None)
@given(recipe=st.sampled_from(RECIPES), key=st.sampled_from(KEYS), value=VALUES)
def test_any_override_validates_or_is_one_user_error(recipe, key, value):
    try:
        load_recipe(recipe, [f"{key}={value}"])
    except UserError:
        pass  # the one allowed failure; anything else (TypeError, KeyError, ...) fails the test
