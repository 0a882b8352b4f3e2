"""Reading inputs: every input row becomes (row_index, raw JSON text of the row); the load stage
validates. Formats: JSONL, JSON (an array of objects, or one object per line), CSV, Parquet, a
Hugging Face dataset (hub name, local data folder, or a folder written by `save_to_disk`).

Text files are read as the text they are: a UTF-8 byte-order mark (what many editors and spreadsheet
exports write) is dropped, and CRLF or CR line ends count as line ends.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any, Iterator

import polars as pl

from tracefactory.config import SourceConfig
from tracefactory.errors import ConfigError
from tracefactory.store.io import file_sha256
from tracefactory.store.schema import RAW, ROW_INDEX

TEXT_ENCODING = "utf-8-sig"  # UTF-8, with a leading byte-order mark dropped if there is one
_SUFFIXES = {".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "json", ".csv": "csv", ".parquet": "parquet"}
SAVED_DATASET_FILES = ("dataset_dict.json", "state.json")  # what `save_to_disk` writes


def resolve_format(src: SourceConfig) -> str:
    if src.format != "auto":
        return src.format
    p = Path(src.path)
    if p.suffix in _SUFFIXES:
        return _SUFFIXES[p.suffix]
    if p.is_dir() and any(p.glob("*.parquet")):
        return "parquet"
    return "hf"


def _jsonl_lines(path: Path) -> Iterator[str]:
    with open(path, encoding=TEXT_ENCODING, errors="replace", newline=None) as f:  # universal newlines
        for line in f:
            if line.strip():
                yield line.rstrip("\n")


def _json_rows(path: Path) -> Iterator[str]:
    """A JSON array: one raw row per element. Anything else is read as JSON lines."""
    text = path.read_text(encoding=TEXT_ENCODING, errors="replace")  # universal newlines: only "\n" left
    if not text.lstrip().startswith("["):
        yield from (line for line in text.split("\n") if line.strip())
        return
    try:
        rows = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError("source.path", str(path), "a JSON array of objects (or JSON lines)", str(exc)) from None
    yield from _records_to_raw(iter(rows))


def _csv_rows(path: Path) -> Iterator[str]:
    with open(path, encoding=TEXT_ENCODING, errors="replace", newline="") as f:  # csv handles CRLF itself
        yield from _records_to_raw(csv.DictReader(f, restkey="_extra_columns"))


def _records_to_raw(records: Iterator[Any]) -> Iterator[str]:
    for rec in records:
        yield json.dumps(rec, default=str, ensure_ascii=False)


def read_source(src: SourceConfig) -> pl.DataFrame:
    """All input rows as (row_index, raw) — raw is the JSON text of the row, even when it is malformed."""
    fmt = resolve_format(src)
    path = Path(src.path)
    if fmt != "hf" and not path.exists():
        raise ConfigError("source.path", src.path, f"an existing {fmt} file or folder")
    readers = {
        "jsonl": _jsonl_lines,
        "json": _json_rows,
        "csv": _csv_rows,
        "parquet": lambda p: _records_to_raw(iter(pl.read_parquet(p).to_dicts())),
    }
    lines = readers[fmt](path) if fmt in readers else _records_to_raw(iter(_load_hf(src)))
    raw = []
    for i, line in enumerate(lines):
        if src.limit is not None and i >= src.limit:
            break
        raw.append(line)
    return pl.DataFrame({ROW_INDEX: list(range(len(raw))), RAW: raw}, schema={ROW_INDEX: pl.Int64, RAW: pl.String})


def is_saved_dataset(path: Path) -> bool:
    return path.is_dir() and any((path / f).is_file() for f in SAVED_DATASET_FILES)


def _load_hf(src: SourceConfig):
    import datasets

    if is_saved_dataset(Path(src.path)):
        return _load_saved(src)
    split = src.split if src.limit is None else f"{src.split}[:{src.limit}]"
    try:
        return datasets.load_dataset(src.path, src.subset, split=split)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError("source.path", src.path, "a datasets name or local dataset folder", str(exc)) from exc


def _load_saved(src: SourceConfig):
    """A folder written by `Dataset.save_to_disk` / `DatasetDict.save_to_disk`."""
    import datasets

    data = datasets.load_from_disk(src.path)
    if isinstance(data, datasets.DatasetDict):
        if src.split not in data:
            raise ConfigError("source.split", src.split, f"one of the saved dataset's splits: {sorted(data)}")
        data = data[src.split]
    return data.select(range(min(src.limit, len(data)))) if src.limit is not None else data


def source_identity(src: SourceConfig) -> dict[str, Any]:
    p = Path(src.path)
    info: dict[str, Any] = {"path": src.path, "format": resolve_format(src)}
    if p.is_file():
        info["sha256"] = file_sha256(p)
        info["bytes"] = p.stat().st_size
    elif info["format"] == "hf":
        info.update(split=src.split, subset=src.subset)
    return info
