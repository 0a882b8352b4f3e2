"""difficulty: per-problem pass rate k/K of the teacher, its Wilson interval, and a bucket.

Buckets are configured as (name, lower bound) pairs, easiest first; a problem is in the first
bucket whose bound its pass rate reaches, and a problem with no correct completion is `unsolved`.
Every problem stays in `problems`, unsolved ones included.
"""

from __future__ import annotations

import math

import polars as pl

from tracefactory.config import DifficultyConfig
from tracefactory.store.report import StageReport
from tracefactory.store.schema import (
    CORRECT,
    DIFFICULTY,
    MEMORISATION_GAP,
    MEMORISED,
    N_CORRECT,
    N_ROLLOUTS,
    PASS_RATE,
    PASS_RATE_HIGH,
    PASS_RATE_LOW,
    PROBLEM_ID,
    REWRITE_KIND,
    REWRITE_OF,
    UNSOLVED,
)


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    if n == 0:
        return 0.0, 1.0
    p, z2 = k / n, z * z
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def bucket(pass_rate: float, n_correct: int, cfg: DifficultyConfig) -> str:
    if n_correct == 0:
        return UNSOLVED
    return next(name for name, low in cfg.buckets if pass_rate >= low)


def difficulty(
    problems: pl.DataFrame, cfg: DifficultyConfig, rollouts: pl.DataFrame
) -> tuple[pl.DataFrame, StageReport]:
    """Adds `n_rollouts`, `n_correct`, `pass_rate` (k/K), its Wilson interval and `difficulty` to every
    problem, counted over its graded `rollouts`. Drops nothing: a problem the teacher never solved is
    tagged `unsolved` (and reported so) but stays in `problems`."""
    counts = rollouts.group_by(PROBLEM_ID).agg(pl.len().alias(N_ROLLOUTS), pl.col(CORRECT).sum().alias(N_CORRECT))
    out = (
        problems.drop([c for c in (N_ROLLOUTS, N_CORRECT) if c in problems.columns])
        .join(counts, on=PROBLEM_ID, how="left")
        .with_columns(pl.col(N_ROLLOUTS).fill_null(0).cast(pl.Int64), pl.col(N_CORRECT).fill_null(0).cast(pl.Int64))
    )
    ks, ns = out[N_CORRECT].to_list(), out[N_ROLLOUTS].to_list()
    rates = [k / n if n else 0.0 for k, n in zip(ks, ns, strict=True)]
    bounds = [wilson(k, n, cfg.z) for k, n in zip(ks, ns, strict=True)]
    out = out.with_columns(
        pl.Series(PASS_RATE, rates, dtype=pl.Float64),
        pl.Series(PASS_RATE_LOW, [b[0] for b in bounds], dtype=pl.Float64),
        pl.Series(PASS_RATE_HIGH, [b[1] for b in bounds], dtype=pl.Float64),
        pl.Series(DIFFICULTY, [bucket(r, k, cfg) for r, k in zip(rates, ks, strict=True)], dtype=pl.String),
    )
    out = memorisation(out, cfg)
    reasons = pl.Series([UNSOLVED if k == 0 else None for k in ks], dtype=pl.String)
    gaps = out.filter(pl.col(MEMORISATION_GAP).is_not_null())
    detail = {"originals_with_variants": len(gaps), "memorised": int(gaps[MEMORISED].sum() or 0)}
    return out, StageReport.from_reasons("difficulty", "problems", reasons, detail=detail)


def memorisation(problems: pl.DataFrame, cfg: DifficultyConfig) -> pl.DataFrame:
    """The memorisation probe (GSM-Symbolic): for an original with perturbed variants, its pass rate minus
    its variants' mean pass rate (`memorisation_gap`); `memorised` when the gap reaches
    `cfg.memorisation_gap` — the teacher solves the problem it may have seen, not its re-numbered copies."""
    if REWRITE_KIND not in problems.columns:  # problems that were never rewritten
        problems = problems.with_columns(
            pl.lit(None, pl.String).alias(REWRITE_OF), pl.lit(None, pl.String).alias(REWRITE_KIND)
        )
    variants = (
        problems.filter(pl.col(REWRITE_KIND) == "perturb")
        .group_by(REWRITE_OF)
        .agg(pl.col(PASS_RATE).mean().alias("_variants_rate"))
        .rename({REWRITE_OF: PROBLEM_ID})
    )
    out = problems.drop([c for c in (MEMORISATION_GAP, MEMORISED) if c in problems.columns])
    out = out.join(variants, on=PROBLEM_ID, how="left")
    gap = pl.col(PASS_RATE) - pl.col("_variants_rate")
    return out.with_columns(gap.alias(MEMORISATION_GAP), (gap >= cfg.memorisation_gap).alias(MEMORISED)).drop(
        "_variants_rate"
    )
