"""step_score: split each correct trace into steps, score every step, filter on an aggregate.

Steps are the reasoning's (inside the think block; never the summary after it), or the whole completion's
for a teacher that does not think.

Runs between grade and select on the completions that reached the gold. Adds `steps`,
`step_scores`, `prm_min`, `prm_mean`, `prm_last`, `first_bad_step`; a trace whose aggregate is
not above the threshold is annotated `low_step_score` (and stays queryable in `rollouts`).
With `scope: all` the wrong-answer traces are scored as well (Math-Shepherd's training data for a PRM:
`tracefactory train-prm`; the Monte-Carlo scorer marks a wrong answer's last step bad when no earlier step is);
they are already dropped and nothing here changes that.
Traces that cannot be scored (no steps, more than `max_steps` steps, longer than the scorer's
context, a scorer failure) get null scores; they are kept, or with `unscored: drop` dropped as
`unscored_<why>` (e.g. `unscored_too_long`). Either way their count by reason is logged.
"""

from __future__ import annotations

import logging
from collections import Counter

import polars as pl

from tracefactory.backends.scorers import StepItem, StepScorer, step_text
from tracefactory.config import StepScoreConfig
from tracefactory.grading.outcomes import WRONG
from tracefactory.grading.steps import split_steps
from tracefactory.store.report import StageReport
from tracefactory.store.schema import (
    ANSWER,
    CORRECT,
    COT,
    DROP_REASON,
    FIRST_BAD_STEP,
    PRM_LAST,
    PRM_MEAN,
    PRM_MIN,
    PROBLEM_ID,
    QUESTION,
    REASONING,
    SEED,
    STEP_COLUMNS,
    STEP_SCORES,
    STEP_TOKENS,
    STEPS,
)

LOW_STEP_SCORE = "low_step_score"
log = logging.getLogger(__name__)


def _aggregate(scores: list[float] | None, how: str) -> float | None:
    if not scores:
        return None
    return {"min": min(scores), "mean": sum(scores) / len(scores), "last": scores[-1]}[how]


def step_score(
    rollouts: pl.DataFrame, cfg: StepScoreConfig, problems: pl.DataFrame, scorer: StepScorer
) -> tuple[pl.DataFrame, StageReport]:
    """Adds the step columns to every completion (null where not scored) and annotates the correct,
    not yet dropped ones whose aggregate step score is not above `threshold` as `low_step_score`
    (or, with `unscored: drop`, the unscorable ones as `unscored_<why>`). Reports on the traces it
    considered: the correct ones no earlier filter dropped."""
    questions = dict(problems.select(PROBLEM_ID, QUESTION).iter_rows())
    golds = dict(problems.select(PROBLEM_ID, ANSWER).iter_rows())
    steps = [split_steps(t, cfg.split, cfg.pattern) for t in rollouts.select(step_text(rollouts))[:, 0].to_list()]
    anatomy = rollouts.select(COT, REASONING) if REASONING in rollouts.columns else None
    heads = (
        [step_head(c, r, s) for (c, r), s in zip(anatomy.iter_rows(), steps, strict=True)]
        if anatomy is not None
        else [""] * len(steps)
    )
    eligible = [
        i
        for i, (ok, why) in enumerate(zip(rollouts[CORRECT], rollouts[DROP_REASON], strict=True))
        if ok and why is None
    ]
    # scope all: the wrong-answer traces too — scored (training data for a PRM), never filtered here
    wrong = [i for i, why in enumerate(rollouts[DROP_REASON]) if why == WRONG] if cfg.scope == "all" else []
    unscorable = {
        i: "no_steps" if not steps[i] else "too_many_steps" for i in eligible if not 0 < len(steps[i]) <= cfg.max_steps
    }
    todo = [i for i in eligible if i not in unscorable] + [i for i in wrong if 0 < len(steps[i]) <= cfg.max_steps]
    items = [
        StepItem(
            rollouts[PROBLEM_ID][i],
            questions[rollouts[PROBLEM_ID][i]],
            golds[rollouts[PROBLEM_ID][i]],
            tuple(steps[i]),
            int(rollouts[SEED][i] or 0),
            bool(rollouts[CORRECT][i]),
            heads[i],
        )
        for i in todo
    ]
    scored = scorer.score(items)
    results = {}  # row -> its StepScores, for the rows that got scores
    for i, r in zip(todo, scored, strict=True):
        if r.scores:
            results[i] = r
        elif rollouts[CORRECT][i]:
            unscorable[i] = r.note or "no_scores"
    if unscorable:
        log.warning(
            "step_score: %d correct trace(s) not scored (%s) — %s",
            len(unscorable),
            dict(Counter(unscorable.values())),
            "dropped" if cfg.unscored == "drop" else "kept, null scores",
        )
    cost = {i: r.cost for i, r in zip(todo, scored, strict=True)}  # scored or not, what each trace's scoring took
    scores = [results[i].scores if i in results else None for i in range(len(rollouts))]
    agg = [_aggregate(s, cfg.aggregate) for s in scores]
    low = [a is not None and a <= cfg.threshold and bool(ok) for a, ok in zip(agg, rollouts[CORRECT], strict=True)]
    out = rollouts.with_columns(
        pl.Series(STEPS, steps, dtype=pl.List(pl.String)),
        pl.Series(STEP_SCORES, scores, dtype=pl.List(pl.Float64)),
        pl.Series(PRM_MIN, [_aggregate(s, "min") for s in scores], dtype=pl.Float64),
        pl.Series(PRM_MEAN, [_aggregate(s, "mean") for s in scores], dtype=pl.Float64),
        pl.Series(PRM_LAST, [_aggregate(s, "last") for s in scores], dtype=pl.Float64),
        pl.Series(
            FIRST_BAD_STEP,
            [results[i].first_bad_step if i in results else None for i in range(len(rollouts))],
            dtype=pl.Int64,
        ),
        pl.Series(
            DROP_REASON,
            [_reason(i, why, low[i], unscorable, cfg) for i, why in enumerate(rollouts[DROP_REASON])],
            dtype=pl.String,
        ),
        # what each trace's scores took of the teacher, whenever they were computed (a problem's teacher_tokens)
        pl.Series(STEP_TOKENS, [cost.get(i, 0) for i in range(len(rollouts))], dtype=pl.Int64),
    )
    tokens = sum(r.tokens for r in scored)
    return out, StageReport.from_reasons("step_score", "completions", out[DROP_REASON].gather(eligible), tokens=tokens)


def step_head(cot: str, reasoning: str | None, steps: list[str]) -> str:
    """The assistant turn's text before the first reasoning step (the think block's opening); "" without a block."""
    return cot[: cot.find(steps[0])] if reasoning is not None and steps else ""


def _reason(i: int, why: str | None, low: bool, unscorable: dict[int, str], cfg: StepScoreConfig) -> str | None:
    if low:
        return LOW_STEP_SCORE
    if i in unscorable and cfg.unscored == "drop":
        return f"unscored_{unscorable[i]}"
    return why


def unscored(rollouts: pl.DataFrame) -> pl.DataFrame:
    """The step columns, all null — for runs with step scoring off."""
    return rollouts.with_columns(pl.lit(None, dtype=t).alias(c) for c, t in STEP_COLUMNS.items())
