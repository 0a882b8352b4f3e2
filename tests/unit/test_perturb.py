"""Symbolic perturbation: hand-checked variants of GSM8K train problems, and the refusals.

Each row of TABLE is a variant `perturb` makes of a GSM8K *train* problem (seed `table:<row>`): the
numbers it changed and the gold it re-derived. Every answer was worked out by hand from the variant's
question (not from the code) when the table was written; e.g. row 47: 130 MB, the first 70 at 5 MB/s
(14 s), the other 60 at 10 MB/s (6 s) -> 20 s. A change of the mapping or of the draws shows up here.
"""

import json
import random
from pathlib import Path

import pytest

from tracefactory.perturb import Skip, chain_of, perturb, question_numbers
from tracefactory.verify import gsm8k_gold

TRAIN = Path(__file__).parents[2] / "data" / "gsm8k" / "train_sample_2000.jsonl"
ROWS = [json.loads(line) for line in TRAIN.read_text().splitlines()]

TABLE = [  # (row of the train sample, {old number: new number} in the question, hand-checked new gold)
    (0, {"48": "64"}, "96"),
    (26, {"2": "3", "20": "55"}, "1650"),
    (65, {"33": "42", "16": "18", "10": "5"}, "771"),
    (91, {"80": "70", "20": "40"}, "11"),
    (104, {"4": "5", "12": "11", "2": "4"}, "220"),
    (182, {"3": "4"}, "250"),
    (195, {"10": "15", "14": "12", "200": "300"}, "90"),
    (208, {"25": "15", "2": "4", "400": "200"}, "520"),
    (260, {"5": "3"}, "216"),
    (273, {"30": "40"}, "24"),
    (416, {"10": "5"}, "30"),
    (429, {"2300": "1800", "80": "45", "60": "80"}, "162"),
    (481, {"12": "16", "10": "5"}, "63"),
    (494, {"5,200": "6,900", "7,300": "10,600", "16,000": "17,900"}, "400"),
    (585, {"1000": "1200", "8": "11"}, "870"),
    (624, {"25": "35"}, "70"),
    (650, {"100": "150", "3": "5", "10": "20", "16": "10"}, "15"),
    (663, {"4": "5", "1": "2"}, "26"),
    (47, {"90": "130", "60": "70"}, "20"),
    (94, {"20": "30", "3": "2", "400": "300"}, "20"),
    (235, {"5": "6"}, "54"),
    (282, {"25": "15", "85": "45"}, "720"),
    (376, {"12": "17", "5": "4", "20": "40"}, "13"),
    (658, {"950": "710", "6": "40", "920": "590", "5": "30"}, "13"),
    (705, {"51": "38"}, "152"),
    (799, {"4": "5", "2": "4", "3": "2"}, "59"),
    (846, {"0.85": "0.56", "0.45": "0.26", "30": "40"}, "12"),
    (893, {"10": "5", "2": "4", "5": "2", "7": "8"}, "206"),
    (1222, {"1.50": "1.56", "1": "2", "30": "50", "50": "60"}, "336"),
    (1269, {"50": "70", "30": "50", "80": "100", "60": "90", "20": "40", "10": "20"}, "10300"),
    (1739, {"350": "420"}, "32"),
    (1833, {"600": "700", "400": "200"}, "7"),
    (1880, {"12": "8"}, "4"),
]


def _perturb(i: int, seed: str):
    r = ROWS[i]
    return perturb(r["question"], r["answer"], gsm8k_gold(r["answer"]), random.Random(seed))


@pytest.mark.parametrize("i, changed, gold", TABLE)
def test_hand_checked_variants(i, changed, gold):
    p = _perturb(i, f"table:{i}")
    assert p.answer == gold and p.values == changed
    original = ROWS[i]["question"]
    assert p.question != original
    # the variant is the original with exactly those numbers replaced, words untouched
    assert [w for w in p.question.split() if not any(c.isdigit() for c in w)] == [
        w for w in original.split() if not any(c.isdigit() for c in w)
    ]


REFUSED = [  # (row, reason, why a guess would be wrong)
    (351, "ambiguous_mapping", "'2 Fridays' and the unstated 2 school lunches a week are both 2"),
    (55, "ambiguous_mapping", "100 is both the total (25+40+35) and the 100 of 'percentage'"),
    (88, "unexplained_constant", "172 (= 86 x 2) is used but never annotated: it would not follow 86"),
    (143, "unexplained_constant", "the 4 of '25% -> 1/4' is derived from 25 in an unannotated step"),
]


@pytest.mark.parametrize("i, reason, why", REFUSED)
def test_problems_that_would_need_a_guess_are_refused_with_their_reason(i, reason, why):
    with pytest.raises(Skip, match=reason):
        _perturb(i, "any")


