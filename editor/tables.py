"""Plain-text and Markdown tables for the terminal and reports."""

from __future__ import annotations


def format_table(rows: list[dict], columns: list[str], right: bool = False) -> str:
    """Columns padded to their widest cell; ``right`` aligns cells right (numbers)."""
    cells = [["" if r.get(c) is None else str(r.get(c)) for c in columns] for r in rows]
    widths = [max([len(c)] + [len(row[i]) for row in cells]) for i, c in enumerate(columns)]
    pad = str.rjust if right else str.ljust
    lines = ["  ".join(pad(c, w) for c, w in zip(columns, widths))]
    lines += ["  ".join(pad(v, w) for v, w in zip(row, widths)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join("" if r.get(c) is None else str(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines)
