"""load: raw input rows -> one parsed row each, annotated with a `reason` where it cannot be used.

`partition` then splits that frame into `problems` (the good rows) and `rejected` (the rest, with the
raw text cut to RAW_LIMIT characters). Rejection reasons: malformed_json, not_an_object,
missing_question, question_not_string, empty_question, missing_answer, answer_not_string,
empty_answer, unparseable_gold, missing_id, bad_id, duplicate_id.
Answers that are JSON numbers are accepted as their decimal text.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import polars as pl

from tracefactory.config import SourceConfig
from tracefactory.report import StageReport
from tracefactory.schema import ANSWER, LEVEL, PROBLEM_ID, QUESTION, RAW, REASON, ROW_INDEX, SOURCE
from tracefactory.verify import gold_parses, gsm8k_gold, last_boxed

RAW_LIMIT = 2000


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
        value = str(value)
    if not isinstance(value, str):
        raise Reject(f"{what}_not_string")
    if not value.strip():
        raise Reject(f"empty_{what}")
    return value.strip()


def gold_of(answer: str, fmt: str) -> str:
    gold = {"gsm8k": gsm8k_gold, "boxed": last_boxed}.get(fmt, lambda a: a)(answer)
    if not gold or not gold.strip() or not gold_parses(gold.strip()):
        raise Reject("unparseable_gold")
    return gold.strip()


def _problem_id(rec: dict, src: SourceConfig, question: str) -> str:
    if not src.id_field:
        return hashlib.sha1(question.encode()).hexdigest()[:16]
    if rec.get(src.id_field) is None:
        raise Reject("missing_id")
    value = rec[src.id_field]
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).strip():
        raise Reject("bad_id")
    return str(value).strip()


def parse_row(raw: str, src: SourceConfig) -> dict:
    try:
        rec = json.loads(raw)
    except json.JSONDecodeError:
        raise Reject("malformed_json") from None
    if not isinstance(rec, dict):
        raise Reject("not_an_object")
    question = _text(rec, src.question_field, "question")
    answer = gold_of(_text(rec, src.answer_field, "answer", numbers_ok=True), src.gold_format)
    level = rec.get(src.level_field) if src.level_field else None
    return {
        PROBLEM_ID: _problem_id(rec, src, question),
        QUESTION: question,
        ANSWER: answer,
        LEVEL: None if level is None else str(level),
    }


PROBLEM_SCHEMA = {PROBLEM_ID: pl.String, QUESTION: pl.String, ANSWER: pl.String, LEVEL: pl.String, SOURCE: pl.String}
PARSED_SCHEMA = {ROW_INDEX: pl.Int64, RAW: pl.String, **PROBLEM_SCHEMA, REASON: pl.String}


def load(raw: pl.DataFrame, cfg: SourceConfig) -> tuple[pl.DataFrame, StageReport]:
    """Parse every (row_index, raw) row that `sources.read_source` made; a row that cannot be used keeps
    null problem fields and its rejection `reason` (a second row with an id already seen is a
    `duplicate_id`: the first one wins). Nothing is dropped here — `partition` splits the result."""
    name = source_name(cfg)
    out, seen = [], set()
    for idx, line in raw.select(ROW_INDEX, RAW).iter_rows():
        try:
            row = parse_row(line, cfg)
            if row[PROBLEM_ID] in seen:
                raise Reject("duplicate_id")
        except Reject as why:
            out.append({ROW_INDEX: idx, RAW: line, SOURCE: name, REASON: str(why)})
            continue
        seen.add(row[PROBLEM_ID])
        out.append({ROW_INDEX: idx, RAW: line, **row, SOURCE: name, REASON: None})
    parsed = pl.DataFrame(out, schema=PARSED_SCHEMA)
    return parsed, StageReport.from_reasons("load", "rows", parsed[REASON])


def partition(parsed: pl.DataFrame) -> tuple[pl.DataFrame, pl.DataFrame]:
    """(problems, rejected) of `load`'s output."""
    good = pl.col(REASON).is_null()
    problems = parsed.filter(good).select(list(PROBLEM_SCHEMA))
    rejected = parsed.filter(~good).select(ROW_INDEX, SOURCE, pl.col(RAW).str.slice(0, RAW_LIMIT), REASON)
    return problems, rejected
