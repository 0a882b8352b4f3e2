"""Answer extraction and grading on real outputs, grouped by source (Math-Verify's test style).

- PRM800K (`data/prm800k`, solutions written by a real model, ending `# Answer\\n\\nX`): every row with a final
  answer, through the text path (extract from the whole solution, then grade). Expected = the dataset's verdict,
  except the rows in DATASET_WRONG, where its strict grader is the one that is wrong (each explained).
- MATH-500 and GSM8K test reference solutions: all graded correct against their own golds (text path).
- Hand-picked cases for each marker, and the gold equivalences the README lists (accepted and not).
"""

import json
from pathlib import Path

import pytest

from tracefactory.grading.answers import extract_answer
from tracefactory.grading.verify import grade_pairs, gsm8k_gold, is_correct

DATA = Path(__file__).parents[2] / "data"


def _rows(path):
    return [json.loads(x) for x in path.read_text().splitlines()]


PRM800K = [r for r in _rows(DATA / "prm800k" / "phase1_test_labeled_2000.jsonl") if r["final_answer"] is not None]

_PM = "gold '3 \\pm 2\\sqrt{2}' is the two numbers 3+2√2 and 3-2√2; the solution lists both (1/(2√2+3) = 3-2√2)"
_BASE = "gold '4210_{5}' is the base-5 numeral 4210; the solution writes 4210 (the question asks for base 5)"
_PM19 = "gold '1 \\pm \\sqrt{19}' is 1+√19 and 1-√19, which the solution lists"
# row id -> why the dataset's verdict (False) is wrong and ours (True) is right
DATASET_WRONG = {
    **dict.fromkeys(["p1test-r016-chosen"] + [f"p1test-r016-row{n:04d}" for n in (809, 810, 811, 821, 823, 825)], _PM),
    **dict.fromkeys(["p1test-r026-chosen", "p1test-r026-row1234", "p1test-r026-row1235", "p1test-r026-row1236"], _BASE),
    **dict.fromkeys(["p1test-r044-chosen", "p1test-r044-row2419", "p1test-r044-row2421"], _PM19),
    "p1test-r070-row3836": "(2,+∞) is the interval (2,∞)",
}


def _expected(row) -> bool:
    return True if row["id"] in DATASET_WRONG else row["is_correct"]


def test_prm800k_text_path_extracts_every_final_answer_and_agrees_with_the_dataset_but_for_its_own_errors():
    preds = [extract_answer("\n".join(r["steps"])) for r in PRM800K]
    assert len(PRM800K) == 207 and all(p is not None for p in preds)
    verdicts = grade_pairs([(r["gold_answer"], p) for r, p in zip(PRM800K, preds, strict=True)])
    ours = [verdicts[(r["gold_answer"], p)][0] for r, p in zip(PRM800K, preds, strict=True)]
    wrong = [
        (r["id"], r["gold_answer"], p) for r, p, ok in zip(PRM800K, preds, ours, strict=True) if ok != _expected(r)
    ]
    assert wrong == []
    disagree_with_dataset = sum(ok != r["is_correct"] for r, ok in zip(PRM800K, ours, strict=True))
    assert disagree_with_dataset == len(DATASET_WRONG) == 15  # 192/207 agree; the other 15 are the dataset's errors
    # the text path finds what the dataset says the final answer is
    same = sum(p == r["final_answer"] for r, p in zip(PRM800K, preds, strict=True))
    assert same >= 200


@pytest.mark.parametrize(
    "name, rows",
    [
        ("math500", [(r["answer"], r["solution"]) for r in _rows(DATA / "math" / "math500.jsonl")]),
        ("gsm8k-test", [(gsm8k_gold(r["answer"]), r["answer"]) for r in _rows(DATA / "gsm8k" / "test.jsonl")]),
    ],
)
def test_reference_solutions_grade_correct_against_their_own_golds(name, rows):
    pairs = [(gold, extract_answer(text)) for gold, text in rows]
    verdicts = grade_pairs(pairs)
    assert [(g, p) for g, p in pairs if not verdicts[(g, p)][0]] == []


MARKERS = [
    # (model output, extracted answer)
    ("so x = 3.\n\n# Answer\n\n3", "3"),  # PRM800K / MATH
    ("# Answer\n\n\\frac{1}{2}\n", "\\frac{1}{2}"),
    ("Final Answer: The final answer is $10,455$. I hope it is correct.", "10,455"),  # Minerva style
    ("... = \\boxed{255} on Monday ... Final Answer: The final answer is $10,455$. I hope it is correct.",
     "10,455"),  # a later marker beats an earlier boxed intermediate
    ("Thus the pairs are \\boxed{(2, 2)} and \\boxed{(6, 2)}.", "(2, 2), (6, 2)"),  # every box of the final statement
    ("x = \\boxed{1}, \\boxed{-3}", "1, -3"),
    ("First \\boxed{2}.\n\nAfter checking, it is \\boxed{3}.", "3"),  # another statement: last box only
    ("Janet makes 9 * 2 = $18.\n#### 18", "18"),  # GSM8K
    ("So the answer is 42.", "42"),
    ("The answer is $\\boxed{5}$.", "5"),  # the box inside the phrase
    ("**Answer:** 7", "7"),
    ("**Final Answer:** $x = 4$", "x = 4"),
    ("Answer: 12", "12"),
    ("So $17^{-1} \\equiv \\boxed{44}$.\n\nWe may check our answer: $17 \\cdot 44 = 748$, so our answer is correct.",
     "44"),  # checking "our answer" is not a marker
    ("12 + 7 = 19\n19 - 5 = 14", None),  # a trailing number is not an answer by default
]  # fmt: skip


