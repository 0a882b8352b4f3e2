"""The runner: every stage as the flow calls it — the pure stage function, plus the run-directory I/O
around it; timing and logging live here, once (`run_stage`). No Prefect here: `flows/build_dataset.py`
wraps each step in a task; tests call these directly.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata as md
import logging
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Callable, Mapping, Protocol

import polars as pl

from tracefactory.backends.base import RendersPrompts, Teacher
from tracefactory.backends.factory import make_scorer, make_verifier
from tracefactory.backends.identity import model_fingerprint, teacher_key
from tracefactory.backends.prompts import build_prompt
from tracefactory.backends.scorers import CachedScorer
from tracefactory.config import FactoryConfig, digest
from tracefactory.errors import ConfigError
from tracefactory.grading import texts
from tracefactory.grading.pool import kept_workers
from tracefactory.grading.think import ThinkSpec, opener_of
from tracefactory.grading.verify import check_golds, judge_texts
from tracefactory.stages.budget import decide, new_tally, open_problems, record_round
from tracefactory.stages.curriculum import curriculum
from tracefactory.stages.difficulty import difficulty
from tracefactory.stages.grade import grade
from tracefactory.stages.load import load, partition, removed
from tracefactory.stages.pseudo_gold import pseudo_gold
from tracefactory.stages.rationalize import hinted, rationalize, unsolved
from tracefactory.stages.rewrite import Paraphraser, rewrite
from tracefactory.stages.rollout import RequestKey, request_keys, rollout, rollout_report
from tracefactory.stages.select import selected
from tracefactory.stages.step_score import step_score, unscored
from tracefactory.store import io
from tracefactory.store.failpoints import failpoint
from tracefactory.store.report import StageReport, funnel_frame, merge_reports
from tracefactory.store.schema import (
    ANSWER,
    CORRECT,
    COT,
    COT_TOKENS,
    GENERATION_SCHEMA,
    GOLD_SOURCE,
    GOLD_SUSPECT,
    LEVEL,
    MAJORITY_ANSWER,
    MAJORITY_GOLD,
    MAJORITY_SHARE,
    MAJORITY_VOTES,
    MATCH,
    MEMORISATION_GAP,
    MEMORISED,
    N_ANSWERED,
    PASS_RATE,
    PROBLEM_ID,
    QUESTION,
    RATIONALIZED,
    REASON,
    REASONING,
    REWRITE_KIND,
    REWRITE_OF,
    ROUNDS,
    SAMPLE_INDEX,
    SAMPLES_DRAWN,
    SEED,
    STEP_TOKENS,
    STOP_REASON,
    TEACHER_TOKENS,
    TEXT,
    columns,
    empty,
)
from tracefactory.store.sources import read_source

log = logging.getLogger(__name__)
StageOutput = tuple[pl.DataFrame, StageReport]


def run_stage(stage: Callable[..., StageOutput], frame: pl.DataFrame, cfg, *inputs) -> StageOutput:
    """Run `stage(frame, cfg, *inputs)`, time it and log its funnel line."""
    started = time.perf_counter()
    out, report = stage(frame, cfg, *inputs)
    report = dataclasses.replace(report, seconds=time.perf_counter() - started)
    log.info(report.line())
    return out, report


# ---- load ------------------------------------------------------------------------------------------


@dataclass
class Loaded:
    problems: pl.DataFrame
    rejected: pl.DataFrame
    report: StageReport


def load_problems(run: io.RunDir, cfg: FactoryConfig) -> Loaded:
    """The load stage. A source whose every row is rejected is a configuration fault (a wrong field
    name, the wrong file): the rejected rows are written, then the run stops saying what it looked for."""
    golds = partial(check_golds, workers=cfg.grade.workers, timeout_s=cfg.grade.timeout_s)  # grading's budget
    parsed, report = run_stage(load, read_source(cfg.source), cfg.source, golds)
    problems, rejected = partition(parsed)
    if report.rows_in and not report.kept:
        run.write_table(rejected, "rejected")
        src = cfg.source
        fields = f"question_field={src.question_field!r}, answer_field={src.answer_field!r}"
        fields += f", id_field={src.id_field!r}" if src.id_field else ""
        raise ConfigError(
            "source",
            f"{src.path}: all {report.rows_in} rows rejected {report.dropped_by_reason}",
            f"rows with {fields} (gold_format={src.gold_format!r})",
            f"See {run.root / 'rejected'} for each row's reason",
        )
    return Loaded(problems, rejected, report)


def rewrite_problems(cfg: FactoryConfig, loaded: Loaded, teacher: Teacher) -> tuple[Loaded, StageReport]:
    """The rewrite stage: the loaded problems plus their variants (paraphrases through `teacher`,
    graded with the grading pool)."""
    judge = partial(
        judge_texts,
        workers=cfg.grade.workers,
        timeout_s=cfg.grade.timeout_s,
        formats=cfg.grade.answer_formats,
        think=think_spec(cfg, teacher),
    )
    paraphraser = Paraphraser(teacher, judge, cfg.prompt, cfg.sampling)
    problems, report = run_stage(rewrite, loaded.problems, cfg.rewrite, paraphraser)
    return dataclasses.replace(loaded, problems=problems), report


def filter_problems(stage: Callable[..., StageOutput], cfg, loaded: Loaded, *inputs) -> tuple[Loaded, StageReport]:
    """A problem filter (dedup, decontaminate): the kept problems go on, the removed ones join `rejected`
    with their reason and match."""
    annotated, report = run_stage(stage, loaded.problems, cfg, *inputs)
    kept = annotated.filter(pl.col(REASON).is_null()).drop(REASON, MATCH)
    rejected = pl.concat([loaded.rejected, removed(annotated)], how="vertical_relaxed")
    return dataclasses.replace(loaded, problems=kept, rejected=rejected), report


# ---- rollout ---------------------------------------------------------------------------------------


def shard_frames(problems: pl.DataFrame, size: int) -> list[pl.DataFrame]:
    return [problems.slice(i, size) for i in range(0, len(problems), size)] or [problems.clear()]


def _requests(cfg: FactoryConfig, problems: pl.DataFrame, teacher: Teacher) -> dict[str, RequestKey]:
    return dict(
        zip(problems[PROBLEM_ID].to_list(), request_keys(problems, cfg.rollout, teacher_key(teacher)), strict=True)
    )


Samples = tuple[int, int]  # sample indices [lo, hi) of a round


def all_samples(cfg: FactoryConfig) -> Samples:
    return 0, cfg.sampling.n


def shard_done(
    run: io.RunDir, cfg: FactoryConfig, problems: pl.DataFrame, teacher: Teacher, samples: Samples | None = None
) -> bool:
    """Whether every sample asked of every problem is committed — checked against the chunks, not a marker."""
    lo, hi = samples or all_samples(cfg)
    return not run.generations().undone(
        {pid: k.samples(lo, hi) for pid, k in _requests(cfg, problems, teacher).items()}
    )


def rollouts_pending(
    run: io.RunDir, cfg: FactoryConfig, shards: list[pl.DataFrame], teacher: Teacher, samples: Samples | None = None
) -> bool:
    """Whether any shard still needs the teacher (a fully resumed run never loads an engine)."""
    return any(len(s) and not shard_done(run, cfg, s, teacher, samples) for s in shards)


_PARTS = ("prompt", "sampling", "teacher")


def why_generated(
    history: Mapping[str, tuple[str, str, str]], todo: dict[str, RequestKey], first: int = 0
) -> dict[str, int]:
    """Why each request to generate is not reused: `new` (nothing committed for its problem), which of its
    parts changed since the last commit (`prompt_changed`, `teacher_changed`, ...), `more_samples` (a later
    round: samples from `first` on), or `retried` (the same samples again: a request that failed)."""
    out: dict[str, int] = {}
    for pid, k in todo.items():
        before = history.get(pid)
        if before is None:
            why = "new"
        else:
            now = (k.prompt, k.sampling, k.teacher)
            changed = [f"{part}_changed" for part, a, b in zip(_PARTS, before, now, strict=True) if a != b]
            why = "+".join(changed) or ("more_samples" if first else "retried")
        out[why] = out.get(why, 0) + 1
    return out


def rollout_shard(
    run: io.RunDir,
    shard: int,
    problems: pl.DataFrame,
    cfg: FactoryConfig,
    teacher: Teacher,
    samples: Samples | None = None,
) -> StageReport:
    """Generate the shard's samples [lo, hi) (all `sampling.n` by default) that no intact chunk holds (by
    content key: an edited question, a retrained teacher or new sampling settings regenerate exactly the
    problems they touch); commit results as they finish. Requests that failed for good (`teacher_error`) or
    that the teacher could not take (`prompt_too_long`) are recorded, not done: the next run tries them again."""
    started = time.perf_counter()
    lo, hi = samples or all_samples(cfg)
    store = run.generations()
    keys = _requests(cfg, problems, teacher)
    wanted = {pid: k.samples(lo, hi) for pid, k in keys.items()}  # once: millions of sample keys in a large run
    undone = store.undone(wanted)
    todo = {pid: k for pid, k in keys.items() if pid in undone}
    why = why_generated(store.history(), todo, lo)
    failed: dict[str, str] = {}
    skipped: dict[str, str] = {}
    if todo:
        if len(todo) < len(keys) or set(why) != {"new"}:
            reasons = ", ".join(f"{k}={v}" for k, v in sorted(why.items()))
            log.info(
                "shard %d: %d of %d problems reused, %d to generate (%s)",
                shard,
                len(keys) - len(todo),
                len(keys),
                len(todo),
                reasons,
            )
        with io.ChunkWriter(store, keys, shard, cfg.run.flush_every, cfg.run.flush_seconds) as writer:
            asked = problems.filter(pl.col(PROBLEM_ID).is_in(list(todo)))
            rollout(asked, cfg.rollout, teacher, sink=writer, samples=(lo, hi))
        failed, skipped = writer.failed, writer.skipped
        if failed:
            log.warning(
                "shard %d: %d request(s) failed after retries (first: %s); re-run to retry them",
                shard,
                len(failed),
                next(iter(failed.values())),
            )
    # what the report counts: the samples and their tokens, not their texts
    frame = store.read({s for samples in wanted.values() for s in samples}, keys, columns=[COT_TOKENS])
    frame = frame if frame is not None else pl.DataFrame(schema={PROBLEM_ID: pl.String, COT_TOKENS: pl.Int64})
    detail = {"problems_reused": len(keys) - len(todo), "problems_generated": len(todo)}
    detail.update({f"generated_{k}": v for k, v in why.items()})
    report = rollout_report(len(problems), hi - lo, frame, len(failed), len(skipped), detail)
    report = dataclasses.replace(report, seconds=time.perf_counter() - started)
    log.info(
        "rollout shard %d: %d of %d completions, %d tokens, %.1f s",
        shard,
        report.kept,
        report.rows_in,
        report.tokens,
        report.seconds,
    )
    return report


def rollout_total(reports: list[StageReport], tally: pl.DataFrame | None = None) -> StageReport:
    """The rollout row of the funnel: every shard of every round; with the budget's tally, how many rounds ran
    and why problems stopped (`stopped_<reason>`)."""
    total = merge_reports(reports)
    if tally is not None and len(tally):
        detail = {**total.detail, "rounds": int(tally[ROUNDS].max() or 0)}
        detail.update({f"stopped_{k}": v for k, v in sorted(Counter(tally[STOP_REASON].drop_nulls()).items())})
        total = dataclasses.replace(total, detail=detail)
    log.info(total.line())
    return total


# ---- rollout budget (stages.budget) -----------------------------------------------------------------


def budget_rounds(cfg: FactoryConfig) -> list[Samples]:
    return cfg.sampling.budget.rounds(cfg.sampling.n)


def budget_tally(problems: pl.DataFrame, cfg: FactoryConfig) -> pl.DataFrame:
    """Every problem open, nothing drawn yet (with its source level, for the budget's priors, and whether it can be
    hopeless: not a gold-less problem drawing votes for a pseudo-gold under source.gold: majority)."""
    levels = problems[LEVEL].to_list() if LEVEL in problems.columns else None
    has_gold = problems[ANSWER].is_not_null().to_list() if cfg.source.gold == "majority" else None  # None: all
    return new_tally(problems[PROBLEM_ID].to_list(), levels, has_gold)


def round_problems(problems: pl.DataFrame, tally: pl.DataFrame) -> pl.DataFrame:
    """The problems the next round asks for samples: those whose tally is still open."""
    return problems.filter(pl.col(PROBLEM_ID).is_in(open_problems(tally)[PROBLEM_ID].implode()))


def close_round(
    run: io.RunDir, cfg: FactoryConfig, problems: pl.DataFrame, tally: pl.DataFrame, teacher: Teacher, r: int
) -> pl.DataFrame:
    """After round `r`: the tallies of the problems it asked (samples, tokens; correct traces, graded here, under
    the adaptive budget) and which of them stop (stages.budget) — from the committed samples only, so a resumed
    run decides the same."""
    rounds = budget_rounds(cfg)
    lo, hi = rounds[r]
    asked = round_problems(problems, tally)
    if cfg.sampling.budget.policy == "adaptive":  # a slice of problems at a time (`post_slices`): what it tallies
        frames, think = [], think_spec(cfg, teacher)
        with kept_workers():
            for part in post_slices(run, cfg, asked) if cfg.run.post == "streaming" else [asked]:
                keys = _requests(cfg, part, teacher)
                frame = run.generations().read({s for k in keys.values() for s in k.samples(lo, hi)}, keys)
                frame = frame if frame is not None else pl.DataFrame(schema=GENERATION_SCHEMA)
                frames.append(grade(frame, cfg.grade, part, think)[0].select(PROBLEM_ID, CORRECT, COT_TOKENS))
        frame = pl.concat(frames)
    else:  # nothing to decide, so nothing to read: every problem drew its n and stops
        frame = pl.DataFrame(schema={PROBLEM_ID: pl.String, CORRECT: pl.Boolean, COT_TOKENS: pl.Int64})
    tally = record_round(tally, asked[PROBLEM_ID], hi, frame)
    tally = decide(tally, cfg.sampling.budget, cfg.select.keep, cfg.difficulty, rounds, r)
    failpoint("budget.round_closed")
    if cfg.sampling.budget.policy == "fixed":
        return tally
    was_asked = pl.col(PROBLEM_ID).is_in(asked[PROBLEM_ID].implode())
    stopped = tally.filter(was_asked & pl.col(STOP_REASON).is_not_null())
    log.info(
        "budget round %d: samples %d-%d of %d problems; %d stop (%s), %d go on; %d teacher tokens so far",
        r + 1,
        lo,
        hi - 1,
        len(asked),
        len(stopped),
        ", ".join(f"{k}={v}" for k, v in sorted(Counter(stopped[STOP_REASON]).items())) or "none",
        len(open_problems(tally)),
        int(tally[TEACHER_TOKENS].sum()),
    )
    return tally


def with_budget(problems: pl.DataFrame, tally: pl.DataFrame) -> pl.DataFrame:
    """`problems` with what the budget gave each: samples_drawn, rounds, stop_reason."""
    cols = [SAMPLES_DRAWN, ROUNDS, STOP_REASON]
    return problems.drop([c for c in cols if c in problems.columns]).join(
        tally.select(PROBLEM_ID, *cols), on=PROBLEM_ID, how="left"
    )


def with_teacher_tokens(problems: pl.DataFrame, scored: pl.DataFrame) -> pl.DataFrame:
    """`problems` with `teacher_tokens`: what its rollouts (every sample drawn) and the step scorer's continuations
    of them took, summed over its rows of the step_score stage's output."""
    step = pl.col(STEP_TOKENS) if STEP_TOKENS in scored.columns else pl.lit(0)
    spent = scored.group_by(PROBLEM_ID).agg((pl.col(COT_TOKENS) + step.fill_null(0)).sum().alias(TEACHER_TOKENS))
    return (
        problems.drop([TEACHER_TOKENS] if TEACHER_TOKENS in problems.columns else [])
        .join(spent, on=PROBLEM_ID, how="left")
        .with_columns(pl.col(TEACHER_TOKENS).fill_null(0).cast(pl.Int64))
    )


