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

from tracefactory.grading.verify import gsm8k_gold
from tracefactory.rewriting.perturb import Skip, chain_of, perturb, question_numbers

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
    (650, {"16": "11"}, "24"),  # 35 is both 70/2 and 70-35: 100, 3, 10 keep their value
    (663, {"4": "5"}, "28"),  # 1 is also the constant 1: kept
    (47, {"90": "130", "60": "70"}, "20"),
    (94, {"20": "30", "3": "2", "400": "300"}, "20"),
    (235, {"5": "6"}, "54"),
    (282, {"25": "15", "85": "45"}, "720"),
    (376, {"12": "17", "5": "4", "20": "40"}, "13"),
    (658, {"950": "710", "6": "40", "920": "590", "5": "30"}, "13"),
    (705, {"51": "38"}, "152"),
    (799, {"4": "3", "2": "4", "3": "2"}, "33"),
    (846, {"0.85": "0.56", "0.45": "0.26", "30": "40"}, "12"),
    (893, {"10": "5", "2": "4", "5": "2", "7": "8"}, "206"),
    (1222, {"1.50": "0.75", "50": "20"}, "115"),  # 70 is 30+40 and 70*1: 30, 40 kept
    (1269, {"50": "70", "30": "50", "80": "100", "60": "90", "20": "40", "10": "20"}, "10300"),
    (1739, {"350": "420"}, "32"),
    (1833, {"600": "700", "400": "200"}, "7"),
    (1880, {"12": "8"}, "4"),
    # a number that could come from two places keeps its value, and so does everything it could come from
    (351, {"36": "22"}, "41"),  # '2 Fridays' and the unstated 2 lunches a week: both 2s kept
    (958, {"35": "20"}, "13"),  # 'Five years ago': 5 is a word's
    (757, {"12": "16"}, "11"),
    (1557, {"200": "300"}, "180"),
    (1330, {"3": "4"}, "46"),  # 36 restated (<<36=36>>)
    (1824, {"30": "20"}, "385"),  # 45 is Foster Farms' and one-third of 135
    (127, {"5": "4"}, "44"),
    (528, {"150": "210", "25": "10"}, "1900"),
    (1331, {"8": "10"}, "50"),
    (192, {"900": "1100"}, "690"),  # 200 is the TVs' price and the number of products
    (950, {"10": "15"}, "340"),  # '10 statues' and '10 percent' are one number: both change
    # percentages written as decimals: 20% more -> *.2, 80% covered -> *.8, 25% -> /.25 and 75% -> .75
    (908, {"5000": "3400", "14": "16", "20": "25"}, "108800"),
    (1725, {"250": "240", "80": "65"}, "336"),
    (143, {"25": "30"}, "35"),
    # steps written in prose without an annotation: '1.2*5=6 minutes', '50-10=40 eggs'
    (370, {"20": "80"}, "76"),
    (237, {"400": "300"}, "120"),
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
    (
        61,
        "ambiguous_mapping",
        "400 is 2 x 200 and 1000-200-400: which one is halved is a guess; 1000, 200 feed both",
    ),
    (55, "ambiguous_mapping", "100 is both the total (25+40+35) and the 100 of 'percentage'"),
    (88, "unexplained_constant", "172 (= 86 x 2) is used but never annotated: it would not follow 86"),
    (1501, "unexplained_constant", "9000 is written '45000(.20)=9000', no equation we read: it would not follow 50000"),
    (
        1940,
        "unexplained_constant",
        "a spider's 8 legs: no word states it, so it cannot be told from a lost step",
    ),
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


def test_prose_equations_join_the_chain_in_order_when_they_hold():
    solution = (
        "He pays 3 x $1,200 = $<<3*1200=3600>>3,600 for rent.\n"
        "Food is 20 x 5 = 100 dollars, so 3600+100=3700 in all, about 3700/3=1233 a month.\n"
        "Restated: 20 x 5 = 100.\n#### 3700"
    )
    # '3700/3=1233' is rounded (not a step); the restated equation is the same step
    assert chain_of(solution) == [("3*1200", 3600), ("20 * 5", 100), ("3600+100", 3700)]
