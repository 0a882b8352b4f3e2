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
from tracefactory.errors import TraceFactoryError
from tracefactory.manifest import build_manifest
from tracefactory.report import funnel_markdown


def _transient(task, task_run, state) -> bool:
    """Retry a task on unexpected errors (a hub read, a crashed engine), not on our own clear errors
    (bad config, a model that cannot load), which would fail the same way again."""
    return not isinstance(state.data, TraceFactoryError)


@task(name="load", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=10, retry_condition_fn=_transient)
def load_task(run: io.RunDir, cfg: FactoryConfig) -> pipeline.Loaded:
    return pipeline.load_problems(run, cfg)


@task(name="start-teacher", cache_policy=NO_CACHE)
def start_teacher_task(teacher: Any) -> None:
    getattr(teacher, "start", lambda: None)()  # engine load time is not rollout time


@task(name="rollout-shard", task_run_name="rollout-shard-{shard}", cache_policy=NO_CACHE, retries=2,
      retry_delay_seconds=10, retry_condition_fn=_transient)  # a retry resumes from the committed chunks
def rollout_task(run: io.RunDir, shard: int, problems, cfg: FactoryConfig, teacher: Any):
    if hasattr(teacher, "rollout_shard") and not pipeline.shard_done(run, cfg, problems):
        # engines in Ray actors: the shard goes to one of them
        return teacher.rollout_shard(run, shard, problems, cfg)
    return pipeline.rollout_shard(run, shard, problems, cfg, teacher)


@task(name="grade-score-select-tag", cache_policy=NO_CACHE)
def finish_task(run: io.RunDir, cfg: FactoryConfig, problems, teacher: Any) -> pipeline.Finished:
    return pipeline.finish(run, cfg, problems, pipeline.read_generations(run, cfg, problems), teacher)


def default_run_dir(cfg: FactoryConfig) -> Path:
    return Path("runs") / cfg.name


def _make_teacher(cfg: FactoryConfig):
    if cfg.run.task_runner == "ray":
        from tracefactory.distributed import RayTeacherPool

        return RayTeacherPool(cfg.teacher, cfg.run.ray_engines)
    return make_teacher(cfg.teacher)


def run_build(config: str | None = None, out: str | None = None, overrides: dict[str, Any] | None = None,
              teacher: Any = None) -> dict[str, Any]:
    """`build_dataset` with the task runner the config names (`run.task_runner`)."""
    cfg = load_config(config, overrides)
    flow_fn = build_dataset
    if cfg.run.task_runner == "ray":
        from tracefactory.distributed import ray_task_runner

        flow_fn = build_dataset.with_options(task_runner=ray_task_runner(cfg))
    return flow_fn(config=config, out=out, overrides=overrides, teacher=teacher)


@flow(name="build_dataset")
def build_dataset(config: str | None = None, out: str | None = None, overrides: dict[str, Any] | None = None,
                  teacher: Any = None) -> dict[str, Any]:
    """Build the curated dataset for CONFIG (the embedded demo when None) into OUT."""
    logger, started = get_run_logger(), time.time()
    cfg = load_config(config, overrides)
    run = io.RunDir(out or default_run_dir(cfg))
    own_teacher, on_ray = teacher is None, cfg.run.task_runner == "ray"
    try:
        loaded = load_task(run, cfg)
        shards = pipeline.shard_frames(loaded.problems, cfg.run.shard_size)
        todo = any(not pipeline.shard_done(run, cfg, shard) for shard in shards) and len(loaded.problems)
        teacher = teacher or _make_teacher(cfg)  # engines load on first use: a resumed run may never load one
        if todo:
            start_teacher_task(teacher)
        if on_ray:  # shard tasks on Ray workers, all at once; each hands its shard to an engine actor
            roll = [f.result() for f in [rollout_task.submit(run, i, shard, cfg, teacher)
                                         for i, shard in enumerate(shards)]]
        else:  # one in-process engine: shards in turn
            roll = [rollout_task(run, i, shard, cfg, teacher) for i, shard in enumerate(shards)]
        done = finish_task(run, cfg, loaded.problems, teacher)  # step scoring samples too
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
