"""Every stage after rollout at scale: seconds, traces/s and peak RSS per stage.

    .venv/bin/python bench/scale.py 1000000 [--trace-chars 200-2000 | --trace-kb 2-16] [--workers 2] [--post both]

Synthetic completions (`bench/grading_scale.py`'s generator: K=16 per problem, a few distinct answers each, 2%
truncated, 3% unanswered; texts of the given length range) are committed into a run directory's generation store
in chunks of `run.flush_every` problems, as the rollout stage commits them, under the keys the flow computes for
them (the demo config with a fixed K=16, step scoring and rationalization off; a fake teacher's identity), so
making them needs one chunk of memory. Then the
flow's own functions run as `flows/build_dataset.py` calls them after the teacher: the rollout shards read back
(every sample committed: nothing to generate), the budget tally, grade (with its stage cache), audit, step_score
(off), select, the problems' budget / token / audit columns, difficulty, curriculum, pairs, and `write_outputs` —
under `run.post: memory` (the run in one frame), then `run.post: streaming` (graded slices on disk, light rows in
memory), each from the same committed chunks with no stage cache or table of the other, holding the run's lock
as the flow does. Peak RSS is this process and its workers together, sampled every 20 ms from the stage's start;
"held after" is what they hold when the stage has returned.
The memory path is not started where the run's text would not fit (~4 copies of it, against half the machine's
memory): the estimate is printed. With `--post both` the second path's peaks include what the first left in the
process: for peaks, run one path per process (the README's table does).

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

from tracefactory import pipeline  # noqa: E402
from tracefactory.backends.fake import FakeTeacher  # noqa: E402
from tracefactory.config import FactoryConfig, load_config  # noqa: E402
from tracefactory.pipeline import run_stage  # noqa: E402
from tracefactory.stages.audit import audit  # noqa: E402
from tracefactory.stages.curriculum import curriculum  # noqa: E402
from tracefactory.stages.pairs import pairs  # noqa: E402
from tracefactory.stages.select import select  # noqa: E402
from tracefactory.store import io  # noqa: E402
from tracefactory.store.schema import (  # noqa: E402
    ANSWER,
    GENERATION_SCHEMA,
    GOLD_SOURCE,
    LEVEL,
    PROBLEM_ID,
    QUESTION,
    REWRITE_KIND,
    REWRITE_OF,
    SOURCE,
    empty,
)

K = 16


def bench_config(workers: int, post: str = "streaming") -> FactoryConfig:
    over = {
        "run.post": post,
        "source.path": "synthetic.jsonl",
        "sampling.n": K,
        "sampling.budget.policy": "fixed",
        "step_score.enabled": False,
        "rationalize.enabled": False,
        "rewrite.enabled": False,
        "grade.workers": workers,
        "run.progress": False,
    }
    return load_config(None, over)


def make_run(
    run: io.RunDir, cfg: FactoryConfig, teacher, traces: int, chars: tuple[int, int], seed: int = 0, commit: bool = True
):
    """Synthetic completions committed to `run`'s generation store, `run.flush_every` problems a chunk, under
    the sample keys the flow asks for; returns the problems as the load stage gives them (drawn before any
    completion: with `commit=False`, the problems of chunks committed before, nothing else is made)."""
    rng = random.Random(seed)
    filler = " ".join(rng.choice(WORDS) for _ in range(max(200_000, chars[1] // 3)))
    problems = []
    for p in range(traces // K):
        problems.append((f"p{p}", f"question {p}", _gold(rng), "source", "synthetic", str(p % 5 + 1), None, None))
    cols = [PROBLEM_ID, QUESTION, ANSWER, GOLD_SOURCE, SOURCE, LEVEL, REWRITE_OF, REWRITE_KIND]
    problems = pl.DataFrame(problems, schema={c: pl.String for c in cols}, orient="row")
    if not commit:
        return problems
    store = run.generations()
    per_chunk = cfg.run.flush_every  # problems per chunk, as the rollout stage commits them
    for c, first in enumerate(range(0, len(problems), per_chunk)):
        part = problems.slice(first, per_chunk)
        keys = pipeline._requests(cfg, part, teacher)
        rows = []
        for pid, gold in part.select(PROBLEM_ID, ANSWER).iter_rows():
            answers = _variants(gold, rng)
            weights = [6] + [1] * (len(answers) - 1)
            for j in range(K):
                text, finish = _trace(rng.choices(answers, weights)[0], rng, filler, chars)
                rows.append((pid, j, keys[pid].sample(j), j, text, len(text) // 4, finish, teacher.name, None))
        frame = pl.DataFrame(rows, schema=GENERATION_SCHEMA, orient="row")
        store.commit(frame, keys, shard=first // cfg.run.shard_size, run_id="bench", seq=c)
    return problems


def flow_path(run: io.RunDir, cfg: FactoryConfig, teacher, problems: pl.DataFrame, peak: PeakRss) -> list[dict]:
    """`flows/build_dataset.py`'s calls after the teacher, in its order; a row per stage."""
    rows: list[dict] = []
    n = len(problems) * K

    def timed(name: str, fn):
        peak.reset()
        t = time.perf_counter()
        result = fn()
        seconds = time.perf_counter() - t
        rows.append(
            {"stage": name, "rows": n, "seconds": round(seconds, 2), "rows_per_s": round(n / max(seconds, 1e-9))}
        )
        rows[-1]["peak_rss_mib"] = peak.mib()
        peak.listed = 0.0  # what is held after the stage (its workers gone): listed again
        rows[-1]["held_rss_mib"] = round(peak.now() / 2**20, 1)
        print(
            f"  {name:<11} {n:>11,} rows {seconds:8.1f} s {rows[-1]['rows_per_s']:>10,}/s  peak {peak.mib():>8,.0f} MiB"
            f"  held after {rows[-1]['held_rss_mib']:>8,.0f} MiB"
        )
        return result

    def read_back():  # every sample committed: the shards only read their completions back
        tally = pipeline.budget_tally(problems, cfg)
        shards = pipeline.shard_frames(problems, cfg.run.shard_size)
        reports = [
            pipeline.rollout_shard(run, i, s, cfg, teacher, pipeline.all_samples(cfg)) for i, s in enumerate(shards)
        ]
        tally = pipeline.close_round(run, cfg, problems, tally, teacher, 0)
        return pipeline.with_budget(problems, tally), pipeline.rollout_total(reports, tally)

    budgeted, r_roll = timed("rollout", read_back)
    graded, r_grade = timed("grade", lambda: pipeline.grade_rollouts(run, cfg, budgeted, teacher))
    (graded, verdicts, audit_table), r_audit = timed("audit", lambda: run_stage(audit, graded, cfg.audit, budgeted))
    scored, _ = timed("step_score", lambda: pipeline.score_steps(run, cfg, graded, budgeted, teacher))
    graded = None  # as the flow drops them: only the last stage's frame stays
    chosen, r_select = timed("select", lambda: run_stage(select, scored, cfg.select))
    tagged, r_diff = timed(
        "difficulty",
        lambda: pipeline.tag_difficulty(
            cfg,
            pipeline.with_rationales(
                pipeline.with_audit(pipeline.with_teacher_tokens(budgeted, scored), verdicts), None, None
            ),
            chosen,
        ),
    )
    scored = None
    dataset, r_curr = timed(
        "curriculum",
        lambda: run_stage(curriculum, pipeline.training_rows(cfg, chosen, None), cfg.curriculum, tagged, cfg.prompt),
    )
    pair_table, r_pairs = timed("pairs", lambda: run_stage(pairs, chosen, cfg.pairs, dataset, cfg.prompt))
    loaded = pipeline.Loaded(problems, empty("rejected"), r_roll)
    reports = [r_roll, r_grade, r_audit, r_select, r_diff, r_curr, r_pairs]
    extra = {"pairs": pair_table, "audit": audit_table, "rationalized": None}
    batch = pipeline.write_batch_tokens(cfg)
    timed("write", lambda: pipeline.write_outputs(run, loaded, tagged, chosen, dataset, extra, reports, {}, batch))
    return rows


