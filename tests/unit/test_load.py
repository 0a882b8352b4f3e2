import json
from pathlib import Path

import polars as pl
import pytest

from tracefactory.config import SourceConfig
from tracefactory.errors import ConfigError
from tracefactory.stages.load import load, partition
from tracefactory.store.sources import read_source


def _load(src):
    """(problems, rejected, report): the load stage and its partition."""
    parsed, report = load(read_source(src), src)
    return (*partition(parsed), report)


FIXTURES = Path(__file__).parents[1] / "fixtures"
DATA = Path(__file__).parents[2] / "data"

EXPECTED_REJECTS = {  # row_index -> reason
    1: "malformed_json",
    2: "not_an_object",
    3: "missing_question",
    4: "question_not_string",
    5: "empty_question",
    6: "missing_answer",
    7: "answer_not_string",
    8: "empty_answer",
    9: "unparseable_gold",
    10: "duplicate_id",
    11: "missing_id",
    12: "bad_id",
    14: "missing_question",
}


def test_bad_rows_are_rejected_with_reasons_and_the_funnel_adds_up():
    src = SourceConfig(path=str(FIXTURES / "bad_input.jsonl"), id_field="id")
    problems, rejected, report = _load(src)
    assert dict(rejected.select("row_index", "reason").iter_rows()) == EXPECTED_REJECTS
    assert problems["problem_id"].to_list() == ["ok-1", "17"]
    assert problems.filter(pl.col("problem_id") == "17")["answer"].item() == "5"  # JSON number accepted
    assert report.rows_in == 15 == report.kept + report.dropped
    assert report.dropped_by_reason["missing_question"] == 2
    assert rejected["source"].unique().to_list() == ["bad_input"]
    assert rejected.filter(pl.col("row_index") == 1)["raw"].item().startswith('{"id": "broken"')


def test_gsm8k_gold_extraction(tmp_path):
    rows = [{"question": "q1?", "answer": "2+3=<<2+3=5>>5\n#### 1,250"}, {"question": "q2?", "answer": "no final line"}]
    path = tmp_path / "gsm.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    src = SourceConfig(path=str(path), gold_format="gsm8k")
    problems, rejected, _ = _load(src)
    assert problems["answer"].to_list() == ["1250"]
    assert rejected["reason"].to_list() == ["unparseable_gold"]
    assert len(problems["problem_id"].item()) == 16  # no id field: a hash of the question


def test_math_boxed_gold_from_parquet(tmp_path):
    rows = [
        {
            "problem": "Convert (0,3) to polar.",
            "solution": "so $\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}$.",
            "unique_id": "test/precalculus/807.json",
            "level": 2,
        }
    ]
    path = tmp_path / "math.parquet"
    pl.DataFrame(rows).write_parquet(path)
    src = SourceConfig(
        path=str(path),
        question_field="problem",
        answer_field="solution",
        id_field="unique_id",
        gold_format="boxed",
        level_field="level",
    )
    problems, _, _ = _load(src)
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
    problems, rejected, report = _load(src)
    assert len(problems) == 5 and len(rejected) == 0 and report.rows_in == 5
    assert problems["source"].unique().to_list() == ["arith"]


def test_limit_and_missing_file():
    src = SourceConfig(path=str(DATA / "demo" / "problems.jsonl"), limit=10, id_field="id")
    assert len(read_source(src)) == 10
    with pytest.raises(ConfigError, match="source.path"):
        read_source(SourceConfig(path="/nope/missing.jsonl"))


def _demo_rows(k=6):
    return [json.loads(x) for x in (DATA / "demo" / "problems.jsonl").read_text().splitlines()[:k]]


def test_byte_order_mark_and_crlf_line_ends_load_with_zero_rejects(tmp_path):
    """What editors and spreadsheet exports write: a UTF-8 BOM first, CRLF line ends."""
    rows = _demo_rows()
    plain = tmp_path / "plain.jsonl"
    plain.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    bom = tmp_path / "bom.jsonl"
    bom.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(json.dumps(r) for r in rows).encode() + b"\r\n")
    want, _, _ = _load(SourceConfig(path=str(plain), id_field="id", name="s"))
    problems, rejected, report = _load(SourceConfig(path=str(bom), id_field="id", name="s"))
    assert len(rejected) == 0 and report.kept == len(rows) and problems.equals(want)
    as_array = tmp_path / "rows.json"  # a JSON array, BOM and CRLF too
    as_array.write_bytes(b"\xef\xbb\xbf[\r\n" + ",\r\n".join(json.dumps(r) for r in rows).encode() + b"\r\n]\r\n")
    problems, rejected, _ = _load(SourceConfig(path=str(as_array), id_field="id", name="s"))
    assert len(rejected) == 0 and problems.equals(want)


def test_csv_with_bom_and_crlf(tmp_path):
    import csv
    import io

    rows = _demo_rows()
    buf = io.StringIO(newline="")
    writer = csv.DictWriter(buf, fieldnames=["id", "question", "answer", "level"], lineterminator="\r\n")
    writer.writeheader()
    writer.writerows({k: r[k] for k in ("id", "question", "answer", "level")} for r in rows)
    path = tmp_path / "export.csv"
    path.write_bytes(b"\xef\xbb\xbf" + buf.getvalue().encode())
    problems, rejected, _ = _load(SourceConfig(path=str(path), id_field="id", level_field="level"))
    assert len(rejected) == 0 and problems["problem_id"].to_list() == [r["id"] for r in rows]
    assert problems["answer"].to_list() == [str(r["answer"]) for r in rows]
    assert problems["question"].to_list() == [r["question"] for r in rows]  # no stray \r


