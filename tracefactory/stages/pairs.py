"""pairs: preference pairs for DPO — each kept trace (chosen) against a trace of the same problem the student
should not learn (rejected), in TRL's conversational preference format (`prompt`, `chosen`, `rejected`).

Where a rejected trace comes from, in the configured order of preference (`pairs.rejected`):

- `wrong`: a complete trace whose final answer is not the gold (`wrong_answer`); of several, the one closest in
  length to the chosen trace, so that the pair differs in correctness rather than in length (DPO learns length
  from pairs where the rejected side is systematically longer);
- `low_step_score`: a trace with the gold answer whose steps the step filter rejected (`low_step_score`), the
  lowest step score first;
- `longest_correct`: the longest correct trace, when it is longer than the chosen one (a preference for the
  shorter of two right answers).

Ties go to the lower sample index: the pairs are a function of the rollouts, the same on every run.
"""

from __future__ import annotations

import polars as pl

from tracefactory.config import PairsConfig
from tracefactory.grading.outcomes import WRONG
from tracefactory.stages.select import NOT_SHORTEST
from tracefactory.stages.step_score import LOW_STEP_SCORE
from tracefactory.store.report import StageReport
from tracefactory.store.schema import (
    ANSWER,
    CORRECT,
    COT,
    COT_TOKENS,
    CURRICULUM_RANK,
    DIFFICULTY,
    DROP_REASON,
    LEVEL,
    MESSAGES,
    PRED_ANSWER,
    PRM_MIN,
    PROBLEM_ID,
    QUESTION,
    REWRITE_KIND,
    REWRITE_OF,
    SAMPLE_INDEX,
    SOURCE,
    TEACHER,
    columns,
)

NO_REJECTED = "no_rejected"  # a problem with kept traces and no trace to set against them
TURNS = pl.List(pl.Struct({"role": pl.String, "content": pl.String}))


def _candidates(rule: str, rows: list[dict], chosen: dict) -> list[dict]:
    """The problem's rejected candidates under `rule`, best first, for the pair's `chosen` trace."""
    if rule == "wrong":
        pool = [r for r in rows if r[DROP_REASON] == WRONG]
        return sorted(pool, key=lambda r: (abs(r[COT_TOKENS] - chosen[COT_TOKENS]), r[SAMPLE_INDEX]))
    if rule == "low_step_score":
        pool = [r for r in rows if r[DROP_REASON] == LOW_STEP_SCORE]
        return sorted(pool, key=lambda r: (r.get(PRM_MIN) if r.get(PRM_MIN) is not None else 1.0, r[SAMPLE_INDEX]))
    pool = [  # longest_correct: a correct trace the selection passed over for being longer
        r for r in rows if r[CORRECT] and r[DROP_REASON] in (None, NOT_SHORTEST) and r[COT_TOKENS] > chosen[COT_TOKENS]
    ]
    return sorted(pool, key=lambda r: (-r[COT_TOKENS], r[SAMPLE_INDEX]))


def pairs(rollouts: pl.DataFrame, cfg: PairsConfig, dataset: pl.DataFrame) -> tuple[pl.DataFrame, StageReport]:
    """The `pairs` table: up to `cfg.per_problem` pairs per problem of `dataset`, its kept traces (by curriculum
    rank, in turn) as `chosen` and a distinct trace of `rollouts` by the first rule of `cfg.rejected` that has
    one. Ordered as the dataset is (the chosen trace's `curriculum_rank`). Reports on the problems with a kept
    trace: kept when they have a pair, else `no_rejected`."""
    by_problem = {key[0]: part.to_dicts() for key, part in rollouts.partition_by(PROBLEM_ID, as_dict=True).items()}
    out, reasons, detail = [], [], {f"rejected_{rule}": 0 for rule in cfg.rejected}
    for key, part in dataset.sort(CURRICULUM_RANK).partition_by(PROBLEM_ID, as_dict=True, maintain_order=True).items():
        kept = part.to_dicts()
        rows, used = by_problem.get(key[0], []), {r[SAMPLE_INDEX] for r in kept}
        made = 0
        for i in range(cfg.per_problem):
            chosen = kept[i % len(kept)]
            pick = next(
                (
                    (rule, c)
                    for rule in cfg.rejected
                    for c in _candidates(rule, rows, chosen)
                    if c[SAMPLE_INDEX] not in used
                ),
                None,
            )
            if pick is None:
                break
            rule, rejected = pick
            used.add(rejected[SAMPLE_INDEX])
            detail[f"rejected_{rule}"] += 1
            made += 1
            out.append(_pair(chosen, rejected, rule))
        reasons.append(None if made else NO_REJECTED)
    detail["pairs"] = len(out)
    frame = pl.DataFrame(out, schema=_schema()) if out else pl.DataFrame(schema=_schema())
    report = StageReport.from_reasons("pairs", "problems", pl.Series(reasons, dtype=pl.String), detail=detail)
    return frame.select(columns("pairs")), report


def _pair(chosen: dict, rejected: dict, rule: str) -> dict:
    *prompt, answer = chosen[MESSAGES]
    return {
        "prompt": prompt,
        "chosen": [answer],
        "rejected": [{"role": "assistant", "content": rejected[COT]}],
        PROBLEM_ID: chosen[PROBLEM_ID],
        QUESTION: chosen[QUESTION],
        ANSWER: chosen[ANSWER],
        "chosen_sample_index": chosen[SAMPLE_INDEX],
        "rejected_sample_index": rejected[SAMPLE_INDEX],
        "chosen_tokens": chosen[COT_TOKENS],
        "rejected_tokens": rejected[COT_TOKENS],
        "rejected_reason": rule,
        "rejected_answer": rejected[PRED_ANSWER],
        DIFFICULTY: chosen[DIFFICULTY],
        CURRICULUM_RANK: chosen[CURRICULUM_RANK],
        SOURCE: chosen[SOURCE],
        LEVEL: chosen[LEVEL],
        REWRITE_OF: chosen[REWRITE_OF],
        REWRITE_KIND: chosen[REWRITE_KIND],
        TEACHER: chosen[TEACHER],
    }


def _schema() -> dict:
    return {
        "prompt": TURNS,
        "chosen": TURNS,
        "rejected": TURNS,
        PROBLEM_ID: pl.String,
        QUESTION: pl.String,
        ANSWER: pl.String,
        "chosen_sample_index": pl.Int64,
        "rejected_sample_index": pl.Int64,
        "chosen_tokens": pl.Int64,
        "rejected_tokens": pl.Int64,
        "rejected_reason": pl.String,
        "rejected_answer": pl.String,
        DIFFICULTY: pl.String,
        CURRICULUM_RANK: pl.Int64,
        SOURCE: pl.String,
        LEVEL: pl.String,
        REWRITE_OF: pl.String,
        REWRITE_KIND: pl.String,
        TEACHER: pl.String,
    }