def with_audit(problems: pl.DataFrame, verdicts: pl.DataFrame | None) -> pl.DataFrame:
    """`problems` with the audit's verdicts (`gold_suspect`, the majority answer's columns); null without one."""
    cols = [N_ANSWERED, MAJORITY_ANSWER, MAJORITY_VOTES, MAJORITY_SHARE, GOLD_SUSPECT]
    problems = problems.drop([c for c in cols if c in problems.columns])
    if verdicts is None:  # nulls of the problems table's types (schemas/problems.json)
        return problems.with_columns(pl.lit(None, t).alias(c) for c, t in empty("problems").select(cols).schema.items())
    return problems.join(verdicts.select(PROBLEM_ID, *cols), on=PROBLEM_ID, how="left")


class Engines(Protocol):
    """Where rollout shards are generated: this process's teacher (`LocalEngines`), or teacher engines
    in Ray actors (`distributed.RayTeacherPool`). `teacher` takes the other calls (step scoring)."""

    @property
    def teacher(self) -> Teacher: ...

    def start(self) -> None: ...

    def close(self) -> None: ...

    def rollout_shard(
        self, run: io.RunDir, shard: int, problems: pl.DataFrame, cfg: FactoryConfig, samples: Samples | None = None
    ) -> StageReport: ...


