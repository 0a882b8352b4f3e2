"""Graded completions whose texts stay on disk (`run.post: streaming`).

The grade stage writes each slice of the run's problems as one Parquet file of the stage cache: every column, with
each completion's `text` once and where its `cot`, `reasoning` and `response` are in it (the reading's `POSITIONS`),
not those texts again. What the stages after it hold in memory are *light rows*: every column but the texts
(`HEAVY`) and the others no stage before the tables reads (`KEPT_ASIDE`: the sample key, seed, teacher, finish reason
and the think block's counts — tens of bytes a row, gigabytes in a run of millions), plus a locator — the file of the
row's slice (`PART`, categorical: one string per slice) and its row there (`ROW`). A stage that needs a text asks
`with_texts` for the rows it needs, and gets them part by part: memory holds those rows' texts and one part's columns
at a time, not the run's. Rows without a locator (a rationale: made after grading, its texts in memory) keep what
they have.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Callable, Iterator, Mapping, Sequence

import polars as pl
import pyarrow.parquet as pq

from tracefactory.grading.reading import POSITIONS, texts_of
from tracefactory.store.schema import (
    COT,
    FINISH_REASON,
    REASONING,
    REASONING_COMPLETE,
    REASONING_TOKENS,
    RESPONSE,
    ROLLOUT_KEY,
    SEED,
    TEACHER,
    TEXT,
    THINK_CLOSED,
    empty,
)

HEAVY = (TEXT, COT, REASONING, RESPONSE)  # what a completion's bytes are (its steps are the step scorer's)
# read back with the texts (`with_texts`): what only the tables hold (the grade stage used the finish reason already)
KEPT_ASIDE = (ROLLOUT_KEY, SEED, TEACHER, FINISH_REASON, REASONING_TOKENS, THINK_CLOSED, REASONING_COMPLETE)
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


def _needs(columns: Sequence[str]) -> list[str]:
    """The stored columns that give `columns` (of `ON_DISK`): cot, reasoning and response are sliced from `text`."""
    sliced = any(c in (COT, REASONING, RESPONSE) for c in columns)
    wanted = [c for c in (TEXT, *KEPT_ASIDE) if c in columns or (c == TEXT and sliced)]
    return wanted + (list(POSITIONS) if sliced else [])


def _stored(part: str, columns: Sequence[str]) -> pl.DataFrame:
    """A part's stored `columns`, every row."""
    try:
        return pl.read_parquet(part, columns=list(columns))
    except (OSError, pl.exceptions.ComputeError) as exc:
        raise OSError(
            f"{part}: a graded part of this run is unreadable ({exc}); remove it and run again (it is graded again)"
        ) from exc


def _pick(stored: pl.DataFrame, columns: Sequence[str], rows: pl.Series) -> pl.DataFrame:
    """`columns` (of `ON_DISK`) of the `rows` of a part whose stored columns are `stored` (their `_needs` at least)."""
    sliced = [c for c in columns if c in (COT, REASONING, RESPONSE)]
    return stored.select(pl.col(_needs(columns)).gather(rows)).with_columns(texts_of(sliced)).select(columns)


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
    with _Gatherer(indexed, loc, None) as gatherer:
        return _merged(indexed, [loc], [_take(gatherer.done(), 0)]).drop(_I, _B)


def parts(rows: pl.DataFrame, gatherers: Sequence["_Gatherer"] = ()) -> Iterator[pl.DataFrame]:
    """`rows` cut where their part changes, each piece with what it lacks (`ON_DISK`) read back: the rows in their
    order, one part's texts in memory at a time (rows without a locator: as they are). Each part is read once for
    the rows and for `gatherers` too (a deferred table's texts in it: `Pass`)."""
    if not is_light(rows) or not len(rows):
        yield with_texts(rows, ON_DISK) if is_light(rows) else rows
        return
    code = pl.col(PART).to_physical().cast(pl.Int64).fill_null(-1)  # the categorical's codes: no string per row
    starts = rows.select((code != code.shift()).fill_null(True).arg_true())[PART].to_list()
    for start, end in zip(starts, [*starts[1:], len(rows)], strict=True):
        group = rows.slice(start, end - start)  # a view of the rows, not a copy
        part = group[PART][0]
        if part is None:
            yield with_texts(group, ON_DISK)
            continue
        stored = _stored(part, _needs(ON_DISK))  # what the rows need covers what any table's texts need
        indexed = group.with_row_index(_I)
        got = _pick(stored, ON_DISK, group[ROW]).with_columns(indexed[_I])
        yield _merged(indexed, [Locator({c: c for c in ON_DISK})], [got]).drop(_I)
        for gatherer in gatherers:
            gatherer.take(part, stored)
        del stored, got


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

    def numbers(self, tokens: int) -> pl.Series:
        """Each row's batch: rows in order, about `tokens` of texts a batch."""
        weights = self.rows.with_columns((self.weight.fill_null(0).cast(pl.Int64) + 1).alias(_B))[_B]
        return (weights.cum_sum() - weights) // max(1, tokens)

    def batches(self, scratch: Path, tokens: int = BATCH_TOKENS) -> Iterator[pl.DataFrame]:
        """The table's rows in order, a batch of about `tokens` at a time, finished: written on its own (`Pass`)."""
        with Pass({"table": self}, scratch, tokens) as one:
            yield from one.batches("table")


def materialized(table: pl.DataFrame | Deferred) -> pl.DataFrame:
    """The whole table in memory (small tables, tests): a frame as it is, a deferred table finished whole."""
    if isinstance(table, pl.DataFrame):
        return table
    indexed = _indexed(table.rows, pl.Series([0] * len(table.rows)))
    gatherers = [_Gatherer(indexed, loc, None) for loc in table.locators]
    return table.finish(next(_batches(indexed, table.locators, gatherers)))


