"""Reading completions in workers (`grading.reading`) and the grade stage built on it: the same columns, row for
row, as reading each completion on its own with `dissect` and `extract_answer` — whatever the chunking, the
workers, the think mode, and characters that take more than one byte before the sliced parts."""

import json
import random
from pathlib import Path

import polars as pl
import pytest

from tracefactory.config import DEFAULT_ANSWER_FORMATS, GradeConfig
from tracefactory.grading.answers import extract_answer
from tracefactory.grading.reading import read_chunk, read_completions
from tracefactory.grading.think import R1_OPENER, ThinkSpec, dissect, spans, split_tokens
from tracefactory.grading.verify import is_correct
from tracefactory.stages.grade import grade
from tracefactory.store.schema import (
    ANSWER,
    CORRECT,
    COT,
    COT_TOKENS,
    DROP_REASON,
    FINISH_REASON,
    PRED_ANSWER,
    PROBLEM_ID,
    REASONING,
    REASONING_COMPLETE,
    REASONING_TOKENS,
    RESPONSE,
    RESPONSE_TOKENS,
    TEXT,
    THINK_CLOSED,
)

ATOMS = [
    "<think>",
    "</think>",
    " ",
    "\n",
    "\t",
    "é",
    "🙂",
    "\u2003",
    "so we get 12. ",
    "The answer is 5. ",
    "\\boxed{3}",
    "\\boxed{\\frac{1}{2}}",
    "#### 7\n",
    "# Answer\n\n12\n",
    "**Answer:** 0.5",
]
SPECS = [ThinkSpec(), ThinkSpec("on", R1_OPENER), ThinkSpec("auto", R1_OPENER), ThinkSpec("off")]


