"""select: among each problem's correct completions keep the `keep` shortest (ties: lower sample_index)."""

from __future__ import annotations

import polars as pl

from tracefactory.config import SelectConfig
from tracefactory.store.report import StageReport
from tracefactory.store.schema import CORRECT, COT_TOKENS, DROP_REASON, PROBLEM_ID, SAMPLE_INDEX

NOT_SHORTEST = "not_shortest"


def select(rollouts: pl.DataFrame, cfg: SelectConfig) -> tuple[pl.DataFrame, StageReport]:
    """Annotates `not_shortest` on the correct completions beyond each problem's `keep` shortest
    (by `cot_tokens`, ties to the lower sample index); every row stays. Reports on the completions
    still in the running: correct ones that no earlier filter dropped."""
    rank = pl.struct(COT_TOKENS, SAMPLE_INDEX).rank("ordinal").over(PROBLEM_ID, CORRECT)
    out = rollouts.with_columns(
        pl.when(pl.col(DROP_REASON).is_null() & pl.col(CORRECT) & (rank > cfg.keep))
        .then(pl.lit(NOT_SHORTEST))
        .otherwise(pl.col(DROP_REASON))
        .alias(DROP_REASON)
    )
    in_running = pl.col(CORRECT) & pl.col(DROP_REASON).is_null() | (pl.col(DROP_REASON) == NOT_SHORTEST)
    reasons = out.select(CORRECT, DROP_REASON).filter(in_running)[DROP_REASON]  # not a copy of every column
    return out, StageReport.from_reasons("select", "completions", reasons)


def selected(rollouts: pl.DataFrame) -> pl.DataFrame:
    """The traces that survived every filter."""
    return rollouts.filter(pl.col(CORRECT) & pl.col(DROP_REASON).is_null())
