"""Does a model pruned for arithmetic still do arithmetic, or only the prompts it was searched on?

The prune report's generalisation table: answer accuracy of the base and the pruned model on whole
prompt formats that no scoring, validation or recovery prompt used (the test queries, in other
phrasings and shot counts), and on neighbouring tasks the search never saw (subtraction, two-digit
sums), each with its 95% Wilson interval and the share of the base's accuracy kept.
"""

from __future__ import annotations

from editor.evaluation.kinds import answer_hits
from editor.evaluation.stats import wilson
from editor.tasks import arithmetic
from editor.tasks.examples import Example

# Neighbouring tasks: (digits, operation), in the spaced template with 4 shots.
NEIGHBOURS = {"subtraction": (1, "-"), "two-digit-sums": (2, "+")}
NEIGHBOUR_FORMAT = (4, 4)


def heldout_sets(data, shares: dict[str, int], seed: int) -> dict[str, list[Example]]:
    """One prompt set per held-out format (on the TEST queries) and per neighbouring task."""
    out = {}
    for template, shots in data.heldout_formats:
        name = "format " + arithmetic.format_name(template, shots)
        out[name] = arithmetic.split_prompts({"test": data.n_heldout}, shares, data.digits, data.ops, seed=seed,
                                             formats=[(template, shots)])["test"]
    for name in data.neighbours:
        digits, op = NEIGHBOURS[name]
        out[name] = arithmetic.split_prompts({"test": data.n_heldout}, {"test": 1}, digits, op, seed=seed,
                                             formats=[NEIGHBOUR_FORMAT])["test"]
    return out


def accuracy(model, tokenizer, sets: dict[str, list[Example]], batch_size: int) -> dict[str, dict]:
    """Answer accuracy with its 95% Wilson interval, per set."""
    out = {}
    for name, rows in sets.items():
        hits = answer_hits(model, tokenizer, rows, batch_size)
        low, high = wilson(sum(hits), len(hits))
        out[name] = {"accuracy": round(sum(hits) / len(hits), 4), "95": [round(low, 4), round(high, 4)],
                     "n": len(hits)}
    return out


def table(base: dict[str, dict], pruned: dict[str, dict], label: str) -> list[dict]:
    rows = []
    for name, b in base.items():
        p = pruned[name]
        rows.append({"set": name, "base": b["accuracy"], "base_95": b["95"], label: p["accuracy"], f"{label}_95": p["95"],
                     "retained": round(p["accuracy"] / b["accuracy"], 3) if b["accuracy"] else None, "n": b["n"]})
    return rows
