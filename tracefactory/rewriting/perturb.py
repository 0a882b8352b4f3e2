"""Symbolic perturbation (GSM-Symbolic style): new numbers in a word problem, its gold re-derived.

A problem whose solution writes its arithmetic as a chain of equations — GSM8K's calculator
annotations `<<48/2=24>>` (with the equations its prose writes unannotated, "1.2*5=6"), or the embedded
generator's `48 / 2 = 24` lines — is a small program: each operand of each equation is a number of the
question, a percentage of the question as a decimal (20% -> .2, 1.2, .8), the result of an earlier
equation, or a constant the text states in words ("half", "twice", 60 minutes an hour). `perturb` maps
every operand to one of those, draws new values for the question's numbers (integers stay integers,
counts stay positive, percentages stay percentages, decimals keep their places, round numbers stay
round), re-evaluates the chain exactly (fractions, never floats), keeps a draw only when every
intermediate keeps the original's kind (integral, non-negative, positive) and the final answer is still
an integer when it was one, and renders the question with the new numbers in place of the old.

An operand that could come from two places is never guessed: it keeps its value, and so does every
number of the question it could have come from, so the re-derived gold is right whichever was meant.
Whatever it cannot map without guessing it refuses, with a reason (`Skip`): no chain in the solution,
an annotation that does not evaluate to what it says, a chain whose last result is not the gold, a
constant no word explains (it may be the result of a step the solution does not write), no number left
to change, fractions or clock times in the question.
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
_NUM = r"(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|\.\d+"
# an equation the solution writes in prose without annotating it: "1.2*5=6 minutes", "50-10=40 eggs"
PROSE_EQUATION = re.compile(
    rf"(?<![\w.$,/])(\$?(?:{_NUM})(?:\s*(?:[-+*/×]|\sx\s)\s*\$?(?:{_NUM}))+)\s*=\s*\$?({_NUM})(?![\w<]|\.\d|,\d)"
)
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
    5: r"five|fifth|nickels?",
    6: r"six",
    7: r"weeks?|seven|weekly",
    10: r"ten|dimes?|decades?",
    12: r"dozens?|twelve|months?|years?|feet|foot|inch(es)?",
    24: r"days?|daily",
    25: r"quarters?",
    52: r"weeks?|years?",
    60: r"hours?|minutes?|hourly",
    100: r"percent(age)?s?|cents?|centur(y|ies)|dollars?|meters?",
    Fraction(1, 100): r"percent(age)?s?|cents?|pennies|penny",
    Fraction(1, 10): r"dimes?|tenths?",
    Fraction(1, 20): r"nickels?",
    365: r"years?",
    1000: r"thousand|grams?|kilo\w*|liters?|milli\w*",
    Fraction(1, 2): r"half|halves|halved",
    Fraction(1, 4): r"quarters?|fourths?",
    Fraction(1, 3): r"thirds?",
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
    """The solution's equations as (expression, stated result), in the order written.

    GSM8K style: the calculator annotations, plus the equations written in prose without one when they
    evaluate to what they say (a step left unannotated would otherwise look like an unexplained constant,
    or leave the answer out of the chain). Otherwise the embedded generator's equation lines.
    """
    annotations = list(ANNOTATION.finditer(solution))
    if not annotations:
        return [(e, _number(r)) for e, r in EQUATION_LINE.findall(solution)] or _no_chain()
    found = [(m.start(), _clean(m.group(1)), _number(m.group(2))) for m in annotations]
    masked = ANNOTATION.sub(lambda m: "§" * len(m.group(0)), solution)  # "48/2 = <<…>>24" is not prose
    seen = {(e, r) for _, e, r in found}
    for m in PROSE_EQUATION.finditer(masked):
        expr, result = _clean(m.group(1)), _number(m.group(2))
        try:
            holds = evaluate(_parse(expr), _literal) == result
        except (Skip, ZeroDivisionError):
            holds = False
        if holds and (expr, result) not in seen:  # a wrong or rounded prose equation is not a step
            seen.add((expr, result))
            found.append((m.start(), expr, result))
    return [(e, r) for _, e, r in sorted(found, key=lambda f: f[0])]


def _clean(expr: str) -> str:
    expr = re.sub(r"(?<=\d),(?=\d{3})", "", expr.replace("$", ""))
    return re.sub(r"\sx\s", " * ", expr).replace("x", "*").replace("×", "*")


def _number(text: str) -> Fraction:
    try:
        return Fraction(text.strip().replace(",", ""))
    except (ValueError, ZeroDivisionError):
        raise Skip("annotation_unreadable") from None


def _no_chain():
    raise Skip("no_chain")


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
    kind: str  # "question" / "percent" (index into the groups), "result" (into the chain), "constant", "pinned"
    index: int
    value: Fraction
    form: str = ""  # of a "percent" leaf: how it is computed from the percentage p (see PERCENT_FORMS)


# the decimals a solution writes for a percentage p of the question: 40% -> .4, a 20% raise -> 1.2, 15% off -> .85
PERCENT_FORMS = {"p/100": lambda p: p / 100, "1+p/100": lambda p: 1 + p / 100, "1-p/100": lambda p: 1 - p / 100}


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
    frozen: set[int]  # groups that keep their value because an operand could come from them or elsewhere
    steps: list[tuple[ast.expr, dict[int, Leaf], Fraction]]  # (expression, its leaves' sources, stated result)

    @property
    def free(self) -> set[int]:
        return self.used - self.frozen


def map_chain(question: str, solution: str, gold: str) -> Mapped:
    """How the solution's chain is computed from the question's numbers, or Skip(reason).

    An operand that could come from more than one place (a number of the question that is also a word's
    constant, "2 dogs ... twice as many"; an earlier result equal to a number of the question) is not
    guessed: it is pinned to its value, and everything it could come from keeps its value too (the
    question's number, and every number an earlier result it could be was computed from). Whichever source
    was meant, it then has the same value in the variant, so the re-derived gold is right either way; the
    problem is refused only when nothing is left to change.
    """
    if FRACTION_OR_TIME.search(question):
        raise Skip("fraction_or_time_in_question")
    tokens = question_numbers(question)
    if not tokens:
        raise Skip("no_numbers_in_question")
    # numbers of the question with the same value form one group and get one new value together: an
    # operand with that value is then right whichever of them it stands for
    values = list(dict.fromkeys(t.value for t in tokens))
    group = {v: i for i, v in enumerate(values)}
    # a number of the question that a word could also state (value 2 and "twice"): frozen
    frozen = {g for g, v in enumerate(values) if v != 1 and _explained(v, question)}
    percents = sorted({group[t.value] for t in tokens if t.percent})
    steps, results, deps = [], [], []  # deps[k]: the groups result k was computed from
    forms: list[str] = []  # forms[k]: how result k is computed, written out (results with one form are one)
    for expr, stated in chain_of(solution):
        node = _parse(expr)
        leaves, step_deps = {}, set()
        for leaf in _leaves(node):
            v = _literal(leaf)
            # results of the same value computed the same way (a step that restates one, <<8=8>>) are one
            from_results = list({forms[k]: k for k, r in enumerate(results) if r == v}.values())
            from_percents = [(g, f) for g in percents for f, fn in PERCENT_FORMS.items() if fn(values[g]) == v]
            sources = len(from_results) + len(from_percents) + (v in group) + _explained(v, question)
            if sources > 1:  # an earlier result, a number of the question or a word's constant: pinned
                leaves[id(leaf)] = Leaf("pinned", -1, v)
                frozen.update(*(deps[k] for k in from_results), (g for g, _ in from_percents))
                if v in group:
                    frozen.add(group[v])
            elif from_percents:
                ((g, form),) = from_percents
                leaves[id(leaf)] = Leaf("percent", g, v, form)
                step_deps.add(g)
            elif from_results:
                leaves[id(leaf)] = Leaf("result", from_results[0], v)
                step_deps |= deps[from_results[0]]
            elif v in group:
                leaves[id(leaf)] = Leaf("question", group[v], v)
                step_deps.add(group[v])
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
        deps.append(step_deps)
        forms.append(_form(node, leaves, forms))
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
            # says may be an unstated constant in one of its uses
            frozen.add(g)
    if not all(_explained(leaf.value, question) for leaf in _constants(steps)):
        # a constant the words do not explain: perhaps the result of a step the solution does not annotate
        # (it would not change with the numbers it came from)
        raise Skip("unexplained_constant")
    used = {leaf.index for _, leaves, _ in steps for leaf in leaves.values() if leaf.kind in ("question", "percent")}
    if not used - frozen:
        raise Skip("ambiguous_mapping")  # every number the chain uses could also come from somewhere else
    return Mapped(tokens, values, used, frozen, steps)


def _form(node: ast.expr, leaves: dict[int, Leaf], forms: list[str]) -> str:
    if isinstance(node, ast.Constant):
        leaf = leaves[id(node)]
        if leaf.kind == "result":
            return forms[leaf.index]
        return {"question": f"q{leaf.index}", "percent": f"{leaf.form}(q{leaf.index})"}.get(leaf.kind, str(leaf.value))
    if isinstance(node, ast.UnaryOp):
        return f"({type(node.op).__name__} {_form(node.operand, leaves, forms)})"
    return f"({_form(node.left, leaves, forms)} {type(node.op).__name__} {_form(node.right, leaves, forms)})"


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
        if leaf.kind == "percent":
            return PERCENT_FORMS[leaf.form](values[leaf.index])
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
        drawn = [_draw(first[v], rng) if g in m.free else v for g, v in enumerate(m.groups)]
        if drawn == m.groups or len(set(drawn)) < len(drawn):
            continue  # unchanged, or two groups merged into one value (a new ambiguity)
        results = _run(m.steps, drawn)
        if results is None:
            continue
        new = dict(zip(m.groups, drawn, strict=True))
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