class LocalEngines:
    """The one teacher of this process generates every shard, in turn."""

    def __init__(self, teacher: Teacher):
        self._teacher = teacher

    @property
    def teacher(self) -> Teacher:
        return self._teacher

    def start(self) -> None:
        self._teacher.start()

    def close(self) -> None:
        self._teacher.close()

    def rollout_shard(
        self, run: io.RunDir, shard: int, problems: pl.DataFrame, cfg: FactoryConfig, samples: Samples | None = None
    ) -> StageReport:
        return rollout_shard(run, shard, problems, cfg, self._teacher, samples)


def read_generations(run: io.RunDir, cfg: FactoryConfig, problems: pl.DataFrame, teacher: Teacher) -> pl.DataFrame:
    """The committed completions of `problems`' samples — the first `samples_drawn` of each where the column
    is there (an adaptive budget), else the first `sampling.n` — in problem order then sample index: the same
    order whatever order requests finished in, or how many runs or rounds it took."""
    drawn = problems[SAMPLES_DRAWN].to_list() if SAMPLES_DRAWN in problems.columns else [cfg.sampling.n] * len(problems)
    keys = _requests(cfg, problems, teacher)
    asked = {pid: ((k.prompt, k.sampling, k.teacher), m) for (pid, k), m in zip(keys.items(), drawn, strict=True)}
    frame = run.generations().read_requests(asked)  # (the rows of these samples' keys, without a key per sample)
    if frame is None:
        return pl.DataFrame(schema=GENERATION_SCHEMA)
    order = problems.select(PROBLEM_ID).with_row_index("_order")
    return frame.join(order, on=PROBLEM_ID, how="left").sort("_order", SAMPLE_INDEX).drop("_order")


