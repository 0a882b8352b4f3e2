"""Request-level durability: chunk commits, resume by problem, soft-failed requests retried later."""

import polars as pl

from tracefactory import io, pipeline
from tracefactory.backends.fake import FakeTeacher
from tracefactory.config import load_config
from tracefactory.synth import generate

PROBLEMS = pl.DataFrame(
    [
        {"problem_id": p.id, "question": p.question, "answer": p.answer, "source": "t", "level": str(p.level)}
        for p in generate(5, seed=3)
    ]
)  # 25 problems


def _cfg(**over):
    return load_config(None, {"sampling.n": 3, "run.flush_every": 4, **over})


def _ledger(run: io.RunDir, cfg) -> dict[str, int]:
    """Completions committed, by the run (process) that generated them."""
    out: dict[str, int] = {}
    for c in run.generations(cfg.rollout_hash()).commits():
        out[c["run"]] = out.get(c["run"], 0) + c["completions"]
    return out


def test_results_are_committed_in_chunks_as_they_finish(tmp_path):
    run, cfg = io.RunDir(tmp_path), _cfg()
    report = pipeline.rollout_shard(run, 0, PROBLEMS, cfg, FakeTeacher())
    commits = run.generations(cfg.rollout_hash()).commits()
    assert [len(c["problems"]) for c in commits] == [4, 4, 4, 4, 4, 4, 1]  # flush_every=4, then the rest
    assert sum(c["completions"] for c in commits) == report.kept == 75 == report.rows_in
    assert pipeline.shard_done(run, cfg, PROBLEMS)


def test_resume_after_a_partial_run_generates_only_what_is_missing(tmp_path):
    run, cfg = io.RunDir(tmp_path / "a"), _cfg()
    # an "interrupted" run: only the first 10 problems were generated and committed
    pipeline.rollout_shard(run, 0, PROBLEMS.head(10), cfg, FakeTeacher())
    (run.root / "_work" / "markers").rename(run.root / "_work" / "lost-markers")  # no shard marker survives
    teacher = FakeTeacher()
    pipeline.rollout_shard(run, 0, PROBLEMS, cfg, teacher)
    assert teacher.calls == [15]
    whole = io.RunDir(tmp_path / "b")
    pipeline.rollout_shard(whole, 0, PROBLEMS, cfg, FakeTeacher())
    resumed = pipeline.read_generations(run, cfg, PROBLEMS).sort("problem_id", "sample_index")
    fresh = pipeline.read_generations(whole, cfg, PROBLEMS).sort("problem_id", "sample_index")
    assert resumed.equals(fresh)
    assert sum(_ledger(run, cfg).values()) == sum(_ledger(whole, cfg).values()) == 75


def test_a_write_cut_short_by_a_crash_is_not_trusted(tmp_path):
    run, cfg = io.RunDir(tmp_path), _cfg()
    pipeline.rollout_shard(run, 0, PROBLEMS, cfg, FakeTeacher())
    store = run.generations(cfg.rollout_hash())
    last = sorted(store.root.glob("chunk-*.parquet"))[-1]
    lost = len(store.commits()[-1]["problems"])
    # killed mid-write: only the hidden temp file of the last chunk is left, half written
    (store.root / f".{last.name}.x1y2.tmp").write_bytes(last.read_bytes()[:200])
    last.unlink()
    (store.root / "chunk-garbage.parquet").write_bytes(b"not parquet")  # and something that is no chunk
    for m in (run.root / "_work" / "markers").glob("*.done"):
        m.unlink()
    teacher = FakeTeacher()
    pipeline.rollout_shard(run, 0, PROBLEMS, cfg, teacher)
    assert teacher.calls == [lost]
    frame = pipeline.read_generations(run, cfg, PROBLEMS)
    assert len(frame) == 75 and frame.select("problem_id", "sample_index").is_unique().all()


def test_failed_requests_are_recorded_and_retried_on_the_next_run(tmp_path):
    run, cfg = io.RunDir(tmp_path), _cfg()
    bad = PROBLEMS["question"][7]
    report = pipeline.rollout_shard(run, 0, PROBLEMS, cfg, FakeTeacher(fail_questions=[bad]))
    assert report.dropped_by_reason == {"teacher_error": 3} and report.kept == 72
    assert not pipeline.shard_done(run, cfg, PROBLEMS)
    failed = {k: v for c in run.generations(cfg.rollout_hash()).commits() for k, v in c["failed"].items()}
    assert list(failed) == [PROBLEMS["problem_id"][7]] and "injected failure" in failed[PROBLEMS["problem_id"][7]]
    teacher = FakeTeacher()
    report = pipeline.rollout_shard(run, 0, PROBLEMS, cfg, teacher)
    assert teacher.calls == [1] and report.kept == report.rows_in == 75
    assert pipeline.shard_done(run, cfg, PROBLEMS)


def test_a_damaged_stage_cache_is_redone_not_a_crash(tmp_path):
    from tracefactory.report import StageReport

    cache = io.RunDir(tmp_path).stage_cache("graded")
    frame = pl.DataFrame({"a": [1, 2]})
    cache.put("k", frame, StageReport("grade", "completions", 2, 2))
    got, report = cache.get("k")
    assert got.equals(frame) and report.kept == 2
    data = cache.path("k").read_bytes()
    cache.path("k").write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    assert cache.get("k") is None and cache.get("absent") is None
