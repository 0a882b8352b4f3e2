"""Request-level durability: chunk commits, resume by request key, damage detected, soft-failed
requests retried later, edits and new teachers regenerating exactly what they touch."""

import polars as pl

from tracefactory import pipeline
from tracefactory.backends.fake import FakeTeacher
from tracefactory.config import load_config
from tracefactory.store import io
from tracefactory.training.synth import generate

PROBLEMS = pl.DataFrame(
    [
        {"problem_id": p.id, "question": p.question, "answer": p.answer, "source": "t", "level": str(p.level)}
        for p in generate(5, seed=3)
    ]
)  # 25 problems


def _cfg(**over):
    return load_config(None, {"sampling.n": 3, "run.flush_every": 4, **over})


def _ledger(run: io.RunDir) -> dict[str, int]:
    """Completions committed, by the run (process) that generated them."""
    out: dict[str, int] = {}
    for c in run.generations().commits():
        out[c["run"]] = out.get(c["run"], 0) + c["completions"]
    return out


def test_results_are_committed_in_chunks_as_they_finish(tmp_path):
    run, cfg = io.RunDir(tmp_path), _cfg()
    report = pipeline.rollout_shard(run, 0, PROBLEMS, cfg, FakeTeacher())
    commits = run.generations().commits()
    assert [len(c["keys"]) for c in commits] == [4, 4, 4, 4, 4, 4, 1]  # flush_every=4, then the rest
    assert sum(c["completions"] for c in commits) == report.kept == 75 == report.rows_in
    assert pipeline.shard_done(run, cfg, PROBLEMS, FakeTeacher())
    assert report.detail == {"problems_generated": 25, "generated_new": 25}


def test_resume_after_a_partial_run_generates_only_what_is_missing(tmp_path):
    run, cfg = io.RunDir(tmp_path / "a"), _cfg()
    # an "interrupted" run: only the first 10 problems were generated and committed
    pipeline.rollout_shard(run, 0, PROBLEMS.head(10), cfg, FakeTeacher())
    teacher = FakeTeacher()
    report = pipeline.rollout_shard(run, 0, PROBLEMS, cfg, teacher)
    assert teacher.calls == [15]
    assert report.detail == {"problems_reused": 10, "problems_generated": 15, "generated_new": 15}
    whole = io.RunDir(tmp_path / "b")
    pipeline.rollout_shard(whole, 0, PROBLEMS, cfg, FakeTeacher())
    resumed = pipeline.read_generations(run, cfg, PROBLEMS, teacher).sort("problem_id", "sample_index")
    fresh = pipeline.read_generations(whole, cfg, PROBLEMS, teacher).sort("problem_id", "sample_index")
    assert resumed.equals(fresh)
    assert sum(_ledger(run).values()) == sum(_ledger(whole).values()) == 75


def _chunks(run: io.RunDir) -> list:
    return sorted(run.generations().root.glob("chunk-*.parquet"))


def test_a_write_cut_short_by_a_crash_is_not_trusted(tmp_path):
    run, cfg = io.RunDir(tmp_path), _cfg()
    pipeline.rollout_shard(run, 0, PROBLEMS, cfg, FakeTeacher())
    store = run.generations()
    last = _chunks(run)[-1]
    lost = len(store.commits()[-1]["keys"])
    # killed mid-write: only the hidden temp file of the last chunk is left, half written
    (store.root / f".{last.name}.x1y2.tmp").write_bytes(last.read_bytes()[:200])
    last.unlink()
    teacher = FakeTeacher()
    pipeline.rollout_shard(run, 0, PROBLEMS, cfg, teacher)
    assert teacher.calls == [lost]
    frame = pipeline.read_generations(run, cfg, PROBLEMS, teacher)
    assert len(frame) == 75 and frame.select("problem_id", "sample_index").is_unique().all()


def _flip(path, at: int) -> None:
    data = bytearray(path.read_bytes())
    for i in range(at, at + 8):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def test_damaged_chunks_are_quarantined_and_their_problems_regenerated(tmp_path, caplog):
    clean, cfg = io.RunDir(tmp_path / "clean"), _cfg()
    pipeline.rollout_shard(clean, 0, PROBLEMS, cfg, FakeTeacher())
    run = io.RunDir(tmp_path / "run")
    pipeline.rollout_shard(run, 0, PROBLEMS, cfg, FakeTeacher())
    chunks = _chunks(run)
    truncated, flipped, footerless, emptied = chunks[1], chunks[3], chunks[5], chunks[6]
    truncated.write_bytes(truncated.read_bytes()[:-100])  # a torn write (no fsync, power loss)
    emptied.write_bytes(b"")  # renamed into place before its data reached the disk
    _flip(flipped, 40)  # bit rot inside the data pages, footer intact
    import pyarrow.parquet as pq

    pq.write_table(pq.read_table(footerless).replace_schema_metadata({}), footerless)  # no commit record
    (run.generations().root / "chunk-garbage.parquet").write_bytes(b"not parquet")
    io._COMMITS.clear()  # a new process: nothing verified yet
    teacher = FakeTeacher()
    with caplog.at_level("WARNING", logger="tracefactory"):
        report = pipeline.rollout_shard(run, 0, PROBLEMS, cfg, teacher)
    assert teacher.calls == [13]  # the 3 damaged chunks' 4 problems each, and the last chunk's one
    assert report.detail["problems_reused"] == 12 and report.kept == 75
    moved = sorted(p.name.split(".")[0] for p in (run.root / "_work" / "quarantine").iterdir())
    assert moved == sorted(p.stem for p in (truncated, flipped, footerless, emptied)) + ["chunk-garbage"]
    assert sum("is damaged" in r.message and "quarantine" in r.message for r in caplog.records) == 5
    key = lambda r: r.sort("problem_id", "sample_index")  # noqa: E731
    got = key(pipeline.read_generations(run, cfg, PROBLEMS, teacher))
    assert got.equals(key(pipeline.read_generations(clean, cfg, PROBLEMS, teacher)))


