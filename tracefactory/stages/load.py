"""load: raw input rows -> one parsed row each, annotated with a `reason` where it cannot be used.

`partition` then splits that frame into `problems` (the good rows) and `rejected` (the rest, with the
raw text cut to RAW_LIMIT characters). Rejection reasons: malformed_json, too_deep (nesting deeper
than the JSON parser's recursion limit), number_too_large (a number of more than Python's
int-to-string digit limit, 4300 by default), not_an_object, missing_question, question_not_string,
empty_question, missing_answer, answer_not_string, empty_answer, non_finite (a NaN or infinite number
as the answer), bad_unicode (a lone surrogate, which no UTF-8 file can hold), unparseable_gold,
gold_timeout (Math-Verify could not parse the gold within the grading budget), missing_id, bad_id,
bad_level, duplicate_id. A hostile row is rejected, never a crash or a hang of the run.
Answers that are JSON numbers are accepted as their decimal text (0.00001, not 1e-05).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
import sys
from decimal import Decimal
from pathlib import Path
from typing import Callable

import polars as pl

from tracefactory.config import SourceConfig
from tracefactory.grading.verify import check_golds, gsm8k_gold, last_boxed
from tracefactory.store.report import StageReport
from tracefactory.store.schema import (
    ANSWER,
    GOLD_SOURCE,
    LEVEL,
    MATCH,
    PROBLEM_ID,
    QUESTION,
    RAW,
    REASON,
    REWRITE_KIND,
    REWRITE_OF,
    ROW_INDEX,
    SOLUTION,
    SOURCE,
    SOURCE_GOLD,
)

RAW_LIMIT = 2000
MISSING_ANSWER, EMPTY_ANSWER = "missing_answer", "empty_answer"
LEVEL_LIMIT = 64  # characters: a level is a label, not a text
MAX_DIGITS = sys.get_int_max_str_digits() or 4300
_LONG_NUMBER = re.compile(r"\d{%d,}" % (MAX_DIGITS + 1))
# golds -> {gold: None if usable, else the reject reason}; see `verify.check_golds`
GoldCheck = Callable[[list[str]], dict[str, str | None]]


class Reject(Exception):
    """A row-level problem, caught inside this module and turned into a `rejected` row."""


def source_name(src: SourceConfig) -> str:
    if src.name:
        return src.name
    p = Path(src.path)
    return p.stem if p.suffix else (src.path.rstrip("/").split("/")[-1] or src.path)


def _text(rec: dict, key: str, what: str, numbers_ok: bool = False) -> str:
    if key not in rec or rec[key] is None:
        raise Reject(f"missing_{what}")
    value = rec[key]
    if numbers_ok and isinstance(value, (int, float)) and not isinstance(value, bool):
        value = _number_text(value)
    if not isinstance(value, str):
        raise Reject(f"{what}_not_string")
    if not value.strip():
        raise Reject(f"empty_{what}")
    _check_unicode(value)
    return value.strip()


def _number_text(value: int | float) -> str:
    if isinstance(value, float):
        if not math.isfinite(value):
            raise Reject("non_finite")
        return format(Decimal(repr(value)), "f")  # 1e-05 -> 0.00001, as a person writes it
    return str(value)


def _check_unicode(text: str) -> None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise Reject("bad_unicode") from None


def gold_of(answer: str, fmt: str) -> str:
    """The gold answer text of a row (not yet checked by Math-Verify: `load` does that, under a budget)."""
    gold = {"gsm8k": gsm8k_gold, "boxed": last_boxed}.get(fmt, lambda a: a)(answer)
    if not gold or not gold.strip():
        raise Reject("unparseable_gold")
    if _LONG_NUMBER.search(gold):
        raise Reject("number_too_large")
    return gold.strip()


def _problem_id(rec: dict, src: SourceConfig, question: str) -> str:
    if not src.id_field:
        return hashlib.sha1(question.encode()).hexdigest()[:16]
    if rec.get(src.id_field) is None:
        raise Reject("missing_id")
    value = rec[src.id_field]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise Reject("bad_id")
    _check_unicode(str(value))
    return str(value).strip()


def _level(rec: dict, src: SourceConfig) -> str | None:
    value = rec.get(src.level_field) if src.level_field else None
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (str, int)) or len(str(value)) > LEVEL_LIMIT:
        raise Reject("bad_level")
    _check_unicode(str(value))
    return str(value).strip()


def _json(raw: str):
    try:
        return json.loads(raw)
    except RecursionError:
        raise Reject("too_deep") from None
    except json.JSONDecodeError:
        raise Reject("malformed_json") from None
    except ValueError:  # int('9' * 5000): over the interpreter's digit limit
        raise Reject("number_too_large") from None


def parse_row(raw: str, src: SourceConfig) -> dict:
    """A row's problem fields; its gold is checked by Math-Verify afterwards (`load`)."""
    rec = _json(raw)
    if not isinstance(rec, dict):
        raise Reject("not_an_object")
    question = _text(rec, src.question_field, "question")
    try:
        answer_text = _text(rec, src.answer_field, "answer", numbers_ok=True)
    except Reject as why:
        if src.gold == "required" or str(why) not in (MISSING_ANSWER, EMPTY_ANSWER):
            raise
        answer_text = None  # kept without a gold (source.gold: majority or none)
    answer = gold_of(answer_text, src.gold_format) if answer_text is not None else None
    return {
        PROBLEM_ID: _problem_id(rec, src, question),
        QUESTION: question,
        ANSWER: answer,
        GOLD_SOURCE: SOURCE_GOLD if answer is not None else None,
        LEVEL: _level(rec, src),
        SOLUTION: _solution(rec, src, answer_text),
    }


