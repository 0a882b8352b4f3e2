"""curriculum: the selected traces joined with their problems, ordered easy -> hard.

Order: pass rate (high first), then the Wilson lower bound (more evidence of ease first), then
shorter traces, then problem_id and sample_index — a total order, so ranks are stable across runs.
"""

from __future__ import annotations

import time

import polars as pl

from tracefactory.report import StageReport
from tracefactory.schema import (COT, COT_TOKENS, CURRICULUM_RANK, PASS_RATE, PASS_RATE_LOW, PROBLEM_ID, SAMPLE_INDEX,
                                 TEXT, columns)
from tracefactory.stages.select import selected


def curriculum(problems: pl.DataFrame, rollouts: pl.DataFrame) -> tuple[pl.DataFrame, StageReport]:
    t0 = time.time()
    picked = selected(rollouts).rename({TEXT: COT})
    joined = picked.join(problems, on=PROBLEM_ID, how="inner")
    ordered = joined.sort([PASS_RATE, PASS_RATE_LOW, COT_TOKENS, PROBLEM_ID, SAMPLE_INDEX],
                          descending=[True, True, False, False, False])
    ordered = ordered.with_row_index(CURRICULUM_RANK).with_columns(pl.col(CURRICULUM_RANK).cast(pl.Int64))
    dataset = ordered.select([c for c in columns("dataset") if c in ordered.columns])
    missing = len(picked) - len(dataset)  # a trace whose problem is not in `problems` — should never happen
    report = StageReport("curriculum", "completions", len(picked), len(dataset), {"no_problem": missing},
                         seconds=time.time() - t0)
    return dataset, report
