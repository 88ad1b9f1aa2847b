"""Build the example tasks from mledoze/countries' countries.json (ODbL-1.0; see examples/README.md).

    python examples/build.py path/to/countries.json

Writes examples/capitals.jsonl (completion) and examples/continents.jsonl (choice), one group per
country, so no country is both tuned on and tested.
"""

import json
import sys
from pathlib import Path

HERE = Path(__file__).parent
CAPITAL_SHOTS = [("France", "Paris"), ("Japan", "Tokyo")]
CONTINENT_SHOTS = [("Kenya", "Africa"), ("Japan", "Asia"), ("Peru", "the Americas")]
CONTINENTS = {"Africa": " Africa", "Americas": " the Americas", "Asia": " Asia", "Europe": " Europe",
              "Oceania": " Oceania"}


def countries(path: str) -> list[dict]:
    data = json.loads(Path(path).read_text())
    return sorted((c for c in data if c.get("unMember") and c.get("capital")), key=lambda c: c["name"]["common"])


def capitals(rows: list[dict]) -> list[dict]:
    shots = {name for name, _ in CAPITAL_SHOTS}
    plain = "".join(f"The capital of {c} is {k}.\n" for c, k in CAPITAL_SHOTS)
    qa = "".join(f"Q: What is the capital of {c}? A: {k}\n" for c, k in CAPITAL_SHOTS)
    out = []
    for c in rows:
        name, capital = c["name"]["common"], c["capital"][0]
        if name in shots:
            continue
        out.append({"prompt": f"{plain}The capital of {name} is", "answer": f" {capital}", "group": name})
        out.append({"prompt": f"{qa}Q: What is the capital of {name}? A:", "answer": f" {capital}", "group": name})
    return out


def continents(rows: list[dict]) -> list[dict]:
    shots = {name for name, _ in CONTINENT_SHOTS}
    plain = "".join(f"{c} is in {k}.\n" for c, k in CONTINENT_SHOTS)
    qa = "".join(f"Q: On which continent is {c}? A: {k}\n" for c, k in CONTINENT_SHOTS)
    choices = list(CONTINENTS.values())
    out = []
    for c in rows:
        name = c["name"]["common"]
        if name in shots:
            continue
        label = choices.index(CONTINENTS[c["region"]])
        out.append({"prompt": f"{plain}{name} is in", "choices": choices, "label": label, "group": name})
        out.append({"prompt": f"{qa}Q: On which continent is {name}? A:", "choices": choices, "label": label,
                    "group": name})
    return out


def main(path: str) -> None:
    rows = countries(path)
    for name, build in (("capitals", capitals), ("continents", continents)):
        (HERE / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in build(rows)))


if __name__ == "__main__":
    main(sys.argv[1])
