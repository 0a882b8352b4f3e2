"""Grading outcomes: the verdict reasons a graded completion can carry (its `drop_reason` when wrong).

A module of its own so that the grader (`verify`) and the grading pool (`pool`) share them
without importing each other.
"""

CORRECT = "correct"
WRONG = "wrong_answer"
NO_ANSWER = "no_answer"
TIMEOUT = "grade_timeout"
ERROR = "grade_error"
NO_GOLD = "no_gold"  # the problem has no gold to grade against (source.gold: majority below the bars, or none)

Pair = tuple[str, str | None]  # (gold, predicted answer or None)
Verdict = tuple[bool, str]  # (correct, one of the outcomes above)
