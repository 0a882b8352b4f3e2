"""The steps a flow calls, each touching the run directory only through `io` — no Prefect here.

`flows/build_dataset.py` wraps these in Prefect tasks; tests call them directly.
"""

from __future__ import annotations

import itertools
import logging
import time
import uuid
from functools import partial
from pathlib import Path
from dataclasses import dataclass, field

import polars as pl

from tracefactory import io
from tracefactory.backends.base import Teacher
from tracefactory.backends.scorers import CachedScorer, MonteCarloScorer, StepScorer, StepScores
from tracefactory.config import FactoryConfig, SamplingConfig, digest
from tracefactory.failpoints import failpoint
from tracefactory.report import StageReport, funnel_frame
from tracefactory.schema import FIRST_BAD_STEP, PROBLEM_ID, SAMPLE_INDEX, STEP_COLUMNS, STEP_SCORES, STEPS, columns
from tracefactory.stages.curriculum import curriculum
from tracefactory.stages.difficulty import difficulty
from tracefactory.stages.grade import grade
from tracefactory.stages.load import load
from tracefactory.stages.rollout import GENERATION_SCHEMA, rollout, rollout_report
from tracefactory.stages.select import select
from tracefactory.stages.step_score import reuse_pool, step_score, unscored
from tracefactory.verify import judge_texts

log = logging.getLogger(__name__)


@dataclass
class Loaded:
    problems: pl.DataFrame
    rejected: pl.DataFrame
    report: StageReport


@dataclass
class Finished:
    reports: list[StageReport] = field(default_factory=list)
    dataset_rows: int = 0


def load_problems(run: io.RunDir, cfg: FactoryConfig) -> Loaded:
    raw = io.read_source(cfg.source)
    problems, rejected, report = load(raw, cfg.source)
    run.write_table(rejected, "rejected")
    log.info("loaded %d problems, rejected %d rows", len(problems), len(rejected))
    return Loaded(problems, rejected, report)


def shard_frames(problems: pl.DataFrame, size: int) -> list[pl.DataFrame]:
    return [problems.slice(i, size) for i in range(0, len(problems), size)] or [problems.clear()]


def _shard_marker(cfg: FactoryConfig, problems: pl.DataFrame) -> str:
    return f"generations-{cfg.rollout_hash()}-{digest(problems[PROBLEM_ID].to_list())[:12]}"


def shard_done(run: io.RunDir, cfg: FactoryConfig, problems: pl.DataFrame) -> bool:
    return run.is_done(_shard_marker(cfg, problems))


class ChunkWriter:
    """Sink for `rollout`: buffers finished problems and commits them to the generation store every
    `flush_every` problems or `flush_seconds`, so a crash loses at most that much finished work."""

    def __init__(self, store: io.GenerationStore, shard: int, run_id: str, flush_every: int, flush_seconds: float):
        self.store, self.shard, self.run_id = store, shard, run_id
        self.flush_every, self.flush_seconds = flush_every, flush_seconds
        self.frames: list[pl.DataFrame] = []
        self.ids: list[str] = []
        self.failed: dict[str, str] = {}  # this writer's requests that failed for good (recorded, not done)
        self.new_failures: dict[str, str] = {}  # ... not yet in a commit record
        self.last = time.monotonic()

    def __call__(self, problem_id: str, rows: pl.DataFrame, error: str | None) -> None:
        if error is not None:
            self.failed[problem_id] = self.new_failures[problem_id] = error
        else:
            self.frames.append(rows)
            self.ids.append(problem_id)
        if len(self.ids) >= self.flush_every or time.monotonic() - self.last >= self.flush_seconds:
            self.flush()

    def flush(self) -> None:
        if not self.ids and not self.new_failures:
            return
        frame = pl.concat(self.frames) if self.frames else pl.DataFrame(schema=GENERATION_SCHEMA)
        self.store.commit(frame, self.ids, shard=self.shard, run_id=self.run_id, seq=next(_CHUNK_SEQ),
                          failed=self.new_failures)
        failpoint("rollout.chunk_committed")
        self.frames, self.ids, self.new_failures, self.last = [], [], {}, time.monotonic()


