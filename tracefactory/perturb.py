"""Symbolic perturbation (GSM-Symbolic style): new numbers in a word problem, its gold re-derived.

A problem whose solution writes its arithmetic as a chain of equations — GSM8K's calculator
annotations `<<48/2=24>>`, or the embedded generator's `48 / 2 = 24` lines — is a small program:
each operand of each equation is a number of the question, the result of an earlier equation, or a
constant the text states in words ("half", "twice", 60 minutes an hour). `perturb` maps every operand
to one of those, draws new values for the question's numbers (integers stay integers, counts stay
positive, percentages stay percentages, decimals keep their places, round numbers stay round),
re-evaluates the chain exactly (fractions, never floats), keeps a draw only when every intermediate
keeps the original's kind (integral, non-negative, positive) and the final answer is still an integer
when it was one, and renders the question with the new numbers in place of the old.

Whatever it cannot map without guessing it refuses, with a reason (`Skip`): no chain in the solution,
an annotation that does not evaluate to what it says, a chain whose last result is not the gold, a
value that could be two different things, a number of the question that the chain never uses (it may
be used in a step the solution does not annotate), fractions or clock times in the question.
"""

from __future__ import annotations

import ast
import random
import re
from dataclasses import dataclass
from fractions import Fraction

ANNOTATION = re.compile(r"<<([^<>=]+)=([^<>]+)>>")
EQUATION_LINE = re.compile(r"^\s*([-\d.()+*/ x×]+?)\s*=\s*(-?[\d.]+)\s*$", re.MULTILINE)
# a number of the question: 1,200 / 3.5 / 48, not part of a word (5th, x2) or of a fraction/time
NUMBER = re.compile(r"(?<![\w.,/:])(\d{1,3}(?:,\d{3})+|\d+)(\.\d+)?(?![\w/:]|\.\d|,\d{3})")
FRACTION_OR_TIME = re.compile(r"\d\s*/\s*\d|\d:\d\d")
MAX_TRIES = 60
SMALL = 12  # numbers up to this are often unstated constants (days a week, months a year, x2)
MAX_POWER = 10
MAX_BITS = 4096  # a value of more bits (over 1,200 digits) is refused
# words whose number a solution writes as a constant: a number of the question with one of these values
# could be either, so such a problem is refused rather than guessed
_WORDS = {
    2: r"twice|double[sd]?|half|halves|halved|pairs?|couple|two|second",
    3: r"triple[sd]?|thrice|three|third",
    4: r"quarters?|four|fourth|quadruple|months?",
    5: r"five|fifth",
    6: r"six",
    7: r"weeks?|seven|weekly",
    10: r"ten|dimes?|decades?",
    12: r"dozens?|twelve|months?|years?|feet|foot|inch(es)?",
    24: r"days?|daily",
    25: r"quarters?",
    52: r"weeks?|years?",
    60: r"hours?|minutes?|hourly",
    100: r"percent(age)?s?|cents?|centur(y|ies)|dollars?|meters?",
    Fraction(1, 100): r"percent(age)?s?|cents?",
    365: r"years?",
    1000: r"thousand|grams?|kilo\w*|liters?|milli\w*",
    Fraction(1, 2): r"half|halves|halved",
    Fraction(1, 4): r"quarters?|fourth",
}
_IMPLIED = {v: re.compile(rf"(?<!\w)(?:{w})(?!\w)", re.IGNORECASE) for v, w in _WORDS.items()}


class Skip(Exception):
    """A problem that cannot be perturbed without guessing; the message is the reason."""


@dataclass(frozen=True)
class Token:
    start: int
    end: int
    value: Fraction
    decimals: int  # digits after the point
    commas: bool  # written with thousands separators
    percent: bool


@dataclass(frozen=True)
class Perturbation:
    question: str
    answer: str
    steps: int  # equations in the chain (the same as the original's: the chain is re-evaluated as is)
    values: dict[str, str]  # old number -> new number, as written


# ---- reading -------------------------------------------------------------------------------------


def question_numbers(question: str) -> list[Token]:
    out = []
    for m in NUMBER.finditer(question):
        whole, frac = m.group(1), m.group(2) or ""
        if len(whole) + len(frac) > 100:  # not a grade-school number (and past int()'s digit limit soon)
            raise Skip("number_too_large")
        value = Fraction(whole.replace(",", "") + frac)
        percent = question[m.end() : m.end() + 1] == "%" or question[m.end() : m.end() + 8] == " percent"
        out.append(Token(m.start(), m.end(), value, len(frac) - 1 if frac else 0, "," in whole, percent))
    return out


