"""rollout: problems -> K completions each, from ONE teacher call for the whole batch.

Each problem's request is seeded from (sampling.seed, problem_id), so a problem gets the same K
completions whatever batch or shard it lands in — the basis of resuming without regenerating.
"""

from __future__ import annotations

import hashlib
from typing import Callable

import polars as pl

from tracefactory.backends.base import RequestResult, Teacher
from tracefactory.config import RolloutConfig
from tracefactory.prompts import build_prompt
from tracefactory.report import StageReport
from tracefactory.schema import (
    COT_TOKENS,
    FINISH_REASON,
    GENERATION_SCHEMA,
    PROBLEM_ID,
    QUESTION,
    ROLLOUT_KEY,
    SAMPLE_INDEX,
    SEED,
    TEACHER,
    TEXT,
)

# sink(problem_id, its completion rows, error or None): each problem's result as its request finishes
Sink = Callable[[str, pl.DataFrame, str | None], None]
TEACHER_ERROR = "teacher_error"
MISSING_COMPLETION = "missing_completion"


def request_seed(base_seed: int, problem_id: str) -> int:
    # vLLM seeds sample i of an n>1 request with seed + i: leave room below 2**31 for that.
    digest = hashlib.sha256(f"{base_seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**31 - 2**16)


def rollout(
    problems: pl.DataFrame, cfg: RolloutConfig, teacher: Teacher, sink: Sink | None = None
) -> tuple[pl.DataFrame, StageReport]:
    """One row per completion the teacher returned (n asked per problem). Nothing is dropped: a
    problem whose request failed for good, or whose prompt is longer than the teacher's context,
    simply has fewer rows, counted `teacher_error` / `missing_completion` in the report. `sink`
    sees each problem's rows as its request finishes (to persist them before the batch ends)."""
    n = cfg.sampling.n
    ids = problems[PROBLEM_ID].to_list()
    seeds = [request_seed(cfg.sampling.seed, pid) for pid in ids]
    prompts = [build_prompt(q, cfg.prompt) for q in problems[QUESTION].to_list()]

    def rows(i: int, result: RequestResult) -> pl.DataFrame:
        return pl.DataFrame(
            [
                {
                    PROBLEM_ID: ids[i],
                    SAMPLE_INDEX: c.index,
                    ROLLOUT_KEY: cfg.key,
                    SEED: seeds[i],
                    TEXT: c.text,
                    COT_TOKENS: c.tokens,
                    FINISH_REASON: c.finish_reason,
                    TEACHER: teacher.name,
                }
                for c in result.completions
            ],
            schema=GENERATION_SCHEMA,
        )

    built: dict[int, pl.DataFrame] = {}

    def on_result(i: int, result: RequestResult) -> None:
        built[i] = rows(i, result)
        sink(ids[i], built[i], result.error)

    results = teacher.generate(prompts, n, cfg.sampling, seeds, on_result=on_result if sink else None)
    frames = [built[i] if i in built else rows(i, r) for i, r in enumerate(results)]
    frame = pl.concat(frames) if frames else pl.DataFrame(schema=GENERATION_SCHEMA)
    return frame, rollout_report(len(ids), n, frame, failed=sum(not r.ok for r in results))


def rollout_report(n_problems: int, n: int, frame: pl.DataFrame, failed: int = 0) -> StageReport:
    """K completions asked per problem; a request that failed for good (retried on the next run) is
    `teacher_error`, other completions the teacher did not return are `missing_completion`."""
    return StageReport(
        "rollout",
        "completions",
        n_problems * n,
        len(frame),
        {TEACHER_ERROR: failed * n, MISSING_COMPLETION: n_problems * n - len(frame) - failed * n},
        tokens=int(frame[COT_TOKENS].sum() or 0),
    )
