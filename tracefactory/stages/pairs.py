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

from functools import partial

import polars as pl

from tracefactory.config import PairsConfig, PromptConfig
from tracefactory.grading.outcomes import WRONG
from tracefactory.grading.texts import PART, ROW, Deferred, Locator, is_light
from tracefactory.stages.curriculum import conversations, turn
from tracefactory.stages.select import NOT_SHORTEST
from tracefactory.stages.step_score import LOW_STEP_SCORE
from tracefactory.store.report import StageReport
from tracefactory.store.schema import (
    ANSWER,
    CHOSEN,
    CHOSEN_SAMPLE_INDEX,
    CHOSEN_TOKENS,
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
    PROMPT,
    QUESTION,
    RATIONALIZED,
    REJECTED,
    REJECTED_ANSWER,
    REJECTED_REASON,
    REJECTED_SAMPLE_INDEX,
    REJECTED_TOKENS,
    REWRITE_KIND,
    REWRITE_OF,
    SAMPLE_INDEX,
    SOURCE,
    TEACHER,
    empty,
)

NO_REJECTED = "no_rejected"  # a problem with kept traces and no trace to set against them
# a pair's columns taken as they are from the chosen trace's dataset row
FROM_DATASET = (PROBLEM_ID, QUESTION, ANSWER, DIFFICULTY, CURRICULUM_RANK, SOURCE, LEVEL, REWRITE_OF, REWRITE_KIND)


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


_ROW = "_row"  # a candidate's row in `rollouts` (its text is fetched for the picked ones only)
_CANDIDATE_COLUMNS = (PROBLEM_ID, SAMPLE_INDEX, DROP_REASON, CORRECT, COT_TOKENS, PRED_ANSWER, PRM_MIN)
# what a pair holds of its two traces until it is finished: their texts (and the chosen one's teacher, also kept on
# disk with light rows), or where they are (light rows: a graded part and row)
_CHOSEN = {COT: "_chosen_cot", TEACHER: TEACHER}
_CHOSEN_AT = {PART: "_chosen_part", ROW: "_chosen_row"}
_REJECTED = {COT: "_rejected_cot"}
_REJECTED_AT = {PART: "_rejected_part", ROW: "_rejected_row"}


def pairs(
    rollouts: pl.DataFrame, cfg: PairsConfig, dataset: pl.DataFrame | Deferred, prompt: PromptConfig | None = None
) -> tuple[pl.DataFrame | Deferred, StageReport]:
    """The `pairs` table: up to `cfg.per_problem` pairs per problem of `dataset`, its kept traces (by curriculum
    rank, in turn) as `chosen` and a distinct trace of `rollouts` by the first rule of `cfg.rejected` that has
    one; the prompt is the chosen trace's conversation as the dataset builds it (`prompt` settings). Ordered as
    the dataset is (the chosen trace's `curriculum_rank`). Reports on the problems with a kept trace: kept when
    they have a pair, else `no_rejected`. Light rows (`run.post: streaming`) give the table `Deferred`: both
    traces' texts are read back a batch of pairs at a time as it is written."""
    prompt = prompt or PromptConfig()
    kept_rows = dataset.rows if isinstance(dataset, Deferred) else dataset
    # the candidates of the dataset's problems, without their texts: a rule only looks at outcomes and lengths
    light = (
        rollouts.select(c for c in _CANDIDATE_COLUMNS if c in rollouts.columns)
        .with_row_index(_ROW)
        .filter(
            pl.col(PROBLEM_ID).is_in(kept_rows[PROBLEM_ID].unique().implode())
            & (pl.col(DROP_REASON).is_null() | pl.col(DROP_REASON).is_in([WRONG, LOW_STEP_SCORE, NOT_SHORTEST]))
        )
    )
    wanted = (*FROM_DATASET, SAMPLE_INDEX, COT_TOKENS, RATIONALIZED, *_CHOSEN, *_CHOSEN_AT)
    ranked = kept_rows.select(c for c in wanted if c in kept_rows.columns).sort(CURRICULUM_RANK, maintain_order=True)
    order = ranked[PROBLEM_ID].unique(maintain_order=True)  # problems by their first kept trace's rank
    frames, picked, reasons, detail = [], [], [], {f"rejected_{rule}": 0 for rule in cfg.rejected}
    for start in range(0, len(order), _BATCH):  # a batch of problems' rows as Python objects at a time
        batch = order.slice(start, _BATCH).implode()
        by_problem = _grouped(light.filter(pl.col(PROBLEM_ID).is_in(batch)))
        kept_by_problem = _grouped(ranked.filter(pl.col(PROBLEM_ID).is_in(batch)))
        out = []
        for key, kept in kept_by_problem.items():
            made = _pick(kept, by_problem.get(key, []), cfg)
            for pair, row, rule in made:
                out.append(pair)
                picked.append(row)
                detail[f"rejected_{rule}"] += 1
            reasons.append(None if made else NO_REJECTED)
        frames.append(pl.DataFrame(out, schema=_SCHEMA))
    frame = pl.concat(frames) if frames else pl.DataFrame(schema=_SCHEMA)
    of_rejected = _REJECTED | _REJECTED_AT
    rejected = rollouts.select(
        pl.col(c).gather(picked).alias(of_rejected[c]) for c in of_rejected if c in rollouts.columns
    )
    frame = pl.concat([frame, rejected], how="horizontal")
    detail["pairs"] = len(frame)
    report = StageReport.from_reasons("pairs", "problems", pl.Series(reasons, dtype=pl.String), detail=detail)
    finish = partial(_finish, prompt=prompt)
    if not is_light(rollouts):
        return finish(frame), report
    frame = frame.with_columns(pl.col(_CHOSEN_AT[PART], _REJECTED_AT[PART]).cast(pl.Categorical))
    texts = (Locator(_CHOSEN, *_CHOSEN_AT.values()), Locator(_REJECTED, *_REJECTED_AT.values()))
    return Deferred(frame, texts, finish, weight=pl.col(CHOSEN_TOKENS) + pl.col(REJECTED_TOKENS)), report


