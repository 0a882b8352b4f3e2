"""Grading is table-driven: each row is a real-looking model output; every grading bug becomes a row."""

import threading
import time

import pytest

from tracefactory.grading.outcomes import ERROR, NO_ANSWER, TIMEOUT, WRONG
from tracefactory.grading.verify import extract_answer, grade_pairs, gsm8k_gold, is_correct, last_boxed

EXTRACT = [
    # (model output, extracted answer)
    ("12 + 7 = 19\n19 - 5 = 14\nThe answer is \\boxed{14}.", "14"),
    ("So the total is $\\boxed{\\frac{3}{4}}$.", "\\frac{3}{4}"),
    ("First \\boxed{2}, but wait, recheck: \\boxed{3}", "3"),  # last box wins
    ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),  # nested braces
    ("The area is \\boxed{\\sqrt{2}+\\frac{1}{\\sqrt{3}}}", "\\sqrt{2}+\\frac{1}{\\sqrt{3}}"),
    ("Janet makes 9 * 2 = $18.\n#### 18", "18"),  # GSM8K style
    ("She pays 1,250 in total.\n#### 1,250", "1,250"),
    ("Adding them up, the answer is 42.", "42"),  # answer in text
    ("Therefore, the answer is $-\\frac{1}{2}$. Done.", "-\\frac{1}{2}"),
    ("Answer: 7", "7"),
    ("12 + 7 = 19\n19 - 5 = 14", None),  # no answer: a trailing number is not taken
    ("\\boxed{15", None),  # unclosed box, nothing else
    ("", None),
    ("The answer is \\boxed{}.", None),  # an empty box is no answer
]


@pytest.mark.parametrize("text,expected", EXTRACT)
def test_extract_answer(text, expected):
    assert extract_answer(text) == expected


GRADE = [
    # (gold, predicted answer, correct)
    ("1250", "1,250", True),  # GSM8K thousands comma
    ("1250", "1250.0", True),
    ("0.5", "\\frac{1}{2}", True),  # fraction vs decimal
    ("\\frac{3}{4}", "0.75", True),
    ("3/4", "\\dfrac{3}{4}", True),
    ("\\frac{\\sqrt{3}}{2}", "\\frac{\\sqrt3}{2}", True),
    ("\\left( 3, \\frac{\\pi}{2} \\right)", "(3, \\pi/2)", True),
    ("14", "15", False),
    ("14", "-14", False),
    ("-3", "-3", True),
    ("18", "\\$18", True),
    ("2", "x", False),
]


@pytest.mark.parametrize("gold,pred,correct", GRADE)
def test_is_correct(gold, pred, correct):
    ok, reason = is_correct(gold, pred)
    assert ok is correct
    assert reason == ("correct" if correct else WRONG)


def test_no_answer_is_not_graded():
    assert is_correct("3", None) == (False, NO_ANSWER)


def test_unparseable_gold_is_an_error_not_a_crash():
    assert is_correct("", "3") == (False, ERROR)


def test_gsm8k_gold():
    assert gsm8k_gold("She has 2+3=<<2+3=5>>5\n#### 2,125") == "2125"
    assert gsm8k_gold("no marker here") is None
    assert last_boxed("a \\boxed{x^{2}} b") == "x^{2}"


def test_grade_pairs_pool_matches_in_process_and_dedupes():
    pairs = [(g, p) for g, p, _ in GRADE] * 3 + [("3", None)]
    pooled = grade_pairs(pairs, workers=2, timeout_s=5)
    local = grade_pairs(pairs, workers=0, timeout_s=5)
    assert pooled == local
    assert len(pooled) == len(GRADE) + 1
    assert [pooled[(g, p)][0] for g, p, _ in GRADE] == [c for _, _, c in GRADE]


def test_grading_off_the_main_thread():
    """Prefect runs tasks in threads, where Math-Verify's signal-based timeout would raise."""
    out = {}
    t = threading.Thread(target=lambda: out.update(grade_pairs([("0.5", "\\frac{1}{2}")], workers=0)))
    t.start()
    t.join()
    assert out[("0.5", "\\frac{1}{2}")] == (True, "correct")


HUGE = "9^{9^{9^{9}}}"  # sympy would evaluate this power for ever


