"""``report.html``: one self-contained page (inline PNG images, no network) per recipe run."""

from __future__ import annotations

import base64
import html
from pathlib import Path

from editor.evaluation.results import Comparison, Evaluation
from editor.events import artifact
from editor.io import write_text_atomic

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 1em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; }
th { background: #f2f2f2; }
td.sig { font-weight: bold; }
figure { margin: 1em 0; } figcaption { font-size: 0.85em; color: #555; }
img { max-width: 100%; border: 1px solid #eee; }
code { background: #f6f6f6; padding: 0 0.2em; }
"""

# Lets a headless browser confirm that every image decoded and every table has a size.
_CHECK = """
window.addEventListener('load', function () {
  var imgs = document.images, ok = 0;
  for (var i = 0; i < imgs.length; i++) { if (imgs[i].complete && imgs[i].naturalWidth > 0) ok++; }
  var tables = document.querySelectorAll('table'), shown = 0;
  for (var j = 0; j < tables.length; j++) { if (tables[j].offsetHeight > 0) shown++; }
  document.body.setAttribute('data-images', imgs.length);
  document.body.setAttribute('data-images-ok', ok);
  document.body.setAttribute('data-tables', tables.length);
  document.body.setAttribute('data-tables-shown', shown);
});
"""


def removed_neuron_rows(layers, width: int, kept: list[str]) -> list[dict]:
    """One report row per layer of a keep-only edit: the FFN neurons outside ``kept`` ("L.I" names),
    counted and as index ranges."""
    kept = set(kept)
    rows = []
    for layer in layers:
        gone = [i for i in range(width) if f"{layer}.{i}" not in kept]
        rows.append({"layer": layer, "removed": f"{len(gone)} of {width} FFN neurons: {index_ranges(gone)}"})
    return rows


def index_ranges(indices: list[int]) -> str:
    """0,1,2,5,7,8 -> "0-2 5 7-8" (a removed set of thousands, readable)."""
    out, start = [], None
    for i, x in enumerate(indices):
        if start is None:
            start = x
        if i + 1 == len(indices) or indices[i + 1] != x + 1:
            out.append(str(start) if start == x else f"{start}-{x}")
            start = None
    return " ".join(out)


class Report:
    def __init__(self, title: str):
        self.title = title
        self.parts: list[str] = []
        self.headline_text: str | None = None

    def headline(self, text: str) -> None:
        """What was done and the main result, in one paragraph: first on the page and first in the
        console summary (``lmedit run`` prints it)."""
        self.headline_text = text
        self.parts.insert(0, f"<p class='headline'><strong>{html.escape(text)}</strong></p>")

    def heading(self, text: str, level: int = 2) -> None:
        self.parts.append(f"<h{level}>{html.escape(text)}</h{level}>")

    def paragraph(self, text: str) -> None:
        """A paragraph; the page's first one is its headline unless :meth:`headline` set another."""
        if self.headline_text is None and not self.parts:
            self.headline(text)
            return
        self.parts.append(f"<p>{html.escape(text)}</p>")

    def table(self, rows: list[dict], columns: list[str], bold: str | None = None) -> None:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)
        body = []
        for r in rows:
            cells = []
            for c in columns:
                value = "" if r.get(c) is None else str(r.get(c))
                cls = ' class="sig"' if bold and c == bold and value.endswith("*") else ""
                cells.append(f"<td{cls}>{html.escape(value)}</td>")
            body.append("<tr>" + "".join(cells) + "</tr>")
        self.parts.append(f"<table><tr>{head}</tr>{''.join(body)}</table>")

    def comparison(self, comparison: Comparison) -> None:
        self.table(comparison.rows(), Comparison.COLUMNS, bold="change")

    def evaluations(self, evaluations: dict[str, Evaluation]) -> None:
        """One row per model, one column per task and measure, each cell its value and 95% interval:
        every measured metric for every model (random baselines included) in one table."""
        columns = list(dict.fromkeys(f"{t}: {k}" for e in evaluations.values()
                                     for t, task in e.tasks.items() for k in task.measures))
        rows = [{"model": name, **{f"{t}: {k}": m.cell() for t, task in e.tasks.items() for k, m in task.measures.items()}}
                for name, e in evaluations.items()]
        self.table(rows, ["model", *columns])

    def image(self, png: bytes | Path, caption: str) -> None:
        data = png.read_bytes() if isinstance(png, Path) else png
        encoded = base64.b64encode(data).decode()
        self.parts.append(f'<figure><img alt="{html.escape(caption)}" src="data:image/png;base64,{encoded}">'
                          f"<figcaption>{html.escape(caption)}</figcaption></figure>")

    def render(self) -> str:
        return (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(self.title)}</title>"
                f"<style>{_STYLE}</style></head><body><h1>{html.escape(self.title)}</h1>\n"
                + "\n".join(self.parts) + f"\n<script>{_CHECK}</script></body></html>\n")

    def write(self, path: str | Path) -> Path:
        return write_text_atomic(path, self.render())

    def finish(self, run) -> dict:
        """End with what reproduces ``run`` (command, resolved recipe and its digest, the model and the
        versions), write ``report.html`` in the run directory; returns its path and the headline."""
        import platform

        import torch
        import transformers

        from editor import __version__
        from editor.model import store

        model = run.recipe.get("model", "")
        source = (f"store alias; GGUF sha256 {store.ALIASES[model].gguf_sha256}" if model in store.ALIASES
                  else "a local or hub model (its weight hashes are in the checkpoint manifest, if any)")
        digest = (run.out / "steps" / "recipe.sha256").read_text().strip() if (run.out / "steps" / "recipe.sha256").is_file() else "-"
        self.heading("Reproduce")
        self.paragraph(f"lmedit run {run.out / 'recipe.yaml'} --out NEW_DIR  (the resolved recipe, saved beside this "
                       f"report; rerunning into {run.out} reuses its finished steps)")
        self.table([{"what": "model", "value": f"{model} ({source})"},
                    {"what": "recipe sha256", "value": digest},
                    {"what": "seed", "value": run.recipe.get("seed", "-")},
                    {"what": "lmedit", "value": __version__},
                    {"what": "torch / transformers", "value": f"{torch.__version__} / {transformers.__version__}"},
                    {"what": "python / platform", "value": f"{platform.python_version()} / {platform.machine()}"}],
                   ["what", "value"])
        path = self.write(run.path("report.html"))
        artifact(path, "report")
        return {"report": str(path), "headline": self.headline_text}