def chain_of(solution: str) -> list[tuple[str, Fraction]]:
    """The solution's equations as (expression, stated result): annotations first, else equation lines."""
    found = ANNOTATION.findall(solution) or EQUATION_LINE.findall(solution)
    out = []
    for expr, result in found:
        try:
            out.append((expr.replace("x", "*").replace("×", "*"), Fraction(result.strip().replace(",", ""))))
        except (ValueError, ZeroDivisionError):
            raise Skip("annotation_unreadable") from None
    if not out:
        raise Skip("no_chain")
    return out


_OPS = {ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b, ast.Mult: lambda a, b: a * b}


def _parse(expr: str) -> ast.expr:
    try:
        return ast.parse(expr.strip(), mode="eval").body
    except (SyntaxError, ValueError, RecursionError, MemoryError):  # hostile input: deep or huge expressions
        raise Skip("annotation_unreadable") from None


def _leaves(node: ast.expr) -> list[ast.Constant]:
    return [n for n in ast.walk(node) if isinstance(n, ast.Constant)]


def evaluate(node: ast.expr, value_of) -> Fraction:
    """Exact value of an annotation's expression; `value_of(constant node)` gives each leaf's value."""
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
        return value_of(node)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = evaluate(node.operand, value_of)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp):
        a, b = evaluate(node.left, value_of), evaluate(node.right, value_of)
        if type(node.op) in _OPS:
            return _bounded(_OPS[type(node.op)](a, b))
        if isinstance(node.op, ast.Div):
            if b == 0:
                raise ZeroDivisionError
            return _bounded(a / b)
        if isinstance(node.op, ast.Pow) and b.denominator == 1 and 0 <= b <= MAX_POWER:
            return _bounded(a ** int(b))
    raise Skip("annotation_unreadable")


def _bounded(v: Fraction) -> Fraction:
    """Nested powers in a hostile annotation would grow without end: no grade-school value needs this."""
    if v.numerator.bit_length() > MAX_BITS or v.denominator.bit_length() > MAX_BITS:
        raise Skip("number_too_large")
    return v


# ---- mapping operands to their sources --------------------------------------------------------------


@dataclass
class Leaf:
    kind: str  # "question" (index into the tokens), "result" (index into the chain), "constant"
    index: int
    value: Fraction


def _literal(node: ast.Constant) -> Fraction:
    if not isinstance(node.value, (int, float)) or isinstance(node.value, bool):
        raise Skip("annotation_unreadable")  # a string or another literal: not arithmetic
    try:
        return _bounded(Fraction(str(node.value)))
    except (ValueError, OverflowError):  # 1e999 is inf
        raise Skip("annotation_unreadable") from None


@dataclass
class Mapped:
    tokens: list[Token]  # the numbers of the question
    groups: list[Fraction]  # their distinct values (a "question" leaf's index points here)
    used: set[int]  # groups the chain uses (the others keep their value)
    steps: list[tuple[ast.expr, dict[int, Leaf], Fraction]]  # (expression, its leaves' sources, stated result)


def map_chain(question: str, solution: str, gold: str) -> Mapped:
    """How the solution's chain is computed from the question's numbers, or Skip(reason)."""
    if FRACTION_OR_TIME.search(question):
        raise Skip("fraction_or_time_in_question")
    tokens = question_numbers(question)
    if not tokens:
        raise Skip("no_numbers_in_question")
    for t in tokens:
        if t.value != 1 and _explained(t.value, question):
            raise Skip("ambiguous_mapping")  # e.g. "2 dogs ... twice as many": which 2 is which?
    # numbers of the question with the same value form one group and get one new value together: an
    # operand with that value is then right whichever of them it stands for
    values = list(dict.fromkeys(t.value for t in tokens))
    group = {v: i for i, v in enumerate(values)}
    steps, results = [], []
    for expr, stated in chain_of(solution):
        node = _parse(expr)
        leaves = {}
        for leaf in _leaves(node):
            v = _literal(leaf)
            from_results = [k for k, r in enumerate(results) if r == v]
            if from_results and (v in group or _explained(v, question)):
                raise Skip("ambiguous_mapping")  # an earlier result, or a number of the question / of a word?
            if from_results:
                leaves[id(leaf)] = Leaf("result", from_results[-1], v)
            elif v in group:
                leaves[id(leaf)] = Leaf("question", group[v], v)
            else:
                leaves[id(leaf)] = Leaf("constant", -1, v)
        try:
            value = evaluate(node, lambda n, leaves=leaves: leaves[id(n)].value)
        except ZeroDivisionError:
            raise Skip("annotation_unreadable") from None
        if value != stated:
            raise Skip("annotation_mismatch")  # rounded, or simply wrong: not a chain to re-run
        steps.append((node, leaves, stated))
        results.append(stated)
    try:
        if Fraction(gold.replace(",", "")) != results[-1]:
            raise Skip("answer_not_in_chain")  # the last step is not annotated
    except ValueError:
        raise Skip("answer_not_a_number") from None
    uses: dict[int, int] = {}
    for _, leaves, _ in steps:
        for leaf in leaves.values():
            if leaf.kind == "question":
                uses[leaf.index] = uses.get(leaf.index, 0) + 1
    for g, n in uses.items():
        if values[g] <= SMALL and n > sum(t.value == values[g] for t in tokens):
            # "2 Fridays" and "Wednesdays and Fridays" (x2): a small number used more often than the question
            # says it may be an unstated constant in one of its uses
            raise Skip("ambiguous_mapping")
    if not all(_explained(leaf.value, question) for leaf in _constants(steps)):
        # a constant the words do not explain: perhaps the result of a step the solution does not annotate
        # (it would not change with the numbers it came from)
        raise Skip("unexplained_constant")
    used = {leaf.index for _, leaves, _ in steps for leaf in leaves.values() if leaf.kind == "question"}
    return Mapped(tokens, values, used, steps)


