"""Content keys hash a frame's values (not its memory layout) fast; chunks committed before them still verify; the
generation store's index follows its chunks as they are committed, damaged or replaced."""

import hashlib
import json

import polars as pl
import pyarrow.parquet as pq

from tracefactory import pipeline
from tracefactory.backends.fake import FakeTeacher
from tracefactory.config import load_config
from tracefactory.store import io
from tracefactory.training.synth import generate

FRAME = pl.DataFrame(
    {
        "s": ["a", None, "", "é🙂", "x" * 300],
        "i": [1, None, 3, -4, 5],
        "f": [0.5, 1.0, None, -2.0, 3.25],
        "b": [True, False, None, True, False],
        "l": [["x"], [], None, ["y", "z"], ["w"]],
    }
)


def test_a_content_key_depends_on_the_values_not_their_layout(monkeypatch):
    key = io.content_key(FRAME, {"setting": 1})
    # the canonical form chunks carry in their commit records (checksum version 2): a new way of computing it must
    # give the same keys, or every chunk committed before it would be quarantined as damaged
    assert key == "889e5ee00c801e1c"
    assert io.content_key(FRAME.with_columns(pl.col("i").cast(pl.Int32), pl.col("f").cast(pl.Float32))) == (
        "74c52a24fbd02bc9"
    )
    chunked = pl.concat([FRAME.slice(0, 2), FRAME.slice(2, 3)], rechunk=False)
    assert io.content_key(chunked, {"setting": 1}) == key
    pad = pl.DataFrame({"s": ["pad"], "i": [0], "f": [0.0], "b": [False], "l": [["q"]]}, schema=FRAME.schema)
    sliced = pl.concat([pad, FRAME]).slice(1, 5)  # a view into a larger buffer
    assert io.content_key(sliced, {"setting": 1}) == key
    monkeypatch.setattr(io, "SLICE_BYTES", 10)  # hashed in many slices: the same bytes in the same order
    assert io.content_key(FRAME, {"setting": 1}) == key


def test_a_content_key_tells_apart_what_differs():
    key = io.content_key(FRAME)
    variants = [
        FRAME.with_columns(pl.when(pl.col("i") == 1).then(2).otherwise(pl.col("i")).alias("i")),
        FRAME.with_columns(pl.col("s").fill_null("")),  # null is not ""
        FRAME.with_columns(pl.Series("s", ["a", None, "", "é🙂", "x" * 299 + "y"])),
        FRAME.with_columns(pl.Series("s", ["ab", None, "", "é🙂", "x" * 299])),  # the same bytes, split elsewhere
        FRAME.rename({"s": "t"}),
        FRAME.select(["i", "s", "f", "b", "l"]),
        FRAME.reverse(),
        FRAME.head(4),
        FRAME.with_columns(pl.col("b").not_()),
        FRAME.with_columns(pl.col("l").list.reverse()),
    ]
    keys = {io.content_key(v) for v in variants}
    assert key not in keys and len(keys) == len(variants)


PROBLEMS = pl.DataFrame(
    [{"problem_id": p.id, "question": p.question, "answer": p.answer} for p in generate(4, seed=5)]
)  # 20 problems


def test_a_chunk_committed_with_the_old_row_checksum_still_verifies(tmp_path):
    run, cfg = io.RunDir(tmp_path), load_config(None, {"sampling.n": 2, "run.flush_every": 5})
    pipeline.rollout_shard(run, 0, PROBLEMS, cfg, FakeTeacher())
    path = sorted(run.generations().root.glob("chunk-*.parquet"))[0]
    table = pq.read_table(path)
    record = json.loads(table.schema.metadata[io.GenerationStore.KEY])
    assert record["checksum_version"] == 2
    frame = pl.from_arrow(table)
    h = hashlib.sha256()  # the checksum as it was written before version 2
    h.update(json.dumps(frame.columns).encode())
    for row in frame.iter_rows():
        h.update(json.dumps(row, default=str).encode())
        h.update(b"\n")
    h.update(b"\x00")
    old = {k: v for k, v in record.items() if k != "checksum_version"} | {"checksum": h.hexdigest()[:16]}
    pq.write_table(table.replace_schema_metadata({io.GenerationStore.KEY: json.dumps(old)}), path)
    io._COMMITS.clear()
    assert len(run.generations().commits()) == 4 and not (run.root / "_work" / "quarantine").exists()
    bad = {**old, "checksum": "0" * 16}  # and a wrong one is still caught
    pq.write_table(table.replace_schema_metadata({io.GenerationStore.KEY: json.dumps(bad)}), path)
    io._COMMITS.clear()
    assert len(run.generations().commits()) == 3 and (run.root / "_work" / "quarantine").exists()


