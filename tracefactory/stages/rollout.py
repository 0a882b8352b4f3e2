"""rollout: problems -> K completions each, from ONE teacher call for the whole batch.

Each problem's request is seeded from (sampling.seed, problem_id), so a problem gets the same K
completions whatever batch or shard it lands in — the basis of resuming without regenerating. Each
request has a content key (`request_key`): the hash of its rendered prompt, its sampling settings and
seed, and the teacher's identity; finished work is found by that key, never by problem id alone.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable

import polars as pl

from tracefactory.backends.base import RequestResult, Teacher
from tracefactory.backends.identity import teacher_key
from tracefactory.backends.prompts import build_prompt
from tracefactory.config import RolloutConfig, SamplingConfig, digest
from tracefactory.store.report import StageReport
from tracefactory.store.schema import (
    COT_TOKENS,
    FINISH_REASON,
    GENERATION_SCHEMA,
    PROBLEM_ID,
    QUESTION,
    REASONING_TOKENS,
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
PROMPT_TOO_LONG = "prompt_too_long"


def request_seed(base_seed: int, problem_id: str) -> int:
    # vLLM seeds sample i of an n>1 request with seed + i: leave room below 2**31 for that.
    digest = hashlib.sha256(f"{base_seed}:{problem_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % (2**31 - 2**16)


@dataclass(frozen=True)
class RequestKey:
    """A request's content key and its parts (to say why a request is generated again)."""

    key: str
    prompt: str
    sampling: str
    teacher: str


def request_keys(problems: pl.DataFrame, cfg: RolloutConfig, teacher_id: str) -> list[RequestKey]:
    """One key per problem: hash(rendered prompt, sampling settings + request seed, teacher identity)."""
    s: SamplingConfig = cfg.sampling
    settings = [s.n, s.temperature, s.top_p, s.max_tokens]
    out = []
    for pid, question in problems.select(PROBLEM_ID, QUESTION).iter_rows():
        prompt = digest(build_prompt(question, cfg.prompt))
        sampling = digest([settings, request_seed(s.seed, pid)])
        out.append(RequestKey(digest([prompt, sampling, teacher_id]), prompt, sampling, teacher_id))
    return out


def rollout(
    problems: pl.DataFrame, cfg: RolloutConfig, teacher: Teacher, sink: Sink | None = None
) -> tuple[pl.DataFrame, StageReport]:
    """One row per completion the teacher returned (n asked per problem), each with its request's
    content key (`rollout_key`). Nothing is dropped: a problem whose request failed for good, or whose
    prompt is longer than the teacher's context, simply has fewer rows, counted `teacher_error` /
    `prompt_too_long` in the report. `sink` sees each problem's rows as its request finishes (to
    persist them before the batch ends)."""
    n = cfg.sampling.n
    ids = problems[PROBLEM_ID].to_list()
    keys = [k.key for k in request_keys(problems, cfg, teacher_key(teacher))]
    seeds = [request_seed(cfg.sampling.seed, pid) for pid in ids]
    prompts = [build_prompt(q, cfg.prompt) for q in problems[QUESTION].to_list()]

    def rows(i: int, result: RequestResult) -> pl.DataFrame:
        return pl.DataFrame(
            [
                {
                    PROBLEM_ID: ids[i],
                    SAMPLE_INDEX: c.index,
                    ROLLOUT_KEY: keys[i],
                    SEED: seeds[i],
                    TEXT: c.text,
                    COT_TOKENS: c.tokens,
                    FINISH_REASON: c.finish_reason,
                    TEACHER: teacher.name,
                    REASONING_TOKENS: c.reasoning_tokens,
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
    failed = sum(not r.ok for r in results)
    too_long = sum(r.ok and not r.completions for r in results)
    return frame, rollout_report(len(ids), n, frame, failed=failed, too_long=too_long)


def rollout_report(
    n_problems: int, n: int, frame: pl.DataFrame, failed: int = 0, too_long: int = 0, detail: dict | None = None
) -> StageReport:
    """K completions asked per problem; a request that failed for good (retried on the next run) is
    `teacher_error`, one the teacher could not take (prompt longer than its context, tried again next
    run) `prompt_too_long`; other completions it did not return are `missing_completion`."""
    missing = n_problems * n - len(frame) - (failed + too_long) * n
    return StageReport(
        "rollout",
        "completions",
        n_problems * n,
        len(frame),
        {TEACHER_ERROR: failed * n, PROMPT_TOO_LONG: too_long * n, MISSING_COMPLETION: missing},
        tokens=int(frame[COT_TOKENS].sum() or 0),
        detail=detail or {},
    )
