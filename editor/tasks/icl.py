"""In-context learning: classify sentences from demonstrations written as ``sentence : label``.

The labels are either semantically unrelated (``foo``/``bar``), so the model must learn the mapping
from the demonstrations, or the classes' natural names. Imbalanced demonstration sets measure
majority-label bias and the demonstration order measures recency bias.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from editor.errors import UserError
from editor.tasks.examples import Example

BUILTIN = Path(__file__).parent / "data" / "icl_sentiment.jsonl"
UNRELATED_LABELS = ("foo", "bar")
SETTINGS = ("balanced", "imbalanced")
ORDERS = ("random", "grouped", "alternating")


@dataclass(frozen=True)
class Pool:
    """Labelled sentences of exactly two classes; ``classes[i]`` is the natural name of class i."""

    sentences: list[str]
    labels: list[int]
    classes: tuple[str, str]

    def by_class(self) -> list[list[int]]:
        return [[i for i, y in enumerate(self.labels) if y == c] for c in (0, 1)]


def _pool(records: list[dict], where: str) -> Pool:
    sentences, names = [], []
    for i, rec in enumerate(records):
        text = rec.get("sentence", rec.get("text"))
        if not isinstance(text, str) or not text.strip() or rec.get("label") in (None, ""):
            raise UserError(f"{where}: record {i + 1} needs a 'sentence' (or 'text') and a 'label'")
        sentences.append(" ".join(text.split()))
        names.append(str(rec["label"]))
    classes = tuple(dict.fromkeys(names))
    if len(classes) != 2:
        raise UserError(f"{where}: in-context data needs exactly two labels, found {len(classes)}: {list(classes)[:5]}")
    labels = [classes.index(n) for n in names]
    if min(labels.count(0), labels.count(1)) < 3:
        raise UserError(f"{where}: each label needs at least 3 sentences")
    return Pool(sentences, labels, classes)  # type: ignore[arg-type]


def load_pool(source: str = "builtin") -> Pool:
    """The built-in pool, a local .jsonl/.csv file, or (online) a ``datasets`` dataset name."""
    if source == "builtin":
        path = BUILTIN
    else:
        path = Path(source)
    if path.suffix in (".jsonl", ".csv"):
        from editor.io import read_records

        return _pool(read_records(path, "in-context data file"), str(path))
    try:
        import datasets

        ds = datasets.load_dataset(source, split="train")
    except Exception as exc:  # noqa: BLE001 - any failure here is "we cannot get that dataset"
        raise UserError(f"cannot load in-context dataset {source!r}: {exc}") from None
    names = ds.features["label"].names if hasattr(ds.features.get("label"), "names") else None
    records = [{**r, "label": names[r["label"]] if names else r["label"]} for r in ds]
    return _pool(records, source)


def build(pool: Pool, n: int = 100, k: int = 2, labels: tuple[str, str] | None = UNRELATED_LABELS,
          setting: str = "balanced", order: str = "random", seed: int = 0) -> list[Example]:
    """``n`` queries, half of each class, each after its own demonstrations.

    ``balanced``: ``k`` demonstrations per label. ``imbalanced``: the same 2k demonstrations, all
    but one from a majority label drawn per query. ``order``: shuffled, grouped by label (the
    group that comes last drawn per query), or alternating. ``labels=None`` uses the natural names.
    """
    if setting not in SETTINGS:
        raise UserError(f"icl setting must be one of {', '.join(SETTINGS)}, got {setting!r}")
    if order not in ORDERS:
        raise UserError(f"icl order must be one of {', '.join(ORDERS)}, got {order!r}")
    if k < 1:
        raise UserError("icl k (demonstrations per label) must be >= 1")
    words = tuple(labels) if labels else pool.classes
    if len(words) != 2 or words[0] == words[1]:
        raise UserError(f"icl needs two different labels, got {words}")
    by_class = pool.by_class()
    if 2 * k >= min(len(c) for c in by_class):
        raise UserError(f"icl k={k} needs more than {2 * k} sentences of each label in the pool")
    rng = random.Random(seed)
    queries = [rng.sample(c, len(c)) for c in by_class]
    out = []
    for i in range(n):
        gold = i % 2
        query = queries[gold][(i // 2) % len(queries[gold])]
        majority = rng.randrange(2) if setting == "imbalanced" else -1
        counts = [k, k] if majority < 0 else [1, 1]
        if majority >= 0:
            counts[majority] = 2 * k - 1
        demos = [[(j, c) for j in rng.sample([j for j in by_class[c] if j != query], counts[c])] for c in (0, 1)]
        if order == "random":
            seq = demos[0] + demos[1]
            rng.shuffle(seq)
        elif order == "grouped":
            first = rng.randrange(2)
            seq = demos[first] + demos[1 - first]
        else:
            first = rng.randrange(2)
            a, b = demos[first], demos[1 - first]
            seq = [x for pair in zip(a, b) for x in pair] + a[len(b):] + b[len(a):]
        lines = [f"{pool.sentences[j]} : {words[c]}" for j, c in seq]
        prompt = "\n".join(lines + [f"{pool.sentences[query]} :"])
        meta = {"gold": gold, "candidates": [f" {w}" for w in words], "majority": majority,
                "last": seq[-1][1], "setting": setting, "order": order}
        out.append(Example(prompt, f" {words[gold]}", meta))
    return out


def split_pool(pool: Pool, seed: int) -> tuple[Pool, Pool]:
    """Two halves of the pool, each class split evenly (scoring prompts vs evaluation prompts)."""
    rng = random.Random(seed)
    halves: tuple[list[int], list[int]] = ([], [])
    for members in pool.by_class():
        members = members[:]
        rng.shuffle(members)
        halves[0].extend(members[: len(members) // 2])
        halves[1].extend(members[len(members) // 2:])
    return tuple(Pool([pool.sentences[i] for i in sorted(h)], [pool.labels[i] for i in sorted(h)], pool.classes)
                 for h in halves)  # type: ignore[return-value]
