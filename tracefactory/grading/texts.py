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

import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import polars as pl
import pyarrow.parquet as pq

from tracefactory.grading.reading import POSITIONS, texts_of
from tracefactory.store.schema import COT, GENERATION_SCHEMA, REASONING, RESPONSE, ROLLOUT_KEY, SEED, TEACHER, TEXT

HEAVY = (TEXT, COT, REASONING, RESPONSE)  # what a completion's bytes are (its steps are the step scorer's)
KEPT_ASIDE = (ROLLOUT_KEY, SEED, TEACHER)  # read back with the texts (`with_texts`)
ON_DISK = (*HEAVY, *KEPT_ASIDE)  # what light rows lack and `with_texts` reads back
STORED = (TEXT, *KEPT_ASIDE, *POSITIONS)  # what a part holds of them (cot, reasoning, response: sliced from text)
PART, ROW = "_text_part", "_text_row"
LOCATORS = (PART, ROW)
_I = "_texts_i"
_B = "_texts_batch"
BATCH_TOKENS = 8_000_000  # a deferred table's rows whose texts are in memory at once (~32 MB of text a copy)


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
    loc = Locator({c: c for c in columns})
    indexed = rows.with_row_index(_I).with_columns(pl.lit(0, pl.Int64).alias(_B))  # one batch, in memory
    return _merged(indexed, [loc], [_take(_gather(indexed, loc, None), 0)]).drop(_I, _B)


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


@dataclass(frozen=True)
class Locator:
    """Where some rows' texts are: the columns naming each row's part and row there (null: the row holds its own),
    and which stored columns (of `ON_DISK`) become which columns of the row."""

    columns: Mapping[str, str]  # stored column -> the row's column
    part: str = PART
    row: str = ROW


@dataclass(frozen=True)
class Deferred:
    """A table whose texts are still on disk: its light `rows` in the table's order, `locators` to their texts,
    and `finish`, which turns a batch of rows with their texts into the table's rows (the columns derived from the
    texts, such as a conversation). Written by `batches`; `len` is the table's."""

    rows: pl.DataFrame
    locators: tuple[Locator, ...]
    finish: Callable[[pl.DataFrame], pl.DataFrame]
    weight: pl.Expr = field(default_factory=lambda: pl.lit(1))  # a row's texts, in tokens (batches' size)

    def __len__(self) -> int:
        return len(self.rows)

    def batches(self, scratch: Path, tokens: int = BATCH_TOKENS) -> Iterator[pl.DataFrame]:
        """The table's rows in order, a batch of about `tokens` at a time, finished (`in_order`, then `finish`)."""
        weights = self.rows.with_columns((self.weight.fill_null(0).cast(pl.Int64) + 1).alias(_B))[_B]
        numbers = (weights.cum_sum() - weights) // max(1, tokens)
        yield from (self.finish(batch) for batch in in_order(self.rows, self.locators, numbers, scratch))


def materialized(table: pl.DataFrame | Deferred) -> pl.DataFrame:
    """The whole table in memory (small tables, tests): a frame as it is, a deferred table finished whole."""
    if isinstance(table, pl.DataFrame):
        return table
    return table.finish(next(in_order(table.rows, table.locators, pl.Series([0] * len(table.rows)), None)))


def in_order(
    rows: pl.DataFrame, locators: Sequence[Locator], numbers: pl.Series, scratch: Path | None
) -> Iterator[pl.DataFrame]:
    """`rows` with their located texts, batch by batch in their order (`numbers`: each row's batch, non-decreasing),
    the locator columns dropped. One pass over the parts gathers the rows' texts into one scratch file per batch
    (under `scratch`, removed after; None: in memory); each batch is then read back whole and put in the rows'
    order. Memory holds the rows, one part's gathered texts, then one batch's — never all the texts. Rows a locator
    does not locate keep their own columns."""
    indexed = rows.with_row_index(_I).with_columns(numbers.cast(pl.Int64).alias(_B))
    drop = [_I, _B, *dict.fromkeys(c for loc in locators for c in (loc.part, loc.row) if c in rows.columns)]
    if not len(rows):
        yield _merged(indexed, locators, [None] * len(locators)).drop(drop)
        return
    if scratch is not None:
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
    try:
        gathered = [
            _gather(indexed, loc, None if scratch is None else scratch / str(i)) for i, loc in enumerate(locators)
        ]
        for (number,), batch in indexed.partition_by(_B, maintain_order=True, as_dict=True).items():
            yield _merged(batch, locators, [_take(g, number) for g in gathered]).drop(drop)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _schema(loc: Locator) -> dict[str, pl.DataType]:
    return {_I: pl.UInt32, **{out: GENERATION_SCHEMA.get(stored, pl.String) for stored, out in loc.columns.items()}}


def _gather(indexed: pl.DataFrame, loc: Locator, into: Path | None) -> dict[int, list[pl.DataFrame] | Path]:
    """The located rows' `loc.columns`, read a part at a time, by batch: appended to one file per batch under
    `into` (answers {batch: its file}), or kept in memory (None: answers {batch: its pieces})."""
    schema = _schema(loc)
    located = indexed.filter(pl.col(loc.part).is_not_null()).select(_I, _B, loc.part, loc.row)
    pieces: dict[int, list[pl.DataFrame]] = {}
    writers: dict[int, pq.ParquetWriter] = {}
    if into is not None:
        into.mkdir()
    try:
        for (part,), group in located.group_by(loc.part, maintain_order=True):
            got = _read(str(part), list(loc.columns), group[loc.row]).rename(dict(loc.columns))
            got = got.with_columns(group[_I], group[_B]).select(*schema, _B).cast(schema)
            for (number,), piece in got.partition_by(_B, as_dict=True, include_key=False).items():
                if into is None:
                    pieces.setdefault(number, []).append(piece)
                    continue
                arrow = piece.to_arrow()
                if number not in writers:
                    writers[number] = pq.ParquetWriter(into / f"{number}.parquet", arrow.schema)
                writers[number].write_table(arrow)
    finally:
        for writer in writers.values():
            writer.close()
    return pieces if into is None else {number: into / f"{number}.parquet" for number in writers}


def _take(gathered: dict, number: int) -> pl.DataFrame | None:
    """A batch's gathered texts (its file read and removed), None where no row of it was located."""
    got = gathered.pop(number, None)
    if got is None or isinstance(got, list):
        return pl.concat(got) if got else None
    frame = pl.read_parquet(got)
    got.unlink()
    return frame


def _merged(batch: pl.DataFrame, locators: Sequence[Locator], got: list[pl.DataFrame | None]) -> pl.DataFrame:
    """`batch` with each locator's columns: the gathered ones where a row is located, the row's own elsewhere."""
    for loc, frame in zip(locators, got, strict=True):
        if frame is None:
            frame = pl.DataFrame(schema=_schema(loc))
        targets = list(loc.columns.values())
        have = [t for t in targets if t in batch.columns]
        frame = frame.rename({t: f"{t}{_I}" for t in have})
        batch = batch.join(frame, on=_I, how="left", maintain_order="left")
        batch = batch.with_columns(pl.coalesce(f"{t}{_I}", t).alias(t) for t in have)
        batch = batch.drop([f"{t}{_I}" for t in have])
    return batch
