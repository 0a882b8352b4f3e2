"""Graded completions whose texts stay on disk (`run.post: streaming`).

The grade stage writes each slice of the run's problems as one Parquet file of the stage cache: every column, with
each completion's `text` once and where its `cot`, `reasoning` and `response` are in it (the reading's `POSITIONS`),
not those texts again. What the stages after it hold in memory are *light rows*: every column but the texts
(`HEAVY`) and the few others no stage before the tables reads (`KEPT_ASIDE`: the sample key, seed, teacher — tens of
bytes a row, gigabytes in a run of millions), plus a locator — the file of the row's slice (`PART`, categorical: one
string per slice) and its row there (`ROW`). A stage that needs a text asks `with_texts` for the rows it needs, and
gets them part by part: memory holds those rows' texts and one part's columns at a time, not the run's. Rows without
a locator (a rationale: made after grading, its texts in memory) keep what they have.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator, Sequence

import polars as pl

from tracefactory.grading.reading import POSITIONS, texts_of
from tracefactory.store.schema import COT, GENERATION_SCHEMA, REASONING, RESPONSE, ROLLOUT_KEY, SEED, TEACHER, TEXT

HEAVY = (TEXT, COT, REASONING, RESPONSE)  # what a completion's bytes are (its steps are the step scorer's)
KEPT_ASIDE = (ROLLOUT_KEY, SEED, TEACHER)  # read back with the texts (`with_texts`)
ON_DISK = (*HEAVY, *KEPT_ASIDE)  # what light rows lack and `with_texts` reads back
STORED = (TEXT, *KEPT_ASIDE, *POSITIONS)  # what a part holds of them (cot, reasoning, response: sliced from text)
PART, ROW = "_text_part", "_text_row"
LOCATORS = (PART, ROW)
_I = "_texts_i"


def light(graded: pl.DataFrame, path: Path) -> pl.DataFrame:
    """`graded` (the rows of the part file at `path`, in its order) without its texts, with their locators."""
    return graded.drop([c for c in (*ON_DISK, *POSITIONS) if c in graded.columns]).with_columns(
        pl.lit(str(path)).cast(pl.Categorical).alias(PART),
        pl.int_range(pl.len(), dtype=pl.Int64).alias(ROW),
    )


def is_light(frame: pl.DataFrame) -> bool:
    return PART in frame.columns


def strip(frame: pl.DataFrame) -> pl.DataFrame:
    """`frame` without its locators (what a table holds)."""
    return frame.drop([c for c in (PART, ROW) if c in frame.columns])


def _read(part: str, columns: Sequence[str], rows: pl.Series) -> pl.DataFrame:
    """`columns` (of `ON_DISK`) of the `rows` of a part: as stored, or sliced from `text` (`texts_of`)."""
    sliced = [c for c in columns if c in (COT, REASONING, RESPONSE)]
    wanted = [c for c in (TEXT, *KEPT_ASIDE) if c in columns or (c == TEXT and sliced)]
    try:
        stored = pl.read_parquet(part, columns=wanted + (list(POSITIONS) if sliced else []))
    except (OSError, pl.exceptions.ComputeError) as exc:
        raise OSError(
            f"{part}: a graded part of this run is unreadable ({exc}); remove it and run again (it is graded again)"
        ) from exc
    stored = stored.select(pl.all().gather(rows))
    return stored.with_columns(texts_of(sliced)).select(columns)


def with_texts(rows: pl.DataFrame, columns: Sequence[str]) -> pl.DataFrame:
    """`rows` with `columns` (of `ON_DISK`) read from their parts where they have a locator, in their order. A frame
    without locators must hold the columns already (the in-memory path): it is returned as it is."""
    if not is_light(rows):
        missing = [c for c in columns if c not in rows.columns]
        if missing:
            raise KeyError(f"rows without {missing} and without locators to read them from")
        return rows
    indexed = rows.with_row_index(_I)
    located = indexed.filter(pl.col(PART).is_not_null()).select(_I, PART, ROW)
    fetched = [
        _read(str(part), columns, group[ROW]).with_columns(group[_I])
        for (part,), group in located.group_by(PART, maintain_order=True)
    ]
    schema = {_I: pl.UInt32, **{c: GENERATION_SCHEMA.get(c, pl.String) for c in columns}}
    got = pl.concat(fetched) if fetched else pl.DataFrame(schema=schema)
    have = [c for c in columns if c in rows.columns]  # rows without a locator keep their own
    out = indexed.join(got.rename({c: f"{c}{_I}" for c in have}), on=_I, how="left", maintain_order="left")
    out = out.with_columns(pl.coalesce(f"{c}{_I}", c).alias(c) for c in have).drop([f"{c}{_I}" for c in have])
    return out.drop(_I)


def parts(rows: pl.DataFrame) -> Iterator[pl.DataFrame]:
    """`rows` cut where their part changes, each piece with what it lacks (`ON_DISK`) read back: the rows in their
    order, one part's texts in memory at a time (rows without a locator: as they are)."""
    if not is_light(rows) or not len(rows):
        yield with_texts(rows, ON_DISK) if is_light(rows) else rows
        return
    code = pl.col(PART).to_physical().cast(pl.Int64).fill_null(-1)  # the categorical's codes: no string per row
    run = (code != code.shift()).cum_sum()
    groups = rows.with_columns(run.fill_null(0).alias(_I)).partition_by(_I, maintain_order=True, include_key=False)
    for group in groups:
        yield with_texts(group, ON_DISK)