@pytest.mark.parametrize("timeout_s", [1.0, 2.0])
def test_pathological_answer_ends_within_the_timeout_and_the_rest_is_graded(timeout_s):
    """timeout 1 s: no Math-Verify alarms fit, the parent kills the stuck worker and starts another;
    timeout 2 s: Math-Verify's own 1 s alarms end it inside the worker. Either way: grade_timeout."""
    from tracefactory.grading.pool import GradePool

    ok = [(g, p) for g, p, _ in GRADE[:4]]
    with GradePool(is_correct, workers=1, timeout_s=timeout_s) as pool:
        pool.grade(ok[:1])  # the worker is up (spawn + imports are not the item's time)
        t0 = time.monotonic()
        verdicts = pool.grade([ok[1], ("5", HUGE), *ok[2:]])
        took = time.monotonic() - t0
    assert verdicts[1] == (False, TIMEOUT)
    assert verdicts[:1] + verdicts[2:] == [is_correct(g, p) for g, p in [ok[1], *ok[2:]]]
    assert took < timeout_s + 6  # the timeout, plus (after a kill) one worker restart for the rest
    assert (pool.replaced == 1) == (timeout_s < 2)


def test_a_worker_that_dies_marks_its_item_and_is_replaced(monkeypatch):
    from tracefactory.grading.pool import GradePool

    with GradePool(is_correct, workers=1, timeout_s=30) as pool:
        pool.grade([("1", "1")])
        pool.slots[0].proc.kill()  # as the OOM killer would
        verdicts = pool.grade([("2", "2"), ("3", "3")])
    assert pool.replaced == 1
    assert verdicts[1] == (True, "correct") and verdicts[0] in {(True, "correct"), (False, ERROR)}


def _last_boxed_reference(text):
    """The former quadratic scan, kept as the reference the linear version must agree with."""
    import re

    found = None
    for m in re.finditer(r"\\(?:boxed|fbox)\s*\{", text):
        depth, i = 1, m.end()
        while i < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[i], 0)
            i += 1
        if depth == 0:
            found = text[m.end() : i - 1]
    return found


def test_last_boxed_agrees_with_the_reference_on_random_brace_soup():
    import random

    rng = random.Random(0)
    atoms = ["\\boxed{", "\\fbox{", "{", "}", "x", "1", " ", "\\boxed {"]
    for _ in range(3000):
        text = "".join(rng.choice(atoms) for _ in range(rng.randint(0, 30)))
        assert last_boxed(text) == _last_boxed_reference(text), text


def test_last_boxed_on_a_megabyte_of_unclosed_boxes():
    """Quadratic before (14 KB took ~3 s; this would take hours); now one pass. The test timeout guards it."""
    assert last_boxed("\\boxed{" * 150_000) is None
    assert last_boxed("\\boxed{" * 150_000 + "42}") == "42"


def test_workers_that_die_at_start_up_fail_fast_naming_the_likely_cause(tmp_path):
    """A script that grades at import time, without a __main__ guard: each spawned worker re-imports it
    and dies; the pool used to replace them for ever, now it stops after 3 with a clear error."""
    import subprocess
    import sys

    script = tmp_path / "noguard.py"
    script.write_text(
        "from tracefactory.grading.verify import judge_texts\n"  # a pair only Math-Verify settles (not two numbers)
        'print(judge_texts([("x+1", "The answer is $1+x$.")], workers=1))\n'
    )
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 1
    assert "failed to start 3 times in a row" in done.stderr and "__main__" in done.stderr


class _SlowToStart:
    """A grading function that takes 2 s to arrive in a worker: unpickling it sleeps (then gives None)."""

    def __reduce__(self):
        import time

        return (time.sleep, (2.0,))


def test_a_worker_that_never_says_ready_is_timed_out():
    from tracefactory.errors import BackendError
    from tracefactory.grading.pool import GradePool

    # A bare spawn can say ready within the pool's first 50 ms wait on a fast, idle machine, so the worker is made
    # slow to start for sure.
    pool = GradePool(_SlowToStart(), workers=1, timeout_s=5, start_timeout_s=0.001)
    with pytest.raises(BackendError, match=r"not ready after 0.001 s"):
        pool.grade([("1", "1")])
    assert pool.slots == []  # nothing left running
