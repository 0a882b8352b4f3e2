"""rollout: problems -> K completions each, from ONE teacher call for the whole batch.

Each problem's request is seeded from (sampling.seed, problem_id), so a problem gets the same K
completions whatever batch or shard it lands in — the basis of resuming without regenerating.
"""

from __future__ import annotations

import hashlib
import time
from typing import Callable

import polars as pl

from tracefactory.backends.base import Completion, Teacher
from tracefactory.config import FactoryConfig
from tracefactory.prompts import build_prompt
from tracefactory.report import StageReport
from tracefactory.schema import (COT_TOKENS, FINISH_REASON, PROBLEM_ID, QUESTION, ROLLOUT_KEY, SAMPLE_INDEX, SEED,
                                 TEACHER, TEXT)

GENERATION_SCHEMA = {PROBLEM_ID: pl.String, SAMPLE_INDEX: pl.Int64, ROLLOUT_KEY: pl.String, SEED: pl.Int64,
                     TEXT: pl.String, COT_TOKENS: pl.Int64, FINISH_REASON: pl.String, TEACHER: pl.String}


def request_seed(base_seed: int, problem_id: str) -> int:
    # vLLM seeds sample i of an n>1 request with seed + i: leave room below 2**31 for that.
    digest = hashlib.sha256(f"{base_seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**31 - 2**16)


# sink(problem_id, its completion rows, error or None): each problem's result as its request finishes
Sink = Callable[[str, pl.DataFrame, str | None], None]
TEACHER_ERROR = "teacher_error"


def rollout(problems: pl.DataFrame, cfg: FactoryConfig, teacher: Teacher,
            sink: Sink | None = None) -> tuple[pl.DataFrame, StageReport]:
    t0, n, key = time.time(), cfg.sampling.n, cfg.rollout_hash()
    ids = problems[PROBLEM_ID].to_list()
    seeds = [request_seed(cfg.sampling.seed, pid) for pid in ids]
    prompts = [build_prompt(q, cfg.prompt) for q in problems[QUESTION].to_list()]

    def rows(i: int, completions: list[Completion]) -> pl.DataFrame:
        return pl.DataFrame([{PROBLEM_ID: ids[i], SAMPLE_INDEX: c.index, ROLLOUT_KEY: key, SEED: seeds[i],
                              TEXT: c.text, COT_TOKENS: c.tokens, FINISH_REASON: c.finish_reason,
                              TEACHER: teacher.name} for c in completions], schema=GENERATION_SCHEMA)

    built: dict[int, pl.DataFrame] = {}

    def on_result(i: int, completions: list[Completion]) -> None:
        built[i] = rows(i, completions)
        sink(ids[i], built[i], getattr(completions, "error", None))

    results = teacher.generate(prompts, n, cfg.sampling, seeds, on_result=on_result if sink else None)
    frames = [built[i] if i in built else rows(i, cs) for i, cs in enumerate(results)]
    frame = pl.concat(frames) if frames else rows(0, [])
    failed = sum(getattr(cs, "error", None) is not None for cs in results)
    return frame, rollout_report(len(ids), n, frame, time.time() - t0, failed)


def rollout_report(n_problems: int, n: int, frame: pl.DataFrame, seconds: float = 0.0,
                   failed: int = 0) -> StageReport:
    """K completions asked per problem; a request that failed for good (retried on the next run) is
    `teacher_error`, other completions the teacher did not return are `missing_completion`."""
    return StageReport("rollout", "completions", n_problems * n, len(frame),
                       {TEACHER_ERROR: failed * n, "missing_completion": n_problems * n - len(frame) - failed * n},
                       seconds=seconds, tokens=int(frame[COT_TOKENS].sum() or 0))