BAD = [  # (question, solution, gold, reason)
    ("How many legs does a spider have?", "A spider has <<8=8>>8 legs.\n#### 8", "8", "no_numbers_in_question"),
    ("Ann has three apples and gets two more. How many?", "3+2=<<3+2=5>>5\n#### 5", "5", "no_numbers_in_question"),
    ("Jo has 3 pens and gets 2 more. How many?", "Jo has 5 pens.\n#### 5", "5", "no_chain"),
    ("Jo has 3 pens and gets 2 more. How many?", "<<3+2=6>>6\n#### 6", "6", "annotation_mismatch"),
    ("Jo has 3 pens and gets 2 more. How many?", "<<3+2=5>>5\n#### 7", "7", "answer_not_in_chain"),
    ("Jo has 3 pens and gets 2 more. How many?", "<<3+2=5>>5\n#### five", "five", "answer_not_a_number"),
    ("Jo ate 1/2 of 8 pies. How many are left?", "<<8/2=4>>4\n#### 4", "4", "fraction_or_time_in_question"),
    ("Jo left at 3:30 and walked 2 hours.", "<<3+2=5>>5\n#### 5", "5", "fraction_or_time_in_question"),
    ("Jo has 3 pens and gets 2 more. How many?", "<<3+2)=5>>5\n#### 5", "5", "annotation_unreadable"),
    ("Jo has 3 pens and gets 2 more. How many?", "<<import os=5>>5\n#### 5", "5", "annotation_unreadable"),
    ("Jo has 3 pens and gets 2 more. How many?", "<<'3'+'2'=5>>5\n#### 5", "5", "annotation_unreadable"),
    ("Jo has 3 pens and gets 2 more. How many?", "<<3+2e999=5>>5\n#### 5", "5", "annotation_unreadable"),
    (
        "Jo has 3 pens and gets 2 more. How many?",
        "<<" + "(" * 5000 + "3+2" + ")" * 5000 + "=5>>",
        "5",
        "annotation_unreadable",
    ),
    ("Jo has 3 pens and gets 2 more. How many?", "<<((((3**10)**10)**10)**10)**10=5>>", "5", "number_too_large"),
    ("Jo has " + "9" * 5000 + " pens and gets 2 more.", "<<3+2=5>>5\n#### 5", "5", "number_too_large"),
]


@pytest.mark.parametrize("question, solution, gold, reason", BAD)
def test_bad_input_is_refused_with_a_reason_never_a_crash(question, solution, gold, reason):
    with pytest.raises(Skip, match=reason):
        perturb(question, solution, gold, random.Random(0))


def test_money_percentages_commas_and_decimals_keep_their_form():
    q = "A $1,250.50 TV is 20% off, and Jo pays 3 of them. What does Jo pay?"
    tokens = question_numbers(q)
    assert [(str(t.value), t.decimals, t.commas, t.percent) for t in tokens] == [
        ("2501/2", 2, True, False),
        ("20", 0, False, True),
        ("3", 0, False, False),
    ]
    assert [str(r) for _, r in chain_of("<<1250.50*(100-20)/100*3=3001.2>>")] == ["15006/5"]  # exact
    p = perturb(q, "<<1250.50*(100-20)/100*3=3001.2>>\n#### 3001.2", "3001.2", random.Random(5))
    new = question_numbers(p.question)
    assert new[0].commas and new[0].decimals == 2 and new[1].percent and new[1].value % 5 == 0
    assert p.answer == format(float(new[0].value * (100 - new[1].value) / 100 * new[2].value), ".10g")


def test_the_demo_generators_problems_perturb_with_their_golds_recomputed():
    demo = [json.loads(x) for x in (TRAIN.parents[1] / "demo" / "problems.jsonl").read_text().splitlines()]
    made = 0
    for r in demo:
        try:
            p = perturb(r["question"], r["solution"], r["answer"], random.Random(r["id"]))
        except Skip:
            continue
        made += 1
        # replay the generator's story with the new numbers, independently of the chain
        value, words = None, p.question.replace(".", " .").split()
        for k, w in enumerate(words):
            if w == "has" and value is None:
                value = int(words[k + 1])
            elif w == "more" and words[k - 2] in ("gets", "buys", "finds", "wins"):
                value += int(words[k - 1])
            elif w in ("away", "loses", "sells", "uses") and words[k + 1].isdigit():
                value -= int(words[k + 1])
            elif w == "doubles":
                value *= 2
            elif w == "triples":
                value *= 3
            elif w == "times" and words[k - 2] == "with":
                value *= int(words[k - 1])
            elif w == "into":
                value //= int(words[k + 1])
        assert str(value) == p.answer, (r["question"], p.question)
    assert made >= 250  # of 300; the rest refused as ambiguous
