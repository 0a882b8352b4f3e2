"""grade: annotate each completion with its extracted answer, correctness and (if wrong) a reason."""

from __future__ import annotations

import polars as pl

from tracefactory.config import GradeConfig
from tracefactory.outcomes import CORRECT as OK
from tracefactory.report import StageReport
from tracefactory.schema import ANSWER, CORRECT, DROP_REASON, FINISH_REASON, PRED_ANSWER, PROBLEM_ID, TEXT
from tracefactory.verify import extract_answer, grade_pairs

TRUNCATED = "truncated"


def grade(rollouts: pl.DataFrame, cfg: GradeConfig, problems: pl.DataFrame) -> tuple[pl.DataFrame, StageReport]:
    """Adds `pred_answer`, `correct` and `drop_reason` to every completion: `wrong_answer`,
    `no_answer` (none of `cfg.answer_formats`' markers), `grade_timeout` / `grade_error` (the grader gave up on the
    pair), or `truncated` (cut at max_tokens — not a trace, even if it holds an answer, when
    `drop_truncated`). Golds come from `problems`; each distinct (gold, answer) pair is graded once."""
    golds = dict(problems.select(PROBLEM_ID, ANSWER).iter_rows())
    preds = [extract_answer(t, cfg.answer_formats) for t in rollouts[TEXT].to_list()]
    pairs = [(golds[pid], p) for pid, p in zip(rollouts[PROBLEM_ID].to_list(), preds)]
    truncated = [cfg.drop_truncated and f == "length" for f in rollouts[FINISH_REASON].to_list()]
    verdicts = grade_pairs([pr for pr, cut in zip(pairs, truncated) if not cut], cfg.workers, cfg.timeout_s)
    correct, reasons = [], []
    for pair, cut in zip(pairs, truncated):
        ok, why = (False, TRUNCATED) if cut else verdicts[pair]
        correct.append(ok)
        reasons.append(None if why == OK else why)
    out = rollouts.with_columns(
        pl.Series(PRED_ANSWER, preds, dtype=pl.String),
        pl.Series(CORRECT, correct, dtype=pl.Boolean),
        pl.Series(DROP_REASON, reasons, dtype=pl.String),
    )
    return out, StageReport.from_reasons("grade", "completions", out[DROP_REASON])
