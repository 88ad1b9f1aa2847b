"""Task generators: deterministic, and their answers right by Python's own arithmetic."""

import hashlib
import operator
import re

import pytest

from editor.errors import UserError
from editor.tasks import arithmetic, gender, icl
from editor.tasks.guard import GUARD_SHA256, guard_text, normalise

OPS = {"+": operator.add, "-": operator.sub, "*": operator.mul, "/": operator.floordiv}


@pytest.mark.parametrize("n,words", [(0, "zero"), (13, "thirteen"), (40, "forty"), (99, "ninety-nine"),
                                     (101, "one hundred one"), (342, "three hundred forty-two"),
                                     (1000, "one thousand"), (998001, "nine hundred ninety-eight thousand one"),
                                     (2_000_305, "two million three hundred five")])
def test_number_words(n, words):
    assert arithmetic.number_words(n) == words


@pytest.mark.parametrize("digits", [1, 2, 3])
@pytest.mark.parametrize("operands", ["numerals", "words"])
def test_arithmetic_answers_are_right(digits, operands):
    examples = arithmetic.generate(n=40, digits=digits, seed=3, operands=operands)
    assert examples == arithmetic.generate(n=40, digits=digits, seed=3, operands=operands)
    assert examples != arithmetic.generate(n=40, digits=digits, seed=4, operands=operands)
    fmt = arithmetic.number_words if operands == "words" else str
    for ex in examples:
        m = ex.meta
        a, b = m["a"], m["b"]
        lo = 0 if digits == 1 else 10 ** (digits - 1)
        assert lo <= a < 10**digits and lo <= b < 10**digits
        if m["op"] == "/":
            assert b != 0 and a % b == 0
        result = OPS[m["op"]](a, b)
        assert ex.answer.strip() == str(result) and result >= 0
        assert ex.prompt == arithmetic.TEMPLATES[m["op"]][m["template"]].format(a=fmt(a), b=fmt(b))
        assert ex.answer.startswith(" ") != ex.prompt.endswith("=")


def test_few_shot_prefixes_are_solved_examples():
    examples = arithmetic.generate(n=16, shots=3, seed=1)
    plain = arithmetic.generate(n=16, shots=0, seed=1)
    for ex, query in zip(examples, plain):
        lines = ex.prompt.split("\n")
        assert len(lines) == 4 and lines[-1] == query.prompt and ex.answer == query.answer
        for line in lines[:-1]:
            if "=" in line:  # "a+b=r": check r with Python
                a, op, b, r = re.fullmatch(r"(\d+)([-+*/])(\d+)=(\d+)", line).groups()
                assert OPS[op](int(a), int(b)) == int(r)
            assert line != query.prompt + query.answer


def test_arithmetic_rejects_bad_settings():
    for kwargs in ({"digits": 4}, {"operands": "roman"}, {"ops": "+%"}, {"shots": -1}):
        with pytest.raises(UserError):
            arithmetic.generate(n=4, **kwargs)


def test_icl_pool_and_prompts():
    pool = icl.load_pool()
    assert len(pool.sentences) >= 200 and len(set(pool.sentences)) == len(pool.sentences)
    assert sorted(pool.classes) == ["negative", "positive"] and min(map(len, pool.by_class())) >= 100
    examples = icl.build(pool, n=20, k=3, seed=5)
    assert examples == icl.build(pool, n=20, k=3, seed=5)
    assert [e.meta["gold"] for e in examples] == [0, 1] * 10
    for e in examples:
        *demos, query = e.prompt.split("\n")
        assert query.endswith(" :") and len(demos) == 6
        labels = [d.rsplit(" : ", 1)[1] for d in demos]
        assert labels.count("foo") == labels.count("bar") == 3
        assert query[:-2] not in [d.rsplit(" : ", 1)[0] for d in demos]
        assert e.meta["last"] == ("foo", "bar").index(labels[-1])
        assert e.answer == f" {('foo', 'bar')[e.meta['gold']]}"
        sentence = query[:-2]
        assert pool.labels[pool.sentences.index(sentence)] == e.meta["gold"]


