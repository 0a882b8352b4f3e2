"""`run.post: streaming` (graded slices on disk, light rows in memory, texts read back where a stage needs them)
gives the tables `run.post: memory` (the whole run in one frame) gives: every table, row for row."""

import json
from pathlib import Path

import polars as pl
import pytest

from flows.build_dataset import build_dataset
from tracefactory.backends.fake import FakeTeacher
from tracefactory.store import io

DEMO = Path(__file__).parents[2] / "data" / "demo" / "problems.jsonl"
FIXTURES = Path(__file__).parents[1] / "fixtures"
BASE = {
    "rewrite.enabled": False,
    "dedup.enabled": False,
    "decontaminate.enabled": False,
    "run.shard_size": 16,
    "grade.workers": 0,
}


def _tables(out: Path) -> dict[str, pl.DataFrame]:
    """Every table of a run; the funnel without its timings."""
    tables = {t: pl.read_parquet(out / t / "*.parquet") for t in io.RunDir(out).tables()}
    tables["funnel"] = tables["funnel"].drop("seconds")
    return tables


def _both(tmp_path: Path, source: Path, teacher, **over) -> tuple[dict, dict, int]:
    """The flow under memory, then under streaming with slices of ~1,500 tokens (several per run): their tables, and
    how many slices the streamed grade wrote."""
    got = {}
    for post, extra in (("memory", {}), ("streaming", {"run.post_slice_tokens": 1500})):
        out = tmp_path / post
        build_dataset(
            config=None,
            out=str(out),
            overrides={"source.path": str(source), **BASE, **over, "run.post": post, **extra},
            teacher=teacher(),
        )
        got[post] = out
    slices = len(list((got["streaming"] / "_work" / "graded_slices").glob("*.parquet")))
    return _tables(got["memory"]), _tables(got["streaming"]), slices


def _assert_equal(memory: dict, streaming: dict) -> None:
    assert sorted(memory) == sorted(streaming)
    for table, frame in memory.items():
        assert streaming[table].equals(frame), table


def test_streaming_equals_memory_with_step_scores_pairs_bad_rows_and_a_thinking_teacher(prefect_harness, tmp_path):
    demo = DEMO.read_text().splitlines()
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(demo[::5] + (FIXTURES / "bad_input.jsonl").read_text().splitlines()) + "\n")
    memory, streaming, slices = _both(
        tmp_path,
        source,
        lambda: FakeTeacher(slip_rate=0.3, thinks=True, unclosed_rate=0.05),
        **{"pairs.per_problem": 2, "sampling.budget.policy": "fixed"},
    )
    assert slices > 3  # the streamed grade did cut the run
    assert len(memory["rollouts"]) == 62 * 8 and len(memory["pairs"]) and len(memory["dataset"])
    assert memory["rollouts"]["step_scores"].drop_nulls().len() and memory["rollouts"]["reasoning"].drop_nulls().len()
    _assert_equal(memory, streaming)


def test_streaming_equals_memory_with_suspect_golds_pseudo_golds_and_rationales(prefect_harness, tmp_path):
    demo = [json.loads(line) for line in DEMO.open()][:80:4]
    demo[0]["answer"] = str(int(demo[0]["answer"]) + 100)  # a planted gold: the audit's table shows a trace for it
    for r in demo[1:8:2]:
        del r["answer"]  # gold-less: pseudo-golds, their rollouts graded again
    hard = [
        {"id": f"SQ-{k}", "level": 3, "answer": str((5 + 2 * k) ** 2)}
        | {"question": f"Ann has {3 + k} stones. She gets {2 + k} more. She squares them. How many stones now?"}
        for k in range(3)
    ]
    source = tmp_path / "mixed.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in demo + hard))
    over = {"source.gold": "majority", "rationalize.enabled": True, "rationalize.include": True}
    memory, streaming, slices = _both(tmp_path, source, lambda: FakeTeacher(slip_rate=0.15, hints="derive"), **over)
    assert slices > 3
    assert len(memory["audit"]) and memory["audit"]["majority_cot"].is_not_null().all()
    assert (memory["problems"]["gold_source"] == "majority").any() and memory["dataset"]["rationalized"].any()
    _assert_equal(memory, streaming)


@pytest.mark.parametrize("post", ["memory", "streaming"])
def test_a_rerun_reads_graded_slices_back(prefect_harness, tmp_path, post, caplog):
    source = tmp_path / "p.jsonl"
    source.write_text("\n".join(DEMO.read_text().splitlines()[:40]) + "\n")
    over = {"source.path": str(source), **BASE, "run.post": post, "run.post_slice_tokens": 1500}
    build_dataset(config=None, out=str(tmp_path / "r"), overrides=over, teacher=FakeTeacher())
    first = _tables(tmp_path / "r")
    caplog.clear()
    build_dataset(config=None, out=str(tmp_path / "r"), overrides=over, teacher=FakeTeacher())
    assert any("read back (inputs unchanged)" in r.message for r in caplog.records)
    again = _tables(tmp_path / "r")
    for tables in (first, again):  # what was generated or reused, what the teacher spent: not the same
        tables["funnel"] = tables["funnel"].drop("detail", "tokens")
    _assert_equal(first, again)