def _constants(steps) -> list[Leaf]:
    return [leaf for _, leaves, _ in steps for leaf in leaves.values() if leaf.kind == "constant"]


def _explained(value: Fraction, question: str) -> bool:
    """A constant a word of the question states ("half" -> 2), or 1 (no unannotated step yields just 1)."""
    if value in (100, Fraction(1, 100)) and "%" in question:
        return True
    return value == 1 or (value in _IMPLIED and bool(_IMPLIED[value].search(question)))


# ---- drawing new numbers ----------------------------------------------------------------------------


def _draw(t: Token, rng: random.Random) -> Fraction:
    v = t.value
    if t.percent and v.denominator == 1 and 0 < v < 100:
        step = 5 if v % 5 == 0 else 1
        return Fraction(rng.randrange(step, 100, step))
    if t.decimals:
        scale = 10**t.decimals
        lo, hi = max(1, int(v * scale / 2)), max(int(v * scale * 3 / 2), int(v * scale) + 2)
        return Fraction(rng.randint(lo, hi), scale)
    step = next((s for s in (100, 10, 5) if v >= 2 * s and v % s == 0), 1)  # round numbers stay round
    lo, hi = max(1, int(v / 2) // step), max(int(v * 3 / 2) // step, int(v) // step + 2)
    return Fraction(rng.randint(lo, hi) * step)


def _fits(new: Fraction, old: Fraction) -> bool:
    if old.denominator == 1 and new.denominator != 1:
        return False
    if (old >= 0 and new < 0) or (old > 0 and new == 0):
        return False
    return abs(new) <= max(10 * abs(old), 1000)


def _run(steps, values: list[Fraction]) -> list[Fraction] | None:
    """The chain's results with the question's numbers set to `values`; None when a step breaks a constraint."""
    results: list[Fraction] = []

    def value_of(leaf: Leaf) -> Fraction:
        if leaf.kind == "question":
            return values[leaf.index]
        return results[leaf.index] if leaf.kind == "result" else leaf.value

    for node, leaves, old in steps:
        try:
            new = evaluate(node, lambda n, leaves=leaves: value_of(leaves[id(n)]))
        except ZeroDivisionError:
            return None
        if not _fits(new, old):
            return None
        results.append(new)
    return results


def render_number(value: Fraction, like: Token) -> str:
    if like.decimals:
        text = f"{float(value):.{like.decimals}f}"
    else:
        text = str(value.numerator)
    if like.commas:
        whole, _, frac = text.partition(".")
        text = f"{int(whole):,}" + (f".{frac}" if frac else "")
    return text


def format_answer(value: Fraction) -> str:
    if value.denominator == 1:
        return str(value.numerator)
    return f"{float(value):.10g}"


def perturb(question: str, solution: str, gold: str, rng: random.Random, avoid: set[str] = frozenset()) -> Perturbation:
    """One re-numbered variant of the problem (not one of the questions in `avoid`), or Skip(reason)."""
    m = map_chain(question, solution, gold)
    first = {v: next(t for t in m.tokens if t.value == v) for v in m.groups}  # the format to draw in
    for _ in range(MAX_TRIES):
        drawn = [_draw(first[v], rng) if g in m.used else v for g, v in enumerate(m.groups)]
        if drawn == m.groups or len(set(drawn)) < len(drawn):
            continue  # unchanged, or two groups merged into one value (a new ambiguity)
        results = _run(m.steps, drawn)
        if results is None:
            continue
        new = dict(zip(m.groups, drawn))
        text = question
        for t in sorted(m.tokens, key=lambda t: -t.start):
            text = text[: t.start] + render_number(new[t.value], t) + text[t.end :]
        if text in avoid:
            continue
        changed = {
            question[t.start : t.end]: render_number(new[t.value], t) for t in m.tokens if new[t.value] != t.value
        }
        return Perturbation(text, format_answer(results[-1]), len(m.steps), changed)
    raise Skip("no_valid_draw")