def test_icl_imbalanced_grouped_and_natural():
    pool = icl.load_pool()
    for e in icl.build(pool, n=10, k=2, setting="imbalanced", order="grouped", seed=1):
        labels = [d.rsplit(" : ", 1)[1] for d in e.prompt.split("\n")[:-1]]
        major = ("foo", "bar")[e.meta["majority"]]
        assert labels.count(major) == 3 and len(labels) == 4
        assert labels == sorted(labels, key=lambda x: x != labels[0])  # grouped by label
    natural = icl.build(pool, n=4, k=1, labels=None)
    assert {e.answer.strip() for e in natural} == set(pool.classes)


def test_icl_local_file_and_errors(tmp_path):
    path = tmp_path / "pool.jsonl"
    path.write_text("".join(f'{{"text": "s{i}", "label": "{"ab"[i % 2]}"}}\n' for i in range(12)))
    pool = icl.load_pool(str(path))
    assert pool.classes == ("a", "b") and len(pool.sentences) == 12
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "x", "label": "a"}\n' * 5)
    with pytest.raises(UserError, match="exactly two labels"):
        icl.load_pool(str(bad))
    with pytest.raises(UserError, match="more than"):
        icl.build(pool, n=2, k=3)


def test_gender_prompts_and_gaps(tmp_path):
    examples = gender.build()
    assert len(examples) == 12 * 2 * 31
    assert examples[0].prompt == "A woman works as a" and examples[0].answer == " cleaner"
    gaps = gender.profession_gaps(["nurse", "nurse", "driver"], ["woman", "woman", "man"], [-1.0, -2.0, -5.0],
                                  [-3.0, -2.0, -4.0])
    assert gaps == {"nurse": ("woman", 1.0), "driver": ("man", 1.0)}
    f = tmp_path / "prof.csv"
    f.write_text("profession,lean\nastronaut,man\ndancer,woman\n")
    assert gender.read_professions(f) == [("astronaut", "man"), ("dancer", "woman")]
    f.write_text("profession,lean\nastronaut,robot\n")
    with pytest.raises(UserError, match="lean"):
        gender.read_professions(f)


def test_guard_text_is_pinned():
    text = guard_text()
    assert hashlib.sha256(text.encode()).hexdigest() == GUARD_SHA256
    assert text.startswith("TERMS AND CONDITIONS") and len(text.split()) > 1000
    # Copies differ in indentation, trailing spaces, double spaces after full stops, blank lines.
    lines = ["   " + line.replace(". ", ".  ") + "  " for line in text.split("\n")]
    spaced = "Apache License\n\n" + "\n".join(lines).replace("\n   \n", "\n\n\n") + "\n\nAPPENDIX"
    assert normalise(spaced) == text


def test_tasks_as_datasets_round_trip():
    from editor.tasks import dataset
    from editor.tasks.examples import from_dataset

    ds = dataset("arithmetic", n=12, digits=2, seed=4, operands="words")
    assert ds.num_rows == 12 and {"prompt", "answer", "op", "a", "b", "result"} <= set(ds.column_names)
    assert from_dataset(ds) == arithmetic.generate(n=12, digits=2, seed=4, operands="words")
    assert all(int(r["answer"]) == OPS[r["op"]](r["a"], r["b"]) for r in ds)
    assert dataset("gender").num_rows == 12 * 2 * 31
    icl_ds = dataset("icl", n=6, k=1, seed=2)
    assert icl_ds.num_rows == 6 and icl_ds[0]["candidates"] == " foo| bar"
    with pytest.raises(UserError, match="unknown task"):
        dataset("poetry")


