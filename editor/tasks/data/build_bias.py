"""Rebuild the shipped bias benchmarks (``editor.tasks.shipped``) from their public sources.

    python -m editor.tasks.data.build_bias CROWS_CSV WINOBIAS_DATA_DIR STEREOSET_GENDER_JSON

CROWS_CSV: ``data/crows_pairs_anonymized.csv`` of nyu-mll/crows-pairs; WINOBIAS_DATA_DIR:
``WinoBias/wino/data`` of uclanlp/corefBias; STEREOSET_GENDER_JSON: ``data/stereoset/gender_test.json``
of zjunlp/EditBias (StereoSet's public dev set, intrasentence, gender). BENCHMARKS.md records the
commits and licences.
"""

from __future__ import annotations

import csv
import json
import re
import sys
from pathlib import Path

HERE = Path(__file__).parent


def crows_pairs(path: Path) -> list[dict]:
    """``sent_more`` is the more stereotyping sentence of each pair (for "antistereo" rows it is the
    one that stereotypes the advantaged group); causal LMs are scored on which of the two is likelier."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = [r for r in csv.DictReader(f) if r["bias_type"] == "gender"]
    return [{"stereotype": r["sent_more"], "anti_stereotype": r["sent_less"], "direction": r["stereo_antistereo"],
             "group": f"crows-{r['']}"} for r in rows]


def _wino_sentence(line: str) -> str:
    """"3 [The chief] hired the assistant because [he] needed help." -> the sentence, as written."""
    text = re.sub(r"^\d+\s+", "", line.strip())
    return re.sub(r"\s+", " ", text.replace("[", "").replace("]", "")).strip()


def winobias(folder: Path) -> list[dict]:
    """Pro- and anti-stereotypical files are line-aligned: line i of each is the same sentence with
    the pronoun's gender swapped."""
    out = []
    for kind in (1, 2):
        pro = (folder / f"pro_stereotyped_type{kind}.txt.test").read_text().splitlines()
        anti = (folder / f"anti_stereotyped_type{kind}.txt.test").read_text().splitlines()
        assert len(pro) == len(anti)
        for i, (p, a) in enumerate(zip(pro, anti)):
            out.append({"stereotype": _wino_sentence(p), "anti_stereotype": _wino_sentence(a), "type": kind,
                        "group": f"wino{kind}-{i}"})
    return out


def stereoset(path: Path) -> list[dict]:
    """EditBias's ``gender_test.json`` labels each pair the other way round from StereoSet (its
    "stereotype" is "A mother is mean", its "anti-stereotype" "A mother is caring"; EditBias edits
    toward the anti-stereotype), so the two are swapped back here."""
    rows = json.loads(path.read_text())
    return [{"stereotype": r["data"]["anti-stereotype"]["sentence"], "anti_stereotype": r["data"]["stereotype"]["sentence"],
             "unrelated": r["data"]["unrelated"]["sentence"], "target": r["target"], "context": r["context"],
             "group": f"stereoset-{r['id']}"} for r in rows if r["bias_type"] == "gender"]


def write(name: str, rows: list[dict]) -> None:
    (HERE / name).write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{name}: {len(rows)} rows")


if __name__ == "__main__":
    crows, wino, stereo = map(Path, sys.argv[1:4])
    write("crows-pairs-gender.jsonl", crows_pairs(crows))
    write("winobias.jsonl", winobias(wino))
    write("stereoset-gender.jsonl", stereoset(stereo))
