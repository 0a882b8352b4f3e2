"""The edges: reading inputs, and the run directory (tables as Parquet parts, atomic writes, markers).

Layout of a run directory:

    RUN/problems/part-0.parquet     RUN/rollouts/part-0.parquet     RUN/dataset/part-0.parquet
    RUN/rejected/part-0.parquet     RUN/funnel/part-0.parquet       RUN/manifest.json
    RUN/_work/generations/chunk-<shard>-<run>-<seq>.parquet   raw teacher output, written as requests
                                     finish; the footer commits the chunk (request keys, run, checksum)
    RUN/_work/quarantine/<file>.<time>  damaged files, moved aside (their work is done again)
    RUN/_work/graded/<key>.parquet      graded rollouts, keyed by the content of their inputs; the footer
                                        holds the stage report (a re-run after a crash does not regrade)
    RUN/_work/step_scores/<key>.parquet step scores, saved block by block
    RUN/logs/run-<time>.log             engine, compiler and library output of `tracefactory run`
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import hashlib
import itertools
import json
import logging
import os
import shutil
import socket
import sys
import tempfile
import time
import types
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import AbstractSet, Any, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from tracefactory.errors import RunLockedError
from tracefactory.store.failpoints import failpoint
from tracefactory.store.report import StageReport
from tracefactory.store.schema import (
    COT_TOKENS,
    FIRST_BAD_STEP,
    GENERATION_SCHEMA,
    PROBLEM_ID,
    PROBLEM_KEY,
    ROLLOUT_KEY,
    SAMPLE_INDEX,
    STEP_COLUMNS,
    STEP_SCORES,
    STEP_TOKENS,
    STEPS,
    ScoreKey,
    StepScores,
    validate_frame,
)

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _atomic(path: Path, write) -> None:
    """Write through a temp file, fsync it, rename it into place, fsync the directory: after a crash or
    a power loss the file is either the old one or the whole new one, never empty or torn."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_PARQUET = dict(compression="zstd", write_page_checksum=True)
SLICE_BYTES = 64 << 20  # text per slice a table is written in (converted to Arrow and compressed one at a time)


def write_parquet(table: pa.Table, path: Path) -> None:
    _atomic(path, lambda tmp: pq.write_table(table, tmp, **_PARQUET))


