"""Backends built from config: the teacher of `teacher:`, the step scorer of `step_score:`."""

from __future__ import annotations

from functools import partial

import polars as pl

from tracefactory.backends.base import Teacher
from tracefactory.backends.scorers import Judge, MonteCarloScorer, StepScorer, Verifier, reuse_pool
from tracefactory.config import FactoryConfig, SamplingConfig, TeacherConfig
from tracefactory.grading.think import ThinkSpec
from tracefactory.grading.verify import judge_texts


def make_teacher(cfg: TeacherConfig) -> Teacher:
    if cfg.kind == "openai":
        from tracefactory.backends.openai_teacher import OpenAITeacher

        return OpenAITeacher(cfg)
    from tracefactory.backends.vllm_teacher import VLLMTeacher

    return VLLMTeacher(cfg)


def make_scorer(cfg: FactoryConfig, teacher: Teacher, graded: pl.DataFrame | None = None) -> StepScorer:
    """The configured step scorer; `graded` rollouts (if any) are reused as Monte-Carlo continuations."""
    sc = cfg.step_score
    if sc.scorer == "prm":
        from tracefactory.backends.prm import VLLMPRMScorer

        # first_bad_step: the first step at or below the filter's threshold (what `aggregate: min` drops on)
        return VLLMPRMScorer(sc.prm_model, sc.prm_separator, max_model_len=sc.prm_max_model_len, bad_below=sc.threshold)
    reuse = reuse_pool(graded, sc.split, sc.pattern) if graded is not None else None
    return MonteCarloScorer(teacher, make_judge(cfg), cfg.prompt, _params(cfg, sc.n), sc.search, reuse, sc.label)


def make_verifier(cfg: FactoryConfig, teacher: Teacher) -> Verifier:
    """How often a rationale's steps lead the teacher to the gold without the hint (stages/rationalize.py): its
    steps but the last continued under the plain prompt, `rationalize.verify_n` samples."""
    return MonteCarloScorer(
        teacher, make_judge(cfg), cfg.prompt, _params(cfg, cfg.rationalize.verify_n), label="soft"
    ).reaches


def _params(cfg: FactoryConfig, n: int) -> SamplingConfig:
    s = cfg.sampling
    return SamplingConfig(n=n, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_tokens, seed=s.seed)


def make_judge(cfg: FactoryConfig) -> Judge:
    """(gold, completion) pairs -> reached the gold, in the grading pool. Continuations are judged as whole
    assistant turns (the think block's opening included): nothing to restore."""
    return partial(
        judge_texts,
        workers=cfg.grade.workers,
        timeout_s=cfg.grade.timeout_s,
        formats=cfg.grade.answer_formats,
        think=ThinkSpec(cfg.prompt.thinking),
    )
