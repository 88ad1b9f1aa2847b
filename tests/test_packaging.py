"""lmedit outside this repository: the wheel carries every module, the data and the recipes, and
packaged recipes run by name."""

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from editor.cli import main
from editor.recipes.library import packaged, resolve

ROOT = Path(__file__).resolve().parents[1]


def test_every_code_folder_is_a_listed_package():
    """pyproject lists packages by hand (recipes/ is mapped in); a new folder must not be left out."""
    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {".".join(p.relative_to(ROOT).parts) for p in (ROOT / "editor").rglob("*")
               if p.is_dir() and p.name != "__pycache__" and any(p.iterdir())}
    assert folders | {"editor", "editor.recipes.builtin"} == listed


def test_packaged_recipes_are_the_repository_recipes():
    library = packaged()
    assert set(library) == {p.stem for p in (ROOT / "recipes").glob("*.yaml")}
    assert all(p.summary for p in library.values())
    assert resolve("gender-debias") == library["gender-debias"].path
    assert resolve(str(ROOT / "recipes" / "icl-heads.yaml")) == ROOT / "recipes" / "icl-heads.yaml"


def test_recipes_commands():
    runner = CliRunner()
    listed = runner.invoke(main, ["recipes", "list"])
    assert listed.exit_code == 0 and "gender-debias" in listed.output and "prune" in listed.output
    shown = runner.invoke(main, ["recipes", "show", "icl-heads"])
    assert shown.exit_code == 0 and shown.output == (ROOT / "recipes" / "icl-heads.yaml").read_text()
    bad = runner.invoke(main, ["run", "gender-debis"])
    assert bad.exit_code == 2 and "did you mean 'gender-debias'" in bad.output and "Traceback" not in bad.output


@pytest.mark.slow
def test_the_built_wheel_works_in_a_new_virtual_environment(tmp_path, tiny_dir):
    """Build the wheel, install it into a new venv, and from a folder outside the repository list the
    recipes and run a packaged one by name on a tiny model. The new venv borrows this one's installed
    dependencies (a path file, added after the wheel is in, so pip never sees them as its own) instead
    of installing torch and the rest again (two minutes of the suite); `pip check` then holds the
    wheel's declared requirements against them. Every step runs without PYTHONPATH: a checkout on it
    (with the egg-info the wheel build leaves) would make pip take lmedit as installed already."""
    env = {**os.environ, "TQDM_DISABLE": "1"}
    env.pop("PYTHONPATH", None)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    str(ROOT), "-w", str(wheels)], check=True, cwd=tmp_path)
    wheel = next(wheels.glob("lmedit-*.whl"))
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    subprocess.run([sys.executable, "-m", "pip", "--python", python, "install", "--quiet", "--no-deps", str(wheel)],
                   check=True, timeout=600, env=env)
    import site

    ours = subprocess.run([python, "-c", "import site; print(site.getsitepackages()[0])"], capture_output=True,
                          text=True, check=True, env=env).stdout.strip()
    Path(ours, "borrowed-dependencies.pth").write_text(site.getsitepackages()[0] + "\n")
    checked = subprocess.run([sys.executable, "-m", "pip", "--python", python, "check"], capture_output=True, text=True,
                             env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    lmedit = str(venv / "bin" / "lmedit")
    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import editor; print(editor.__file__)"],
                           capture_output=True, text=True, cwd=elsewhere, env=env, check=True).stdout
    assert str(venv) in where  # the installed copy, not this checkout
    listed = subprocess.run([lmedit, "recipes", "list"], capture_output=True, text=True, cwd=elsewhere, env=env)
    assert listed.returncode == 0 and "gender-debias" in listed.stdout, listed.stderr
    settings = ["model=" + str(tiny_dir), "batch_size=4", "data.n_score=4", "data.n_eval=6", "cut.fractions=[0.25]",
                "cut.random_seeds=[1]", "rescale.fraction=0.25", "rescale.factors=[0.5]"]
    ran = subprocess.run([lmedit, "run", "icl-heads", "--out", "run", *sum((["--set", s] for s in settings), [])],
                         capture_output=True, text=True, cwd=elsewhere, env=env, timeout=600)
    assert ran.returncode == 0, ran.stderr[-2000:]
    assert (elsewhere / "run" / "report.html").is_file()
