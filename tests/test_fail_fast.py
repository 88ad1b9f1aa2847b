"""Range checks that need only the model's config fail before torch is even imported (a mistyped head
used to be refused after a 5-23 s load)."""

import json
import subprocess
import sys

import pytest

CASES = [
    (["edit", "--zero-heads", "0.99", "--no-verify"], "head 0.99"),
    (["edit", "--zero-neurons", "1.100000"], "neuron"),
    (["attribute", "neurons", "--layers", "99"], "layer 99"),
    (["attribute", "cna", "--ablate-heads", "7.0"], "layer"),
    (["lora", "train", "--layers", "99"], "layer 99"),
]


@pytest.mark.parametrize("argv,says", CASES, ids=[" ".join(c[0][:2]) for c in CASES])
def test_a_config_only_check_fails_without_importing_torch(tiny_dir, argv, says, tmp_path):
    script = ("import sys\nfrom editor.cli import main\n"
              "try:\n    main(sys.argv[1:], prog_name='lmedit')\n"
              "except SystemExit as exc:\n    print(exc.code, 'torch' in sys.modules)\n")
    got = subprocess.run([sys.executable, "-c", script, *argv, "--model", str(tiny_dir)], capture_output=True,
                         text=True, cwd=tmp_path, timeout=120)
    assert got.stdout.split() == ["2", "False"], (got.stdout, got.stderr)
    assert got.stderr.startswith("Error:") and says in got.stderr and len(got.stderr.strip().splitlines()) == 1


def test_the_config_json_reader_agrees_with_transformers(tiny_dir):
    """Sizes read from config.json alone (also GPT-2's own key names) equal those of transformers' config."""
    from transformers import AutoConfig, GPT2Config

    from editor.model.arch import config_dimensions

    assert config_dimensions(json.loads((tiny_dir / "config.json").read_text())) == \
        config_dimensions(AutoConfig.from_pretrained(tiny_dir))
    gpt2 = GPT2Config(n_layer=3, n_head=4, n_embd=32, n_inner=None)
    assert config_dimensions(gpt2.to_dict()) == config_dimensions(gpt2) == (3, 4, 128)