def test_the_store_index_follows_commits_and_damage(tmp_path):
    run, cfg = io.RunDir(tmp_path), load_config(None, {"sampling.n": 2, "run.flush_every": 5})
    store, teacher = run.generations(), FakeTeacher()
    keys = pipeline._requests(cfg, PROBLEMS, teacher)
    pipeline.rollout_shard(run, 0, PROBLEMS.head(10), cfg, teacher)
    assert store.done_keys() == {s for k in list(keys.values())[:10] for s in k.samples(0, 2)}
    pipeline.rollout_shard(run, 1, PROBLEMS.tail(10), cfg, teacher)  # extends the index
    everything = {s for k in keys.values() for s in k.samples(0, 2)}
    assert store.done_keys() == everything and set(store.history()) == set(keys)
    whole = store.read(everything)
    assert store.read(everything, keys).equals(whole) and len(whole) == 40
    some = dict(list(keys.items())[3:7])
    assert store.read({s for k in some.values() for s in k.samples(0, 2)}, some)[
        "problem_id"
    ].unique().sort().to_list() == sorted(some)
    path = sorted(store.root.glob("chunk-*.parquet"))[0]
    path.write_bytes(path.read_bytes()[:-50])  # damaged: quarantined on the next look, its keys no longer done
    io._COMMITS.clear()
    assert len(store.done_keys()) == 30 and len(store.read(everything, keys)) == 30


def test_sample_keys_are_the_digest_of_the_request_key_and_the_index():
    """A sample's key is `digest([request key, j])` whichever way it is computed (the fast paths skip json.dumps)."""
    from tracefactory.config import digest
    from tracefactory.stages.rollout import RequestKey

    for key in ("0123456789abcdef", "a-b", "é1", ""):
        k = RequestKey(key, "p", "s", "t")
        expected = [digest([key, j]) for j in range(3, 20)]
        assert k.samples(3, 20) == expected == [k.sample(j) for j in range(3, 20)]


def test_reading_by_request_gives_what_reading_by_sample_keys_gives(tmp_path):
    """`read_requests` (chunks' rows picked by the request their commit records name) returns what `read` returns for
    the same samples' keys: across rounds of samples, edited questions (a new request), a problem's samples committed
    twice, a record written before samples had keys of their own, and any number of samples drawn."""
    import random

    run, cfg = io.RunDir(tmp_path), load_config(None, {"sampling.n": 4, "run.flush_every": 3})
    store, teacher = run.generations(), FakeTeacher()
    edited = PROBLEMS.with_columns(
        pl.when(pl.int_range(pl.len()) % 3 == 0).then(pl.col("question") + " Then double it.").otherwise("question")
    )
    pipeline.rollout_shard(run, 0, PROBLEMS, cfg, teacher, (0, 2))  # a first round: samples 0-1
    pipeline.rollout_shard(run, 1, edited, cfg, teacher, (0, 4))  # the edited problems anew; samples 2-3 of the rest
    pipeline.rollout_shard(run, 2, PROBLEMS.head(6), cfg, teacher, (0, 4))  # the old request of six problems again
    keys = pipeline._requests(cfg, PROBLEMS.slice(6, 3), teacher)
    twice = store.read({s for k in keys.values() for s in k.samples(0, 2)}, keys)
    store.commit(twice, keys, shard=3, run_id="other", seq=0)  # samples a second run committed too
    legacy = twice.with_columns(  # (samples 4-5: no other chunk has them)
        pl.col("problem_id").replace_strict({p: k.key for p, k in keys.items()}).alias("rollout_key"),
        pl.col("sample_index") + 4,
    )
    old = store.root / "chunk-00004-legacy-00001.parquet"  # one request key per problem, as before sample keys
    store.commit(legacy, keys, shard=4, run_id="legacy", seq=0)
    path = sorted(store.root.glob("chunk-00004-legacy-*.parquet"))[0]
    table = pq.read_table(path)
    record = json.loads(table.schema.metadata[io.GenerationStore.KEY])
    record["keys"] = {pid: keys[pid].key for pid in record["keys"]}
    pq.write_table(table.replace_schema_metadata({io.GenerationStore.KEY: json.dumps(record)}), old)
    path.unlink()
    io._COMMITS.clear()
    assert "chunk-00004-legacy-00001" in {c["chunk"] for c in store.commits()}  # verified: its rows are as committed
    rng = random.Random(0)
    for problems in (PROBLEMS, edited):
        keys = pipeline._requests(cfg, problems, teacher)
        for drawn in ([1] * len(keys), [4] * len(keys), [rng.randint(0, 5) for _ in keys]):
            wanted = {s for k, m in zip(keys.values(), drawn, strict=True) for s in k.samples(0, m)}
            asked = {p: ((k.prompt, k.sampling, k.teacher), m) for (p, k), m in zip(keys.items(), drawn, strict=True)}
            by_keys, by_request = store.read(wanted, keys), store.read_requests(asked)
            assert by_request.equals(by_keys) and 0 < len(by_keys) <= len(wanted)
            assert by_request.columns == list(by_keys.columns)
            texts = store.read_requests(asked, columns=["cot_tokens"])
            assert texts.equals(store.read(wanted, keys, columns=["cot_tokens"]))
