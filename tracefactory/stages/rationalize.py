"""rationalize (STaR): problems no rollout solved, asked again with the gold as a hint; a rationale is kept only
when it could have been written without the hint.

The hinted question (`rationalize.hint_template`) is a prompt of its own, so its samples have keys of their own in
the same generation store as the rollouts: resumed and reused like them. Of the completions, graded against the
gold like rollouts, a rationale is dropped when
- it does not reach the gold (the grade stage's reasons: `wrong_answer`, `no_answer`, `truncated`, ...);
- it talks about being given the answer (`mentions_hint`: `rationalize.hint_phrases`);
- it has fewer than `min_steps` steps (`too_few_steps`: the answer restated is not a derivation);
- with `verify: continue`, fewer than `verify_share` of `verify_n` continuations by the teacher, given the question
  WITHOUT the hint and the rationale's steps but its last, reach the gold (`not_derived`; `unverified` when it
  could not be asked): the steps, not the hint, must carry the answer — make it likely, not merely possible;
- it is not among the problem's `keep` shortest survivors (`not_shortest`).
A problem whose gold the audit suspects is never tried (a hint towards a wrong gold teaches a wrong trace), nor is
one without a gold. The stored trace is the completion alone; the dataset row pairs it with the plain question, as
if solved unaided.
"""

from __future__ import annotations

import re
from collections import Counter

import polars as pl

from tracefactory.backends.scorers import StepItem, Verifier, step_text
from tracefactory.config import RationalizeConfig, SelectConfig
from tracefactory.grading.steps import split_steps
from tracefactory.stages.select import select
from tracefactory.stages.step_score import step_head
from tracefactory.store.report import StageReport
from tracefactory.store.schema import (
    ANSWER,
    CORRECT,
    COT,
    COT_TOKENS,
    DROP_REASON,
    GOLD_SUSPECT,
    PROBLEM_ID,
    QUESTION,
    RATIONALIZED,
    REASONING,
    SEED,
    STEP_TOKENS,
)

MENTIONS_HINT = "mentions_hint"
TOO_FEW_STEPS = "too_few_steps"
NOT_DERIVED = "not_derived"
UNVERIFIED = "unverified"
NOT_RETURNED = "not_returned"  # asked, and the teacher gave no completion (a failed request, a prompt too long)


def hint(question: str, gold: str, template: str) -> str:
    """The hinted question (plain replacement: LaTeX braces in a question are not format fields)."""
    return template.replace("{question}", question).replace("{answer}", gold)


def unsolved(graded: pl.DataFrame, problems: pl.DataFrame) -> tuple[pl.DataFrame, dict[str, int]]:
    """The problems to rationalize: rollouts drawn, none reached the gold, a gold to hint at that the audit does not
    suspect; and how many were left out for either reason."""
    tally = graded.group_by(PROBLEM_ID).agg(pl.col(CORRECT).any().alias("_solved"))
    open_ = tally.filter(~pl.col("_solved"))[PROBLEM_ID].implode()
    drawn = problems.filter(pl.col(PROBLEM_ID).is_in(open_))  # in the problems' order
    suspect = pl.col(GOLD_SUSPECT).fill_null(False) if GOLD_SUSPECT in drawn.columns else pl.lit(False)
    goldless = pl.col(ANSWER).is_null()  # nothing to hint at (source.gold: majority below the bars, or none)
    skipped = drawn.select(suspect.sum().alias("skipped_gold_suspect"), goldless.sum().alias("skipped_no_gold"))
    return drawn.filter(~suspect & ~goldless), {k: int(v) for k, v in skipped.row(0, named=True).items()}


def hinted(problems: pl.DataFrame, cfg: RationalizeConfig) -> pl.DataFrame:
    """`problems` (id, question, answer) with the hinted question: the requests the rationales are drawn from."""
    frame = problems.select(PROBLEM_ID, QUESTION, ANSWER)
    asked = [hint(q, a, cfg.hint_template) for q, a in frame.select(QUESTION, ANSWER).iter_rows()]
    return frame.with_columns(pl.Series(QUESTION, asked, dtype=pl.String))


def rationalize(
    graded: pl.DataFrame,
    cfg: RationalizeConfig,
    problems: pl.DataFrame,
    split: tuple[str, str | None],
    verifier: Verifier | None,
    skipped: dict[str, int] | None = None,
) -> tuple[pl.DataFrame, StageReport]:
    """Annotates the graded hinted completions (`graded`, of the `problems` tried, their PLAIN questions) with why
    each is dropped (null: kept), `rationalized` true and `step_tokens` (what verifying it took). Reports on the
    rationales asked: `n` per problem tried."""
    phrases = [re.compile(p, re.IGNORECASE) for p in cfg.hint_phrases]
    questions = dict(problems.select(PROBLEM_ID, QUESTION).iter_rows())
    golds = dict(problems.select(PROBLEM_ID, ANSWER).iter_rows())
    texts = graded.select(step_text(graded))[:, 0].to_list()
    steps = [split_steps(t, *split) for t in texts]
    heads = [step_head(c, r, s) for (c, r), s in zip(graded.select(COT, REASONING).iter_rows(), steps, strict=True)]
    reasons = graded[DROP_REASON].to_list()
    for i, (ok, text) in enumerate(zip(graded[CORRECT].to_list(), graded[COT].to_list(), strict=True)):
        if not ok:
            continue
        if any(p.search(text) for p in phrases):
            reasons[i] = MENTIONS_HINT
        elif len(steps[i]) < cfg.min_steps:
            reasons[i] = TOO_FEW_STEPS
    cost = [0] * len(graded)
    todo = [i for i, why in enumerate(reasons) if why is None]
    if cfg.verify == "continue" and todo and verifier is not None:
        pids, seeds = graded[PROBLEM_ID].to_list(), graded[SEED].to_list()
        items = [
            StepItem(pids[i], questions[pids[i]], golds[pids[i]], tuple(steps[i]), int(seeds[i] or 0), True, heads[i])
            for i in todo
        ]
        for i, (share, tokens) in zip(todo, verifier(items), strict=True):
            cost[i] = tokens
            if share is None:
                reasons[i] = UNVERIFIED
            elif share < cfg.verify_share:
                reasons[i] = NOT_DERIVED
    out = graded.with_columns(
        pl.Series(DROP_REASON, reasons, dtype=pl.String),
        pl.lit(True).alias(RATIONALIZED),
        pl.Series(STEP_TOKENS, cost, dtype=pl.Int64),
    )
    out, _ = select(out, SelectConfig(keep=cfg.keep))  # the shortest `keep` survivors of each problem
    asked = len(problems) * cfg.n
    by_reason = Counter(out[DROP_REASON].drop_nulls().to_list())
    by_reason[NOT_RETURNED] = asked - len(out)
    kept = out.filter(pl.col(DROP_REASON).is_null())
    detail = {
        "problems_tried": len(problems),
        "problems_recovered": kept[PROBLEM_ID].n_unique(),
        **(skipped or {}),
    }
    tokens = int(out.select(pl.col(COT_TOKENS).sum() + pl.col(STEP_TOKENS).sum()).item() or 0)
    report = StageReport("rationalize", "completions", asked, len(kept), by_reason, tokens=tokens, detail=detail)
    return out, report
