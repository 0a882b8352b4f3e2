import json
from pathlib import Path

import polars as pl
import pytest

from tracefactory.config import SourceConfig
from tracefactory.errors import ConfigError
from tracefactory.io import read_source
from tracefactory.stages.load import load

FIXTURES = Path(__file__).parents[1] / "fixtures"
DATA = Path(__file__).parents[2] / "data"

EXPECTED_REJECTS = {  # row_index -> reason
    1: "malformed_json", 2: "not_an_object", 3: "missing_question", 4: "question_not_string",
    5: "empty_question", 6: "missing_answer", 7: "answer_not_string", 8: "empty_answer",
    9: "unparseable_gold", 10: "duplicate_id", 11: "missing_id", 12: "bad_id", 14: "missing_question",
}


def test_bad_rows_are_rejected_with_reasons_and_the_funnel_adds_up():
    src = SourceConfig(path=str(FIXTURES / "bad_input.jsonl"), id_field="id")
    problems, rejected, report = load(read_source(src), src)
    assert dict(rejected.select("row_index", "reason").iter_rows()) == EXPECTED_REJECTS
    assert problems["problem_id"].to_list() == ["ok-1", "17"]
    assert problems.filter(pl.col("problem_id") == "17")["answer"].item() == "5"  # JSON number accepted
    assert report.rows_in == 15 == report.kept + report.dropped
    assert report.dropped_by_reason["missing_question"] == 2
    assert rejected["source"].unique().to_list() == ["bad_input"]
    assert rejected.filter(pl.col("row_index") == 1)["raw"].item().startswith('{"id": "broken"')


def test_gsm8k_gold_extraction(tmp_path):
    rows = [{"question": "q1?", "answer": "2+3=<<2+3=5>>5\n#### 1,250"},
            {"question": "q2?", "answer": "no final line"}]
    path = tmp_path / "gsm.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    src = SourceConfig(path=str(path), gold_format="gsm8k")
    problems, rejected, _ = load(read_source(src), src)
    assert problems["answer"].to_list() == ["1250"]
    assert rejected["reason"].to_list() == ["unparseable_gold"]
    assert len(problems["problem_id"].item()) == 16  # no id field: a hash of the question


def test_math_boxed_gold_from_parquet(tmp_path):
    rows = [{"problem": "Convert (0,3) to polar.", "solution": "so $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.",
             "unique_id": "test/precalculus/807.json", "level": 2}]
    path = tmp_path / "math.parquet"
    pl.DataFrame(rows).write_parquet(path)
    src = SourceConfig(path=str(path), question_field="problem", answer_field="solution", id_field="unique_id",
                       gold_format="boxed", level_field="level")
    problems, _, _ = load(read_source(src), src)
    row = problems.row(0, named=True)
    assert row["answer"] == "\\left( 3, \\frac{\\pi}{2} \\right)"
    assert row["problem_id"] == "test/precalculus/807.json" and row["level"] == "2" and row["source"] == "math"


def test_datasets_loader_on_a_local_dataset_folder(tmp_path):
    """`format: hf` goes through datasets.load_dataset — here on a local folder, as no hub is reachable."""
    folder = tmp_path / "arith"
    folder.mkdir()
    lines = (DATA / "demo" / "problems.jsonl").read_text().splitlines()[:7]
    (folder / "train.jsonl").write_text("\n".join(lines) + "\n")
    src = SourceConfig(path=str(folder), format="hf", split="train", id_field="id", limit=5)
    problems, rejected, report = load(read_source(src), src)
    assert len(problems) == 5 and len(rejected) == 0 and report.rows_in == 5
    assert problems["source"].unique().to_list() == ["arith"]


def test_limit_and_missing_file():
    src = SourceConfig(path=str(DATA / "demo" / "problems.jsonl"), limit=10, id_field="id")
    assert len(read_source(src)) == 10
    with pytest.raises(ConfigError, match="source.path"):
        read_source(SourceConfig(path="/nope/missing.jsonl"))
