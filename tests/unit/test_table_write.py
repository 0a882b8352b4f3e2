"""Tables are written slice by slice (bounded memory): the same file as one write for a table under a slice, the
same rows (in row groups) for a larger one, and nothing left behind when a later slice breaks the schema."""

import random

import polars as pl
import pyarrow.parquet as pq
import pytest

from tracefactory.errors import SchemaError
from tracefactory.store import io
from tracefactory.store.schema import empty, validate_frame


def _rollouts(n: int, seed: int = 0) -> pl.DataFrame:
    """A `rollouts` table of `n` rows with a value of its type in every column (texts of 0-400 characters)."""
    rng = random.Random(seed)
    values = {
        pl.String: lambda: "".join(rng.choice("ab é\n🙂") for _ in range(rng.randint(0, 400))),
        pl.Int64: lambda: rng.randint(0, 1000),
        pl.Float64: lambda: rng.random(),
        pl.Boolean: lambda: rng.random() < 0.5,
        pl.List(pl.String): lambda: ["step"] * rng.randint(0, 3),
        pl.List(pl.Float64): lambda: [rng.random()] * rng.randint(0, 3),
    }
    schema = empty("rollouts").schema
    return pl.DataFrame({c: [values[t]() for _ in range(n)] for c, t in schema.items()}, schema=schema)


def test_a_table_under_one_slice_is_the_same_file_as_one_write(tmp_path):
    frame = _rollouts(300)
    io.write_parquet(validate_frame(frame, "rollouts"), tmp_path / "one.parquet")
    io.write_table_file(frame, "rollouts", tmp_path / "sliced.parquet")
    assert (tmp_path / "one.parquet").read_bytes() == (tmp_path / "sliced.parquet").read_bytes()


def test_a_larger_table_is_written_in_slices_with_the_same_rows(tmp_path, monkeypatch):
    frame = _rollouts(300)
    monkeypatch.setattr(io, "SLICE_BYTES", 5_000)
    parts = io.slices(frame, 5_000)
    assert len(parts) > 10 and sum(n for _, n in parts) == 300
    assert [a for a, _ in parts] == [0, *[a + n for a, n in parts[:-1]]]  # consecutive, in order
    io.write_table_file(frame, "rollouts", tmp_path / "t.parquet")
    assert pq.ParquetFile(tmp_path / "t.parquet").num_row_groups == len(parts)
    assert pl.read_parquet(tmp_path / "t.parquet").equals(frame.select(empty("rollouts").columns))


def test_a_later_slice_that_breaks_the_schema_leaves_no_file(tmp_path, monkeypatch):
    frame = _rollouts(300).with_columns(
        pl.when(pl.int_range(pl.len()) == 290).then(None).otherwise(pl.col("problem_id")).alias("problem_id")
    )
    monkeypatch.setattr(io, "SLICE_BYTES", 5_000)
    with pytest.raises(SchemaError, match="problem_id"):
        io.write_table_file(frame, "rollouts", tmp_path / "t.parquet")
    assert list(tmp_path.iterdir()) == []


def test_a_stage_cache_entry_is_written_in_slices_and_reads_back_whole(tmp_path, monkeypatch):
    from tracefactory.store.report import StageReport

    frame = _rollouts(300)
    report = StageReport("grade", "completions", 300, 120, {"wrong_answer": 180})
    monkeypatch.setattr(io, "SLICE_BYTES", 5_000)
    cache = io.StageCache(tmp_path)
    cache.put("k", frame, report)
    assert pq.ParquetFile(cache.path("k")).num_row_groups > 10
    got, got_report = cache.get("k")
    assert got.equals(frame) and got_report == report