def _rollouts(n: int = 400, seed: int = 0) -> tuple[pl.DataFrame, pl.DataFrame]:
    rng = random.Random(seed)
    texts = ["".join(rng.choice(ATOMS) for _ in range(rng.randint(0, 10))) for _ in range(n)]
    rows = {
        PROBLEM_ID: [f"p{i % 40}" for i in range(n)],
        TEXT: texts,
        FINISH_REASON: [rng.choice(["stop", "stop", "stop", "length"]) for _ in range(n)],
        COT_TOKENS: [len(t) // 3 for t in texts],
        REASONING_TOKENS: [rng.choice([None, 2]) for _ in range(n)],
    }
    golds = ["5", "3", "\\frac{1}{2}", "7", "12", "0.5", None, "9"]
    problems = pl.DataFrame({PROBLEM_ID: [f"p{i}" for i in range(40)], ANSWER: [golds[i % 8] for i in range(40)]})
    return pl.DataFrame(rows, schema_overrides={REASONING_TOKENS: pl.Int64}), problems


@pytest.mark.parametrize("think", SPECS)
def test_reading_in_workers_equals_reading_here(think):
    rollouts, _ = _rollouts()
    here = read_chunk(rollouts, think, DEFAULT_ANSWER_FORMATS)
    there = read_completions(rollouts, think, DEFAULT_ANSWER_FORMATS, workers=2, chunk_rows=37, min_parallel_rows=0)
    assert there.equals(here)


@pytest.mark.parametrize("think", SPECS)
def test_the_grade_stage_equals_reading_each_completion_alone(think):
    rollouts, problems = _rollouts(seed=1)
    out, report = grade(rollouts, GradeConfig(workers=0), problems, think)
    golds = dict(problems.iter_rows())
    expected = []
    for pid, text, finish, n, counted in rollouts.iter_rows():
        a = dissect(text, think.opener, think.mode)
        pred = extract_answer(a.response)
        gold = golds[pid]
        if finish == "length":
            ok, why = False, "truncated"
        elif a.problem:
            ok, why = False, a.problem
        elif gold is None:
            ok, why = False, "no_gold"
        else:
            ok, why = is_correct(gold, pred)
            why = None if ok else why
        r, s = split_tokens(n, text, a, counted)
        complete = None if a.closed is None else a.closed and finish == "stop"
        expected.append((a.cot, a.reasoning, a.response, a.closed, complete, r, s, pred, ok, why))
    cols = [COT, REASONING, RESPONSE, THINK_CLOSED, REASONING_COMPLETE, REASONING_TOKENS, RESPONSE_TOKENS]
    assert out.select(*cols, PRED_ANSWER, CORRECT, DROP_REASON).rows() == expected
    assert out.select(rollouts.columns).drop(REASONING_TOKENS).equals(rollouts.drop(REASONING_TOKENS))
    # the corpus reaches every verdict
    assert {"truncated", "no_gold", "wrong_answer", "no_answer"} <= set(report.dropped_by_reason)
    assert out[CORRECT].sum() > 0
    if think.mode != "off":
        assert {"think_unclosed", "think_malformed"} <= set(report.dropped_by_reason)


def test_grading_in_workers_equals_grading_here():
    rollouts, problems = _rollouts(n=3000, seed=2)
    here, _ = grade(rollouts, GradeConfig(workers=0), problems, SPECS[1])
    import tracefactory.grading.reading as reading

    old = reading.MIN_PARALLEL_ROWS, reading.CHUNK_ROWS
    try:
        reading.MIN_PARALLEL_ROWS, reading.CHUNK_ROWS = 0, 500
        there, _ = grade(rollouts, GradeConfig(workers=2), problems, SPECS[1])
    finally:
        reading.MIN_PARALLEL_ROWS, reading.CHUNK_ROWS = old
    assert there.equals(here)


def test_completions_of_an_unknown_problem_are_refused():
    rollouts, problems = _rollouts(n=50)
    with pytest.raises(KeyError, match="p3"):
        grade(rollouts, GradeConfig(workers=0), problems.filter(pl.col(PROBLEM_ID) != "p3"))


def _real_solutions() -> list[str]:
    """Solutions as people and models write them: MATH-500's (boxed), GSM8K's (####) and PRM800K's model-written
    steps (`# Answer`), as the project ships them."""
    root = Path(__file__).resolve().parents[2] / "data"
    out = [json.loads(line)["solution"] for line in (root / "math" / "math500.jsonl").open()]
    out += [json.loads(line)["answer"] for line in (root / "gsm8k" / "train_sample_2000.jsonl").open()]
    out += [
        "\n\n".join(json.loads(line)["steps"]) for line in (root / "prm800k" / "phase1_test_labeled_2000.jsonl").open()
    ]
    return out


# markers in other cases, and characters whose lower case is (or is not) an ASCII letter: Kelvin sign -> "k", dotted
# capital I -> "i" + a combining dot, long s (lower case already: no "s")
EDGES = [
    "FINAL ANSWER: The final answer is 4",
    "The ANSWER is 8. ",
    "ANSWER: 9",
    "\\BOXED{1}",
    "**ANSWER:** 2",
    "Fİnal Answer: The final answer is 6",
    "The anſwer is 3. ",
    "\u212a",
    "İ",
    "## answer\n\n10\n",
    "<THINK>",
    "</Think>",
    # a marker that starts 40 characters before its keyword: as far back as extraction looks
    "The" + " " * 37 + "answer is 11. ",
    "#" + " " * 39 + "answer\n\n13\n",
]


@pytest.mark.parametrize("think", SPECS)
@pytest.mark.parametrize(
    "formats", [DEFAULT_ANSWER_FORMATS, (*DEFAULT_ANSWER_FORMATS, "last_number"), ("answer_is",), ("last_number",)]
)
def test_skipping_what_a_text_lacks_changes_no_reading(formats, think):
    """The keywords and think tags found absent for a whole chunk at once skip searches: the same anatomy and answers
    as each text read alone with every search made."""
    rng = random.Random(2)
    texts = _real_solutions()
    texts += EDGES + ["".join(rng.choice(ATOMS + EDGES) for _ in range(rng.randint(0, 8))) for _ in range(3000)]
    chunk = pl.DataFrame({TEXT: texts, COT_TOKENS: [len(t) // 4 for t in texts]})
    read = read_chunk(chunk, think, formats)
    expected = []
    for text in texts:
        s = spans(text, think.opener, think.mode)
        expected.append((s.response[0], s.response[1] - s.response[0], s.closed, s.problem, s.restored))
        answer = text[s.response[0] : s.response[1]] if s.response[1] - s.response[0] < len(text) else text
        expected[-1] += (extract_answer(answer, formats),)
    columns = ["_read_response_at", "_read_response_len", "_read_closed", "_read_problem", "_read_restored"]
    assert read.select(*columns, "_read_answer").rows() == expected
    # the corpus has texts with each marker and without, with think tags (any case) and without (read as a block
    # where the template opens one: then most have no answer)
    answers = [row[-1] for row in expected]
    assert sum(a is not None for a in answers) > (1000 if think.mode != "on" and not think.opener else 100)
    assert sum(a is None for a in answers) > 100
    if think.mode == "auto" and not think.opener:
        assert 100 < sum(row[2] is not None for row in expected) < len(texts) - 1000
