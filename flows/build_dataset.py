"""@flow build_dataset: problems -> rollouts -> graded, selected, tagged, curriculum-ordered dataset."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE

from tracefactory import io, pipeline
from tracefactory.backends import make_teacher
from tracefactory.config import FactoryConfig, load_config
from tracefactory.manifest import build_manifest
from tracefactory.report import funnel_markdown


@task(name="load", cache_policy=NO_CACHE)
def load_task(run: io.RunDir, cfg: FactoryConfig) -> pipeline.Loaded:
    return pipeline.load_problems(run, cfg)


@task(name="start-teacher", cache_policy=NO_CACHE)
def start_teacher_task(teacher: Any) -> None:
    getattr(teacher, "start", lambda: None)()  # engine load time is not rollout time


@task(name="rollout-shard", task_run_name="rollout-shard-{shard}", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=10)
def rollout_task(run: io.RunDir, shard: int, problems, cfg: FactoryConfig, teacher: Any):
    return pipeline.rollout_shard(run, shard, problems, cfg, teacher)


@task(name="grade-score-select-tag", cache_policy=NO_CACHE)
def finish_task(run: io.RunDir, cfg: FactoryConfig, problems, n_shards: int, teacher: Any) -> pipeline.Finished:
    return pipeline.finish(run, cfg, problems, pipeline.read_generations(run, cfg, n_shards), teacher)


def default_run_dir(cfg: FactoryConfig) -> Path:
    return Path("runs") / cfg.name


@flow(name="build_dataset")
def build_dataset(config: str | None = None, out: str | None = None, overrides: dict[str, Any] | None = None,
                  teacher: Any = None) -> dict[str, Any]:
    """Build the curated dataset for CONFIG (the embedded demo when None) into OUT."""
    logger, started = get_run_logger(), time.time()
    cfg = load_config(config, overrides)
    run = io.RunDir(out or default_run_dir(cfg))
    own_teacher = teacher is None
    teacher = teacher or make_teacher(cfg.teacher)
    try:
        loaded = load_task(run, cfg)
        shards = pipeline.shard_frames(loaded.problems, cfg.run.shard_size)
        if any(not pipeline.shard_done(run, cfg, i) for i in range(len(shards))) and len(loaded.problems):
            start_teacher_task(teacher)  # a fully resumed run never loads the model
        roll = [rollout_task(run, i, shard, cfg, teacher) for i, shard in enumerate(shards)]
        done = finish_task(run, cfg, loaded.problems, len(shards), teacher)  # step scoring samples too
        step_eval = pipeline.evaluate_steps(cfg, teacher) if cfg.step_score.eval_set else None
    finally:
        if own_teacher:
            getattr(teacher, "close", lambda: None)()
    reports = [loaded.report, pipeline.merge_reports(roll), *done.reports]
    pipeline.write_funnel(run, reports)
    manifest = build_manifest(cfg, teacher, reports, started, {"step_eval": step_eval} if step_eval else None)
    io.write_json(manifest, run.root / "manifest.json")
    for r in reports:
        logger.info(r.line())
    create_table_artifact(key="funnel", table=[r.as_dict() for r in reports],
                          description=f"Stage funnel of {run.root}\n\n{funnel_markdown(reports)}")
    return {"run_dir": str(run.root), "dataset_rows": done.dataset_rows, "funnel": [r.line() for r in reports]}