RUN_ID = uuid.uuid4().hex[:12]  # this process: chunk names and the per-run generation ledger
_CHUNK_SEQ = itertools.count()  # chunk numbers, unique within the process (shards, task retries)


def rollout_shard(run: io.RunDir, shard: int, problems: pl.DataFrame, cfg: FactoryConfig,
                  teacher: Teacher) -> StageReport:
    """Generate the shard's problems that no earlier run committed; commit results as they finish.

    The shard is marked done when every problem has its completions; problems whose request failed
    for good are counted `teacher_error` and retried by the next run."""
    t0, store, n = time.time(), run.generations(cfg.rollout_hash()), cfg.sampling.n
    ids = set(problems[PROBLEM_ID].to_list())
    failed: dict[str, str] = {}
    if not shard_done(run, cfg, problems):
        todo = problems.filter(~pl.col(PROBLEM_ID).is_in(list(store.done_ids() & ids)))
        if len(todo) < len(problems):
            log.info("shard %d: %d of %d problems already generated, %d to go", shard, len(problems) - len(todo),
                     len(problems), len(todo))
        if len(todo):
            writer = ChunkWriter(store, shard, RUN_ID, cfg.run.flush_every, cfg.run.flush_seconds)
            rollout(todo, cfg, teacher, sink=writer)
            writer.flush()
            failed = writer.failed
        if failed:
            log.warning("shard %d: %d request(s) failed after retries (first: %s); re-run to retry them",
                        shard, len(failed), next(iter(failed.values())))
        else:
            run.mark_done(_shard_marker(cfg, problems), shard=shard, problems=len(problems))
    frame = store.read(ids)
    frame = frame if frame is not None else pl.DataFrame(schema=GENERATION_SCHEMA)
    return rollout_report(len(problems), n, frame, time.time() - t0, len(failed))


def merge_reports(reports: list[StageReport]) -> StageReport:
    first = reports[0]
    by: dict[str, int] = {}
    for r in reports:
        for k, v in r.dropped_by_reason.items():
            by[k] = by.get(k, 0) + v
    return StageReport(first.stage, first.unit, sum(r.rows_in for r in reports), sum(r.kept for r in reports), by,
                       seconds=sum(r.seconds for r in reports), tokens=sum(r.tokens for r in reports))


def read_generations(run: io.RunDir, cfg: FactoryConfig, problems: pl.DataFrame) -> pl.DataFrame:
    """The committed completions of `problems`, in problem order then sample index — the same order
    whatever order requests finished in, or how many runs it took."""
    frame = run.generations(cfg.rollout_hash()).read(set(problems[PROBLEM_ID].to_list()))
    if frame is None:
        return pl.DataFrame(schema=GENERATION_SCHEMA)
    order = problems.select(PROBLEM_ID).with_row_index("_order")
    return frame.join(order, on=PROBLEM_ID, how="left").sort("_order", SAMPLE_INDEX).drop("_order")


def make_scorer(cfg: FactoryConfig, teacher: Teacher, graded: pl.DataFrame | None = None) -> StepScorer:
    """The configured scorer; `graded` rollouts (if any) are reused as Monte-Carlo continuations."""
    sc = cfg.step_score
    if sc.scorer == "prm":
        from tracefactory.backends.prm import VLLMPRMScorer

        return VLLMPRMScorer(sc.prm_model, sc.prm_separator, max_model_len=sc.prm_max_model_len)
    s = cfg.sampling
    params = SamplingConfig(n=cfg.step_score.n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens,
                            seed=s.seed)
    judge = partial(judge_texts, workers=cfg.grade.workers, timeout_s=cfg.grade.timeout_s)
    reuse = reuse_pool(graded, cfg.step_score) if graded is not None else None
    return MonteCarloScorer(teacher, judge, cfg.prompt, params, cfg.step_score.search, reuse, cfg.step_score.label)