def _solution(rec: dict, src: SourceConfig, answer_text: str | None) -> str | None:
    """The worked solution, if the source has one (not a reason to reject a row when it has none)."""
    if src.solution_field:
        value = rec.get(src.solution_field)
        if not isinstance(value, str):
            return None
        try:
            _check_unicode(value)
        except Reject:
            return None
        return value
    return answer_text if src.gold_format == "gsm8k" else None


PROBLEM_SCHEMA = {
    ROW_INDEX: pl.Int64,  # the input row it came from (a variant: its source's), for `rejected`
    PROBLEM_ID: pl.String,
    QUESTION: pl.String,
    ANSWER: pl.String,  # null: a row without a gold, kept under source.gold majority / none
    GOLD_SOURCE: pl.String,  # "source" (the row's gold), "majority" (a pseudo-gold, later), null (none)
    LEVEL: pl.String,
    SOURCE: pl.String,
    SOLUTION: pl.String,
    REWRITE_OF: pl.String,
    REWRITE_KIND: pl.String,
}
PARSED_SCHEMA = {ROW_INDEX: pl.Int64, RAW: pl.String, **PROBLEM_SCHEMA, REASON: pl.String}


def load(raw: pl.DataFrame, cfg: SourceConfig, golds: GoldCheck | None = None) -> tuple[pl.DataFrame, StageReport]:
    """Parse every (row_index, raw) row that `sources.read_source` made; a row that cannot be used keeps
    null problem fields and its rejection `reason` (a second row with an id already seen is a
    `duplicate_id`: the first one wins). Golds are checked by `golds` (default: `verify.check_golds` in
    worker processes, each under a hard budget). Nothing is dropped here — `partition` splits the result."""
    name = source_name(cfg)
    rows: list[tuple[int, str, dict | str]] = []  # (row_index, raw, parsed fields or reject reason)
    for idx, line in raw.select(ROW_INDEX, RAW).iter_rows():
        try:
            rows.append((idx, line, parse_row(line, cfg)))
        except Reject as why:
            rows.append((idx, line, str(why)))
    verdicts = (golds or check_golds)([r[ANSWER] for _, _, r in rows if isinstance(r, dict) and r[ANSWER] is not None])
    verdicts[None] = None  # a row kept without a gold has none to check
    out, seen = [], set()
    for idx, line, row in rows:
        if isinstance(row, dict):
            why = verdicts[row[ANSWER]] or ("duplicate_id" if row[PROBLEM_ID] in seen else None)
            if why is None:
                seen.add(row[PROBLEM_ID])
                out.append({ROW_INDEX: idx, RAW: line, **row, SOURCE: name, REASON: None})
                continue
            row = why
        out.append({ROW_INDEX: idx, RAW: line, SOURCE: name, REASON: row})
    parsed = pl.DataFrame(out, schema=PARSED_SCHEMA)
    kept = pl.col(REASON).is_null()
    goldless = {"no_gold": parsed.select((kept & pl.col(ANSWER).is_null()).sum()).item()}  # source.gold: majority/none
    return parsed, StageReport.from_reasons("load", "rows", parsed[REASON], detail=goldless)


def partition(parsed: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(problems, rejected) of `load`'s output."""
    good = pl.col(REASON).is_null()
    problems = parsed.filter(good).select(list(PROBLEM_SCHEMA))
    rejected = parsed.filter(~good).select(
        ROW_INDEX,
        SOURCE,
        pl.col(RAW).str.slice(0, RAW_LIMIT),
        REASON,
        pl.lit(None, pl.String).alias(PROBLEM_ID),
        pl.lit(None, pl.String).alias(MATCH),
    )
    return problems, rejected


def removed(problems: pl.DataFrame) -> pl.DataFrame:
    """`rejected` rows for problems a later stage removed (annotated with `reason` and `match`)."""
    raw = pl.struct(PROBLEM_ID, QUESTION, ANSWER).struct.json_encode().str.slice(0, RAW_LIMIT)
    return problems.filter(pl.col(REASON).is_not_null()).select(
        ROW_INDEX, SOURCE, raw.alias(RAW), REASON, PROBLEM_ID, MATCH
    )
