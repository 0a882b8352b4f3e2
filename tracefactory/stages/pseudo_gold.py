"""pseudo_gold: problems without a gold (`source.gold: majority`) get their rollouts' majority answer as one —
the same vote as the gold audit (`audit.votes`: answers by value) and the same bars (`audit.share` of the rollouts
with an answer and `audit.min_votes`). Such a problem is `gold_source = majority` everywhere: its traces are graded
against the teacher's own answer, never verified against a real gold. Below the bars a problem stays without one
(`below_bars`): its rollouts are kept, none is taught.
"""

from __future__ import annotations

import polars as pl

from tracefactory.config import AuditConfig
from tracefactory.stages.audit import clears_bars, votes
from tracefactory.store.report import StageReport
from tracefactory.store.schema import (
    ANSWER,
    GOLD_SOURCE,
    MAJORITY_ANSWER,
    MAJORITY_GOLD,
    PROBLEM_ID,
)

BELOW_BARS = "below_bars"


def pseudo_gold(rollouts: pl.DataFrame, cfg: AuditConfig, problems: pl.DataFrame) -> tuple[pl.DataFrame, StageReport]:
    """`problems` with the majority answer of each gold-less problem's graded `rollouts` as its `answer` and
    `gold_source = majority`, where the vote clears the bars. Reports on the problems without a gold: kept = given
    a pseudo-gold."""
    goldless = problems.filter(pl.col(ANSWER).is_null())[PROBLEM_ID]
    voted = votes(rollouts.filter(pl.col(PROBLEM_ID).is_in(goldless.implode())))  # none is correct: all vote
    labels = voted.filter(clears_bars(cfg)).select(PROBLEM_ID, pl.col(MAJORITY_ANSWER).alias("_pseudo"))
    out = (
        problems.join(labels, on=PROBLEM_ID, how="left")
        .with_columns(
            pl.coalesce(ANSWER, "_pseudo").alias(ANSWER),
            pl.when(pl.col("_pseudo").is_not_null())
            .then(pl.lit(MAJORITY_GOLD))
            .otherwise(GOLD_SOURCE)
            .alias(GOLD_SOURCE),
        )
        .drop("_pseudo")
    )
    labelled = set(labels[PROBLEM_ID])
    reasons = pl.Series([None if pid in labelled else BELOW_BARS for pid in goldless], dtype=pl.String)
    return out, StageReport.from_reasons("pseudo_gold", "problems", reasons)
