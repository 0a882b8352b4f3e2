"""Final-answer extraction and Math-Verify equivalence, safe to call from any thread.

Extraction (`tracefactory.grading.answers`): the final-answer marker nearest the end of the text wins.

Math-Verify's own timeouts use `signal.alarm`, which only works on a process's main thread (and
cannot interrupt long C calls), so grading runs in worker processes with a hard per-pair
wall-clock budget enforced by the parent (`pool`). Identical (gold, answer) pairs are graded once.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from fractions import Fraction
from functools import lru_cache
from typing import Iterable

from tracefactory.grading.answers import FORMATS, extract_answer, last_boxed  # noqa: F401  (the grading API)
from tracefactory.grading.outcomes import CORRECT, ERROR, NO_ANSWER, TIMEOUT, WRONG, Pair, Verdict
from tracefactory.grading.pool import GradeFn, GradePool, forget, kept, kept_on
from tracefactory.grading.think import NO_THINKING_KNOWN, ThinkSpec, dissect

log = logging.getLogger(__name__)


def gsm8k_gold(solution: str) -> str | None:
    """Gold of a GSM8K solution: the text after the last '####', thousands commas removed."""
    text = solution or ""
    found = FORMATS["hashes"](text, text.lower())
    hit = found[0][1] if found else None
    return hit.strip().replace(",", "") if hit and hit.strip() else None


def _as_math(ans: str) -> str:
    return ans if ans.startswith("$") else f"${ans}$"


def gold_parses(gold: str, timeout_s: float | None = 5.0) -> bool:
    """Whether Math-Verify turns a gold answer into a math object (checked once, at load).

    Math-Verify returns only the input string when it cannot parse it; such a gold could only ever
    match by string equality, so it is rejected as unparseable.
    """
    on_main = threading.current_thread() is threading.main_thread()
    t = max(1, int(timeout_s)) if (timeout_s and on_main) else None
    try:
        return any(not isinstance(x, str) for x in _parse_cached(gold, t))
    except Exception:
        return False


def _gold_verdict(gold: str, _pred: str | None, timeout_s: float | None) -> Verdict:
    """`gold_parses` as a grading-pool function (module level: spawned workers import it by name)."""
    ok = gold_parses(gold, timeout_s)
    return ok, CORRECT if ok else ERROR


def check_golds(
    golds: Iterable[str], workers: int = 2, timeout_s: float = 5.0, fn: GradeFn = _gold_verdict
) -> dict[str, str | None]:
    """{gold: None if Math-Verify parses it, else the reject reason}: `unparseable_gold`, or
    `gold_timeout` when parsing it overran the hard budget (with workers > 0, the same wall-clock
    budget per gold as grading has per pair; with workers=0, Math-Verify's own alarm only)."""
    unique = list(dict.fromkeys(golds))
    if workers == 0 or not unique:
        verdicts = [fn(g, None, timeout_s) for g in unique]
    else:
        with GradePool(fn, min(workers, len(unique)), timeout_s, name="gold") as pool:
            verdicts = pool.grade([(g, None) for g in unique])
    why = {TIMEOUT: "gold_timeout"}
    return {
        g: None if ok else why.get(reason, "unparseable_gold") for g, (ok, reason) in zip(unique, verdicts, strict=True)
    }


@lru_cache(maxsize=8192)
def _parse_cached(text: str, timeout: int | None):
    from math_verify import parse

    return parse(_as_math(text), parsing_timeout=timeout)


def is_correct(gold: str, pred: str | None, timeout_s: float | None = 5.0) -> Verdict:
    """(correct, reason). Uses Math-Verify's timeouts only where signals work (the main thread)."""
    if pred is None:
        return False, NO_ANSWER
    from math_verify import verify
    from math_verify.errors import TimeoutException

    on_main = threading.current_thread() is threading.main_thread()
    t = max(1, int(round(timeout_s))) if (timeout_s and on_main) else None
    started = time.monotonic()
    try:
        g = _parse_cached(gold, t)  # golds repeat across a problem's K completions
        p = _parse_cached(pred, t)
        if not g:
            return False, ERROR
        ok = verify(g, p, timeout_seconds=t, raise_on_error=False)
    except TimeoutException:
        return False, TIMEOUT
    except Exception:  # Math-Verify is meant to be total; a crash on one item must not stop the batch
        log.debug("grading failed for gold=%r pred=%r", gold, pred, exc_info=True)
        return False, ERROR
    if not ok and t is not None and time.monotonic() - started >= t:
        return False, TIMEOUT  # Math-Verify swallows its own timeouts and answers "not equal"
    return bool(ok), CORRECT if ok else WRONG


_PLAIN = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?")
_FRAC = re.compile(r"(-?)\\d?frac\{(\d+)\}\{(\d+)\}")


def _number(text: str) -> Fraction | int | None:
    """The value of a plain number (`1,250`, `-3.5`) or a simple fraction (`\\frac{3}{4}`), else None: an `int` for a
    plain integer (`-?[0-9]+`, nothing else), a Fraction otherwise."""
    text = text.strip()
    digits = text[1:] if text[:1] == "-" else text
    if digits.isascii() and digits.isdigit():  # the common case, without a regex or a Fraction
        return -int(digits) if text[:1] == "-" else int(digits)
    if _PLAIN.fullmatch(text):
        return Fraction(text.replace(",", ""))
    m = _FRAC.fullmatch(text)
    if m and int(m.group(3)):
        return Fraction(int(m.group(2)), int(m.group(3))) * (-1 if m.group(1) else 1)
    return None


def vote_key(answer: str) -> str:
    """Answers that are the same value count as one vote: a plain number or simple fraction by its value
    (`1,250`, `1250.0`; `\\frac{1}{2}`, `0.5`), any other answer by its text without spaces."""
    value = _number(answer)
    if value is not None:
        return str(value)
    return "".join(answer.split())


def fast_verdict(gold: str, pred: str) -> Verdict | None:
    """The verdict Math-Verify would give, where it is certain without it: the same text, two plain numbers that
    are equal or differ by far more than any rounding Math-Verify allows, or two plain integers (Math-Verify compares
    integers exactly: sympy Integers, with no float rounding, whatever their length; `test_answers` checks it on
    near misses of 1 to 30 digits). None: ask it."""
    if gold.strip() == pred.strip():
        return True, CORRECT
    a, b = _number(gold), _number(pred)
    if a is None or b is None:
        return None
    if a == b:
        return True, CORRECT
    if type(a) is int and type(b) is int:  # unequal integers, however close (an arithmetic slip: a common wrong answer)
        return False, WRONG
    if 1000 * abs(a - b) > max(abs(a), abs(b), 1):  # exact for ints and Fractions alike
        return False, WRONG
    return None


def grade_pairs(pairs: Iterable[Pair], workers: int = 2, timeout_s: float = 5.0) -> dict[Pair, Verdict]:
    """Grade unique (gold, pred) pairs; returns {(gold, pred): (correct, reason)}. Pairs `fast_verdict`
    is sure of (the same text, plain numbers) skip Math-Verify; its verdicts are the same.

    With workers > 0 every pair has a hard wall-clock budget of `timeout_s` (see `pool`)."""
    unique = list(dict.fromkeys(pairs))
    out = {p: (False, NO_ANSWER) for p in unique if p[1] is None}
    todo = []
    for p in unique:
        if p[1] is not None:
            known = fast_verdict(*p)
            if known is None:
                todo.append(p)
            else:
                out[p] = known
    if workers == 0 or not todo:
        out.update({p: is_correct(*p, timeout_s=timeout_s) for p in todo})
        return out
    key = ("verify", workers, timeout_s)  # kept across calls inside `pool.kept_workers` (a streamed grade's slices)
    size = workers if kept_on() else min(workers, len(todo))  # a kept pool serves later, larger calls too
    pool, owned = kept(key, lambda: GradePool(is_correct, size, timeout_s), GradePool.close)
    try:
        out.update(zip(todo, pool.grade(todo), strict=True))
    except BaseException:
        owned = owned or forget(key)
        raise
    finally:
        if owned:
            pool.close()
    return out


def answer_of(text: str, formats: Iterable[str] | None, think: ThinkSpec) -> str | None:
    """The final answer of a completion: from its response, none when its think block is broken."""
    part = dissect(text, think.opener, think.mode)
    return None if part.problem else extract_answer(part.response, *([formats] if formats else []))


def judge_texts(
    pairs: list[tuple[str, str]],
    workers: int = 0,
    timeout_s: float = 5.0,
    formats: Iterable[str] | None = None,
    think: ThinkSpec = NO_THINKING_KNOWN,
) -> list[bool]:
    """For (gold, completion text) pairs: does the text's final answer (`formats`' markers) equal the gold? With a
    thinking teacher the answer is read from the response only, and a broken think block has none."""
    preds = [(gold, answer_of(text, formats, think)) for gold, text in pairs]
    verdicts = grade_pairs(preds, workers, timeout_s)
    return [verdicts[p][0] for p in preds]
