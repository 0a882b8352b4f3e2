"""grade: annotate each completion with its anatomy (`think`), extracted answer, correctness and (if
wrong) a reason."""

from __future__ import annotations

import polars as pl

from tracefactory.config import DEFAULT_ANSWER_FORMATS, GradeConfig
from tracefactory.grading.outcomes import CORRECT as OK
from tracefactory.grading.outcomes import NO_ANSWER, NO_GOLD
from tracefactory.grading.reading import ANSWER as READ_ANSWER
from tracefactory.grading.reading import (
    CLOSED,
    FAST_OK,
    FAST_WHY,
    POSITIONS,
    PROBLEM,
    READ_REASONING_TOKENS,
    READ_RESPONSE_TOKENS,
    READ_SCHEMA,
    read_completions,
    texts_of,
)
from tracefactory.grading.reading import GOLD as READ_GOLD
from tracefactory.grading.think import NO_THINKING_KNOWN, ThinkSpec
from tracefactory.grading.verify import grade_pairs
from tracefactory.store.failpoints import failpoint
from tracefactory.store.report import StageReport
from tracefactory.store.schema import (
    ANSWER,
    CORRECT,
    DROP_REASON,
    FINISH_REASON,
    PRED_ANSWER,
    PROBLEM_ID,
    REASONING_COMPLETE,
    REASONING_TOKENS,
    RESPONSE_TOKENS,
    THINK_CLOSED,
)

TRUNCATED = "truncated"
# the grade stage's own working columns
_GOLD, _PROBLEM, _SKIP, _OK, _WHY = "_gold", "_problem", "_skip", "_ok", "_why"


def anatomy(
    rollouts: pl.DataFrame,
    think: ThinkSpec,
    formats: tuple[str, ...] = DEFAULT_ANSWER_FORMATS,
    workers: int = 0,
    positions: bool = False,
) -> tuple[pl.DataFrame, pl.Series]:
    """The completions with `cot`, `reasoning`, `response`, `think_closed`, `reasoning_complete`,
    `reasoning_tokens` and `response_tokens` (see `tracefactory.grading.think`), and `pred_answer` (the
    response's final answer by `formats`' markers; none for an unclosed block): read in `workers` processes
    (`tracefactory.grading.reading`), the text columns sliced here — or, with `positions`, not sliced: the reading's
    `POSITIONS` columns instead, from which `texts_of` slices them when asked. Also each completion's think-block
    problem (`think.spans`; null when none) and, where `rollouts` holds the reading's `GOLD` column, the verdicts the
    reading is certain of (`FAST_OK`, `FAST_WHY`)."""
    read = read_completions(rollouts, think, formats, workers)
    finished = pl.col(FINISH_REASON) == "stop"
    sliced = [] if positions else texts_of()
    out = (
        pl.concat([rollouts, read], how="horizontal")
        .with_columns(
            *sliced,
            pl.col(CLOSED).alias(THINK_CLOSED),
            pl.when(pl.col(CLOSED).is_null()).then(None).otherwise(pl.col(CLOSED) & finished).alias(REASONING_COMPLETE),
            pl.col(READ_REASONING_TOKENS).alias(REASONING_TOKENS),
            pl.col(READ_RESPONSE_TOKENS).alias(RESPONSE_TOKENS),
            pl.col(READ_ANSWER).alias(PRED_ANSWER),
        )
        .drop([c for c in READ_SCHEMA if not (positions and c in POSITIONS)])
        .drop(READ_GOLD, strict=False)
    )
    return out, read.select(PROBLEM, FAST_OK, FAST_WHY)


def grade(
    rollouts: pl.DataFrame,
    cfg: GradeConfig,
    problems: pl.DataFrame,
    think: ThinkSpec = NO_THINKING_KNOWN,
    positions: bool = False,
) -> tuple[pl.DataFrame, StageReport]:
    """Adds the anatomy columns, `pred_answer`, `correct` and `drop_reason` to every completion: `wrong_answer`,
    `no_answer` (none of `cfg.answer_formats`' markers), `grade_timeout` / `grade_error` (the grader gave up on
    the pair), `truncated` (cut at max_tokens — not a trace, even if it holds an answer, when `drop_truncated`),
    and for a thinking teacher `think_unclosed`, `think_malformed` or `empty_response` (never graded: an
    answer inside an unfinished block is not an answer). The answer is taken from the response only. Golds
    come from `problems`; each distinct (gold, answer) pair is graded once. With `positions`, the text columns are
    left as where they are in `text` (see `anatomy`)."""
    golds = problems.select(PROBLEM_ID, pl.col(ANSWER).alias(_GOLD)).unique(PROBLEM_ID, keep="last")  # one per id
    unknown = rollouts.select(PROBLEM_ID).unique().join(golds, on=PROBLEM_ID, how="anti")
    if len(unknown):
        raise KeyError(f"completions of problems not in the problems table: {unknown[PROBLEM_ID].head(5).to_list()}")
    given = rollouts.select(PROBLEM_ID).join(golds, on=PROBLEM_ID, how="left", maintain_order="left")[_GOLD]
    out, read = anatomy(
        rollouts.with_columns(given.alias(READ_GOLD)), think, cfg.answer_formats, cfg.workers, positions
    )
    # why a completion is not graded at all: cut at the budget first, then a broken think block, then no gold (its
    # answer is still extracted: a pseudo-gold is voted from them)
    cut = pl.lit(cfg.drop_truncated) & (pl.col(FINISH_REASON) == "length")
    skip = pl.when(cut).then(pl.lit(TRUNCATED)).otherwise(pl.col(_PROBLEM))
    skip = pl.coalesce(skip, pl.when(pl.col(_GOLD).is_null()).then(pl.lit(NO_GOLD)))
    keyed = (
        out.select(FINISH_REASON, PRED_ANSWER)
        .with_columns(given, read[PROBLEM].alias(_PROBLEM), read[FAST_OK], read[FAST_WHY])
        .select(_GOLD, PRED_ANSWER, skip.alias(_SKIP), FAST_OK, FAST_WHY)
    )
    failpoint("grade.batch")  # the batch read, its verdicts not given
    # each distinct (gold, answer) pair the reading was not certain of once, in the order of the rows
    graded = keyed.filter(pl.col(_SKIP).is_null())
    todo = graded.filter(pl.col(FAST_OK).is_null() & pl.col(PRED_ANSWER).is_not_null())
    todo = todo.select(_GOLD, PRED_ANSWER).unique(maintain_order=True)
    pairs = todo.rows()
    verdicts = grade_pairs(pairs, cfg.workers, cfg.timeout_s)
    judged = todo.with_columns(
        pl.Series(_OK, [verdicts[p][0] for p in pairs], dtype=pl.Boolean),
        pl.Series(_WHY, [verdicts[p][1] for p in pairs], dtype=pl.String),
    )
    keyed = keyed.join(judged, on=[_GOLD, PRED_ANSWER], how="left", maintain_order="left")
    answered = pl.col(PRED_ANSWER).is_not_null()
    ok = pl.coalesce(FAST_OK, _OK, pl.when(~answered).then(False))
    why = pl.coalesce(FAST_WHY, _WHY, pl.when(~answered).then(pl.lit(NO_ANSWER)))
    verdict = keyed.select(
        pl.when(pl.col(_SKIP).is_null()).then(ok).otherwise(False).alias(CORRECT),
        pl.coalesce(_SKIP, pl.when(why != OK).then(why)).alias(DROP_REASON),
    )
    out = out.with_columns(verdict.get_columns())
    return out, StageReport.from_reasons("grade", "completions", out[DROP_REASON])
