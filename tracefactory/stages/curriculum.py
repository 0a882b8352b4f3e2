"""curriculum: the selected traces joined with their problems, in training order.

easy_first order: pass rate (high first), then the Wilson lower bound (more evidence of ease first),
then shorter traces, then problem_id and sample_index — a total order, so ranks are stable across
runs. hard_first reverses the first two keys only (ties still go to shorter traces).
"""

from __future__ import annotations

from functools import partial

import polars as pl

from tracefactory.backends.prompts import build_prompt
from tracefactory.config import CurriculumConfig, PromptConfig
from tracefactory.grading.texts import LOCATORS, ON_DISK, Deferred, Locator, is_light
from tracefactory.stages.select import selected
from tracefactory.store.report import StageReport
from tracefactory.store.schema import (
    COT,
    COT_TOKENS,
    CURRICULUM_RANK,
    MESSAGES,
    PASS_RATE,
    PASS_RATE_LOW,
    PROBLEM_ID,
    QUESTION,
    RATIONALIZED,
    SAMPLE_INDEX,
    columns,
)

NO_PROBLEM = "no_problem"
ROLE, CONTENT = "role", "content"  # a chat message's fields
MESSAGES_TYPE = pl.List(pl.Struct({ROLE: pl.String, CONTENT: pl.String}))


def messages(question: str, cot: str, prompt: PromptConfig) -> list[dict]:
    """The SFT conversation of a trace: the turns the teacher was sent (system, user) as built for it, then the
    assistant turn = `cot` as stored — never re-rendered through a chat template (R1-distill templates drop
    everything up to `</think>` from assistant turns they render)."""
    sent = build_prompt(question, prompt)
    turns = list(sent) if isinstance(sent, list) else [{"role": "user", "content": sent}]
    return [{"role": m["role"], "content": m["content"]} for m in turns] + [{"role": "assistant", "content": cot}]


def conversations(questions: pl.Series, cots: pl.Series, prompt: PromptConfig) -> pl.Series:
    """`messages` of each (question, cot), as a column, built in polars: the turns sent for each question are put
    together per turn position where every question's turns have the same roles (always, for one prompt config), not
    as a Python dict per message."""
    turns = []
    for question in questions.to_list():
        sent = build_prompt(question, prompt)
        turns.append([(m["role"], m["content"]) for m in sent] if isinstance(sent, list) else [("user", sent)])
    shapes = {tuple(role for role, _ in t) for t in turns}
    if len(shapes) != 1:  # none (no rows), or turns that differ from question to question
        built = [messages(q, c, prompt) for q, c in zip(questions.to_list(), cots.to_list(), strict=True)]
        return pl.Series(MESSAGES, built, dtype=MESSAGES_TYPE)
    roles = shapes.pop()
    contents = pl.DataFrame(
        {f"_turn{i}": [t[i][1] for t in turns] for i in range(len(roles))} | {"_cot": cots},
        schema={**{f"_turn{i}": pl.String for i in range(len(roles))}, "_cot": pl.String},
    )
    message = [turn(role, pl.col(f"_turn{i}")) for i, role in enumerate(roles)] + [turn("assistant", pl.col("_cot"))]
    return contents.select(pl.concat_list(message).cast(MESSAGES_TYPE).alias(MESSAGES))[MESSAGES]


def turn(role: str, content: pl.Expr) -> pl.Expr:
    """A chat message as a polars struct (an element of `MESSAGES_TYPE`)."""
    return pl.struct(pl.lit(role).alias(ROLE), content.alias(CONTENT))


def curriculum(
    rollouts: pl.DataFrame, cfg: CurriculumConfig, problems: pl.DataFrame, prompt: PromptConfig | None = None
) -> tuple[pl.DataFrame | Deferred, StageReport]:
    """The `dataset` table: every surviving trace of `rollouts` (its `cot` and anatomy, and `messages` built with
    the run's `prompt` settings) with its problem's tags from `problems`, ordered and numbered by
    `curriculum_rank`. A trace without a problem row (never expected) is dropped as `no_problem`. Light rows
    (`run.post: streaming`) give the table `Deferred`: ordered and numbered, its texts read back and its
    conversations built a batch at a time as it is written."""
    prompt = prompt or PromptConfig()
    picked = selected(rollouts)
    if RATIONALIZED not in picked.columns:  # rollouts only (the rationalize stage marks its rows)
        picked = picked.with_columns(pl.lit(False).alias(RATIONALIZED))
    picked = picked.with_columns(pl.col(RATIONALIZED).fill_null(False))
    problem_cols = [c for c in problems.columns if c != RATIONALIZED]  # the row's flag, not the problem's
    joined = picked.join(problems.select(problem_cols), on=PROBLEM_ID, how="inner")
    easy_first = cfg.order == "easy_first"
    ordered = joined.sort(
        [PASS_RATE, PASS_RATE_LOW, COT_TOKENS, PROBLEM_ID, SAMPLE_INDEX],
        descending=[easy_first, easy_first, False, False, False],
    )
    ordered = ordered.with_row_index(CURRICULUM_RANK).with_columns(pl.col(CURRICULUM_RANK).cast(pl.Int64))
    report = StageReport(
        "curriculum", "completions", len(picked), len(ordered), {NO_PROBLEM: len(picked) - len(ordered)}
    )
    finish = partial(_finish, prompt=prompt)
    if not is_light(ordered):
        return finish(ordered), report
    texts = Locator({c: c for c in ON_DISK if c in columns("dataset")})  # the kept traces' texts only
    light = ordered.select([c for c in (*columns("dataset"), *LOCATORS) if c in ordered.columns])
    return Deferred(light, (texts,), finish, weight=pl.col(COT_TOKENS)), report


def _finish(rows: pl.DataFrame, prompt: PromptConfig) -> pl.DataFrame:
    """Dataset rows with their texts -> the table's rows: each trace's conversation built, the table's columns."""
    rows = rows.with_columns(conversations(rows[QUESTION], rows[COT], prompt))
    return rows.select([c for c in columns("dataset") if c in rows.columns])