_BATCH = 20_000  # problems whose candidate rows are Python dicts at once
_TABLE = empty("pairs").schema  # the table's types, from schemas/pairs.json
_CONVERSATIONS = (PROMPT, CHOSEN, REJECTED)  # built from the texts when a pair is finished
_SCHEMA = {c: t for c, t in _TABLE.items() if c not in _CONVERSATIONS}
_SCHEMA |= {_CHOSEN[COT]: pl.String, _CHOSEN_AT[PART]: pl.String, _CHOSEN_AT[ROW]: pl.Int64}


def _finish(rows: pl.DataFrame, prompt: PromptConfig) -> pl.DataFrame:
    """Pairs with their two traces' texts -> the table's rows: the chosen trace's conversation (as the dataset
    builds it) split into the prompt and the chosen turn, the rejected trace as the other turn."""
    turns = pl.col(MESSAGES)
    rejected = turn("assistant", pl.col(_REJECTED[COT]))
    return (
        rows.with_columns(conversations(rows[QUESTION], rows[_CHOSEN[COT]], prompt))
        .with_columns(
            turns.list.head(turns.list.len() - 1).cast(_TABLE[PROMPT]).alias(PROMPT),
            turns.list.tail(1).cast(_TABLE[CHOSEN]).alias(CHOSEN),
            pl.concat_list(rejected).cast(_TABLE[REJECTED]).alias(REJECTED),
        )
        .select(list(_TABLE))
    )


def _grouped(rows: pl.DataFrame) -> dict[str, list[dict]]:
    out: dict[str, list[dict]] = {}
    for row in rows.to_dicts():
        out.setdefault(row[PROBLEM_ID], []).append(row)
    return out


def _pick(kept: list[dict], rows: list[dict], cfg: PairsConfig) -> list[tuple[dict, int, str]]:
    """The pairs of one problem — its kept traces `kept` (by rank) against its candidate `rows` — each with its
    rejected trace's row and the rule that picked it."""
    # a rationale's sample index is that of a hinted request, not of a rollout
    used = {r[SAMPLE_INDEX] for r in kept if not r.get(RATIONALIZED)}
    made = []
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
        made.append((_pair(chosen, rejected, rule), rejected[_ROW], rule))
    return made


def _pair(chosen: dict, rejected: dict, rule: str) -> dict:
    """A pair's columns but its conversations and the rejected trace's text (fetched for all pairs at once)."""
    return {
        **{name: chosen.get(c) for c, name in (_CHOSEN | _CHOSEN_AT).items()},
        CHOSEN_SAMPLE_INDEX: chosen[SAMPLE_INDEX],
        REJECTED_SAMPLE_INDEX: rejected[SAMPLE_INDEX],
        CHOSEN_TOKENS: chosen[COT_TOKENS],
        REJECTED_TOKENS: rejected[COT_TOKENS],
        REJECTED_REASON: rule,
        REJECTED_ANSWER: rejected[PRED_ANSWER],
        **{c: chosen[c] for c in FROM_DATASET},
    }
