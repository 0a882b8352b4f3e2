"""Majority pseudo-golds for problems without a gold (source.gold: majority): loading them, and the vote."""

import json

import polars as pl
import pytest

from tracefactory.config import AuditConfig, SourceConfig, load_config
from tracefactory.errors import ConfigError
from tracefactory.stages.load import load, partition
from tracefactory.stages.pseudo_gold import BELOW_BARS, pseudo_gold
from tracefactory.store.sources import read_source

ROWS = [
    {"id": "a", "question": "1+1?", "answer": "2"},
    {"id": "b", "question": "2+2?"},  # no answer field
    {"id": "c", "question": "3+3?", "answer": "  "},  # an empty one
    {"id": "d", "question": "4+4?", "answer": None},
    {"id": "e", "question": "5+5?", "answer": ["10"]},  # a bad one stays bad
]


def _load(tmp_path, gold):
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    src = SourceConfig(path=str(path), id_field="id", gold=gold)
    parsed, report = load(read_source(src), src, golds=lambda gs: {g: None for g in gs})
    return (*partition(parsed), report)


def test_rows_without_a_gold_are_kept_without_one_unless_a_gold_is_required(tmp_path):
    problems, rejected, report = _load(tmp_path, "required")
    assert problems["problem_id"].to_list() == ["a"] and problems["gold_source"].to_list() == ["source"]
    assert rejected["reason"].to_list() == ["missing_answer", "empty_answer", "missing_answer", "answer_not_string"]
    for gold in ("majority", "none"):
        problems, rejected, report = _load(tmp_path, gold)
        assert problems.select("problem_id", "answer", "gold_source").rows() == [
            ("a", "2", "source"),
            ("b", None, None),
            ("c", None, None),
            ("d", None, None),
        ]
        assert rejected["reason"].to_list() == ["answer_not_string"] and report.detail == {"no_gold": 3}
    with pytest.raises(ConfigError, match="source.gold"):
        load_config(None, {"source.gold": "vote"})


def _graded(answers: dict[str, list[str | None]]) -> pl.DataFrame:
    rows = [
        {"problem_id": pid, "sample_index": j, "pred_answer": a, "correct": False, "cot": f"{a}"}
        for pid, got in answers.items()
        for j, a in enumerate(got)
    ]
    return pl.DataFrame(rows)


def test_the_majority_answer_becomes_the_gold_only_above_the_audits_bars():
    problems = pl.DataFrame(
        {
            "problem_id": ["own", "clear", "thin", "few", "tie"],
            "answer": ["7", None, None, None, None],
            "gold_source": ["source", None, None, None, None],
        }
    )
    graded = _graded(
        {
            "own": ["8", "8", "8", "8", "8"],  # a gold of its own: never replaced (the audit's business)
            "clear": ["12", "12.0", "12", "13", None, "12"],  # 4 of 5 answered agree by value
            "thin": ["1", "2", "1", "3", "4"],  # 2 of 5: below the share
            "few": ["5", "5", "5"],  # 3 votes: below min_votes
            "tie": ["1", "2", "1", "2", "1", "2", "1", "2"],  # half: not a majority
        }
    )
    out, report = pseudo_gold(graded, AuditConfig(share=0.6, min_votes=4), problems)
    assert out.select("problem_id", "answer", "gold_source").rows() == [
        ("own", "7", "source"),
        ("clear", "12", "majority"),  # the first sample's text of the winning value
        ("thin", None, None),
        ("few", None, None),
        ("tie", None, None),
    ]
    assert report.rows_in == 4 and report.kept == 1 and report.dropped_by_reason == {BELOW_BARS: 3}


def test_the_card_says_how_many_problems_have_a_pseudo_gold():
    from tracefactory.publish.card import _pseudo_gold
    from tracefactory.store.report import StageReport, funnel_frame

    funnel = funnel_frame([StageReport("pseudo_gold", "problems", 15, 8, {BELOW_BARS: 7})])
    cfg = load_config(None, {"source.gold": "majority"}).to_dict()
    (line,) = _pseudo_gold(cfg, funnel)
    assert "15 problems came without a gold; 8 got" in line and "gold_source = majority" in line
    assert _pseudo_gold(load_config(None).to_dict(), funnel) == []  # source.gold: required says nothing
