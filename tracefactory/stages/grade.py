"""grade: annotate each completion with its anatomy (`think`), extracted answer, correctness and (if
wrong) a reason."""

from __future__ import annotations

import polars as pl

from tracefactory.config import GradeConfig
from tracefactory.grading.outcomes import CORRECT as OK
from tracefactory.grading.outcomes import NO_GOLD
from tracefactory.grading.think import NO_THINKING_KNOWN, Anatomy, ThinkSpec, dissect, split_tokens
from tracefactory.grading.verify import extract_answer, grade_pairs
from tracefactory.store.report import StageReport
from tracefactory.store.schema import (
    ANSWER,
    CORRECT,
    COT,
    COT_TOKENS,
    DROP_REASON,
    FINISH_REASON,
    PRED_ANSWER,
    PROBLEM_ID,
    REASONING,
    REASONING_COMPLETE,
    REASONING_TOKENS,
    RESPONSE,
    RESPONSE_TOKENS,
    TEXT,
    THINK_CLOSED,
)

TRUNCATED = "truncated"


def anatomy(rollouts: pl.DataFrame, think: ThinkSpec) -> tuple[pl.DataFrame, list[Anatomy]]:
    """The completions with `cot`, `reasoning`, `response`, `think_closed`, `reasoning_complete`,
    `reasoning_tokens` and `response_tokens` (see `tracefactory.grading.think`)."""
    texts = rollouts[TEXT].to_list()
    parts = [dissect(t, think.opener, think.mode) for t in texts]
    counted = rollouts[REASONING_TOKENS].to_list() if REASONING_TOKENS in rollouts.columns else [None] * len(texts)
    tokens = [
        split_tokens(n, t, a, c)
        for n, t, a, c in zip(rollouts[COT_TOKENS].to_list(), texts, parts, counted, strict=True)
    ]
    finished = [f == "stop" for f in rollouts[FINISH_REASON].to_list()]
    out = rollouts.with_columns(
        pl.Series(COT, [a.cot for a in parts], dtype=pl.String),
        pl.Series(REASONING, [a.reasoning for a in parts], dtype=pl.String),
        pl.Series(RESPONSE, [a.response for a in parts], dtype=pl.String),
        pl.Series(THINK_CLOSED, [a.closed for a in parts], dtype=pl.Boolean),
        pl.Series(
            REASONING_COMPLETE,
            [None if a.closed is None else a.closed and f for a, f in zip(parts, finished, strict=True)],
            dtype=pl.Boolean,
        ),
        pl.Series(REASONING_TOKENS, [r for r, _ in tokens], dtype=pl.Int64),
        pl.Series(RESPONSE_TOKENS, [n for _, n in tokens], dtype=pl.Int64),
    )
    return out, parts


def grade(
    rollouts: pl.DataFrame, cfg: GradeConfig, problems: pl.DataFrame, think: ThinkSpec = NO_THINKING_KNOWN
) -> tuple[pl.DataFrame, StageReport]:
    """Adds the anatomy columns, `pred_answer`, `correct` and `drop_reason` to every completion: `wrong_answer`,
    `no_answer` (none of `cfg.answer_formats`' markers), `grade_timeout` / `grade_error` (the grader gave up on
    the pair), `truncated` (cut at max_tokens — not a trace, even if it holds an answer, when `drop_truncated`),
    and for a thinking teacher `think_unclosed`, `think_malformed` or `empty_response` (never graded: an
    answer inside an unfinished block is not an answer). The answer is taken from the response only. Golds
    come from `problems`; each distinct (gold, answer) pair is graded once."""
    golds = dict(problems.select(PROBLEM_ID, ANSWER).iter_rows())
    out, parts = anatomy(rollouts, think)
    cut = [cfg.drop_truncated and f == "length" for f in rollouts[FINISH_REASON].to_list()]
    # why a completion is not graded at all: cut at the budget first, then a broken think block, then no gold (its
    # answer is still extracted: a pseudo-gold is voted from them)
    skip = [TRUNCATED if c else a.problem for c, a in zip(cut, parts, strict=True)]
    preds = [extract_answer(a.response, cfg.answer_formats) for a in parts]  # "" (unclosed block): None
    pairs = [(golds[pid], p) for pid, p in zip(rollouts[PROBLEM_ID].to_list(), preds, strict=True)]
    skip = [why or (NO_GOLD if gold is None else None) for why, (gold, _) in zip(skip, pairs, strict=True)]
    verdicts = grade_pairs([pr for pr, why in zip(pairs, skip, strict=True) if not why], cfg.workers, cfg.timeout_s)
    correct, reasons = [], []
    for pair, why in zip(pairs, skip, strict=True):
        ok, why = (False, why) if why else verdicts[pair]
        correct.append(ok)
        reasons.append(None if why == OK else why)
    out = out.with_columns(
        pl.Series(PRED_ANSWER, preds, dtype=pl.String),
        pl.Series(CORRECT, correct, dtype=pl.Boolean),
        pl.Series(DROP_REASON, reasons, dtype=pl.String),
    )
    return out, StageReport.from_reasons("grade", "completions", out[DROP_REASON])