def slices(frame: pl.DataFrame, limit: int = SLICE_BYTES) -> list[tuple[int, int]]:
    """(offset, rows) of consecutive slices of `frame` holding about `limit` bytes of its string columns each (a
    row counts 64 bytes besides); one slice for a frame under the limit. A function of the rows alone."""
    strings = [c for c, t in frame.schema.items() if t == pl.String]
    size = pl.sum_horizontal([pl.col(c).str.len_bytes().fill_null(0) for c in strings]) + 64 if strings else pl.lit(64)
    ends = frame.select(((size.cum_sum() - 1) // limit).alias("g")).with_row_index("i")
    if not len(ends) or ends["g"][-1] == 0:
        return [(0, len(frame))]
    parts = ends.group_by("g", maintain_order=True).agg(pl.col("i").min().alias("start"), pl.len().alias("rows"))
    return [(int(a), int(n)) for a, n in parts.select("start", "rows").iter_rows()]


def write_table_file(frame: pl.DataFrame | Iterable[pl.DataFrame], table: str, path: Path) -> None:
    """`frame` checked against the table's schema (`validate_frame`) and written atomically, slice by slice
    (`slices`: one row group each), so memory holds one slice's Arrow copy, not the table's. A table under one
    slice is written exactly as `write_parquet` writes it. `frame` may be an iterable of frames, the table's rows
    in order (each sliced in turn): the table is never whole in memory."""
    write_frame(frame, path, lambda part: validate_frame(part, table))


def write_frame(
    frame: pl.DataFrame | Iterable[pl.DataFrame],
    path: Path,
    to_arrow: Callable[[pl.DataFrame], pa.Table] = pl.DataFrame.to_arrow,
    metadata: dict[bytes, bytes] | None = None,
) -> None:
    """`frame` (or each frame of an iterable, in turn) written atomically slice by slice (`slices`: one row group
    each; `to_arrow` converts a slice), with `metadata` added to the file's schema. A slice is compressed and written
    in a thread while the next one is made (the frames of an iterable read and built): both take a core, and memory
    holds one slice more."""
    frames = [frame] if isinstance(frame, pl.DataFrame) else frame

    def write(tmp: str) -> None:
        writer, writing = None, None
        with ThreadPoolExecutor(1, thread_name_prefix="write-frame") as thread:
            try:
                for whole in frames:
                    for start, rows in slices(whole, SLICE_BYTES):
                        if writer is not None and not rows:
                            continue  # an empty piece after the first adds no row group
                        arrow = to_arrow(whole.slice(start, rows))
                        if metadata:
                            arrow = arrow.replace_schema_metadata({**(arrow.schema.metadata or {}), **metadata})
                        if writer is None:
                            writer = pq.ParquetWriter(tmp, arrow.schema, **_PARQUET)
                        if writing is not None:
                            writing.result()  # one slice in the thread at a time, in order
                        writing = thread.submit(writer.write_table, arrow)
                        del arrow
                if writing is not None:
                    writing.result()
                if writer is None:
                    raise ValueError(f"{path}: no frame to write (not even an empty one)")
            finally:
                if writing is not None:
                    writing.exception()  # an unfinished write ends before the file is closed
                if writer is not None:
                    writer.close()

    _atomic(path, write)


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


_LOCKED: set[str] = set()  # run directories this process holds the lock of


def default_run_dir(name: str) -> Path:
    return Path("runs") / name


class RunDir:
    def __init__(self, root: str | Path):
        self.root = Path(root)

    def table_path(self, table: str, part: str = "0") -> Path:
        return self.root / table / f"part-{part}.parquet"

    def write_table(self, frame: pl.DataFrame, table: str, part: str = "0") -> Path:
        path = self.table_path(table, part)
        write_table_file(frame, table, path)
        return path

    def remove_table(self, table: str) -> None:
        shutil.rmtree(self.root / table, ignore_errors=True)

    def read_table(self, table: str) -> pl.DataFrame:
        return pl.read_parquet(self.root / table / "*.parquet")

    def tables(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(
            p.name
            for p in self.root.iterdir()
            if p.is_dir() and any(p.glob("*.parquet")) and not p.name.startswith("_")
        )

    # raw generations: the resumable, expensive part
    def generations(self) -> "GenerationStore":
        return GenerationStore(self.root / "_work" / "generations", self.quarantine, self.holds_lock)

    def holds_lock(self) -> bool:
        """Whether this process holds the run directory's lock (`lock`)."""
        return str(self.root.resolve()) in _LOCKED

    def quarantine(self, path: Path, why: str) -> None:
        """Move a damaged file aside (never delete it: it may be evidence), saying where and why."""
        dest = self.root / "_work" / "quarantine" / f"{path.name}.{time.strftime('%Y%m%d-%H%M%S')}"
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(path, dest)
        except FileNotFoundError:  # another reader of this run moved it first
            return
        _fsync_dir(path.parent)
        log.warning("%s is damaged (%s): moved to %s; its work is done again", path, why, dest)

    def stage_cache(self, stage: str) -> "StageCache":
        return StageCache(self.root / "_work" / stage)

    def step_scores(self, key: str) -> "StepScoreStore":
        return StepScoreStore(self.root / "_work" / "step_scores" / f"{key}.parquet", self.quarantine)

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """One writer per run directory: an exclusive `flock` on RUN/.lock for as long as the run holds it.
        The kernel drops the lock when the holder dies, however it dies, so a stale lock never blocks.
        Re-entrant within a process (the CLI takes it before Prefect starts, the flow again)."""
        self.root.mkdir(parents=True, exist_ok=True)
        key = str(self.root.resolve())
        if key in _LOCKED:
            yield
            return
        f = open(self.root / ".lock", "a+")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read().strip() or "another process"
            f.close()
            raise RunLockedError(
                f"run directory {self.root} is in use by {holder}; wait for that run to end, "
                "or give this one another --out"
            ) from None
        try:
            f.seek(0)
            f.truncate()
            f.write(f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n")
            f.flush()
            _LOCKED.add(key)
            yield
        finally:
            _LOCKED.discard(key)
            for root in [r for r in _LISTING if r.startswith(key + os.sep)]:  # trusted while the lock is held only
                del _LISTING[root]
            f.truncate(0)
            fcntl.flock(f, fcntl.LOCK_UN)
            f.close()

    def log_path(self) -> Path:
        return self.root / "logs" / f"run-{time.strftime('%Y%m%d-%H%M%S')}.log"


_COMMITS: dict[tuple[str, int, int], dict] = {}  # verified commit records, by (path, mtime, size)


@dataclasses.dataclass
class _Index:
    """What the commit records hold, kept up to date as chunks are committed (every shard of a run asks, and a
    run of millions of samples has thousands of chunks): built once, then extended by the new records only."""

    records: dict[str, dict]  # chunk name -> its commit record
    history: dict[str, tuple[str, str, str]]
    by_problem: dict[str, list[str]]  # problem -> the chunks that hold its samples
    latest: float = 0.0  # the latest commit time seen
    listing: list[dict] | None = None  # the `commits` listing it was last brought up to date with

    def add(self, record: dict) -> None:
        self.records[record["chunk"]] = record
        self.history.update({pid: tuple(parts) for pid, parts in record["parts"].items()})
        for pid in record["keys"]:
            self.by_problem.setdefault(pid, []).append(record["chunk"])
        self.latest = max(self.latest, record["at"])


_INDEX: dict[str, _Index] = {}  # per store root: the few most recent ones (a long-lived worker serves many runs)
_INDEXED_ROOTS = 4
# per store root, while its run's lock is held: its directory's mtime and the records listed then (see `commits`)
_LISTING: dict[str, tuple[int, list[dict]]] = {}


class _Packed(str):
    """A problem's sample keys in a commit record, as one string (`SAMPLE_KEY_CHARS` characters each): a run of
    millions of samples keeps every record in memory, and one string per problem is a quarter of a list of them."""

    __slots__ = ()

    def keys(self) -> list[str]:
        n = SAMPLE_KEY_CHARS
        return [self[i : i + n] for i in range(0, len(self), n)]


SAMPLE_KEY_CHARS = 16  # `RequestKey.sample`'s hex digits


def _packed(record: dict) -> dict:
    """`record` with each problem's sample keys packed (`_Packed`); a record written before samples had keys of
    their own (one request key per problem) stays as it is."""
    keys = record["keys"]
    for pid, value in keys.items():
        if isinstance(value, list) and all(len(k) == SAMPLE_KEY_CHARS for k in value):
            keys[pid] = _Packed("".join(value))
    record["parts"] = {pid: [sys.intern(p) for p in parts] for pid, parts in record["parts"].items()}
    return record


def _sample_keys(value: Any) -> list[str]:
    """A problem's sample keys as a commit record holds them: packed, a list, or one request key (legacy)."""
    if isinstance(value, _Packed):
        return value.keys()
    return value if isinstance(value, list) else [value]


class DamagedFile(Exception):
    """A file of the run directory that fails its checks (unreadable, truncated, checksum mismatch)."""


class GenerationStore:
    """The teacher's output, found by sample key (see `stages.rollout.RequestKey`): each chunk of
    finished requests is ONE Parquet file whose footer carries its commit record — the samples it
    completes (problem -> their keys), the run that generated them, failed or skipped requests, and a checksum
    of its rows — written atomically (temp file + rename, fsynced). A chunk exists whole, committed, or
    not at all. Each chunk is verified when a process first reads it (Parquet page CRCs and the row
    checksum); a damaged one is moved to `RUN/_work/quarantine/` with a warning, and its requests are
    generated again. Chunk names are unique per process, so shards may be written concurrently."""

    KEY = b"tracefactory.commit"

    def __init__(self, root: Path, quarantine: Callable[[Path, str], None], locked: Callable[[], bool] = lambda: False):
        self.root = root
        self.quarantine = quarantine
        self.locked = locked  # whether this process holds the run's lock (no other writer but its own engines)
        self._listing_key = str(root.resolve())  # under the run's resolved root, as its lock is known

    def _verify(self, path: Path) -> dict:
        try:
            record = json.loads((pq.read_schema(path).metadata or {})[self.KEY])
            frame = pl.from_arrow(pq.read_table(path, page_checksum_verification=True))
        except KeyError:
            raise DamagedFile("no commit record in its footer") from None
        except (OSError, ValueError, pa.ArrowException) as exc:
            raise DamagedFile(f"unreadable: {exc}") from None
        checksum = content_key(frame) if record.get("checksum_version") == 2 else _row_checksum(frame)
        if len(frame) != record.get("completions") or checksum != record.get("checksum"):
            raise DamagedFile("its rows do not match the checksum in its commit record")
        return _packed({**record, "chunk": path.stem})

    def commits(self) -> list[dict]:
        """The commit records of every intact chunk (a damaged chunk is quarantined on the way). While this process
        holds the run's lock, a listing is reused as long as the directory's mtime has not moved since it was taken
        and it had last moved over a second before (so a chunk added in the same clock tick cannot hide): every
        shard of a run asks, and a run of millions of samples has thousands of chunks. Chunks are renamed into the
        directory, which moves its mtime; a chunk damaged in place is caught by the next run's listing."""
        if not self.root.is_dir():
            return []
        trusted, root = self.locked(), self._listing_key
        if trusted:
            mtime = os.stat(self.root).st_mtime_ns
            cached = _LISTING.get(root)
            if cached is not None and cached[0] == mtime:
                return cached[1]
        listed_at = time.time_ns()
        out = self._list()
        if trusted and mtime < listed_at - 1_000_000_000 and os.stat(self.root).st_mtime_ns == mtime:
            _LISTING[root] = (mtime, out)
        else:
            _LISTING.pop(root, None)
        return out

    def _list(self) -> list[dict]:
        found = []
        for path in sorted(self.root.glob("chunk-*.parquet")):
            try:
                st = path.stat()
            except FileNotFoundError:  # quarantined by a reader in another task of this run
                continue
            found.append((path, (str(path), st.st_mtime_ns, st.st_size)))
        # a chunk never changes once written: verify each once per process — the new ones in threads (reading
        # Parquet and hashing release the GIL: a resumed run of thousands of chunks verifies them all at once)
        new = [(path, key) for path, key in found if key not in _COMMITS]
        with ThreadPoolExecutor(max_workers=min(len(new), os.cpu_count() or 1) or 1) as pool:
            checked = list(pool.map(self._checked, [path for path, _ in new]))
        for (path, key), (record, why) in zip(new, checked, strict=True):
            if record is not None:
                _COMMITS[key] = record
            elif why is not None:
                self.quarantine(path, why)
        return [_COMMITS[key] for _, key in found if key in _COMMITS]

    def _checked(self, path: Path) -> tuple[dict | None, str | None]:
        """(its commit record, None) for an intact chunk, (None, why) for a damaged one, (None, None) if gone."""
        try:
            return self._verify(path), None
        except DamagedFile as why:
            return (None, None) if not path.exists() else (None, str(why))

    @staticmethod
    def _keys(commit: dict) -> list[str]:
        """The sample keys a commit record holds (a record written before samples had keys of their own holds one
        request key per problem: it matches no sample key, so those requests are generated again)."""
        return [k for v in commit["keys"].values() for k in _sample_keys(v)]

    def _index(self) -> _Index:
        listing = self.commits()
        index = _INDEX.get(str(self.root))
        if index is not None and index.listing is listing:  # a listing reused (see `commits`): nothing new
            return index
        records = {c["chunk"]: c for c in listing}
        new = [] if index is None else [r for name, r in records.items() if name not in index.records]
        # extended in commit order; rebuilt when a chunk went (quarantined) or changed, or a new one is older than the
        # latest (a record is the same object while its file is unchanged: `_COMMITS`)
        stale = index is None or any(records.get(name) is not r for name, r in index.records.items())
        if stale or any(r["at"] < index.latest for r in new):
            index, new = _Index({}, {}, {}), list(records.values())
            _INDEX.pop(str(self.root), None)
            while len(_INDEX) >= _INDEXED_ROOTS:
                _INDEX.pop(next(iter(_INDEX)))
            _INDEX[str(self.root)] = index
        for record in sorted(new, key=lambda r: r["at"]):
            index.add(record)
        index.listing = listing
        return index

    def done_keys(self) -> AbstractSet[str]:
        """Keys of the samples whose completions are committed (a skipped or failed request is not done): built
        for the asking (a run asks `undone` of the problems it has at hand)."""
        return {k for record in self._index().records.values() for k in self._keys(record)}

    def undone(self, wanted: Mapping[str, Iterable[str]]) -> set[str]:
        """The problems of `wanted` (problem -> the sample keys asked of it) with a sample not committed yet."""
        index = self._index()
        out = set()
        for pid, samples in wanted.items():
            have: set[str] = set()
            for name in index.by_problem.get(pid, ()):
                have.update(_sample_keys(index.records[name]["keys"][pid]))
            if not have.issuperset(samples):
                out.add(pid)
        return out

    def history(self) -> Mapping[str, tuple[str, str, str]]:
        """Per problem, the (prompt, sampling, teacher) parts of the last request committed for it (read-only)."""
        return types.MappingProxyType(self._index().history)

    def tokens_per_sample(self, problems: Iterable[str]) -> list[float]:
        """Per problem, the mean completion tokens of the chunks that hold its samples (0 with none): what a
        slice of problems weighs, known from the commit records without reading a chunk."""
        index = self._index()
        out = []
        for pid in problems:
            records = [index.records[name] for name in index.by_problem.get(pid, ())]
            completions = sum(r["completions"] for r in records)
            out.append(sum(r["tokens"] for r in records) / completions if completions else 0.0)
        return out

    def commit(
        self,
        frame: pl.DataFrame,
        keys: dict[str, Any],
        *,
        shard: int,
        run_id: str,
        seq: int,
        failed: dict[str, str] | None = None,
        skipped: dict[str, str] | None = None,
    ) -> None:
        """`keys`: problem -> RequestKey of each request that finished with completions (`frame`'s rows: each
        sample's key is in its `rollout_key`)."""
        samples: dict[str, list[str]] = {}
        for pid, key in frame.select(PROBLEM_ID, ROLLOUT_KEY).iter_rows():
            samples.setdefault(pid, []).append(key)
        record = {
            "run": run_id,
            "shard": shard,
            "keys": {pid: samples.get(pid, []) for pid in keys},
            "parts": {pid: [k.prompt, k.sampling, k.teacher] for pid, k in keys.items()},
            "completions": len(frame),
            "tokens": int(frame[COT_TOKENS].sum() or 0) if len(frame) else 0,
            "failed": failed or {},
            "skipped": skipped or {},
            "checksum": content_key(frame),
            "checksum_version": 2,
            "at": time.time(),
        }
        table = frame.to_arrow()
        table = table.replace_schema_metadata({**(table.schema.metadata or {}), self.KEY: json.dumps(record)})
        write_parquet(table, self.root / f"chunk-{shard:05d}-{run_id}-{seq:05d}.parquet")

    def read(
        self, keys: set[str], problems: Iterable[str] | None = None, columns: Iterable[str] | None = None
    ) -> pl.DataFrame | None:
        """Committed completions of the samples `keys`, each (problem, sample) once; None if none. `problems`, the
        problems the keys are of, narrows the chunks looked at to theirs; `columns` (of GENERATION_SCHEMA) narrows
        what is read to those columns (the texts are most of a chunk's bytes)."""
        index = self._index()
        names = sorted(index.records)  # chunk order, as `commits`
        if problems is not None:
            names = sorted({name for pid in problems for name in index.by_problem.get(pid, ())})
        commits = [index.records[name] for name in names]
        paths = [
            self.root / f"{c['chunk']}.parquet"
            for c in commits
            if c["completions"] and not keys.isdisjoint(self._keys(c))
        ]
        frame = self._rows(paths, columns)
        return None if frame is None else self._once(frame.filter(pl.col(ROLLOUT_KEY).is_in(list(keys))))

    def read_requests(
        self, requests: Mapping[str, tuple[Sequence[str], int]], columns: Iterable[str] | None = None
    ) -> pl.DataFrame | None:
        """What `read` gives for the keys of each problem's first `m` samples under its request (problem -> (the
        request's (prompt, sampling, teacher) parts, m)), found without a key per sample: a sample's key is the hash of
        its request's key and its index (`RequestKey.sample`, as the rollout writes `rollout_key` and
        `sample_index`), and a chunk's commit record names the request each of its problems was generated under — so
        a chunk's rows of a problem whose recorded parts are the request's, with an index below `m`, are exactly the
        rows whose key is asked. (A record written before samples had keys of their own matches no sample key.)"""
        index = self._index()
        names = sorted({name for pid in requests for name in index.by_problem.get(pid, ())})
        paths, problems = [], []
        for name in names:
            c = index.records[name]
            asked = [
                pid
                for pid, parts in c["parts"].items()
                if pid in requests and isinstance(c["keys"].get(pid), (_Packed, list)) and parts == [*requests[pid][0]]
            ]
            if c["completions"] and asked:
                paths.append(self.root / f"{c['chunk']}.parquet")
                problems.append(asked)
        frame = self._rows(paths, columns, problems)
        if frame is None:
            return None
        drawn = pl.DataFrame(
            {PROBLEM_ID: list(requests), _DRAWN: [m for _, m in requests.values()]},
            schema={PROBLEM_ID: pl.String, _DRAWN: pl.Int64},
        )
        frame = frame.join(drawn, on=PROBLEM_ID, how="left", maintain_order="left")
        return self._once(frame.filter(pl.col(SAMPLE_INDEX) < pl.col(_DRAWN)).drop(_DRAWN))

    @staticmethod
    def _rows(
        paths: list[Path], columns: Iterable[str] | None, problems: list[list[str]] | None = None
    ) -> pl.DataFrame | None:
        """The rows of the chunks `paths` (of `problems[i]` only from the i-th, when given), in order: `columns` and
        which sample each row is, null for a column a chunk committed before it was added lacks."""
        if not paths:
            return None
        asked = set(GENERATION_SCHEMA) if columns is None else {*columns, *_KEYED}
        wanted = [c for c in GENERATION_SCHEMA if c in asked]
        frames = []
        for i, p in enumerate(paths):
            have = set(pq.read_schema(p).names) if columns is not None else None
            frame = pl.read_parquet(p, columns=None if have is None else [c for c in wanted if c in have])
            frames.append(frame if problems is None else frame.filter(pl.col(PROBLEM_ID).is_in(problems[i])))
        frame = pl.concat(frames, how="diagonal_relaxed")
        frame = frame.with_columns(
            pl.lit(None, dtype=GENERATION_SCHEMA[c]).alias(c) for c in wanted if c not in frame.columns
        )
        return frame.select(wanted)

    @staticmethod
    def _once(frame: pl.DataFrame) -> pl.DataFrame:
        """Each (problem, sample) once: the first chunk's row (runs that generated a sample twice wrote the same)."""
        return frame.unique([PROBLEM_ID, SAMPLE_INDEX], keep="first", maintain_order=True)


_KEYED = (PROBLEM_ID, SAMPLE_INDEX, ROLLOUT_KEY)  # what `GenerationStore.read` always reads: which sample a row is
_DRAWN = "_drawn"  # `read_requests`' working column: how many samples of a problem are asked


RUN_ID = uuid.uuid4().hex[:12]  # this process: chunk names and the per-run generation ledger
_CHUNK_SEQ = itertools.count()  # chunk numbers, unique within the process (shards, task retries)


class ChunkWriter:
    """Sink for the rollout stage: buffers finished problems and commits them to the generation store
    every `flush_every` problems or `flush_seconds`, so a crash loses at most that much finished work.
    Use it as a context manager: what is buffered is committed on the way out, whatever ends the batch."""

    def __init__(
        self, store: GenerationStore, keys: dict[str, Any], shard: int, flush_every: int, flush_seconds: float
    ):
        self.store = store
        self.keys = keys  # problem -> its RequestKey
        self.shard = shard
        self.flush_every = flush_every
        self.flush_seconds = flush_seconds
        self.frames: list[pl.DataFrame] = []
        self.ids: list[str] = []
        self.failed: dict[str, str] = {}  # this writer's requests that failed for good (recorded, not done)
        self.skipped: dict[str, str] = {}  # ... that the teacher could not take (no completions, no error)
        self.new: dict[str, dict[str, str]] = {"failed": {}, "skipped": {}}  # ... not yet in a commit record
        self.last = time.monotonic()

    def __enter__(self) -> "ChunkWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.flush()

    def __call__(self, problem_id: str, rows: pl.DataFrame, error: str | None) -> None:
        if error is not None:
            self.failed[problem_id] = self.new["failed"][problem_id] = error
        elif not len(rows):  # a prompt the teacher could not take: recorded, not done
            self.skipped[problem_id] = self.new["skipped"][problem_id] = "prompt_too_long"
        else:
            self.frames.append(rows)
            self.ids.append(problem_id)
        if len(self.ids) >= self.flush_every or time.monotonic() - self.last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if not self.ids and not any(self.new.values()):
            return
        frame = pl.concat(self.frames) if self.frames else pl.DataFrame(schema=GENERATION_SCHEMA)
        self.store.commit(
            frame,
            {pid: self.keys[pid] for pid in self.ids},
            shard=self.shard,
            run_id=RUN_ID,
            seq=next(_CHUNK_SEQ),
            **self.new,
        )
        failpoint("rollout.chunk_committed")
        self.frames = []
        self.ids = []
        self.new = {"failed": {}, "skipped": {}}
        self.last = time.monotonic()


_CANONICAL_TYPES = {pl.String: "str", pl.Int64: "i64", pl.Float64: "f64", pl.Boolean: "bool"}


def _feed_frame(h: Any, frame: pl.DataFrame) -> None:
    """Every value of `frame`, in order, into hash `h` in a canonical byte form — per column its null mask, then its
    values as little-endian numbers, or a string column's lengths and UTF-8 bytes — slice by slice, the bytes taken
    from Arrow buffers: the same rows give the same bytes whatever their chunking or the polars version. Each slice's
    masks and numbers come from one `select` (a chunk of a few hundred rows is hashed in a few calls, not dozens)."""
    types = [_CANONICAL_TYPES.get(t, repr(t)) for t in frame.dtypes]
    h.update(json.dumps({"columns": frame.columns, "types": types, "rows": len(frame)}).encode())
    schema = list(frame.schema.items())
    derived = [expr for i, (name, dtype) in enumerate(schema) for expr in _canonical(i, name, dtype)]
    for start, rows in slices(frame):
        part = frame.slice(start, rows)
        canon = part.select(derived)
        for i, (name, dtype) in enumerate(schema):
            h.update(canon[f"_null{i}"].to_numpy().tobytes())
            if dtype == pl.String:
                arr = part[name].to_arrow()
                arr = arr.combine_chunks() if isinstance(arr, pa.ChunkedArray) else arr
                arr = arr.cast(pa.large_string())
                offsets = np.frombuffer(arr.buffers()[1], dtype="<i8")[arr.offset : arr.offset + len(arr) + 1]
                h.update((offsets - offsets[0]).tobytes())
                if len(arr) and offsets[-1] > offsets[0]:
                    h.update(memoryview(arr.buffers()[2])[offsets[0] : offsets[-1]])
            elif dtype == pl.Boolean:
                h.update(canon[f"_value{i}"].to_numpy().astype("u1").tobytes())
            elif dtype.is_integer():
                h.update(canon[f"_value{i}"].to_numpy().astype("<i8").tobytes())
            elif dtype.is_float():
                h.update(canon[f"_value{i}"].to_numpy().astype("<f8").tobytes())
            else:  # lists, structs: their values as JSON
                for value in part[name].to_list():
                    h.update(json.dumps(value, default=str).encode())
                    h.update(b"\n")


def _canonical(i: int, name: str, dtype: pl.DataType) -> list[pl.Expr]:
    """Column `i`'s null mask, and its values with nulls as false / 0 in their widest type (numbers, booleans)."""
    col = pl.col(name)
    out = [col.is_null().alias(f"_null{i}")]
    if dtype == pl.Boolean:
        out.append(col.fill_null(False).alias(f"_value{i}"))
    elif dtype.is_integer():
        out.append(col.fill_null(0).cast(pl.Int64).alias(f"_value{i}"))
    elif dtype.is_float():
        out.append(col.fill_null(0.0).cast(pl.Float64).alias(f"_value{i}"))
    return out


def content_key(*parts: Any) -> str:
    """A stable hash of frames (every row, in order: `_feed_frame`) and plain values: the key of derived work."""
    h = hashlib.sha256(b"content-key-2")
    for part in parts:
        if isinstance(part, pl.DataFrame):
            _feed_frame(h, part)
        else:
            h.update(json.dumps(part, sort_keys=True, default=str).encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


def _row_checksum(frame: pl.DataFrame) -> str:
    """The checksum chunks committed before `content_key` version 2 carry: each row as JSON, in order."""
    h = hashlib.sha256()
    h.update(json.dumps(frame.columns).encode())
    for row in frame.iter_rows():
        h.update(json.dumps(row, default=str).encode())
        h.update(b"\n")
    h.update(b"\x00")
    return h.hexdigest()[:16]


class StageCache:
    """A stage's output frame and report, by a key of its inputs (see `content_key`): one Parquet file
    per key, the report in its footer, written atomically."""

    KEY = b"tracefactory.store.report"

    def __init__(self, root: Path):
        self.root = root

    def path(self, key: str) -> Path:
        return self.root / f"{key}.parquet"

    def get(self, key: str, leave_out: Iterable[str] = ()) -> tuple[pl.DataFrame, StageReport] | None:
        """The entry of `key` (None if none, or unreadable: the stage runs again), without the `leave_out`
        columns (not read at all)."""
        path = self.path(key)
        if not path.is_file():
            return None
        try:
            schema = pq.read_schema(path)
            report = StageReport(**json.loads((schema.metadata or {})[self.KEY]))
            table = pq.read_table(path, columns=[c for c in schema.names if c not in set(leave_out)])
        except (OSError, ValueError, KeyError, TypeError, pa.ArrowException) as exc:  # damaged: redo the stage
            log.warning("%s is unreadable (%s); the stage runs again", path, exc)
            return None
        return pl.from_arrow(table), report

    def put(self, key: str, frame: pl.DataFrame, report: StageReport) -> None:
        """Written slice by slice (`write_frame`): a run's graded completions are not copied whole."""
        write_frame(frame, self.path(key), metadata={self.KEY: json.dumps(dataclasses.asdict(report)).encode()})


class StepScoreStore:
    """Step scores by (problem, question+gold hash, steps), saved as one Parquet file (rewritten whole
    after each block); an unreadable file is quarantined and the scores are computed again."""

    def __init__(self, path: Path, quarantine: Callable[[Path, str], None]):
        self.path = path
        self.quarantine = quarantine

    def load(self) -> dict[ScoreKey, StepScores]:
        if not self.path.is_file():
            return {}
        try:
            frame = pl.read_parquet(self.path)
            if STEP_TOKENS not in frame.columns:  # saved before the cost was kept
                frame = frame.with_columns(pl.lit(0, pl.Int64).alias(STEP_TOKENS))
            rows = frame.select(PROBLEM_ID, PROBLEM_KEY, STEPS, STEP_SCORES, FIRST_BAD_STEP, STEP_TOKENS).iter_rows()
            return {
                (pid, pkey, tuple(steps)): StepScores(list(scores), bad, cost=cost)
                for pid, pkey, steps, scores, bad, cost in rows
            }
        except (OSError, ValueError, TypeError, pa.ArrowException, pl.exceptions.PolarsError) as exc:
            self.quarantine(self.path, f"unreadable: {exc}")
            return {}

    def save(self, cache: dict[ScoreKey, StepScores]) -> None:
        done = {k: v for k, v in cache.items() if v.scores}  # unscored traces are tried again next run
        schema = {
            PROBLEM_ID: pl.String,
            PROBLEM_KEY: pl.String,
            **{c: STEP_COLUMNS[c] for c in (STEPS, STEP_SCORES, FIRST_BAD_STEP)},
            STEP_TOKENS: pl.Int64,
        }
        frame = pl.DataFrame(
            {
                PROBLEM_ID: [k[0] for k in done],
                PROBLEM_KEY: [k[1] for k in done],
                STEPS: [list(k[2]) for k in done],
                STEP_SCORES: [v.scores for v in done.values()],
                FIRST_BAD_STEP: [v.first_bad_step for v in done.values()],
                STEP_TOKENS: [v.cost for v in done.values()],
            },
            schema=schema,
        )
        write_parquet(frame.to_arrow(), self.path)