def test_a_folder_written_by_save_to_disk_loads(tmp_path):
    import datasets

    rows = _demo_rows(7)
    ds = datasets.Dataset.from_list(rows)
    ds.save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(2))}).save_to_disk(str(tmp_path / "dict"))
    problems, rejected, _ = _load(SourceConfig(path=str(tmp_path / "one"), id_field="id"))
    assert len(problems) == 7 and len(rejected) == 0
    problems, _, _ = _load(SourceConfig(path=str(tmp_path / "dict"), format="hf", split="test", id_field="id"))
    assert problems["problem_id"].to_list() == [r["id"] for r in rows[:2]]
    problems, _, _ = _load(SourceConfig(path=str(tmp_path / "dict"), split="train", id_field="id", limit=3))
    assert len(problems) == 3
    with pytest.raises(ConfigError, match="source.split"):
        _load(SourceConfig(path=str(tmp_path / "dict"), split="validation", id_field="id"))


def slow_gold(gold, pred, timeout_s):
    """A gold that Math-Verify would take for ever over (a worker stuck in C code, say): sleeps."""
    import time

    from tracefactory.grading.verify import _gold_verdict

    if gold == "SLOW":
        time.sleep(60)
    return _gold_verdict(gold, pred, timeout_s)


HOSTILE = [  # (raw JSON line, reason or None, gold when kept)
    ('{"id": "big", "question": "q?", "answer": ' + "9" * 5000 + "}", "number_too_large", None),
    ('{"id": "bigs", "question": "q?", "answer": "' + "9" * 5000 + '"}', "number_too_large", None),
    ('{"id": "deep", "question": "q?", "answer": ' + "[" * 200_000 + "]" * 200_000 + "}", "too_deep", None),
    ('{"id": "sur", "question": "lone \\ud800 surrogate?", "answer": "1"}', "bad_unicode", None),
    ('{"id": "sur-a", "question": "q?", "answer": "\\udfff"}', "bad_unicode", None),
    ('{"id": "\\ud800", "question": "q?", "answer": "1"}', "bad_unicode", None),
    ('{"id": "nan", "question": "q?", "answer": NaN}', "non_finite", None),
    ('{"id": "inf", "question": "q?", "answer": -Infinity}', "non_finite", None),
    ('{"id": "lvl", "question": "q?", "answer": "1", "level": {"x": 1}}', "bad_level", None),
    ('{"id": "lvl2", "question": "q?", "answer": "1", "level": true}', "bad_level", None),
    ('{"id": "lvl3", "question": "q?", "answer": "1", "level": "' + "x" * 500 + '"}', "bad_level", None),
    ('{"id": "slow", "question": "q?", "answer": "SLOW"}', "gold_timeout", None),
    ('{"id": "braces", "question": "q?", "answer": "' + "{" * 200_000 + "1" + "}" * 200_000 + '"}', "(see test)", None),
    ('{"id": "float", "question": "q?", "answer": 0.00001}', None, "0.00001"),
    ('{"id": "float2", "question": "q?", "answer": 2.5e20}', None, "250000000000000000000"),
    ('{"id": "lvl-ok", "question": "q?", "answer": "7", "level": 3}', None, "7"),
    ('{"id": "tower", "question": "q?", "answer": "9^{9^{9^{9}}}"}', None, "9^{9^{9^{9}}}"),
]


def test_hostile_rows_are_rejected_with_their_reason_within_the_budget(tmp_path):
    """Each hostile row is a reject with its reason, never a crash or a hang; the slow gold is cut off
    by the grading budget (1 s here) in a worker process."""
    import time
    from functools import partial

    from tracefactory.grading.verify import check_golds

    path = tmp_path / "hostile.jsonl"
    path.write_text("\n".join(line for line, _, _ in HOSTILE) + "\n")
    src = SourceConfig(path=str(path), id_field="id", level_field="level")
    started = time.monotonic()
    parsed, report = load(read_source(src), src, partial(check_golds, workers=2, timeout_s=1.0, fn=slow_gold))
    took = time.monotonic() - started
    problems, rejected = partition(parsed)
    want = {i: why for i, (_, why, _) in enumerate(HOSTILE) if why and i != 12}
    got = dict(rejected.select("row_index", "reason").iter_rows())
    # 200,000 nested braces: Math-Verify's parser runs past the budget here (a real gold_timeout)
    assert got.pop(12) in {"gold_timeout", "unparseable_gold"}
    assert got == want
    golds = dict(problems.select("problem_id", "answer").iter_rows())
    assert {k: golds[k] for k in ("float", "float2", "lvl-ok", "tower")} == {
        "float": "0.00001",
        "float2": "250000000000000000000",
        "lvl-ok": "7",
        "tower": "9^{9^{9^{9}}}",
    }
    assert report.rows_in == len(HOSTILE) == report.kept + report.dropped
    assert took < 30  # worker start-up, one 1 s budget, one replacement: not the 60 s the slow gold wants
    # what is written survives a round trip through Parquet (no lone surrogate reaches a table)
    pl.concat([rejected.select("raw")]).write_parquet(tmp_path / "rejected.parquet")
