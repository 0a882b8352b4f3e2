"""rollout: problems -> samples [lo, hi) of each, from ONE teacher call for the whole batch.

Each problem is seeded from (sampling.seed, problem_id) and its sample j from that seed + j (as vLLM seeds
the j-th completion of an n-request), so sample j is the same whatever batch, shard or round asks for it
and however many samples are asked: a run of 4 samples draws a prefix of a run of 8 — the basis of resuming
and of adaptive budgets. Each sample has a content key (`RequestKey.sample`): the hash of the problem's
rendered prompt, its sampling settings and seed, the teacher's identity and the sample's index; finished
work is found by that key, never by problem id alone.
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
    """A problem's content key and its parts (to say why a request is generated again); its samples' keys."""

    key: str
    prompt: str
    sampling: str
    teacher: str

    def sample(self, j: int) -> str:
        if not (self.key.isascii() and self.key.isalnum()):
            return digest([self.key, j])
        # the same without json.dumps (millions per run): an ASCII alphanumeric key's JSON is itself in quotes
        return hashlib.sha256(f'["{self.key}", {int(j)}]'.encode()).hexdigest()[:16]

    def samples(self, lo: int, hi: int) -> list[str]:
        """`sample(j)` for j in [lo, hi) (a quarter faster than calling it: every stage after rollout asks for all)."""
        if not (self.key.isascii() and self.key.isalnum()):
            return [self.sample(j) for j in range(lo, hi)]
        sha, key = hashlib.sha256, self.key
        return [sha(f'["{key}", {j}]'.encode()).hexdigest()[:16] for j in range(lo, hi)]


def request_keys(problems: pl.DataFrame, cfg: RolloutConfig, teacher_id: str) -> list[RequestKey]:
    """One key per problem: hash(rendered prompt, sampling settings + request seed, teacher identity). The
    number of samples is not part of it: sample j's key is the hash of this key and j."""
    s: SamplingConfig = cfg.sampling
    settings = [s.temperature, s.top_p, s.max_tokens]
    out = []
    for pid, question in problems.select(PROBLEM_ID, QUESTION).iter_rows():
        prompt = digest(build_prompt(question, cfg.prompt))
        sampling = digest([settings, request_seed(s.seed, pid)])
        out.append(RequestKey(digest([prompt, sampling, teacher_id]), prompt, sampling, teacher_id))
    return out


def rollout(
    problems: pl.DataFrame,
    cfg: RolloutConfig,
    teacher: Teacher,
    sink: Sink | None = None,
    samples: tuple[int, int] | None = None,
) -> tuple[pl.DataFrame, StageReport]:
    """One row per completion the teacher returned (samples [lo, hi) asked per problem; [0, sampling.n) by
    default), each with its sample's content key (`rollout_key`). Nothing is dropped: a problem whose request
    failed for good, or whose prompt is longer than the teacher's context, simply has fewer rows, counted
    `teacher_error` / `prompt_too_long` in the report. `sink` sees each problem's rows as its request
    finishes (to persist them before the batch ends)."""
    lo, hi = samples or (0, cfg.sampling.n)
    n = hi - lo
    ids = problems[PROBLEM_ID].to_list()
    keys = request_keys(problems, cfg, teacher_key(teacher))
    seeds = [request_seed(cfg.sampling.seed, pid) for pid in ids]
    prompts = [build_prompt(q, cfg.prompt) for q in problems[QUESTION].to_list()]

    def rows(i: int, result: RequestResult) -> pl.DataFrame:
        return pl.DataFrame(
            [
                {
                    PROBLEM_ID: ids[i],
                    SAMPLE_INDEX: lo + c.index,
                    ROLLOUT_KEY: keys[i].sample(lo + c.index),
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

    # the teacher seeds the k-th completion of a request with its seed + k: this request's k-th is sample lo + k
    starts = [s + lo for s in seeds]
    results = teacher.generate(prompts, n, cfg.sampling, starts, on_result=on_result if sink else None)
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