# ---- grade (persisted) -----------------------------------------------------------------------------

_GRADER_FILES = (  # the code a verdict depends on (grading/steps.py does not: steps are the step scorer's)
    *(f"grading/{name}.py" for name in ("verify", "outcomes", "pool", "think", "answers", "reading")),
    "stages/grade.py",
)


def think_spec(cfg: FactoryConfig, teacher: Teacher) -> ThinkSpec:
    """How this run's completions are read: `prompt.thinking`, and the think-opening tail of the prompts the
    teacher is sent (its chat template applied; "" where the teacher cannot say, e.g. a server that is not vLLM)."""
    if cfg.prompt.thinking == "off":
        return ThinkSpec("off")
    rendered = teacher.rendered_prompt(build_prompt("?", cfg.prompt)) if isinstance(teacher, RendersPrompts) else None
    return ThinkSpec(cfg.prompt.thinking, opener_of(rendered or ""))


def grader_identity() -> dict[str, str]:
    """What a verdict depends on besides its inputs: the grading code and Math-Verify's version."""
    root = Path(__file__).parent
    ident = {name: io.file_sha256(root / name)[:16] for name in _GRADER_FILES}
    ident["math-verify"] = md.version("math-verify")
    return ident


def _grade_key(cfg: FactoryConfig, think: ThinkSpec, problems: pl.DataFrame, generations: pl.DataFrame) -> str:
    """The grade stage's cache key: the content of its inputs (completions, golds, grade settings, grading code)."""
    return io.content_key(
        grader_identity(),
        dataclasses.asdict(cfg.grade),
        dataclasses.asdict(think),
        problems.select(PROBLEM_ID, ANSWER),
        generations,
    )


