"""The steps a flow calls, each touching the run directory only through `io` — no Prefect here.

`flows/build_dataset.py` wraps these in Prefect tasks; tests call them directly.
"""

from __future__ import annotations

import logging
from functools import partial
from pathlib import Path
from dataclasses import dataclass, field

import polars as pl

from tracefactory import io
from tracefactory.backends.base import Teacher
from tracefactory.backends.scorers import CachedScorer, MonteCarloScorer, StepScorer, StepScores
from tracefactory.config import FactoryConfig, SamplingConfig, digest
from tracefactory.report import StageReport, funnel_frame
from tracefactory.schema import FIRST_BAD_STEP, PROBLEM_ID, STEP_COLUMNS, STEP_SCORES, STEPS, columns
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


def _shard_marker(cfg: FactoryConfig, shard: int) -> str:
    return f"generations-{cfg.rollout_hash()}-{shard:05d}"


def shard_done(run: io.RunDir, cfg: FactoryConfig, shard: int) -> bool:
    return run.is_done(_shard_marker(cfg, shard)) and run.generation_path(cfg.rollout_hash(), shard).is_file()


def rollout_shard(run: io.RunDir, shard: int, problems: pl.DataFrame, cfg: FactoryConfig,
                  teacher: Teacher) -> StageReport:
    """Generate one shard's completions, or reuse them if an earlier run finished that shard."""
    path, marker = run.generation_path(cfg.rollout_hash(), shard), _shard_marker(cfg, shard)
    if shard_done(run, cfg, shard):
        done = pl.read_parquet(path)
        log.info("shard %d: reusing %d finished completions", shard, len(done))
        return rollout_report(len(problems), cfg.sampling.n, done)
    frame, report = rollout(problems, cfg, teacher)
    io.write_parquet(frame.to_arrow(), path)
    run.mark_done(marker, completions=len(frame), problems=len(problems))
    return report


def merge_reports(reports: list[StageReport]) -> StageReport:
    first = reports[0]
    by: dict[str, int] = {}
    for r in reports:
        for k, v in r.dropped_by_reason.items():
            by[k] = by.get(k, 0) + v
    return StageReport(first.stage, first.unit, sum(r.rows_in for r in reports), sum(r.kept for r in reports), by,
                       seconds=sum(r.seconds for r in reports), tokens=sum(r.tokens for r in reports))


def read_generations(run: io.RunDir, cfg: FactoryConfig, n_shards: int) -> pl.DataFrame:
    paths = [run.generation_path(cfg.rollout_hash(), s) for s in range(n_shards)]
    frames = [pl.read_parquet(p) for p in paths if p.is_file()]
    return pl.concat(frames) if frames else pl.DataFrame(schema=GENERATION_SCHEMA)


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
    return MonteCarloScorer(teacher, judge, cfg.prompt, params, cfg.step_score.search, reuse)


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
    key = digest([cfg.rollout_hash(), sc.scorer, sc.prm_model, sc.split, sc.pattern, sc.n, sc.search, sc.max_steps])
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
    scorer = CachedScorer(inner, load_step_cache(path))
    try:
        out = step_score(graded, problems, cfg.step_score, scorer)
    finally:
        getattr(inner, "close", lambda: None)()  # a PRM engine; the teacher's is closed by the flow
    save_step_cache(path, {k: v for k, v in scorer.cache.items() if v.scores})
    return out


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
    run.write_table(chosen.select(columns("rollouts")), "rollouts")
    run.write_table(dataset, "dataset")
    return Finished([*reports, r_select, r_diff, r_curr], len(dataset))


def write_funnel(run: io.RunDir, reports: list[StageReport]) -> None:
    run.write_table(funnel_frame(reports), "funnel")