def test_one_registry_of_builtin_tasks():
    """Every built-in name works as --data, in load_examples and in dataset(); files still load."""
    from editor.tasks import BUILTIN, dataset
    from editor.tasks import gender as gender_task
    from editor.tasks import load_examples

    assert set(BUILTIN) == {"arithmetic", "icl", "gender", "pronoun", "ioi"}
    ioi = load_examples("ioi", n=12, seed=1)
    assert len(ioi) == 12 and len(dataset("ioi", n=5)) == 5
    for e in ioi:  # the corrupt prompt repeats the other name: one word differs, the answers swap
        differ = [(x, y) for x, y in zip(e.prompt.split(), e.meta["corrupt_prompt"].split()) if x != y]
        assert differ == [(e.meta["corrupt_answer"].strip() + ",", e.answer.strip() + ",")] or \
            differ == [(e.meta["corrupt_answer"].strip(), e.answer.strip())]
    full = gender_task.build()
    sample = load_examples("gender", n=10, seed=3)
    assert len(sample) == 10 and all(e in full for e in sample) and sample == load_examples("gender", n=10, seed=3)
    assert load_examples("gender", n=10, seed=4) != sample
    assert load_examples("pronoun", n=5)[0].answer in (" she", " he")
    assert len(dataset("gender")) == len(full)
    assert len(load_examples("icl", n=6)) == 6 and len(load_examples("arithmetic:2", n=7)) == 7
    with pytest.raises(UserError, match="takes no ':' variant"):
        load_examples("gender:2")


def test_answers_glued_to_their_prompt_get_a_note_and_a_delimiter(tmp_path):
    """A file's answers are scored on the tokens of ``prompt + answer``: "isParis" when the file says
    "Paris". That is never silent: a one-line note names it, and --delimiter ' ' puts the space in."""
    from editor.errors import UserError
    from editor.tasks import load_examples

    data = tmp_path / "capitals.jsonl"
    data.write_text('{"prompt": "The capital of France is", "answer": "Paris"}\n'
                    '{"prompt": "The capital of Italy is", "answer": "Rome"}\n'
                    '{"prompt": "The capital of Spain is", "answer": " Madrid"}\n'
                    '{"prompt": "The capital of Peru is "}\n')
    notes = []
    plain = load_examples(str(data), note=notes.append)
    assert [e.answer for e in plain] == ["Paris", "Rome", " Madrid", None]
    assert len(notes) == 1 and "2 of 4 answers" in notes[0] and "isParis" in notes[0] and "--delimiter" in notes[0]
    spaced = load_examples(str(data), delimiter=" ", note=notes.append)
    assert [e.answer for e in spaced] == [" Paris", " Rome", " Madrid", None] and len(notes) == 1
    assert [e.answer for e in load_examples(str(data), delimiter="", note=notes.append)][:2] == ["Paris", "Rome"]
    assert len(notes) == 1  # an explicit empty delimiter: joined as written, on purpose
    with pytest.raises(UserError, match="should be whitespace"):
        load_examples(str(data), delimiter="=>")
    with pytest.raises(UserError, match="for data files"):
        load_examples("arithmetic", delimiter=" ")


def test_the_cli_prints_the_note_and_takes_delimiter(tmp_path, tiny_dir):
    from click.testing import CliRunner

    from editor.cli import main

    data = tmp_path / "capitals.jsonl"
    data.write_text('{"prompt": "The capital of France is", "answer": "Paris"}\n' * 4)
    command = ["attribute", "heads", "--method", "static", "--model", str(tiny_dir), "--data", str(data),
               "--no-specificity", "--out", str(tmp_path / "out")]
    glued = CliRunner().invoke(main, command)
    assert glued.exit_code == 0, glued.output
    assert "4 of 4 answers" in glued.stderr and "--delimiter" in glued.stderr
    spaced = CliRunner().invoke(main, [*command, "--delimiter", " ", "--force"])
    assert spaced.exit_code == 0, spaced.output
    assert "answers" not in spaced.stderr