@pytest.mark.parametrize("text, expected", MARKERS)
def test_markers(text, expected):
    assert extract_answer(text) == expected


def test_answer_formats_choose_the_markers_and_last_number_is_opt_in():
    text = "\\boxed{3}\n#### 4"
    assert extract_answer(text) == "4"
    assert extract_answer(text, ("boxed",)) == "3"
    assert extract_answer("12 + 7 = 19\n19 - 5 = 14", ("boxed", "last_number")) == "14"


GOLDS = [
    # (gold as a dataset holds it, answer, accepted) — the README lists these
    ("5\\text{ cm}", "5", True),  # units in \text{}
    ("30^\\circ", "30", True),  # degrees
    ("4210_{5}", "4210", True),  # a base subscript: the same numeral
    ("1011_2", "11", False),  # ... but not its value in another base
    ("1 \\pm \\sqrt{19}", "1 + \\sqrt{19}, 1 - \\sqrt{19}", True),  # ± is both
    ("1 \\pm \\sqrt{19}", "1 + \\sqrt{19}", False),  # ... not one of them
    ("\\{1,2,3\\}", "\\{3,2,1\\}", True),  # sets in any order
    ("(2,\\infty)", "(2,+\\infty)", True),  # intervals
    ("[1,2)", "[1,2]", False),  # ... with their ends
    ("(2,\\infty)", "x>2", False),  # an inequality is not an interval
    ("10455", "10,455", True),  # thousands separators
    ("\\$18.50", "18.5", True),  # money
    ("50\\%", "0.5", True),  # percent
    ("\\text{(C)}", "C", True),  # a multiple-choice letter
    ("\\frac{1}{2}", "0.5", True),
]


@pytest.mark.parametrize("gold, answer, accepted", GOLDS)
def test_gold_equivalences(gold, answer, accepted):
    assert is_correct(gold, answer)[0] is accepted


FAST = [
    # (gold, answer, what the fast path says without Math-Verify: a verdict, or None = ask Math-Verify)
    ("1250", "1,250", True),
    ("14", "15", False),
    ("\\frac{3}{4}", "0.75", True),
    ("-\\dfrac{1}{2}", "-0.5", True),
    ("x+1", "x+1", True),  # the same text
    ("1000000", "1000001", False),  # integers: compared exactly, however close
    ("-12", "-012", True),
    ("123456789012345678901", "123456789012345678902", False),  # past a float's precision
    ("1000000.5", "1000000.6", None),  # close decimals: Math-Verify's rounding decides
    ("1,000,000", "1000001", None),  # a grouped integer: only by the margin
    ("2", "x", None),
    ("12,34", "1234", None),  # not a thousands separator
]


@pytest.mark.parametrize("gold, answer, fast", FAST)
def test_the_fast_path_decides_only_what_math_verify_would_and_agrees_with_it(gold, answer, fast):
    from tracefactory.grading.verify import fast_verdict

    got = fast_verdict(gold, answer)
    assert (None if got is None else got[0]) == fast
    if got is not None:
        assert got == is_correct(gold, answer)


def test_near_miss_integers_are_judged_as_math_verify_judges_them():
    """The fast path judges two plain integers exactly however close they are: Math-Verify does too (checked here on
    arithmetic slips of 1 to 30 digits, signed, with leading zeros)."""
    import random

    from tracefactory.grading.verify import fast_verdict

    rng = random.Random(0)
    pairs = []
    for digits in range(1, 31):
        for _ in range(4):
            a = rng.randrange(10 ** (digits - 1), 10**digits)
            b = a + rng.choice([1, -1, 2, 9, 10, 100, rng.randrange(1, 10 ** max(1, digits // 2))])
            sign = "-" if rng.random() < 0.3 else ""
            pairs.append((f"{sign}{a}", f"{sign}{'0' if rng.random() < 0.2 else ''}{b}"))
    pairs += [("0", "-0"), ("7", "-7"), ("0", "00")]
    for gold, answer in pairs:
        fast = fast_verdict(gold, answer)
        assert fast is not None and fast == is_correct(gold, answer), (gold, answer)


def test_config_names_every_answer_format_and_only_those():
    """The config validates `grade.answer_formats` against its own list of names (it may not import grading):
    the list and the readers must name the same markers, in the same order."""
    from tracefactory.config import ANSWER_FORMATS, DEFAULT_ANSWER_FORMATS, GradeConfig
    from tracefactory.errors import ConfigError
    from tracefactory.grading.answers import FORMATS

    assert tuple(FORMATS) == ANSWER_FORMATS
    assert set(DEFAULT_ANSWER_FORMATS) < set(ANSWER_FORMATS) and "last_number" not in DEFAULT_ANSWER_FORMATS
    assert GradeConfig(answer_formats=("last_number",)).answer_formats == ("last_number",)
    with pytest.raises(ConfigError, match="boxed"):
        GradeConfig(answer_formats=("boxd",))
