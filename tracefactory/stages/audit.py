"""audit: golds that look wrong. A problem whose graded rollouts agree on one answer that is not its gold — the
same value (`grading.verify.vote_key`) in at least `min_votes` rollouts and at least `share` of those with an
answer — while at most `gold_share` of them reach the gold (none, by default) is `gold_suspect`: the teacher is
more likely right than the gold when it agrees with itself that much and never with the gold. A suspect
problem's correct traces are dropped (`gold_suspect`, unless `audit.exclude` is off): a trace that reaches a wrong
gold teaches a wrong solution. The problems stay in `problems` with `majority_answer`, `majority_share` and
`majority_votes`, and the suspects are listed in the `audit` table for a person to check.
"""

from __future__ import annotations

import polars as pl

from tracefactory.config import AuditConfig
from tracefactory.grading.texts import PART, ROW, with_texts
from tracefactory.grading.verify import vote_key
from tracefactory.store.report import StageReport
from tracefactory.store.schema import (
    ANSWER,
    CORRECT,
    COT,
    DROP_REASON,
    GOLD_SOURCE,
    GOLD_SUSPECT,
    LEVEL,
    MAJORITY_ANSWER,
    MAJORITY_COT,
    MAJORITY_SHARE,
    MAJORITY_VOTES,
    N_ANSWERED,
    PRED_ANSWER,
    PROBLEM_ID,
    QUESTION,
    SAMPLE_INDEX,
    SOURCE,
    SOURCE_GOLD,
    columns,
)

EXAMPLE, REACHED = "_example", "_reached"  # votes()'s working columns: the majority's first sample; gold reached
OWN = "_own_gold"


def votes(rollouts: pl.DataFrame) -> pl.DataFrame:
    """Per problem: `n_answered` (rollouts with an extracted answer), how many of them reach the gold (`_reached`)
    and the most common wrong answer — its
    `majority_answer` (the lowest sample's text), `majority_votes`, `majority_share` of the answered, and the
    sample that wrote it first (`_example`). Ties go to the answer first written (lowest sample index)."""
    # the columns it counts only: a run's rows are millions (filters copy what they keep)
    # two queries over the rows, each reading the columns it needs: no copy of the answered rows (millions in a run)
    answered = pl.col(PRED_ANSWER).is_not_null()
    counts = (
        rollouts.lazy()
        .filter(answered)
        .group_by(PROBLEM_ID)
        .agg(pl.len().alias(N_ANSWERED), pl.col(CORRECT).sum().alias(REACHED))
        .collect()
    )
    wrong = (
        rollouts.lazy()
        .filter(answered & ~pl.col(CORRECT))
        .select(PROBLEM_ID, SAMPLE_INDEX, PRED_ANSWER)
        .collect()
        .with_columns(pl.col(PRED_ANSWER).map_elements(vote_key, return_dtype=pl.String).alias("_key"))
    )
    top = (
        wrong.sort(PROBLEM_ID, SAMPLE_INDEX)
        .group_by(PROBLEM_ID, "_key", maintain_order=True)
        .agg(
            pl.len().alias(MAJORITY_VOTES),
            pl.col(PRED_ANSWER).first().alias(MAJORITY_ANSWER),
            pl.col(SAMPLE_INDEX).first().alias(EXAMPLE),
        )
        .sort(PROBLEM_ID, MAJORITY_VOTES, EXAMPLE, descending=[False, True, False])
        .unique(PROBLEM_ID, keep="first", maintain_order=True)
        .drop("_key")
    )
    out = counts.join(top, on=PROBLEM_ID, how="left")
    return out.with_columns(
        (pl.col(MAJORITY_VOTES) / pl.col(N_ANSWERED)).alias(MAJORITY_SHARE),
        pl.col(MAJORITY_VOTES).fill_null(0).cast(pl.Int64),
    )