def fresh(run: io.RunDir) -> None:
    """No graded slices, tables or per-process store caches from a path run before: each path starts alike."""
    for cache in ("graded", "graded_slices"):
        shutil.rmtree(run.root / "_work" / cache, ignore_errors=True)
    for table in run.tables():
        run.remove_table(table)
    io._COMMITS.clear()
    io._INDEX.clear()
    io._LISTING.clear()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("traces", type=int)
    size = ap.add_mutually_exclusive_group()
    size.add_argument("--trace-chars", default="200-2000", help="characters per trace, A-B")
    size.add_argument("--trace-kb", help="KB per trace, A-B (instead of --trace-chars)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument(
        "--post", choices=["both", "memory", "streaming"], default="both", help="run.post path(s) (both: memory first)"
    )
    ap.add_argument("--dir", default="runs/scale", help="where the chunks and tables go (removed first)")
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="keep the chunks --dir holds from an earlier run of the same size, generator and request keys",
    )
    ap.add_argument("--json", default="bench/results/scale.json")
    args = ap.parse_args()
    lo, hi = (int(x) for x in (args.trace_kb or args.trace_chars).split("-"))
    chars = (lo * 1000, hi * 1000) if args.trace_kb else (lo, hi)
    root = Path(args.dir)
    run, teacher = io.RunDir(root), FakeTeacher()
    cfg = bench_config(args.workers)
    # what the chunks are: the generator's code, the size, and the keys the flow asks (config, teacher); making them
    # draws the same problems again (they come first from the generator's seed)
    problems = make_run(run, cfg, teacher, args.traces, chars, commit=False)
    (asked,) = pipeline._requests(cfg, problems.head(1), teacher).values()  # the first problem's: config and teacher
    generator = io.file_sha256(Path(__file__).resolve().parent / "grading_scale.py")[:16]
    what = {"traces": args.traces, "chars": list(chars), "generator": generator, "key": asked.key}
    made = root / "bench-run.json"
    reuse = args.reuse and made.exists() and json.loads(made.read_text()) == what
    if not reuse:
        shutil.rmtree(root, ignore_errors=True)
    peak = PeakRss()
    t = time.perf_counter()
    if not reuse:
        make_run(run, cfg, teacher, args.traces, chars)
    made.write_text(json.dumps(what))
    text_gib = args.traces * sum(chars) / 2 / 2**30
    print(
        f"{args.traces:,} traces of {chars[0]:,}-{chars[1]:,} characters (~{text_gib:.1f} GiB of text) "
        + ("reused" if reuse else f"committed in {time.perf_counter() - t:.0f} s (peak {peak.mib():,.0f} MiB)")
    )
    result = {"traces": args.traces, "chars": chars, "text_gib": round(text_gib, 2), "cores": os.cpu_count()}
    budget = psutil.virtual_memory().total / 2
    for post in ("memory", "streaming") if args.post == "both" else (args.post,):
        if post == "memory" and 4 * text_gib * 2**30 > budget:
            print(
                f"run.post: memory — not run (~{4 * text_gib:.0f} GiB needed, half this machine's memory is "
                f"{budget / 2**30:.0f} GiB)"
            )
            result[post] = None
            continue
        fresh(run)
        print(f"run.post: {post}")
        t = time.perf_counter()
        with run.lock():  # as the flow holds it
            rows = flow_path(run, bench_config(args.workers, post), teacher, problems, peak)
        total = time.perf_counter() - t
        print(
            f"  {'total':<11} {args.traces:>11,} rows {total:8.1f} s {args.traces / total:>10,.0f}/s  "
            f"peak {max(r['peak_rss_mib'] for r in rows):>8,.0f} MiB"
        )
        result[post] = {"stages": rows, "seconds": round(total, 1)}
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
