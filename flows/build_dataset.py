"""@flow build_dataset: load -> rollout (per shard) -> grade -> pseudo_gold -> audit -> step_score -> select ->
rationalize -> difficulty -> curriculum -> pairs -> write, each stage its own Prefect task (name, state, duration
and logs in the UI); the optional ones (rewrite, dedup, decontaminate, pseudo_gold, audit, rationalize, pairs)
only when enabled."""

from __future__ import annotations

import logging
import time
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext, TaskRunContext
from prefect.logging.handlers import APILogHandler

from tracefactory import pipeline
from tracefactory.backends.base import Teacher
from tracefactory.backends.factory import make_teacher
from tracefactory.backends.identity import teacher_identity
from tracefactory.config import FactoryConfig, load_config
from tracefactory.errors import TraceFactoryError
from tracefactory.pipeline import Engines, Loaded, run_stage
from tracefactory.redact import install_log_redaction
from tracefactory.stages.audit import audit
from tracefactory.stages.curriculum import curriculum
from tracefactory.stages.decontaminate import benchmark_index, decontaminate
from tracefactory.stages.dedup import dedup
from tracefactory.stages.pairs import pairs
from tracefactory.stages.select import select
from tracefactory.store import io, watchdog
from tracefactory.store.manifest import build_manifest
from tracefactory.store.report import StageReport, funnel_markdown


