"""The edges: reading inputs, and the run directory (tables as Parquet parts, atomic writes, markers).

Layout of a run directory:

    RUN/problems/part-0.parquet     RUN/rollouts/part-0.parquet     RUN/dataset/part-0.parquet
    RUN/rejected/part-0.parquet     RUN/funnel/part-0.parquet       RUN/manifest.json
    RUN/_work/generations/<rollout_key>/chunk-<shard>-<run>-<seq>.parquet   raw teacher output, written
                                     as requests finish; the footer commits the chunk (problems, run)
    RUN/_work/markers/<name>.done                              JSON: what was finished, when
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tracefactory.config import SourceConfig
from tracefactory.errors import ConfigError
from tracefactory.schema import COT_TOKENS, PROBLEM_ID, RAW, ROW_INDEX, SAMPLE_INDEX, validate_frame


def _atomic(path: Path, write) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_parquet(table: pa.Table, path: Path) -> None:
    _atomic(path, lambda tmp: pq.write_table(table, tmp, compression="zstd"))


def write_json(obj: Any, path: Path) -> None:
    def w(tmp):
        Path(tmp).write_text(json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n")

    _atomic(path, w)


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def table_path(self, table: str, part: str = "0") -> Path:
        return self.root / table / f"part-{part}.parquet"

    def write_table(self, frame: pl.DataFrame, table: str, part: str = "0") -> Path:
        path = self.table_path(table, part)
        write_parquet(validate_frame(frame, table), path)
        return path

    def read_table(self, table: str) -> pl.DataFrame:
        return pl.read_parquet(self.root / table / "*.parquet")

    def tables(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir() and any(p.glob("*.parquet"))
                      and not p.name.startswith("_"))

    # raw generations: the resumable, expensive part
    def generations(self, rollout_key: str) -> "GenerationStore":
        return GenerationStore(self.root / "_work" / "generations" / rollout_key)

    def marker(self, name: str) -> Path:
        return self.root / "_work" / "markers" / f"{name}.done"

    def is_done(self, name: str) -> bool:
        return self.marker(name).is_file()

    def mark_done(self, name: str, **info: Any) -> None:
        write_json({"done_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **info}, self.marker(name))


_COMMITS: dict[tuple[str, int, int], dict] = {}  # commit records read, by (path, mtime, size)


class GenerationStore:
    """The teacher's output for one rollout key, keyed by problem: each chunk of finished requests is
    ONE Parquet file whose footer carries its commit record (which problems it completes, the run that
    generated them, failed requests), written atomically (temp file + rename): a chunk either exists
    whole, committed, or not at all — a process killed mid-write leaves only a hidden temp file, and
    those problems are generated again. Chunk names are unique per process, so shards may be written
    concurrently (several workers, one directory)."""

    KEY = b"tracefactory.commit"

    def __init__(self, root: Path):
        self.root = root

    def commits(self) -> list[dict]:
        if not self.root.is_dir():
            return []
        out = []
        for path in sorted(self.root.glob("chunk-*.parquet")):
            try:
                st = path.stat()
                key = (str(path), st.st_mtime_ns, st.st_size)
                if key not in _COMMITS:  # a chunk never changes once written: read each footer once
                    meta = pq.read_schema(path).metadata or {}
                    _COMMITS[key] = {**json.loads(meta[self.KEY]), "chunk": path.stem}
                out.append(_COMMITS[key])
            except (OSError, ValueError, KeyError, pa.ArrowException):  # not a chunk of ours
                continue
        return out

    def done_ids(self) -> set[str]:
        return {pid for c in self.commits() for pid in c["problems"]}

    def commit(self, frame: pl.DataFrame, problem_ids: list[str], *, shard: int, run_id: str, seq: int,
               failed: dict[str, str] | None = None) -> None:
        record = {"run": run_id, "shard": shard, "problems": problem_ids, "completions": len(frame),
                  "tokens": int(frame[COT_TOKENS].sum() or 0) if len(frame) else 0, "failed": failed or {},
                  "at": time.time()}
        table = frame.to_arrow()
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), self.KEY: json.dumps(record)})
        write_parquet(table, self.root / f"chunk-{shard:05d}-{run_id}-{seq:05d}.parquet")

    def read(self, problem_ids: set[str] | None = None) -> pl.DataFrame | None:
        """Committed completions (of `problem_ids` if given), each (problem, sample) once; None if none."""
        paths = [self.root / f"{c['chunk']}.parquet" for c in self.commits() if c["completions"]
                 and (problem_ids is None or not problem_ids.isdisjoint(c["problems"]))]
        if not paths:
            return None
        frame = pl.read_parquet(paths)
        if problem_ids is not None:
            frame = frame.filter(pl.col(PROBLEM_ID).is_in(list(problem_ids)))
        return frame.unique([PROBLEM_ID, SAMPLE_INDEX], keep="first", maintain_order=True)


# ---- reading inputs: every row becomes (row_index, raw JSON text); the load stage validates ----------

def _resolve_format(src: SourceConfig) -> str:
    if src.format != "auto":
        return src.format
    p = Path(src.path)
    if p.suffix in (".jsonl", ".json", ".ndjson"):
        return "jsonl"
    if p.suffix == ".parquet" or (p.is_dir() and any(p.glob("*.parquet"))):
        return "parquet"
    return "hf"


def _jsonl_lines(path: Path) -> Iterator[str]:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                yield line.rstrip("\n")


def _records_to_raw(records: Iterator[dict]) -> Iterator[str]:
    for rec in records:
        yield json.dumps(rec, default=str, ensure_ascii=False)


def read_source(src: SourceConfig) -> pl.DataFrame:
    """All input rows as (row_index, raw) — raw is the JSON text of the row, even when it is malformed."""
    fmt = _resolve_format(src)
    if fmt in ("jsonl", "parquet") and not Path(src.path).exists():
        raise ConfigError("source.path", src.path, f"an existing {fmt} file or folder")
    if fmt == "jsonl":
        lines: Iterator[str] = _jsonl_lines(Path(src.path))
    elif fmt == "parquet":
        lines = _records_to_raw(iter(pl.read_parquet(src.path).to_dicts()))
    else:
        lines = _records_to_raw(iter(_load_hf(src)))
    raw = []
    for i, line in enumerate(lines):
        if src.limit is not None and i >= src.limit:
            break
        raw.append(line)
    return pl.DataFrame({ROW_INDEX: list(range(len(raw))), RAW: raw}, schema={ROW_INDEX: pl.Int64, RAW: pl.String})


def _load_hf(src: SourceConfig):
    import datasets

    split = src.split if src.limit is None else f"{src.split}[:{src.limit}]"
    try:
        return datasets.load_dataset(src.path, src.subset, split=split)
    except (FileNotFoundError, ValueError) as exc:
        raise ConfigError("source.path", src.path, "a datasets name or local dataset folder", str(exc)) from exc


def source_identity(src: SourceConfig) -> dict[str, Any]:
    p = Path(src.path)
    info: dict[str, Any] = {"path": src.path, "format": _resolve_format(src)}
    if p.is_file():
        info["sha256"] = file_sha256(p)
        info["bytes"] = p.stat().st_size
    elif info["format"] == "hf":
        info.update(split=src.split, subset=src.subset)
    return info
