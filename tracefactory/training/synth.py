"""Seeded generator of step-by-step arithmetic word problems with difficulty levels.

It makes both the embedded teacher's training data and the demo problem set, so the two share
one format: a templated word problem (GSM8K-like), a worked solution with one equation per line,
and an integer gold answer. Level L chains L operations over growing numbers, so a small model's
accuracy falls with the level — which is what gives pass-rate difficulty tags their meaning.

`think_spans` turns a worked solution into what an R1-style reasoning model writes after its chat
template opened the think block (`<think>\n`): the equation lines as the reasoning, with the habits such
traces have that this generator can fake honestly — now and then a re-check by the inverse operation
(`Check: 12 - 5 = 7.`) and a slip caught and corrected (`7 + 5 = 13` then `Wait, 7 + 5 = 12, not 13.`) —
then `</think>`, a blank line and a one-line summary with the boxed answer. A few targets
(`UNCLOSED_SHARE`) stop without closing the block, holding only a tentative boxed answer inside it, as
real reasoning models sometimes do. It answers spans (text, learned): a slip's wrong line is not learned.
"""

from __future__ import annotations

import random
import re
from dataclasses import dataclass

from tracefactory.grading.think import CLOSE

NAMES = ("Ann", "Ben", "Cara", "Dev", "Eli", "Fay", "Gus", "Hana", "Ivan", "Jo", "Kim", "Leo")
PRONOUN = {n: ("She" if n in {"Ann", "Cara", "Fay", "Hana", "Jo", "Kim"} else "He") for n in NAMES}
ITEMS = ("apples", "coins", "books", "stamps", "shells", "cards", "pens", "eggs", "marbles", "rocks")

ADD_VERBS = ("gets {x} more", "buys {x} more", "finds {x} more", "wins {x} more")
SUB_VERBS = ("gives away {x}", "loses {x}", "sells {x}", "uses {x}")
MUL_PHRASE = {2: "doubles them", 3: "triples them"}


@dataclass(frozen=True)
class Level:
    ops: int
    start_max: int
    step_max: int
    kinds: tuple[str, ...]
    mul_max: int = 3


LEVELS: dict[int, Level] = {
    1: Level(1, 20, 9, ("add", "sub")),
    2: Level(2, 30, 20, ("add", "sub")),
    3: Level(3, 50, 30, ("add", "sub", "mul")),
    4: Level(4, 100, 50, ("add", "sub", "mul", "div"), mul_max=5),
    5: Level(5, 200, 99, ("add", "sub", "mul", "div"), mul_max=9),
}
VALUE_CAP = 9999
CHECK_SHARE = 0.4  # traces with one re-check line
SLIP_SHARE = 0.15  # traces with one slip, corrected on the next line
UNCLOSED_SHARE = 0.03  # traces that stop inside the think block (no </think>, no summary)
_EQUATION = re.compile(r"^(\d+) ([-+*/]) (\d+) = (\d+)$")
_INVERSE = {"+": "-", "-": "+", "*": "/", "/": "*"}


@dataclass(frozen=True)
class Problem:
    id: str
    level: int
    question: str
    solution: str
    answer: str


def _step(rng: random.Random, lv: Level, value: int, pron: str) -> tuple[int, str, str]:
    """One operation: (new value, sentence for the question, equation for the solution)."""
    kinds = list(lv.kinds)
    rng.shuffle(kinds)
    for kind in kinds:
        if kind == "add":
            x = rng.randint(1, lv.step_max)
            if value + x <= VALUE_CAP:
                return value + x, f"{pron} {rng.choice(ADD_VERBS).format(x=x)}.", f"{value} + {x} = {value + x}"
        elif kind == "sub" and value > 1:
            x = rng.randint(1, min(lv.step_max, value - 1))
            return value - x, f"{pron} {rng.choice(SUB_VERBS).format(x=x)}.", f"{value} - {x} = {value - x}"
        elif kind == "mul":
            k = rng.randint(2, lv.mul_max)
            if value * k <= VALUE_CAP:
                phrase = MUL_PHRASE.get(k, f"ends up with {k} times as many")
                return value * k, f"{pron} {phrase}.", f"{value} * {k} = {value * k}"
        elif kind == "div":
            divisors = [k for k in range(2, 6) if value % k == 0 and value // k > 0]
            if divisors:
                k = rng.choice(divisors)
                sentence = f"{pron} splits them into {k} equal groups and keeps one."
                return value // k, sentence, f"{value} / {k} = {value // k}"
    x = rng.randint(1, lv.step_max)  # every other kind was blocked: fall back to a small addition
    return value + x, f"{pron} {rng.choice(ADD_VERBS).format(x=x)}.", f"{value} + {x} = {value + x}"


def make_problem(rng: random.Random, level: int, pid: str) -> Problem:
    lv = LEVELS[level]
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    value = rng.randint(2, lv.start_max)
    sentences, lines = [f"{name} has {value} {item}."], []
    for _ in range(lv.ops):
        value, sentence, line = _step(rng, lv, value, PRONOUN[name])
        sentences.append(sentence)
        lines.append(line)
    sentences.append(f"How many {item} does {name} have now?")
    lines.append(f"The answer is \\boxed{{{value}}}.")
    return Problem(pid, level, " ".join(sentences), "\n".join(lines), str(value))


def think_spans(rng: random.Random, solution: str) -> list[tuple[str, bool]]:
    """The completion an R1-style model writes for `solution` after the template's `<think>\n` (see the module),
    as spans (text, learned): a slip's wrong line is context the teacher learns to correct, never a line it learns
    to write (training on it taught the R1-shaped draft to get sums wrong on purpose)."""
    *lines, final = solution.splitlines()
    check_at = rng.randrange(len(lines)) if rng.random() < CHECK_SHARE else None
    slip_at = rng.randrange(len(lines)) if rng.random() < SLIP_SHARE else None
    spans: list[tuple[str, bool]] = []
    for i, line in enumerate(lines):
        a, op, b, c = _EQUATION.match(line).groups()
        if i == slip_at:
            wrong = int(c) + rng.choice([d for d in (-2, -1, 1, 2, 10) if int(c) + d >= 0])
            spans += [(f"{a} {op} {b} = {wrong}\n", False), (f"Wait, {a} {op} {b} = {c}, not {wrong}.\n", True)]
        else:
            spans.append((line + "\n", True))
        if i == check_at:
            spans.append((f"Check: {c} {_INVERSE[op]} {b} = {a}.\n", True))
    if rng.random() < UNCLOSED_SHARE:
        return spans + [(final, True)]  # stops inside the block: only a tentative answer there
    summary = f"{lines[-1]}, so the answer is {final.removeprefix('The answer is ')}"
    return spans + [(f"{CLOSE}\n\n{summary}", True)]


def generate(n_per_level: int, seed: int, levels: tuple[int, ...] = (1, 2, 3, 4, 5)) -> list[Problem]:
    """`n_per_level` problems for each level, reproducible from `seed`, ids `L{level}-{index}`."""
    rng = random.Random(seed)
    return [make_problem(rng, lv, f"L{lv}-{i:04d}") for lv in levels for i in range(n_per_level)]


def write_jsonl(problems: list[Problem], path) -> None:
    import json
    from pathlib import Path

    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        for p in problems:
            f.write(
                json.dumps(
                    {"id": p.id, "level": p.level, "question": p.question, "answer": p.answer, "solution": p.solution}
                )
                + "\n"
            )


if __name__ == "__main__":  # python -m tracefactory.training.synth OUT.jsonl N_PER_LEVEL SEED
    import sys

    out, n, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    write_jsonl(generate(n, seed), out)
