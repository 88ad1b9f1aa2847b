import pytest
import torch

import tiny


@pytest.fixture(params=tiny.FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def tokenizer():
    return tiny.char_tokenizer()


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _process_settings_restored():
    """`lmedit --quiet` invoked in-process writes LMEDIT_QUIET and TQDM_DISABLE into os.environ (as it
    must for a real process); no test may leave them, or an events file, to the tests after it."""
    import os

    names = ("LMEDIT_QUIET", "TQDM_DISABLE", "LMEDIT_EVENTS")
    saved = {name: os.environ.get(name) for name in names}
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


PROMPTS = ["12+3=", "The sum of 4 and 5 is", "a b", "Q: What is 7 times 8? A:"]


@pytest.fixture
def batch(tokenizer):
    from editor.model.capture import encode

    return encode(tokenizer, PROMPTS, padding_side="left")


@pytest.fixture
def tiny_dir(tmp_path, tokenizer):
    """A tiny Llama saved as a Hugging Face directory with a tokenizer (for CLI and loading tests)."""
    model = tiny.tiny_model("llama")
    path = tmp_path / "tiny-llama"
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path