def test_an_edited_question_or_a_new_teacher_regenerates_exactly_what_changed(tmp_path):
    run, cfg = io.RunDir(tmp_path / "run"), _cfg()
    pipeline.rollout_shard(run, 0, PROBLEMS, cfg, FakeTeacher())
    edited = PROBLEMS.with_columns(
        question=pl.when(pl.col("problem_id") == PROBLEMS["problem_id"][4])
        .then(pl.col("question").str.replace("has", "has got"))
        .otherwise(pl.col("question"))
    )
    teacher = FakeTeacher()
    report = pipeline.rollout_shard(run, 0, edited, cfg, teacher)
    assert teacher.calls == [1] and report.detail["generated_prompt_changed"] == 1
    gens = pipeline.read_generations(run, cfg, edited, teacher)
    fresh = io.RunDir(tmp_path / "fresh")
    pipeline.rollout_shard(fresh, 0, edited, cfg, FakeTeacher())
    assert gens.equals(pipeline.read_generations(fresh, cfg, edited, teacher))
    # a retrained teacher (new weights): every problem again; sampling changed: every problem again
    retrained = FakeTeacher(weights="v2")
    report = pipeline.rollout_shard(run, 0, edited, cfg, retrained)
    assert retrained.calls == [25] and report.detail == {
        "problems_generated": 25,
        "generated_teacher_changed": 25,
    }
    hotter = _cfg(**{"sampling.temperature": 1.0})
    again = FakeTeacher(weights="v2")
    report = pipeline.rollout_shard(run, 0, edited, hotter, again)
    assert again.calls == [25] and report.detail["generated_sampling_changed"] == 25
    # a shorter context (max_model_len for vLLM; context_chars here): a new teacher identity
    shorter = FakeTeacher(weights="v2", context_chars=10_000)
    report = pipeline.rollout_shard(run, 0, edited, hotter, shorter)
    assert shorter.calls == [25] and report.detail["generated_teacher_changed"] == 25
    # back to the first teacher: nothing to generate, its rollouts are all still there
    first = FakeTeacher()
    pipeline.rollout_shard(run, 0, edited, cfg, first)
    assert first.calls == []


def test_a_prompt_the_teacher_cannot_take_is_not_finished_work(tmp_path):
    run, cfg = io.RunDir(tmp_path), _cfg()
    longest = max(PROBLEMS["question"].str.len_chars())
    short = FakeTeacher(context_chars=longest - 1)  # the longest question does not fit
    report = pipeline.rollout_shard(run, 0, PROBLEMS, cfg, short)
    assert report.dropped_by_reason == {"prompt_too_long": 3}
    skipped = {k for c in run.generations().commits() for k in c["skipped"]}
    assert len(skipped) == 1 and not pipeline.shard_done(run, cfg, PROBLEMS, short)
    again = FakeTeacher(context_chars=longest - 1)
    pipeline.rollout_shard(run, 0, PROBLEMS, cfg, again)
    assert again.calls == [1]  # tried again, not trusted as done with zero completions


def test_a_teacher_error_mid_batch_still_commits_what_finished(tmp_path):
    run, cfg = io.RunDir(tmp_path), _cfg(**{"run.flush_every": 100})

    class Dies(FakeTeacher):
        def generate(self, prompts, n, params, seeds=None, on_result=None):
            def partial(i, result):
                if i == 7:
                    raise RuntimeError("engine died")
                on_result(i, result)

            return super().generate(prompts, n, params, seeds, partial)

    import pytest

    with pytest.raises(RuntimeError, match="engine died"):
        pipeline.rollout_shard(run, 0, PROBLEMS, cfg, Dies())
    assert sum(len(c["keys"]) for c in run.generations().commits()) == 7  # buffered, then committed on the way out
    teacher = FakeTeacher()
    pipeline.rollout_shard(run, 0, PROBLEMS, cfg, teacher)
    assert teacher.calls == [18]


def test_a_damaged_stage_cache_is_redone_not_a_crash(tmp_path):
    from tracefactory.store.report import StageReport

    cache = io.RunDir(tmp_path).stage_cache("graded")
    frame = pl.DataFrame({"a": [1, 2]})
    cache.put("k", frame, StageReport("grade", "completions", 2, 2))
    got, report = cache.get("k")
    assert got.equals(frame) and report.kept == 2
    data = cache.path("k").read_bytes()
    cache.path("k").write_bytes(data[: len(data) // 2])  # truncated, as by a full disk
    assert cache.get("k") is None and cache.get("absent") is None


def test_a_damaged_step_score_store_is_quarantined_and_rescored(tmp_path):
    from tracefactory.store.schema import StepScores

    run = io.RunDir(tmp_path)
    store = run.step_scores("k")
    store.save({("p1", "q", ("a", "b")): StepScores([1.0, 0.0], 1)})
    assert store.load() == {("p1", "q", ("a", "b")): StepScores([1.0, 0.0], 1)}
    store.path.write_bytes(store.path.read_bytes()[:-50])
    assert store.load() == {} and not store.path.exists()
    assert list((run.root / "_work" / "quarantine").iterdir())