class Pass:
    """The tables written from the graded parts, each part's texts read once: the rollouts' light rows part by part
    with their texts (`parts`, first), every deferred table's texts in a part gathered into its scratch files (one
    per batch) on the way; then each deferred table in its order, batch by batch (`batches`): each batch's file read
    back whole and put in the rows' order (parts no row of the rollouts is in are read then). Memory holds the rows,
    one part's texts, then one batch's — never all the texts. Rows a locator does not locate keep their own columns.
    A context: the scratch folder goes at its end."""

    def __init__(self, tables: Mapping[str, Deferred], scratch: Path, tokens: int = BATCH_TOKENS):
        self.tables, self.scratch = dict(tables), scratch
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        self.indexed = {name: _indexed(t.rows, t.numbers(tokens)) for name, t in self.tables.items()}
        self.gatherers = {
            name: [_Gatherer(self.indexed[name], loc, scratch / name / str(i)) for i, loc in enumerate(t.locators)]
            for name, t in self.tables.items()
        }

    def __enter__(self) -> "Pass":
        return self

    def __exit__(self, *exc) -> None:
        for gatherers in self.gatherers.values():
            for gatherer in gatherers:
                gatherer.close()
        shutil.rmtree(self.scratch, ignore_errors=True)

    def parts(self, rows: pl.DataFrame) -> Iterator[pl.DataFrame]:
        yield from parts(rows, [g for gatherers in self.gatherers.values() for g in gatherers])

    def batches(self, name: str) -> Iterator[pl.DataFrame]:
        table = self.tables[name]
        yield from (table.finish(b) for b in _batches(self.indexed[name], table.locators, self.gatherers[name]))


def _indexed(rows: pl.DataFrame, numbers: pl.Series) -> pl.DataFrame:
    return rows.with_row_index(_I).with_columns(numbers.cast(pl.Int64).alias(_B))


def _batches(indexed: pl.DataFrame, locators: Sequence[Locator], gatherers: Sequence["_Gatherer"]):
    """The rows of `indexed` batch by batch, each with its texts (what `gatherers`, one per locator, gathered; the
    parts they have not read yet are read now, each once), the locator and helper columns dropped."""
    drop = [_I, _B, *dict.fromkeys(c for loc in locators for c in (loc.part, loc.row) if c in indexed.columns)]
    needs = _needs(list(dict.fromkeys(c for gatherer in gatherers for c in gatherer.needs)))
    for part in dict.fromkeys(part for gatherer in gatherers for part in gatherer.todo):  # each read once for all
        stored = _stored(part, needs)
        for gatherer in gatherers:
            gatherer.take(part, stored)
    gathered = []
    for gatherer in gatherers:
        with gatherer:
            gathered.append(gatherer.done())
    if not len(indexed):
        yield _merged(indexed, locators, [None] * len(locators)).drop(drop)
        return
    for (number,), batch in indexed.partition_by(_B, maintain_order=True, as_dict=True).items():
        yield _merged(batch, locators, [_take(g, number) for g in gathered]).drop(drop)


@cache
def _dtypes() -> dict[str, pl.DataType]:
    """The types of what light rows lack (`ON_DISK`): every one of them is a column of the `rollouts` table."""
    return dict(empty("rollouts").schema)


def _schema(loc: Locator) -> dict[str, pl.DataType]:
    return {_I: pl.UInt32, **{out: _dtypes()[stored] for stored, out in loc.columns.items()}}


class _Gatherer:
    """One locator's rows of a table (`indexed`: numbered `_I`, each with its batch `_B`), their texts gathered part
    by part (`take`): appended to one file per batch under `into`, or kept in memory (None). `done` reads the parts
    not taken yet and answers {batch: its file} or {batch: its pieces}. A context: its files are closed at its end."""

    def __init__(self, indexed: pl.DataFrame, loc: Locator, into: Path | None):
        self.loc, self.into, self.schema, self.needs = loc, into, _schema(loc), list(loc.columns)
        located = indexed.filter(pl.col(loc.part).is_not_null()).select(_I, _B, loc.part, loc.row)
        self.todo = {str(part): group for (part,), group in located.group_by(loc.part, maintain_order=True)}
        self.pieces: dict[int, list[pl.DataFrame]] = {}
        self.writers: dict[int, pq.ParquetWriter] = {}
        if into is not None:
            into.mkdir(parents=True)

    def __enter__(self) -> "_Gatherer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def take(self, part: str, stored: pl.DataFrame | None = None) -> None:
        """The rows located in `part`, from `stored` (the part's columns, read already) or read here."""
        group = self.todo.pop(part, None)
        if group is None:
            return
        stored = _stored(part, _needs(self.needs)) if stored is None else stored
        got = _pick(stored, self.needs, group[self.loc.row]).rename(dict(self.loc.columns))
        got = got.with_columns(group[_I], group[_B]).select(*self.schema, _B).cast(self.schema)
        for (number,), piece in got.partition_by(_B, as_dict=True, include_key=False).items():
            if self.into is None:
                self.pieces.setdefault(number, []).append(piece)
                continue
            arrow = piece.to_arrow()
            if number not in self.writers:
                self.writers[number] = pq.ParquetWriter(self.into / f"{number}.parquet", arrow.schema)
            self.writers[number].write_table(arrow)

    def done(self) -> dict[int, list[pl.DataFrame] | Path]:
        for part in list(self.todo):
            self.take(part)
        self.close()
        return (
            self.pieces if self.into is None else {number: self.into / f"{number}.parquet" for number in self.writers}
        )

    def close(self) -> None:
        for writer in self.writers.values():
            writer.close()


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