def clears_bars(cfg: AuditConfig) -> pl.Expr:
    """A `votes()` row whose majority has at least `min_votes` votes and `share` of the answers."""
    return (pl.col(MAJORITY_VOTES) >= cfg.min_votes) & (pl.col(MAJORITY_SHARE) >= cfg.share)


def audit(
    rollouts: pl.DataFrame, cfg: AuditConfig, problems: pl.DataFrame
) -> tuple[tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame], StageReport]:
    """(`rollouts` with the suspects' correct traces dropped as `gold_suspect`, the per-problem verdicts: every
    problem of `problems` with `gold_suspect` and the majority columns, the `audit` table). Reports on the
    correct traces still in the running (the grade stage's kept), as the stages after it do; `detail` counts the
    suspect problems."""
    agree = clears_bars(cfg)
    # only a gold from the source can be suspect: a pseudo-gold is the majority, a problem without one has none
    own = (pl.col(GOLD_SOURCE) == SOURCE_GOLD).fill_null(False) if GOLD_SOURCE in problems.columns else pl.lit(True)
    verdicts = (
        problems.select(PROBLEM_ID, own.alias(OWN))
        .join(votes(rollouts), on=PROBLEM_ID, how="left")
        .with_columns(
            pl.col(N_ANSWERED).fill_null(0).cast(pl.Int64),
            pl.col(MAJORITY_VOTES).fill_null(0).cast(pl.Int64),
            (agree & pl.col(OWN) & (pl.col(REACHED) <= cfg.gold_share * pl.col(N_ANSWERED)))
            .fill_null(False)
            .alias(GOLD_SUSPECT),
        )
        .drop(REACHED, OWN)
    )
    suspects = verdicts.filter(pl.col(GOLD_SUSPECT))[PROBLEM_ID].implode()
    in_running = pl.col(CORRECT) & pl.col(DROP_REASON).is_null()
    if cfg.exclude:
        rollouts = rollouts.with_columns(
            pl.when(in_running & pl.col(PROBLEM_ID).is_in(suspects))
            .then(pl.lit(GOLD_SUSPECT))
            .otherwise(pl.col(DROP_REASON))
            .alias(DROP_REASON)
        )
    was = rollouts.select(CORRECT, DROP_REASON).filter(
        in_running | (pl.col(CORRECT) & (pl.col(DROP_REASON) == GOLD_SUSPECT))
    )
    detail = {"suspect_problems": int(verdicts[GOLD_SUSPECT].sum())}
    report = StageReport.from_reasons("audit", "completions", was[DROP_REASON], detail=detail)
    table = _table(problems, verdicts, rollouts)
    return (rollouts, verdicts.drop(EXAMPLE), table), report


def _table(problems: pl.DataFrame, verdicts: pl.DataFrame, rollouts: pl.DataFrame) -> pl.DataFrame:
    """The `audit` table: each suspect problem with its gold, the answer its rollouts agree on, and the first
    trace that wrote it (`majority_cot`), most confident first."""
    suspects = verdicts.filter(pl.col(GOLD_SUSPECT))
    # the example traces of the suspects only: their texts may be on disk (`grading.texts`)
    located = rollouts.select(
        PROBLEM_ID, pl.col(SAMPLE_INDEX).alias(EXAMPLE), *[c for c in (COT, PART, ROW) if c in rollouts.columns]
    ).join(suspects.select(PROBLEM_ID, EXAMPLE), on=[PROBLEM_ID, EXAMPLE], how="semi")
    examples = with_texts(located, [COT]).select(PROBLEM_ID, EXAMPLE, pl.col(COT).alias(MAJORITY_COT))
    out = (
        suspects.join(problems.select(PROBLEM_ID, QUESTION, ANSWER, SOURCE, LEVEL), on=PROBLEM_ID, how="left")
        .join(examples, on=[PROBLEM_ID, EXAMPLE], how="left")
        .sort([MAJORITY_SHARE, MAJORITY_VOTES, PROBLEM_ID], descending=[True, True, False])
    )
    return out.select(columns("audit"))
