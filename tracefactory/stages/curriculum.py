"""curriculum: the selected traces joined with their problems, in training order.

easy_first order: pass rate (high first), then the Wilson lower bound (more evidence of ease first),
then shorter traces, then problem_id and sample_index — a total order, so ranks are stable across
runs. hard_first reverses the first two keys only (ties still go to shorter traces).
"""

from __future__ import annotations

import polars as pl

from tracefactory.config import CurriculumConfig
from tracefactory.report import StageReport
from tracefactory.schema import (
    COT,
    COT_TOKENS,
    CURRICULUM_RANK,
    PASS_RATE,
    PASS_RATE_LOW,
    PROBLEM_ID,
    SAMPLE_INDEX,
    TEXT,
    columns,
)
from tracefactory.stages.select import selected

NO_PROBLEM = "no_problem"


def curriculum(
    rollouts: pl.DataFrame, cfg: CurriculumConfig, problems: pl.DataFrame
) -> tuple[pl.DataFrame, StageReport]:
    """The `dataset` table: every surviving trace of `rollouts` (its text as `cot`) with its problem's
    tags from `problems`, ordered and numbered by `curriculum_rank`. A trace without a problem row
    (never expected) is dropped as `no_problem`."""
    picked = selected(rollouts).rename({TEXT: COT})
    joined = picked.join(problems, on=PROBLEM_ID, how="inner")
    easy_first = cfg.order == "easy_first"
    ordered = joined.sort(
        [PASS_RATE, PASS_RATE_LOW, COT_TOKENS, PROBLEM_ID, SAMPLE_INDEX],
        descending=[easy_first, easy_first, False, False, False],
    )
    ordered = ordered.with_row_index(CURRICULUM_RANK).with_columns(pl.col(CURRICULUM_RANK).cast(pl.Int64))
    dataset = ordered.select([c for c in columns("dataset") if c in ordered.columns])
    report = StageReport(
        "curriculum", "completions", len(picked), len(dataset), {NO_PROBLEM: len(picked) - len(dataset)}
    )
    return dataset, report
