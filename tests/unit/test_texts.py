"""The streaming path's parts: light rows read their texts back from their graded slices (any subset, any order,
rows without a locator kept as they are), tables written from an iterable of frames, problems cut into slices by
the tokens their chunks hold, reading workers kept across calls, and the generation store's listing reused while
the run's lock is held — never past a chunk renamed in."""

import os
import random
import time

import polars as pl
import pytest

from tracefactory import pipeline
from tracefactory.backends.fake import FakeTeacher
from tracefactory.config import GradeConfig, load_config
from tracefactory.grading import pool as pool_module
from tracefactory.grading import reading, texts
from tracefactory.grading.think import R1_OPENER, ThinkSpec
from tracefactory.grading.verify import grade_pairs
from tracefactory.stages.grade import grade
from tracefactory.store import io
from tracefactory.store.schema import COT, PROBLEM_ID, REASONING, SAMPLE_INDEX, TEXT
from tracefactory.training.synth import generate


def _rollouts(n: int, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Completions of every shape (think blocks open, closed, missing; multi-byte characters before the parts)."""
    rng = random.Random(seed)
    atoms = ["<think>", "</think>", " ", "\n", "é", "🙂", "so 12. ", "\\boxed{3}", "#### 7\n"]
    text = [
        "".join(rng.choice(atoms) for _ in range(rng.randint(0, 12))) + ("\\boxed{3}" if i % 3 else "")
        for i in range(n)
    ]
    frame = pl.DataFrame(
        {
            PROBLEM_ID: [f"p{seed}-{i // 4}" for i in range(n)],
            SAMPLE_INDEX: [i % 4 for i in range(n)],
            TEXT: text,
            "rollout_key": [f"k{seed}-{i}" for i in range(n)],
            "seed": [seed * 1000 + i for i in range(n)],
            "finish_reason": ["stop"] * n,
            "teacher": ["fake"] * n,
            "cot_tokens": [len(t) // 3 for t in text],
        }
    )
    problems = pl.DataFrame({PROBLEM_ID: frame[PROBLEM_ID].unique(maintain_order=True)}).with_columns(
        answer=pl.lit("3")
    )
    return frame, problems


SPEC = ThinkSpec("on", R1_OPENER)


@pytest.fixture
def parts(tmp_path):
    """Three slices graded and stored as the streamed grade stores them: (the graded frame as the in-memory path has
    it, the light rows)."""
    whole, light = [], []
    for k, n in enumerate((40, 1, 25)):
        rollouts, problems = _rollouts(n, k)
        stored, _ = grade(rollouts, GradeConfig(workers=0), problems, SPEC, positions=True)
        path = tmp_path / f"slice-{k}.parquet"
        io.write_frame(stored, path)
        whole.append(grade(rollouts, GradeConfig(workers=0), problems, SPEC)[0])
        light.append(texts.light(stored, path))
    return pl.concat(whole), pl.concat(light)


def test_light_rows_read_back_the_texts_of_any_subset_in_any_order(parts):
    whole, light = parts
    assert not set(texts.STORED) & set(light.columns) and light.columns[-2:] == list(texts.LOCATORS)
    assert whole[REASONING].drop_nulls().len() and whole[COT].str.starts_with(R1_OPENER).any()
    assert texts.strip(texts.with_texts(light, texts.ON_DISK)).select(whole.columns).equals(whole)
    order = list(range(len(whole)))
    random.Random(1).shuffle(order)
    some = order[:17]
    got = texts.with_texts(light.select(pl.all().gather(some)), [COT, REASONING])
    assert got.select(PROBLEM_ID, SAMPLE_INDEX, COT, REASONING).equals(
        whole.select(pl.all().gather(some)).select(PROBLEM_ID, SAMPLE_INDEX, COT, REASONING)
    )
    assert len(texts.with_texts(light.clear(), [COT])) == 0
    # in memory (no locators): as it is; lacking the column, a clear refusal
    assert texts.with_texts(whole, [COT]) is whole
    with pytest.raises(KeyError):
        texts.with_texts(whole.drop(COT), [COT])


def test_rows_without_a_locator_keep_their_own_texts(parts):
    whole, light = parts
    mine = pl.DataFrame({PROBLEM_ID: ["r1"], SAMPLE_INDEX: [0], COT: ["a rationale"], "correct": [True]})
    mine = mine.with_columns(pl.col(SAMPLE_INDEX).cast(pl.Int64))
    mixed = pl.concat([light.head(3), mine, light.tail(2)], how="diagonal_relaxed")
    got = texts.with_texts(mixed, [COT])[COT].to_list()
    assert got == whole[COT].head(3).to_list() + ["a rationale"] + whole[COT].tail(2).to_list()


def test_parts_give_the_rows_in_order_with_their_texts_one_slice_at_a_time(parts, tmp_path):
    whole, light = parts
    pieces = list(texts.parts(light))
    assert len(pieces) == 3 and [len(p) for p in pieces] == [40, 1, 25]
    assert texts.strip(pl.concat(pieces)).select(whole.columns).equals(whole)
    # a table written from them holds the same rows as one written whole
    io.write_frame((texts.strip(p).select(whole.columns) for p in texts.parts(light)), tmp_path / "t.parquet")
    assert pl.read_parquet(tmp_path / "t.parquet").equals(whole)
    with pytest.raises(ValueError, match="no frame"):
        io.write_frame(iter(()), tmp_path / "none.parquet")
    assert not (tmp_path / "none.parquet").exists()


def _deferred(whole: pl.DataFrame, light: pl.DataFrame, finish=lambda b: b) -> tuple[texts.Deferred, pl.DataFrame]:
    """A deferred table of rows in an order unrelated to their parts, two locators a row (the second pointing
    elsewhere) and a row without a locator; and the table it is, read whole in memory."""
    order = list(range(len(whole)))
    random.Random(2).shuffle(order)
    other = order[::-1]
    rows = light.select(pl.all().gather(order)).select(PROBLEM_ID, SAMPLE_INDEX, "cot_tokens", *texts.LOCATORS)
    rows = rows.with_columns(
        light.select(pl.col(texts.PART).gather(other).alias("_p2"), pl.col(texts.ROW).gather(other).alias("_r2"))
    )
    mine = pl.DataFrame({PROBLEM_ID: ["r1"], SAMPLE_INDEX: [0], "cot_tokens": [3], COT: ["own"], "b": ["own b"]})
    rows = pl.concat([rows.head(20), mine.cast({SAMPLE_INDEX: pl.Int64}), rows.tail(-20)], how="diagonal_relaxed")
    locators = (texts.Locator({COT: COT, "teacher": "teacher"}), texts.Locator({REASONING: "b"}, "_p2", "_r2"))
    expected = pl.concat(
        [
            whole.select(pl.all().gather(order)).select(PROBLEM_ID, SAMPLE_INDEX, COT, "teacher").head(20),
            pl.DataFrame({PROBLEM_ID: ["r1"], SAMPLE_INDEX: [0], COT: ["own"], "teacher": [None]}),
            whole.select(pl.all().gather(order)).select(PROBLEM_ID, SAMPLE_INDEX, COT, "teacher").tail(-20),
        ],
        how="vertical_relaxed",
    ).with_columns(
        b=pl.concat([whole[REASONING].gather(other[:20]), pl.Series(["own b"]), whole[REASONING].gather(other[20:])])
    )
    return texts.Deferred(rows, locators, finish, weight=pl.col("cot_tokens")), expected


def test_a_deferred_table_is_written_in_its_order_batch_by_batch_through_scratch_files(parts, tmp_path):
    """Every batch size gives the rows of the table read whole in memory, in order; the scratch goes."""
    whole, light = parts
    finished = []
    deferred, expected = _deferred(whole, light, lambda b: finished.append(len(b)) or b)
    assert len(deferred) == len(whole) + 1
    for tokens in (1, 50, 10**9):
        finished.clear()
        batches = list(deferred.batches(tmp_path / "scratch", tokens))
        assert [len(b) for b in batches] == finished  # each batch finished as it comes
        assert len(batches) == {1: len(deferred), 10**9: 1}.get(tokens, len(batches))  # a row a batch; one batch
        assert 1 < len(batches) < len(deferred) or tokens != 50
        got = pl.concat(batches)
        assert sorted(got.columns) == sorted([PROBLEM_ID, SAMPLE_INDEX, "cot_tokens", COT, "teacher", "b"])
        assert got.select(expected.columns).equals(expected)
        assert not (tmp_path / "scratch").exists()
    assert texts.materialized(deferred).equals(got)
    empty = list(texts.Deferred(deferred.rows.clear(), deferred.locators, lambda b: b).batches(tmp_path / "scratch"))
    assert len(empty) == 1 and empty[0].columns == got.columns and not len(empty[0])


def test_one_pass_reads_each_slice_once_for_the_rollouts_and_every_deferred_table(parts, tmp_path, monkeypatch):
    """The rollouts part by part and two deferred tables (one of them empty) written from one read of each slice;
    a slice no rollout row is in is read when its table is written. The same rows as each written on its own."""
    whole, light = parts
    reads = []
    stored = texts._stored
    monkeypatch.setattr(texts, "_stored", lambda part, columns: reads.append(part) or stored(part, columns))
    deferred, expected = _deferred(whole, light)
    empty = texts.Deferred(deferred.rows.clear(), deferred.locators, lambda b: b)
    slices = light[texts.PART].cast(pl.String).unique(maintain_order=True).to_list()
    for rollouts, read_after in ((light, []), (light.filter(pl.col(texts.PART) != slices[1]), [slices[1]])):
        reads.clear()
        with texts.Pass({"dataset": deferred, "pairs": empty}, tmp_path / "scratch", tokens=50) as one:
            pieces = list(one.parts(rollouts))
            assert reads == [s for s in slices if s not in read_after]  # each slice once, in the rollouts' order
            got = pl.concat(list(one.batches("dataset")))
            assert reads[len(slices) - len(read_after) :] == read_after
            assert not len(pl.concat(list(one.batches("pairs"))))
        assert not (tmp_path / "scratch").exists()
        assert pl.concat(pieces).equals(pl.concat(list(texts.parts(rollouts))))
        assert got.select(expected.columns).equals(expected)
    reads.clear()  # a deferred table written on its own: each slice read once for both its locators
    assert pl.concat(list(deferred.batches(tmp_path / "scratch", 50))).select(expected.columns).equals(expected)
    assert sorted(reads) == sorted(slices)


def test_an_unreadable_slice_is_a_clear_error(parts):
    _, light = parts
    path = light[texts.PART].cast(pl.String)[0]
    with open(path, "r+b") as f:
        f.truncate(100)
    with pytest.raises(OSError, match="graded part of this run is unreadable"):
        texts.with_texts(light.head(2), [COT])


PROBLEMS = pl.DataFrame(
    [{"problem_id": p.id, "question": p.question, "answer": p.answer} for p in generate(4, seed=5)]
)  # 20 problems


def test_post_slices_cut_the_problems_in_order_by_the_tokens_their_chunks_hold(tmp_path):
    run = io.RunDir(tmp_path)
    cfg = load_config(None, {"sampling.n": 2, "run.flush_every": 3, "sampling.budget.policy": "fixed"})
    problems = PROBLEMS
    pipeline.rollout_shard(run, 0, problems, cfg, FakeTeacher())
    per_sample = run.generations().tokens_per_sample(problems["problem_id"].to_list())
    assert all(t > 0 for t in per_sample) and run.generations().tokens_per_sample(["absent"]) == [0.0]
    total = 2 * sum(per_sample)
    for budget in (total / 5, total / 2, total * 2):
        cfg_b = load_config(None, {"sampling.n": 2, "run.post_slice_tokens": max(1, int(budget))})
        cut = pipeline.post_slices(run, cfg_b, problems)
        assert pl.concat(cut).equals(problems)  # every problem once, in order
        weights = [2 * t for t in per_sample]
        start = 0
        for piece in cut:  # each slice starts below the budget and ends at or past it (but the last)
            assert sum(weights[start : start + len(piece) - 1]) < max(1, int(budget))
            start += len(piece)
        assert len(cut) >= min(len(problems), int(total // max(1, int(budget))))
    assert pipeline.post_slices(run, cfg, problems.clear())[0].is_empty()


def test_reading_workers_are_kept_across_calls_within_kept_workers():
    frame = pl.DataFrame({TEXT: ["so \\boxed{3}", "no answer"] * 5, "cot_tokens": [3] * 10})
    spec = ThinkSpec("off")
    alone = reading.read_completions(frame, spec, ("boxed",), workers=1, chunk_rows=4, min_parallel_rows=0)
    assert pool_module._KEPT is None
    with pool_module.kept_workers():
        a = reading.read_completions(frame, spec, ("boxed",), workers=1, chunk_rows=4, min_parallel_rows=0)
        pool = pool_module._KEPT[("read", 1)][0]
        b = reading.read_completions(frame, spec, ("boxed",), workers=1, chunk_rows=4, min_parallel_rows=0)
        assert pool_module._KEPT[("read", 1)][0] is pool
        # Math-Verify's workers too (pairs no fast verdict settles)
        first = grade_pairs([("2\\sqrt{2}", "\\sqrt{8}")], workers=1)
        graders = pool_module._KEPT[("verify", 1, 5.0)][0]
        again = grade_pairs([("\\sqrt{3}", "\\sqrt{8}")], workers=1)
        assert pool_module._KEPT[("verify", 1, 5.0)][0] is graders and graders.slots
    assert pool_module._KEPT is None and a.equals(alone) and b.equals(alone) and not graders.slots
    assert list(first.values()) == [(True, "correct")] and list(again.values())[0][0] is False


def test_the_store_listing_is_reused_under_the_lock_and_never_hides_a_new_chunk(tmp_path, monkeypatch):
    run = io.RunDir(tmp_path)
    cfg = load_config(None, {"sampling.n": 2, "run.flush_every": 5, "sampling.budget.policy": "fixed"})
    problems, teacher = PROBLEMS, FakeTeacher()
    pipeline.rollout_shard(run, 0, problems.head(10), cfg, teacher)
    store = run.generations()
    listed = []
    real = io.GenerationStore._list
    monkeypatch.setattr(io.GenerationStore, "_list", lambda self: listed.append(1) or real(self))
    store.commits(), store.commits()
    assert len(listed) == 2  # without the lock: listed on every call
    old = time.time() - 5
    os.utime(store.root, (old, old))  # the directory last changed seconds ago
    with run.lock():
        first = store.commits()
        assert store.commits() is first and len(listed) == 3  # the directory did not change: reused
        pipeline.rollout_shard(run, 1, problems.tail(10), cfg, teacher)  # chunks renamed in: the mtime moves
        assert len(store.commits()) == len(first) + 2 and store.done_keys() >= {
            s for k in pipeline._requests(cfg, problems, teacher).values() for s in k.samples(0, 2)
        }
    assert io._LISTING == {}  # forgotten with the lock
