"""Every stage after rollout at scale: seconds, traces/s and peak RSS per stage.

    .venv/bin/python bench/scale.py 1000000 [--trace-chars 200-2000 | --trace-kb 2-16] [--workers 2]

Synthetic completions (`bench/grading_scale.py`'s generator: K=16 per problem, a few distinct answers each, 2%
truncated, 3% unanswered; texts of the given length range) are written as Parquet chunks of 50,000 rows, as the
generation store commits them, so making them needs one chunk of memory. Then the in-memory path — what the flow
runs today: every chunk read into one frame; grade, audit, step_score (off: `unscored`), select, difficulty,
curriculum, pairs; the tables written with the run's Parquet writer. Peak RSS is this process and its workers
together, sampled every 20 ms from the stage's start. A run whose text would not fit in memory on this path
(~4 copies of the text, against half the machine's memory) is not started: the estimate is printed.

Only ratios and counts compare across machines; traces/s is this machine's.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import polars as pl  # noqa: E402
import psutil  # noqa: E402
from grading_scale import WORDS, _gold, _trace, _variants  # noqa: E402
from rss import PeakRss  # noqa: E402

from tracefactory.config import (  # noqa: E402
    AuditConfig,
    CurriculumConfig,
    DifficultyConfig,
    GradeConfig,
    PairsConfig,
    SelectConfig,
)
from tracefactory.stages.audit import audit  # noqa: E402
from tracefactory.stages.curriculum import curriculum  # noqa: E402
from tracefactory.stages.difficulty import difficulty  # noqa: E402
from tracefactory.stages.grade import grade  # noqa: E402
from tracefactory.stages.pairs import pairs  # noqa: E402
from tracefactory.stages.select import select  # noqa: E402
from tracefactory.stages.step_score import unscored  # noqa: E402
from tracefactory.store.io import write_table_file  # noqa: E402
from tracefactory.store.schema import (  # noqa: E402
    ANSWER,
    COT_TOKENS,
    FINISH_REASON,
    GENERATION_SCHEMA,
    GOLD_SOURCE,
    LEVEL,
    PROBLEM_ID,
    QUESTION,
    REASONING_TOKENS,
    REWRITE_KIND,
    REWRITE_OF,
    ROLLOUT_KEY,
    SAMPLE_INDEX,
    SEED,
    SOURCE,
    TEACHER,
    TEXT,
    columns,
    empty,
)

CHUNK_ROWS = 50_000
K = 16


def make_chunks(root: Path, traces: int, chars: tuple[int, int], seed: int = 0) -> tuple[list[Path], pl.DataFrame]:
    """Synthetic completions in Parquet chunks of CHUNK_ROWS (whole problems each), and the problems table."""
    root.mkdir(parents=True, exist_ok=True)
    rng = random.Random(seed)
    filler = " ".join(rng.choice(WORDS) for _ in range(max(200_000, chars[1] // 3)))
    paths, problems = [], []
    per_chunk = CHUNK_ROWS // K
    for c, first in enumerate(range(0, traces // K, per_chunk)):
        ids, texts, finishes = [], [], []
        for p in range(first, min(first + per_chunk, traces // K)):
            gold = _gold(rng)
            answers = _variants(gold, rng)
            weights = [6] + [1] * (len(answers) - 1)
            problems.append((f"p{p}", gold, f"question {p}"))
            for _ in range(K):
                text, finish = _trace(rng.choices(answers, weights)[0], rng, filler, chars)
                ids.append(f"p{p}")
                texts.append(text)
                finishes.append(finish)
        frame = pl.DataFrame({PROBLEM_ID: ids, TEXT: texts, FINISH_REASON: finishes}).with_columns(
            (pl.col(TEXT).str.len_chars() // 4).alias(COT_TOKENS),  # ~4 characters a token
            pl.int_range(pl.len()).over(PROBLEM_ID).alias(SAMPLE_INDEX),
            pl.lit("synthetic").alias(TEACHER),
            pl.lit(None, pl.Int64).alias(REASONING_TOKENS),
        )
        frame = frame.with_columns(  # as the generation store holds them
            (pl.col(PROBLEM_ID) + "/" + pl.col(SAMPLE_INDEX).cast(pl.String)).alias(ROLLOUT_KEY),
            pl.col(SAMPLE_INDEX).alias(SEED),
        ).select(list(GENERATION_SCHEMA))
        path = root / f"chunk-{c:05d}.parquet"
        frame.write_parquet(path, compression="zstd")
        paths.append(path)
    problems = pl.DataFrame(problems, schema=[PROBLEM_ID, ANSWER, QUESTION], orient="row")
    return paths, problems.with_columns(  # as the load stage gives them
        pl.lit("source").alias(GOLD_SOURCE),
        pl.lit("synthetic").alias(SOURCE),
        (pl.int_range(pl.len()) % 5 + 1).cast(pl.String).alias(LEVEL),
        pl.lit(None, pl.String).alias(REWRITE_OF),
        pl.lit(None, pl.String).alias(REWRITE_KIND),
    )


def in_memory(paths: list[Path], problems: pl.DataFrame, out: Path, workers: int, peak: PeakRss) -> list[dict]:
    """The flow's path after rollout, one frame for the run; a row per stage."""
    rows: list[dict] = []

    def timed(name: str, n: int, fn):
        peak.reset()
        t = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t
        rows.append(
            {"stage": name, "rows": n, "seconds": round(seconds, 2), "rows_per_s": round(n / max(seconds, 1e-9))}
        )
        rows[-1]["peak_rss_mib"] = peak.mib()
        print(
            f"  {name:<11} {n:>11,} rows {seconds:8.1f} s {rows[-1]['rows_per_s']:>10,}/s  peak {peak.mib():>8,.0f} MiB"
        )
        return result

    generations = timed(
        "read",
        sum(pl.scan_parquet(p).select(pl.len()).collect().item() for p in paths),
        lambda: pl.concat([pl.read_parquet(p) for p in paths]),
    )
    n = len(generations)
    graded, _ = timed("grade", n, lambda: grade(generations, GradeConfig(workers=workers), problems))
    (graded, _verdicts, audit_table), _ = timed("audit", n, lambda: audit(graded, AuditConfig(), problems))
    scored = timed("step_score", n, lambda: unscored(graded))
    chosen, _ = timed("select", n, lambda: select(scored, SelectConfig()))
    tagged, _ = timed("difficulty", n, lambda: difficulty(problems, DifficultyConfig(), chosen))
    dataset, _ = timed("curriculum", n, lambda: curriculum(chosen, CurriculumConfig(), tagged))
    pair_table, _ = timed("pairs", n, lambda: pairs(chosen, PairsConfig(enabled=True), dataset))

    def full(frame: pl.DataFrame, table: str) -> pl.DataFrame:
        """The table's columns; those the stages skipped here add (budget, rationalize) null."""
        schema = empty(table).schema
        return frame.with_columns(pl.lit(None, t).alias(c) for c, t in schema.items() if c not in frame.columns)

    def write() -> None:  # as pipeline.write_outputs writes them
        lineage = problems.select(PROBLEM_ID, REWRITE_OF, REWRITE_KIND)
        rollouts = chosen.join(lineage, on=PROBLEM_ID, how="left")
        tables = {"problems": tagged, "rollouts": rollouts, "dataset": dataset, "pairs": pair_table}
        for name, frame in {**tables, "audit": audit_table}.items():
            write_table_file(full(frame, name).select(columns(name)), name, out / name / "part-0.parquet")

    timed("write", n, write)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", type=int)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--trace-chars", default="200-2000", help="characters per trace, A-B")
    size.add_argument("--trace-kb", help="KB per trace, A-B (instead of --trace-chars)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--dir", default="runs/scale", help="where the chunks and tables go (removed first)")
    ap.add_argument("--json", default="bench/results/scale.json")
    args = ap.parse_args()
    lo, hi = (int(x) for x in (args.trace_kb or args.trace_chars).split("-"))
    chars = (lo * 1000, hi * 1000) if args.trace_kb else (lo, hi)
    root = Path(args.dir)
    shutil.rmtree(root, ignore_errors=True)
    peak = PeakRss()
    t = time.perf_counter()
    paths, problems = make_chunks(root / "chunks", args.traces, chars)
    text_gib = args.traces * sum(chars) / 2 / 2**30
    print(
        f"{args.traces:,} traces of {chars[0]:,}-{chars[1]:,} characters (~{text_gib:.1f} GiB of text) in "
        f"{len(paths)} chunks, made in {time.perf_counter() - t:.0f} s (peak {peak.mib():,.0f} MiB)"
    )
    result = {"traces": args.traces, "chars": chars, "text_gib": round(text_gib, 2), "cores": os.cpu_count()}
    budget = psutil.virtual_memory().total / 2
    if 4 * text_gib * 2**30 > budget:
        print(
            f"in-memory path: not run (~{4 * text_gib:.0f} GiB needed, half this machine's memory is "
            f"{budget / 2**30:.0f} GiB)"
        )
        result["in_memory"] = None
    else:
        print("in-memory path (today's flow):")
        t = time.perf_counter()
        rows = in_memory(paths, problems, root / "tables", args.workers, peak)
        total = time.perf_counter() - t
        print(
            f"  {'total':<11} {args.traces:>11,} rows {total:8.1f} s {args.traces / total:>10,.0f}/s  "
            f"peak {max(r['peak_rss_mib'] for r in rows):>8,.0f} MiB"
        )
        result["in_memory"] = {"stages": rows, "seconds": round(total, 1)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