def grade_rollouts(run: io.RunDir, cfg: FactoryConfig, problems: pl.DataFrame, teacher: Teacher) -> StageOutput:
    """The grade stage over the committed completions, kept in the run dir by the content of its inputs
    (completions, golds, grade settings, grading code): a re-run with the same inputs reads the graded
    rows back instead of grading again. Under `run.post: streaming`, slice by slice (`grade_slices`)."""
    if cfg.run.post == "streaming":
        return grade_slices(run, cfg, problems, teacher)
    generations = read_generations(run, cfg, problems, teacher)
    cache = run.stage_cache("graded")
    think = think_spec(cfg, teacher)
    key = _grade_key(cfg, think, problems, generations)
    hit = cache.get(key)
    if hit is not None:
        log.info("grade: %d completions graded by an earlier run, read back (inputs unchanged)", len(hit[0]))
        return hit
    graded, report = run_stage(grade, generations, cfg.grade, problems, think)
    cache.put(key, graded, report)
    failpoint("grade.persisted")
    return graded, report


def post_slices(run: io.RunDir, cfg: FactoryConfig, problems: pl.DataFrame) -> list[pl.DataFrame]:
    """`problems` cut, in order, into slices of about `run.post_slice_tokens` completion tokens each (their samples
    drawn times the mean tokens of the chunks holding them: the commit records say, no chunk is read)."""
    if not len(problems):
        return [problems]
    drawn = problems[SAMPLES_DRAWN] if SAMPLES_DRAWN in problems.columns else pl.lit(cfg.sampling.n)
    per_sample = pl.Series(run.generations().tokens_per_sample(problems[PROBLEM_ID].to_list()), dtype=pl.Float64)
    weight = problems.select((per_sample * drawn).alias("w"))["w"]
    group = ((weight.cum_sum() - weight) // cfg.run.post_slice_tokens).cast(pl.Int64).alias("_slice")
    return problems.with_columns(group).partition_by("_slice", maintain_order=True, include_key=False)


def grade_slices(run: io.RunDir, cfg: FactoryConfig, problems: pl.DataFrame, teacher: Teacher) -> StageOutput:
    """The grade stage a slice of problems at a time (`post_slices`): each slice's completions read, graded and kept
    in the stage cache as one file, by the content of its inputs (a crash keeps the slices done; a re-run reads
    back each slice whose inputs did not change); what it returns are light rows (`grading.texts`): every column but
    the texts, which stay in the slices' files until a stage reads the few it needs."""
    started = time.perf_counter()
    cache, think = run.stage_cache("graded_slices"), think_spec(cfg, teacher)  # stored as `grading.texts` says
    parts, reports, reused = [], [], 0

    def persist(key: str, graded: pl.DataFrame, report: StageReport) -> None:
        cache.put(key, graded, report)
        failpoint("grade.persisted")

    # a slice's file is written (compressing its texts: a quarter of the stage) while the next slice is read and
    # graded; one write at a time, in order
    with kept_workers(), ThreadPoolExecutor(1, thread_name_prefix="grade-write") as writer:
        writing: Future | None = None
        for part in post_slices(run, cfg, problems):
            generations = read_generations(run, cfg, part, teacher)
            key = _grade_key(cfg, think, part, generations)
            hit = cache.get(key, leave_out=texts.STORED)
            if hit is None:
                graded, report = grade(generations, cfg.grade, part, think, positions=True)
                if writing is not None:
                    writing.result()
                writing = writer.submit(persist, key, graded, report)
                graded = graded.drop(texts.STORED)
            else:
                (graded, report), reused = hit, reused + 1
                failpoint("grade.persisted")
            del generations
            parts.append(texts.light(graded, cache.path(key)))
            reports.append(report)
        if writing is not None:
            writing.result()
    merged = dataclasses.replace(merge_reports(reports), seconds=time.perf_counter() - started)
    if reused:
        log.info("grade: %d of %d slices graded by an earlier run, read back (inputs unchanged)", reused, len(parts))
    log.info(merged.line())
    return pl.concat(parts), merged


# ---- pseudo_gold (source.gold: majority) -------------------------------------------------------------


def label_golds(
    cfg: FactoryConfig, graded: pl.DataFrame, problems: pl.DataFrame, teacher: Teacher
) -> tuple[tuple[pl.DataFrame, pl.DataFrame], StageReport]:
    """The pseudo_gold stage (the gold-less problems' majority answers, above the audit's bars), then those
    problems' rollouts graded again, against their pseudo-gold: (graded, problems) and the stage's report."""
    labelled, report = run_stage(pseudo_gold, graded, cfg.audit, problems)
    again = pl.col(PROBLEM_ID).is_in(labelled.filter(pl.col(GOLD_SOURCE) == MAJORITY_GOLD)[PROBLEM_ID].implode())
    rows = graded.with_row_index("_row")
    if rows.select(again.any()).item():
        # the completions as the teacher gave them (their text read back where it is on disk: `grading.texts`)
        keep = [c for c in rows.columns if c in (*GENERATION_SCHEMA, *texts.LOCATORS)]
        base = rows.filter(again).select("_row", *keep)
        given = [c for c in GENERATION_SCHEMA if c in texts.ON_DISK]  # text, finish reason, ... where on disk
        regraded, _ = grade(texts.with_texts(base, given), cfg.grade, labelled, think_spec(cfg, teacher))
        rows = pl.concat([rows.filter(~again), regraded.select(rows.columns)]).sort("_row")
        # the rows graded again, and those that reach their pseudo-gold (they join the grade stage's kept)
        reached = int(regraded[CORRECT].sum())
        report = dataclasses.replace(report, detail={"regraded": len(regraded), "reached_pseudo_gold": reached})
    return (rows.drop("_row"), labelled), report


# ---- step_score (persisted block by block) --------------------------------------------------------


STEP_SCORES_VERSION = 2  # 2: a wrong-answer trace's last step is bad when no prefix was (scope: all)


def _step_key(cfg: FactoryConfig, teacher: Teacher) -> str:
    sc = cfg.step_score
    # thinking decides what the steps are and where a continuation's answer is read (not in the rollouts' key)
    scorer = [
        sc.scorer,
        sc.prm_model,
        sc.split,
        sc.pattern,
        sc.n,
        sc.search,
        sc.label,
        sc.max_steps,
        cfg.prompt.thinking,
    ]
    if sc.scorer == "prm":  # retrained weights score again; its first bad step is the first at or below threshold
        scorer += [model_fingerprint(sc.prm_model), sc.threshold]
    return digest([cfg.rollout_hash(), teacher_key(teacher), scorer, STEP_SCORES_VERSION])


def score_steps(
    run: io.RunDir, cfg: FactoryConfig, graded: pl.DataFrame, problems: pl.DataFrame, teacher: Teacher
) -> tuple[pl.DataFrame, StageReport | None]:
    """The step_score stage with its scores kept in the run dir (a re-run samples nothing again);
    with step scoring off, the step columns are added, all null, and there is no report."""
    if not cfg.step_score.enabled:
        return unscored(graded), None
    store = run.step_scores(_step_key(cfg, teacher))
    cache = store.load()
    light = texts.is_light(graded)  # every trace's steps are split from its text: read them back (`grading.texts`)
    graded = texts.with_texts(graded, [TEXT, COT, REASONING, SEED])
    scorer = CachedScorer(make_scorer(cfg, teacher, graded), cache, on_block=lambda: store.save(cache))
    try:
        scored, report = run_stage(step_score, graded, cfg.step_score, problems, scorer)
    finally:
        scorer.close()  # a PRM's own engine; the teacher's belongs to the flow
    return (scored.drop(texts.ON_DISK, strict=False) if light else scored), report


def evaluate_steps(cfg: FactoryConfig, teacher: Teacher, path: str | None = None, limit: int | None = None) -> dict:
    """The configured step scorer's agreement with human step labels (see `step_eval`)."""
    from tracefactory.backends.step_eval import evaluate, load_labelled

    path = path or cfg.step_score.eval_set
    scorer = make_scorer(cfg, teacher)
    try:
        result = evaluate(scorer, load_labelled(path, limit if limit is not None else cfg.step_score.eval_limit))
    finally:
        scorer.close()
    return {"eval_set": str(path), **result}


# ---- rationalize (STaR, stages.rationalize) ----------------------------------------------------------


def rationale_config(cfg: FactoryConfig) -> FactoryConfig:
    """The hinted requests' settings: `rationalize.n` samples each, the run's other sampling and prompt settings."""
    return dataclasses.replace(cfg, sampling=dataclasses.replace(cfg.sampling, n=cfg.rationalize.n))


def rationale_requests(
    cfg: FactoryConfig, graded: pl.DataFrame, problems: pl.DataFrame
) -> tuple[pl.DataFrame, pl.DataFrame, dict[str, int]]:
    """The problems to rationalize (no rollout reached the gold, the gold not suspect), the same with their hinted
    questions (the requests), and how many were left out and why."""
    tried, skipped = unsolved(graded, problems)
    return tried, hinted(tried, cfg.rationalize), skipped


_RATIONALIZE_FILES = ("stages/rationalize.py", "backends/scorers.py", "grading/steps.py")


def rationalize_unsolved(
    run: io.RunDir,
    cfg: FactoryConfig,
    tried: pl.DataFrame,
    asked: pl.DataFrame,
    teacher: Teacher,
    skipped: dict[str, int],
) -> StageOutput:
    """The rationalize stage over the committed hinted completions: graded against the golds, filtered, verified
    under the plain prompt; kept in the run dir by the content of its inputs, as the grade stage is (a re-run
    verifies nothing again)."""
    rcfg = rationale_config(cfg)
    generations = read_generations(run, rcfg, asked, teacher)
    think = think_spec(cfg, teacher)
    sc = cfg.step_score
    code = Path(__file__).parent
    key = io.content_key(
        grader_identity(),
        {name: io.file_sha256(code / name)[:16] for name in _RATIONALIZE_FILES},  # the stage's and the verifier's code
        dataclasses.asdict(cfg.grade),
        {k: v for k, v in dataclasses.asdict(cfg.rationalize).items() if k != "include"},  # where rows go: not here
        dataclasses.asdict(think),
        [sc.split, sc.pattern, cfg.prompt.thinking, cfg.rollout_hash(), teacher_key(teacher)],
        tried.select(PROBLEM_ID, QUESTION, ANSWER),
        generations,
    )
    cache = run.stage_cache("rationalize")
    hit = cache.get(key)
    if hit is not None:
        log.info("rationalize: %d rationales judged by an earlier run, read back (inputs unchanged)", len(hit[0]))
        return hit
    graded, _ = grade(generations, cfg.grade, tried, think)
    verifier = make_verifier(cfg, teacher)
    out, report = run_stage(rationalize, graded, cfg.rationalize, tried, (sc.split, sc.pattern), verifier, skipped)
    cache.put(key, out, report)
    return out, report


def with_rationales(
    problems: pl.DataFrame, rationales: pl.DataFrame | None, tried: pl.DataFrame | None
) -> pl.DataFrame:
    """`problems` with `rationalized` (true: a rationale kept; false: tried, none kept; null: not tried) and the
    rationales' teacher tokens (writing and verifying them) added to `teacher_tokens`."""
    if rationales is None or tried is None:
        return problems.with_columns(pl.lit(None, pl.Boolean).alias(RATIONALIZED))
    spent = rationales.group_by(PROBLEM_ID).agg((pl.col(COT_TOKENS) + pl.col(STEP_TOKENS)).sum().alias("_spent"))
    recovered = selected(rationales)[PROBLEM_ID].implode()
    was_tried = pl.col(PROBLEM_ID).is_in(tried[PROBLEM_ID].implode())
    return (
        problems.join(spent, on=PROBLEM_ID, how="left")
        .with_columns(
            (pl.col(TEACHER_TOKENS) + pl.col("_spent").fill_null(0)).alias(TEACHER_TOKENS),
            pl.when(was_tried).then(pl.col(PROBLEM_ID).is_in(recovered)).alias(RATIONALIZED),
        )
        .drop("_spent")
    )


def training_rows(cfg: FactoryConfig, chosen: pl.DataFrame, rationales: pl.DataFrame | None) -> pl.DataFrame:
    """What the `dataset` table is made of: the rollouts (selected rows survive), with the kept rationales when
    `rationalize.include` (else they are only in their own `rationalized` table)."""
    if rationales is None or not cfg.rationalize.include:
        return chosen
    return pl.concat([chosen, unscored(selected(rationales))], how="diagonal_relaxed")


def rationalized_table(
    cfg: FactoryConfig, rationales: pl.DataFrame | None, tagged: pl.DataFrame
) -> pl.DataFrame | None:
    """The `rationalized` table: the kept rationales as dataset rows (the plain question, the problem's tags), in
    curriculum order of their own; None when the stage is off."""
    if rationales is None:
        return None
    return curriculum(unscored(rationales), cfg.curriculum, tagged, cfg.prompt)[0]


# ---- difficulty (with the memorisation probe) ------------------------------------------------------


def tag_difficulty(cfg: FactoryConfig, problems: pl.DataFrame, chosen: pl.DataFrame) -> StageOutput:
    """The difficulty stage, and the memorisation probe's summary line when there are variants."""
    tagged, report = run_stage(difficulty, problems, cfg.difficulty, chosen)
    probed = tagged.filter(pl.col(MEMORISATION_GAP).is_not_null())
    if len(probed):
        variants = tagged.filter(pl.col(REWRITE_KIND) == "perturb")  # the variants the gaps are measured on
        log.info(
            "memorisation probe: %d originals with perturbed variants; pass rate %.3f on them vs %.3f on their "
            "variants (mean gap %+.3f); %d memorised (gap >= %g)",
            len(probed),
            probed[PASS_RATE].mean(),
            variants[PASS_RATE].mean(),
            probed[MEMORISATION_GAP].mean(),
            int(probed[MEMORISED].sum()),
            cfg.difficulty.memorisation_gap,
        )
    return tagged, report


# ---- write -----------------------------------------------------------------------------------------


def write_outputs(
    run: io.RunDir,
    loaded: Loaded,
    problems: pl.DataFrame,
    rollouts: pl.DataFrame,
    dataset: pl.DataFrame | texts.Deferred,
    extra: dict[str, pl.DataFrame | texts.Deferred | None],
    reports: list[StageReport],
    manifest: dict,
    batch_tokens: int = texts.BATCH_TOKENS,
) -> None:
    """Every table, then the manifest last: a manifest on disk describes tables that are all there.
    The previous manifest goes first, so a run that fails half-way leaves no manifest vouching for a
    mix of old and new tables. Of the `extra` tables (`pairs`, `audit`), one this run does not make (None: its
    stage is off) is removed: no earlier run's copy stays beside this run's tables. A deferred table (texts still
    on disk) is written about `batch_tokens` of its texts at a time."""
    (run.root / "manifest.json").unlink(missing_ok=True)
    run.write_table(loaded.rejected, "rejected")
    run.write_table(problems.select(columns("problems")), "problems")
    failpoint("write.table")
    lineage = problems.select(PROBLEM_ID, REWRITE_OF, REWRITE_KIND)
    tables = {"dataset": dataset, **extra}
    deferred = {name: table for name, table in tables.items() if isinstance(table, texts.Deferred)}
    # light rows (`run.post: streaming`): the rollouts written a graded slice at a time, each slice's texts read back
    # once for them and for the deferred tables' rows in it (gathered into scratch files, written after, in order)
    with texts.Pass(deferred, run.root / "_work" / "scratch", batch_tokens) as one:
        joined = (  # a part at a time: a join of the whole would copy every light row
            part.join(lineage, on=PROBLEM_ID, how="left", maintain_order="left").select(columns("rollouts"))
            for part in one.parts(rollouts)
        )
        run.write_table(joined, "rollouts")
        for name, table in tables.items():
            if table is None:
                run.remove_table(name)
            else:
                run.write_table(one.batches(name) if name in deferred else table, name)
    run.write_table(funnel_frame(reports), "funnel")
    io.write_json({**manifest, "status": "complete"}, run.root / "manifest.json")


def write_batch_tokens(cfg: FactoryConfig) -> int:
    """How much of a deferred table's texts is in memory at once as it is written: a quarter of a graded slice's
    completion tokens (a batch holds each text up to four times: cot, reasoning, response, the conversation)."""
    return max(1, cfg.run.post_slice_tokens // 4)
