"""Column names as constants, Arrow schemas built from the language-neutral JSON in `schemas/`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import polars as pl
import pyarrow as pa

from tracefactory.errors import SchemaError

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"
TABLES = ("problems", "rollouts", "dataset", "rejected", "funnel")
SAME_AS = {"rationalized": "dataset"}  # tables with another table's schema: the STaR rationales are dataset rows

# column names
PROBLEM_ID = "problem_id"
QUESTION = "question"
ANSWER = "answer"
SOURCE = "source"
LEVEL = "level"
SAMPLE_INDEX = "sample_index"
ROLLOUT_KEY = "rollout_key"
SEED = "seed"
TEXT = "text"
COT = "cot"
REASONING = "reasoning"  # inside the think block
RESPONSE = "response"  # after </think>: where the answer is taken from
THINK_CLOSED = "think_closed"
REASONING_COMPLETE = "reasoning_complete"
REASONING_TOKENS = "reasoning_tokens"
RESPONSE_TOKENS = "response_tokens"
MESSAGES = "messages"  # the SFT conversation
COT_TOKENS = "cot_tokens"
FINISH_REASON = "finish_reason"
TEACHER = "teacher"
PRED_ANSWER = "pred_answer"
CORRECT = "correct"
DROP_REASON = "drop_reason"
N_ROLLOUTS = "n_rollouts"
N_CORRECT = "n_correct"
PASS_RATE = "pass_rate"
PASS_RATE_LOW = "pass_rate_low"
PASS_RATE_HIGH = "pass_rate_high"
DIFFICULTY = "difficulty"
SAMPLES_DRAWN = "samples_drawn"  # samples asked of the teacher for a problem (its budget's outcome)
ROUNDS = "rounds"  # rollout rounds a problem took part in
TEACHER_TOKENS = "teacher_tokens"  # teacher output tokens spent on a problem: its rollouts and step scoring
STOP_REASON = "stop_reason"  # why a problem drew no more samples (stages.budget)
CURRICULUM_RANK = "curriculum_rank"
ROW_INDEX = "row_index"
RAW = "raw"
REASON = "reason"
PROBLEM_KEY = "problem_key"  # step-score cache: hash of a problem's question and gold
STEP_TOKENS = "step_tokens"  # step-score cache and the step_score stage's frame: teacher tokens a trace's scores took
SOLUTION = "solution"  # the source's worked solution, when it has one (rewriting reads it; not a table column)
REWRITE_OF = "rewrite_of"  # a variant's source problem id (null for an original)
REWRITE_KIND = "rewrite_kind"  # how the variant was made: "perturb" (null for an original)
MEMORISATION_GAP = "memorisation_gap"  # an original's pass rate minus its perturbed variants' mean
MEMORISED = "memorised"  # memorisation_gap >= difficulty.memorisation_gap
MATCH = "match"  # a rejected problem: the id it duplicates, or benchmark:item it overlaps
GOLD_SUSPECT = "gold_suspect"  # the rollouts agree on another answer than the gold (stages.audit)
MAJORITY_ANSWER = "majority_answer"  # the wrong answer most rollouts of a problem agree on
MAJORITY_SHARE = "majority_share"  # its votes over the rollouts with an answer
MAJORITY_VOTES = "majority_votes"
N_ANSWERED = "n_answered"  # rollouts with an extracted answer
MAJORITY_COT = "majority_cot"  # audit: the first trace that reached majority_answer
GOLD_SOURCE = "gold_source"  # where a problem's gold came from: "source", "majority" (a pseudo-gold) or null (none)
RATIONALIZED = "rationalized"  # STaR: a rationale written with the gold as a hint (stages.rationalize)
# pairs (TRL's conversational preference format, and where each side came from)
PROMPT = "prompt"
CHOSEN = "chosen"
REJECTED = "rejected"
CHOSEN_SAMPLE_INDEX = "chosen_sample_index"
REJECTED_SAMPLE_INDEX = "rejected_sample_index"
CHOSEN_TOKENS = "chosen_tokens"
REJECTED_TOKENS = "rejected_tokens"
REJECTED_REASON = "rejected_reason"
REJECTED_ANSWER = "rejected_answer"

STEPS = "steps"
STEP_SCORES = "step_scores"
PRM_MIN = "prm_min"
PRM_MEAN = "prm_mean"
PRM_LAST = "prm_last"
FIRST_BAD_STEP = "first_bad_step"
STEP_COLUMNS = {
    STEPS: pl.List(pl.String),
    STEP_SCORES: pl.List(pl.Float64),
    PRM_MIN: pl.Float64,
    PRM_MEAN: pl.Float64,
    PRM_LAST: pl.Float64,
    FIRST_BAD_STEP: pl.Int64,
}

UNSOLVED = "unsolved"
SOURCE_GOLD, MAJORITY_GOLD = "source", "majority"  # values of gold_source: the input row's gold, a pseudo-gold

# the teacher's raw output, as the rollout stage makes it and the generation store keeps it
GENERATION_SCHEMA = {
    PROBLEM_ID: pl.String,
    SAMPLE_INDEX: pl.Int64,
    ROLLOUT_KEY: pl.String,
    SEED: pl.Int64,
    TEXT: pl.String,
    COT_TOKENS: pl.Int64,
    FINISH_REASON: pl.String,
    TEACHER: pl.String,
    REASONING_TOKENS: pl.Int64,  # the teacher's count up to </think> (null: none, or not countable)
}

_TYPES = {
    "string": pa.string(),
    "int64": pa.int64(),
    "float64": pa.float64(),
    "bool": pa.bool_(),
    "list<string>": pa.list_(pa.string()),
    "list<float64>": pa.list_(pa.float64()),
    "list<struct<role:string,content:string>>": pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())])),
}


@lru_cache(maxsize=None)
def arrow_schema(table: str) -> pa.Schema:
    doc = json.loads((SCHEMA_DIR / f"{SAME_AS.get(table, table)}.json").read_text())
    return pa.schema(
        [pa.field(c["name"], _TYPES[c["type"]], nullable=c["nullable"]) for c in doc["columns"]],
        metadata={"table": table, "version": str(doc["version"])},
    )


def columns(table: str) -> list[str]:
    return arrow_schema(table).names


def validate_frame(frame: pl.DataFrame, table: str) -> pa.Table:
    """Check `frame` against the table's schema and return it as Arrow in schema column order.

    Missing columns, nulls in non-nullable columns and types that do not cast safely are SchemaErrors.
    Extra columns are kept (later capabilities extend tables), after the schema's columns.
    """
    schema = arrow_schema(table)
    missing = [n for n in schema.names if n not in frame.columns]
    if missing:
        raise SchemaError(f"table '{table}': missing columns {missing}; has {frame.columns}")
    extra = [c for c in frame.columns if c not in schema.names]
    arrow = frame.select(schema.names + extra).to_arrow()
    arrays, fields = [], []
    for f in schema:
        col = arrow.column(f.name)
        if not f.nullable and col.null_count:
            raise SchemaError(f"table '{table}': column '{f.name}' has {col.null_count} nulls; it may not")
        try:
            arrays.append(col.cast(f.type, safe=True))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
            raise SchemaError(f"table '{table}': column '{f.name}' is {col.type}, expected {f.type}: {exc}") from None
        fields.append(f)
    for name in extra:
        arrays.append(arrow.column(name))
        fields.append(arrow.schema.field(name))
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=schema.metadata))


def empty(table: str) -> pl.DataFrame:
    return pl.from_arrow(arrow_schema(table).empty_table())


# a row of the step-score cache (RUN/cache/step_scores): what a step scorer returns for one trace
ScoreKey = tuple[str, str, tuple[str, ...]]  # (problem id, hash of question and gold, steps)


@dataclass
class StepScores:
    scores: list[float]
    first_bad_step: int | None
    probes: int = 0  # prefixes estimated
    tokens: int = 0  # teacher tokens spent on continuations
    note: str | None = None  # why a trace was not scored (then `scores` is empty)
    cost: int = 0  # teacher tokens these scores took when they were computed (kept with them; `tokens`: this call's)