def evaluate_steps(cfg: FactoryConfig, teacher: Teacher, path: str | None = None,
                   limit: int | None = None) -> dict:
    """The configured step scorer's agreement with human step labels (see `step_eval`)."""
    from tracefactory.step_eval import evaluate, load_labelled

    path = path or cfg.step_score.eval_set
    scorer = make_scorer(cfg, teacher)
    try:
        result = evaluate(scorer, load_labelled(path, limit if limit is not None else cfg.step_score.eval_limit))
    finally:
        getattr(scorer, "close", lambda: None)()
    return {"eval_set": str(path), **result}


def _step_cache_path(run: io.RunDir, cfg: FactoryConfig) -> Path:
    sc = cfg.step_score
    key = digest([cfg.rollout_hash(), sc.scorer, sc.prm_model, sc.split, sc.pattern, sc.n, sc.search, sc.label, sc.max_steps])
    return run.root / "_work" / "step_scores" / f"{key}.parquet"


def load_step_cache(path: Path) -> dict:
    if not path.is_file():
        return {}
    return {(pid, tuple(steps)): StepScores(list(scores), bad)
            for pid, steps, scores, bad in pl.read_parquet(path).iter_rows()}


def save_step_cache(path: Path, cache: dict) -> None:
    frame = pl.DataFrame({PROBLEM_ID: [k[0] for k in cache], STEPS: [list(k[1]) for k in cache],
                          STEP_SCORES: [v.scores for v in cache.values()],
                          FIRST_BAD_STEP: [v.first_bad_step for v in cache.values()]},
                         schema={PROBLEM_ID: pl.String, **{c: STEP_COLUMNS[c] for c in (STEPS, STEP_SCORES, FIRST_BAD_STEP)}})
    io.write_parquet(frame.to_arrow(), path)


def score_steps(run: io.RunDir, cfg: FactoryConfig, graded: pl.DataFrame, problems: pl.DataFrame,
                teacher: Teacher) -> tuple[pl.DataFrame, StageReport]:
    """The step_score stage with its results kept in the run dir: a re-run samples nothing again."""
    path = _step_cache_path(run, cfg)
    inner = make_scorer(cfg, teacher, graded)
    cache = load_step_cache(path)
    scorer = CachedScorer(inner, cache, on_block=lambda: save_step_cache(path, {k: v for k, v in cache.items()
                                                                               if v.scores}))
    try:
        return step_score(graded, problems, cfg.step_score, scorer)
    finally:
        getattr(inner, "close", lambda: None)()  # a PRM engine; the teacher's is closed by the flow


def finish(run: io.RunDir, cfg: FactoryConfig, problems: pl.DataFrame, generations: pl.DataFrame,
           teacher: Teacher | None = None) -> Finished:
    """grade -> step_score -> select -> difficulty -> curriculum; writes problems, rollouts, dataset."""
    graded, r_grade = grade(generations, problems, cfg.grade)
    reports = [r_grade]
    if cfg.step_score.enabled and teacher is not None:
        graded, r_step = score_steps(run, cfg, graded, problems, teacher)
        reports.append(r_step)
    else:
        graded = unscored(graded)
    chosen, r_select = select(graded, cfg.select)
    tagged, r_diff = difficulty(problems, chosen, cfg.difficulty)
    dataset, r_curr = curriculum(tagged, chosen)
    run.write_table(tagged.select(columns("problems")), "problems")
    failpoint("write.table")
    run.write_table(chosen.select(columns("rollouts")), "rollouts")
    run.write_table(dataset, "dataset")
    return Finished([*reports, r_select, r_diff, r_curr], len(dataset))


def write_funnel(run: io.RunDir, reports: list[StageReport]) -> None:
    run.write_table(funnel_frame(reports), "funnel")

