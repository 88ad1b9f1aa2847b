"""The recipes that ship with lmedit, found by name: ``lmedit run gender-debias`` works from a pip
install as well as from a clone. The YAML files live in the repository's ``recipes/`` folder; the
wheel carries them as the package ``editor.recipes.builtin`` (pyproject's package-dir maps it)."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from pathlib import Path

from editor.errors import UserError


def library_dir() -> Path:
    """Where the packaged recipes are: inside the installed package, else the source checkout's
    ``recipes/`` (an editable install or a clone)."""
    installed = Path(__file__).parent / "builtin"
    if installed.is_dir():
        return installed
    return Path(__file__).resolve().parents[2] / "recipes"


@dataclass(frozen=True)
class Packaged:
    name: str
    path: Path
    summary: str  # the first line of the file's leading comment


def packaged() -> dict[str, Packaged]:
    found = {}
    for path in sorted(library_dir().glob("*.yaml")):
        comment = []
        for line in path.read_text(encoding="utf-8").splitlines():
            if not line.startswith("#"):
                break
            comment.append(line.lstrip("# ").strip())
        found[path.stem] = Packaged(path.stem, path, " ".join(comment).split(". ")[0].rstrip(".") if comment else "")
    return found


def resolve(recipe: str | Path) -> Path:
    """A recipe argument: an existing file, else the packaged recipe of that name."""
    path = Path(recipe)
    if path.is_file():
        return path
    library = packaged()
    name = path.name[:-5] if path.name.endswith(".yaml") else path.name
    if str(recipe) == name and name in library:
        return library[name].path
    closest = difflib.get_close_matches(name, list(library), n=1)
    hint = f" (did you mean {closest[0]!r}?)" if closest else ""
    raise UserError(f"no recipe file {str(recipe)!r} and no packaged recipe of that name{hint}; "
                    f"packaged: {', '.join(library)}")