class _InRun(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return TaskRunContext.get() is not None or FlowRunContext.get() is not None


def _library_logs_to_prefect() -> None:
    """The library's log lines (stage lines, shard progress, warnings) in the Prefect UI, under the task
    run that wrote them — in every process that runs the flow (CLI, worker, test), whatever its
    PREFECT_LOGGING_EXTRA_LOGGERS; lines written outside a run stay local."""
    lib = logging.getLogger("tracefactory")
    if not any(isinstance(h, APILogHandler) for h in lib.handlers):
        handler = APILogHandler()
        handler.addFilter(_InRun())
        install_log_redaction(handler)
        lib.addHandler(handler)
    if lib.level == logging.NOTSET:
        lib.setLevel(logging.INFO)


_library_logs_to_prefect()


def _transient(task, task_run, state) -> bool:
    """Retry a task on unexpected errors (a hub read, a crashed engine), not on our own clear errors
    (bad config, a model that cannot load), which would fail the same way again."""
    return not isinstance(state.data, TraceFactoryError)


RETRY = dict(retries=2, retry_delay_seconds=10, retry_condition_fn=_transient)


def stage_task(name: str, **options):
    """A stage task: named after the stage, never cached by Prefect (the run directory is the cache)."""
    return task(name=name, task_run_name=options.pop("task_run_name", name), cache_policy=NO_CACHE, **options)


@stage_task("load", **RETRY)
def load_task(run: io.RunDir, cfg: FactoryConfig) -> Loaded:
    return pipeline.load_problems(run, cfg)


@stage_task("rewrite")
def rewrite_task(cfg: FactoryConfig, loaded: Loaded, teacher: Teacher) -> tuple[Loaded, StageReport]:
    return pipeline.rewrite_problems(cfg, loaded, teacher)


@stage_task("dedup")
def dedup_task(cfg: FactoryConfig, loaded: Loaded) -> tuple[Loaded, StageReport]:
    return pipeline.filter_problems(dedup, cfg.dedup, loaded)


@stage_task("decontaminate")
def decontaminate_task(cfg: FactoryConfig, loaded: Loaded) -> tuple[Loaded, StageReport]:
    index = benchmark_index(cfg.decontaminate.benchmarks, cfg.decontaminate.ngram)  # the benchmarks, read once
    return pipeline.filter_problems(decontaminate, cfg.decontaminate, loaded, index)


@stage_task("start-teacher")
def start_task(engines: Engines) -> None:
    engines.start()  # engine load time is not rollout time


@stage_task("rollout", task_run_name="rollout-shard-{shard}", **RETRY)  # a retry resumes from committed chunks
def rollout_task(
    run: io.RunDir, shard: int, problems, cfg: FactoryConfig, engines: Engines, samples: tuple[int, int]
) -> StageReport:
    return engines.rollout_shard(run, shard, problems, cfg, samples)


@stage_task("budget", task_run_name="budget-round-{r}", **RETRY)  # grading this round's samples may need a retry
def budget_task(run: io.RunDir, cfg: FactoryConfig, problems, tally, teacher: Teacher, r: int):
    return pipeline.close_round(run, cfg, problems, tally, teacher, r)


@stage_task("grade", **RETRY)  # e.g. a grading worker pool that could not start
def grade_task(run: io.RunDir, cfg: FactoryConfig, problems, teacher: Teacher):
    return pipeline.grade_rollouts(run, cfg, problems, teacher)


@stage_task("pseudo_gold", **RETRY)  # regrading the labelled problems may need a retry
def pseudo_gold_task(cfg: FactoryConfig, graded, problems, teacher: Teacher):
    return pipeline.label_golds(cfg, graded, problems, teacher)


@stage_task("audit")
def audit_task(cfg: FactoryConfig, graded, problems):
    return run_stage(audit, graded, cfg.audit, problems)


@stage_task("step_score", **RETRY)  # a retry re-scores only what the step-score store lacks
def step_score_task(run: io.RunDir, cfg: FactoryConfig, graded, problems, teacher: Teacher):
    return pipeline.score_steps(run, cfg, graded, problems, teacher)


@stage_task("rationalize", task_run_name="rationalize-shard-{shard}", **RETRY)  # resumes from committed chunks
def rationale_shard_task(run: io.RunDir, shard: int, asked, cfg: FactoryConfig, engines: Engines) -> StageReport:
    return engines.rollout_shard(run, shard, asked, pipeline.rationale_config(cfg), (0, cfg.rationalize.n))


@stage_task("rationalize", **RETRY)  # a retry re-grades and re-verifies (nothing is generated twice)
def rationalize_task(run: io.RunDir, cfg: FactoryConfig, tried, asked, teacher: Teacher, skipped: dict):
    return pipeline.rationalize_unsolved(run, cfg, tried, asked, teacher, skipped)


@stage_task("select")
def select_task(cfg: FactoryConfig, scored):
    return run_stage(select, scored, cfg.select)


@stage_task("difficulty")
def difficulty_task(cfg: FactoryConfig, problems, chosen):
    return pipeline.tag_difficulty(cfg, problems, chosen)


@stage_task("curriculum")
def curriculum_task(cfg: FactoryConfig, chosen, tagged):
    return run_stage(curriculum, chosen, cfg.curriculum, tagged, cfg.prompt)


@stage_task("pairs")
def pairs_task(cfg: FactoryConfig, chosen, dataset):
    return run_stage(pairs, chosen, cfg.pairs, dataset, cfg.prompt)


@stage_task("eval-steps")
def eval_steps_task(cfg: FactoryConfig, teacher: Teacher) -> dict:
    return pipeline.evaluate_steps(cfg, teacher)


@stage_task("write", **RETRY)
def write_task(
    run: io.RunDir,
    cfg: FactoryConfig,
    loaded: Loaded,
    tagged,
    chosen,
    dataset,
    extra: dict,
    reports: list[StageReport],
    manifest: dict,
) -> None:
    batch = pipeline.write_batch_tokens(cfg)
    pipeline.write_outputs(run, loaded, tagged, chosen, dataset, extra, reports, manifest, batch_tokens=batch)


def make_engines(cfg: FactoryConfig) -> Engines:
    if cfg.run.task_runner == "ray":
        from tracefactory.distributed import RayTeacherPool

        return RayTeacherPool(
            cfg.teacher, cfg.run.ray_engines, cfg.run.ray_start_timeout_s, cfg.run.ray_actor_resources
        )
    return pipeline.LocalEngines(make_teacher(cfg.teacher))  # engines load on first use


def run_build(
    config: str | None = None,
    out: str | None = None,
    overrides: dict[str, Any] | None = None,
    teacher: Teacher | None = None,
) -> dict[str, Any]:
    """`build_dataset` with the task runner the config names (`run.task_runner`)."""
    cfg = load_config(config, overrides)
    flow_fn = build_dataset
    if cfg.run.task_runner == "ray":
        from tracefactory.distributed import ray_task_runner

        flow_fn = build_dataset.with_options(task_runner=ray_task_runner(cfg))
    return flow_fn(config=config, out=out, overrides=overrides, teacher=teacher)


def _rollouts(run: io.RunDir, cfg: FactoryConfig, problems, engines: Engines):
    """Every round of the sampling budget (one under the fixed budget): its shards, then the budget's decision of
    which problems go on. Returns the budget's tally and the funnel's rollout row."""
    tally, reports, shard_no = pipeline.budget_tally(problems, cfg), [], 0
    for r, samples in enumerate(pipeline.budget_rounds(cfg)):
        shards = pipeline.shard_frames(pipeline.round_problems(problems, tally), cfg.run.shard_size)
        if r and not len(shards[0]):
            break  # every problem has stopped
        if pipeline.rollouts_pending(run, cfg, shards, engines.teacher, samples):
            start_task(engines)
        if cfg.run.task_runner == "ray":  # shard tasks on Ray workers, all at once; each hands its shard to an actor
            futures = [
                rollout_task.submit(run, shard_no + i, shard, cfg, engines, samples) for i, shard in enumerate(shards)
            ]
            reports += [f.result() for f in futures]
        else:  # one in-process engine: shards in turn
            reports += [rollout_task(run, shard_no + i, shard, cfg, engines, samples) for i, shard in enumerate(shards)]
        shard_no += len(shards)
        if cfg.sampling.budget.policy == "adaptive":  # grade the round, decide who goes on
            tally = budget_task(run, cfg, problems, tally, engines.teacher, r)
        else:  # nothing to decide: the tallies only
            tally = pipeline.close_round(run, cfg, problems, tally, engines.teacher, r)
    return tally, pipeline.rollout_total(reports, tally), shard_no


def _rationales(run: io.RunDir, cfg: FactoryConfig, graded, problems, engines: Engines, first_shard: int):
    """STaR: the hinted requests of the unsolved problems (shards numbered on from the rollouts'), then the stage
    that judges them. Returns the rationales (every one asked, with why it was dropped), the problems tried and the
    funnel row."""
    tried, asked, skipped = pipeline.rationale_requests(cfg, graded, problems)
    rcfg, samples = pipeline.rationale_config(cfg), (0, cfg.rationalize.n)
    shards = [s for s in pipeline.shard_frames(asked, cfg.run.shard_size) if len(s)]
    if pipeline.rollouts_pending(run, rcfg, shards, engines.teacher, samples):
        start_task(engines)
    for i, shard in enumerate(shards):
        rationale_shard_task(run, first_shard + i, shard, cfg, engines)
    rationales, report = rationalize_task(run, cfg, tried, asked, engines.teacher, skipped)
    return rationales, tried, report


@flow(name="build_dataset")
def build_dataset(
    config: str | None = None, out: str | None = None, overrides: dict[str, Any] | None = None, teacher: Any = None
) -> dict[str, Any]:
    """Build the curated dataset for CONFIG (the embedded demo when None) into OUT. `teacher` (typed
    Any: Prefect validates flow parameters by their annotations) replaces the configured one."""
    started = time.time()
    cfg = load_config(config, overrides)
    run = io.RunDir(out or io.default_run_dir(cfg.name))
    watchdog.guard()  # the engines this flow starts die with its process (a killed worker's flow run too)
    with run.lock():  # one writer per run directory
        return _build(run, cfg, started, teacher)


def _build(run: io.RunDir, cfg: FactoryConfig, started: float, teacher: Teacher | None) -> dict[str, Any]:
    engines = pipeline.LocalEngines(teacher) if teacher is not None else make_engines(cfg)
    try:
        loaded = load_task(run, cfg)
        if cfg.rewrite.enabled and "paraphrase" in cfg.rewrite.kinds:
            start_task(engines)  # paraphrasing needs the teacher before rollout
        loaded, r_rewrite = rewrite_task(cfg, loaded, engines.teacher) if cfg.rewrite.enabled else (loaded, None)
        loaded, r_dedup = dedup_task(cfg, loaded) if cfg.dedup.enabled else (loaded, None)
        loaded, r_decon = decontaminate_task(cfg, loaded) if cfg.decontaminate.enabled else (loaded, None)
        tally, r_roll, shards = _rollouts(run, cfg, loaded.problems, engines)
        problems = pipeline.with_budget(loaded.problems, tally)
        graded, r_grade = grade_task(run, cfg, problems, engines.teacher)
        r_gold = None
        if cfg.source.gold == "majority":
            (graded, problems), r_gold = pseudo_gold_task(cfg, graded, problems, engines.teacher)
        verdicts = audit_table = r_audit = None
        if cfg.audit.enabled:
            (graded, verdicts, audit_table), r_audit = audit_task(cfg, graded, problems)
        scored, r_step = step_score_task(run, cfg, graded, problems, engines.teacher)
        # each stage's frame holds its version of drop_reason (light rows: ~16 bytes a row): only the last one stays
        del graded
        chosen, r_select = select_task(cfg, scored)
        problems = pipeline.with_audit(pipeline.with_teacher_tokens(problems, scored), verdicts)
        rationales = tried = r_rat = None
        if cfg.rationalize.enabled:
            rationales, tried, r_rat = _rationales(run, cfg, scored, problems, engines, shards)
        del scored
        problems = pipeline.with_rationales(problems, rationales, tried)
        tagged, r_diff = difficulty_task(cfg, problems, chosen)
        dataset, r_curr = curriculum_task(cfg, pipeline.training_rows(cfg, chosen, rationales), tagged)
        rationalized = pipeline.rationalized_table(cfg, rationales, tagged)
        pairs, r_pairs = pairs_task(cfg, chosen, dataset) if cfg.pairs.enabled else (None, None)
        step_eval = eval_steps_task(cfg, engines.teacher) if cfg.step_score.eval_set else None
    finally:
        if teacher is None:  # ours to close; a caller's teacher stays the caller's
            engines.close()
    stages = (loaded.report, r_rewrite, r_dedup, r_decon, r_roll, r_grade, r_gold, r_audit, r_step, r_select, r_rat)
    stages += (r_diff, r_curr, r_pairs)
    reports = [r for r in stages if r is not None]
    extra = {"step_eval": step_eval} if step_eval else None
    manifest = build_manifest(cfg, teacher_identity(cfg, engines.teacher), reports, started, extra)
    write_task(
        run,
        cfg,
        loaded,
        tagged,
        chosen,
        dataset,
        {"pairs": pairs, "audit": audit_table, "rationalized": rationalized},
        reports,
        manifest,
    )
    create_table_artifact(
        key="funnel",
        table=[r.as_dict() for r in reports],
        description=f"Stage funnel of {run.root}\n\n{funnel_markdown(reports)}",
    )
    return {"run_dir": str(run.root), "dataset_rows": len(dataset), "funnel": [r.line() for r in reports]}
