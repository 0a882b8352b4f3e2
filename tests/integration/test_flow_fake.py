"""The whole Prefect flow with the deterministic FakeTeacher: contract, funnel, bad input, resume."""

import json
import time
from pathlib import Path

import polars as pl
import pytest

from flows.build_dataset import build_dataset
from tracefactory.backends.fake import FakeTeacher
from tracefactory.publish.query import query
from tracefactory.store.schema import columns

FIXTURES = Path(__file__).parents[1] / "fixtures"
CONTRACT = [
    "question",
    "cot",
    "answer",
    "problem_id",
    "source",
    "difficulty",
    "pass_rate",
    "n_correct",
    "n_rollouts",
    "cot_tokens",
    "curriculum_rank",
    "teacher",
]


@pytest.fixture(scope="module")
def input_file(tmp_path_factory):
    """The demo problems plus every kind of bad row."""
    path = tmp_path_factory.mktemp("in") / "mixed.jsonl"
    demo = (Path(__file__).parents[2] / "data" / "demo" / "problems.jsonl").read_text().splitlines()
    path.write_text("\n".join(demo[::5] + (FIXTURES / "bad_input.jsonl").read_text().splitlines()) + "\n")
    return path


# rewriting and its filters off unless a test asks: the counts below are of the source's own problems; the
# fixed budget (sampling.n per problem) unless a test asks for the demo's adaptive one
QUIET = {"rewrite.enabled": False, "dedup.enabled": False, "decontaminate.enabled": False}
FIXED = {"sampling.budget.policy": "fixed"}


def _run(out, input_file, teacher, **over):
    overrides = {"source.path": str(input_file), "run.shard_size": 16, "grade.workers": 0, **QUIET, **FIXED, **over}
    return build_dataset(config=None, out=str(out), overrides=overrides, teacher=teacher)


def test_flow_end_to_end_then_resume(prefect_harness, tmp_path, input_file):
    teacher = FakeTeacher(slip_rate=0.08)
    result = _run(tmp_path / "run", input_file, teacher)
    run = tmp_path / "run"
    data = pl.read_parquet(run / "dataset")
    assert set(CONTRACT) <= set(data.columns) and data.columns == columns("dataset")
    assert len(data) == result["dataset_rows"] > 0
    # every kept answer is correct for its problem, and the trace's boxed answer is the gold
    assert all(f"\\boxed{{{a}}}" in c for a, c in zip(data["answer"], data["cot"], strict=True))
    assert data["curriculum_rank"].to_list() == list(range(len(data)))
    # the bad rows are in `rejected`, and each stage's funnel adds up
    cols, rows = query(run, "SELECT reason, count(*) FROM rejected GROUP BY reason")
    assert sum(n for _, n in rows) == 13
    _, funnel = query(run, "SELECT stage, rows_in, kept, dropped FROM funnel")
    assert all(r[1] == r[2] + r[3] for r in funnel)
    assert funnel[0] == ("load", 60 + 15, 62, 13)
    stages = ["load", "rollout", "grade", "audit", "step_score", "select", "rationalize", "difficulty", "curriculum"]
    assert [r[0] for r in funnel] == [*stages, "pairs"]
    assert data["step_scores"].list.len().min() >= 2 and (data["prm_min"] > 0).all()
    stage = {r[0]: r for r in funnel}
    assert stage["grade"][2] == stage["audit"][1] and stage["audit"][2] == stage["step_score"][1]
    assert stage["step_score"][2] == stage["select"][1]
    rolls = pl.read_parquet(run / "rollouts")
    assert rolls.filter(pl.col("drop_reason") == "low_step_score")["first_bad_step"].is_not_null().all()
    # unsolved problems stay in `problems`
    _, (n_problems,) = query(run, "SELECT count(*) FROM problems")
    assert n_problems == (62,)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["teacher"]["name"] == teacher.name and manifest["inputs"]["source"]["sha256"]
    _, [(step_tokens,)] = query(run, "SELECT tokens FROM funnel WHERE stage = 'step_score'")
    assert step_tokens > 0
    assert manifest["tokens"]["teacher_output"] == sum(pl.read_parquet(run / "rollouts")["cot_tokens"]) + step_tokens
    assert teacher.calls[:4] == [16, 16, 16, 14]  # 62 problems in shards of 16; then step-scoring rounds

    # resume: a re-run samples nothing (rollouts and step scores are kept) and yields the same dataset
    again = FakeTeacher(slip_rate=0.08)
    _run(run, input_file, again)
    assert again.calls == []
    assert pl.read_parquet(run / "dataset").equals(data)

    # a lost chunk: its problems alone are regenerated; a selection change reuses every rollout
    lost = sorted((run / "_work" / "generations").glob("chunk-00001-*"))
    assert lost
    for path in lost:
        path.unlink()
    third = FakeTeacher(slip_rate=0.08)
    _run(run, input_file, third, **{"select.keep": 2})
    assert third.calls == [16]
    fourth = FakeTeacher(slip_rate=0.08)
    _run(run, input_file, fourth, **{"select.keep": 3})
    assert fourth.calls == []
    assert len(pl.read_parquet(run / "dataset")) >= len(data)


def test_an_edited_question_regenerates_only_its_problem_and_tables_equal_a_fresh_run(
    prefect_harness, tmp_path, input_file
):
    run, ids = tmp_path / "run", {"source.id_field": "id"}
    lines = input_file.read_text().splitlines()[:60]  # the demo problems, with their ids
    (original := tmp_path / "original.jsonl").write_text("\n".join(lines) + "\n")
    _run(run, original, FakeTeacher(slip_rate=0.08), **ids)
    row = json.loads(lines[3])
    row["question"] = row["question"].replace("has", "has got", 1)  # same id, another question
    edited = tmp_path / "edited.jsonl"
    edited.write_text("\n".join(lines[:3] + [json.dumps(row)] + lines[4:]) + "\n")
    teacher = FakeTeacher(slip_rate=0.08)
    _run(run, edited, teacher, **ids)
    fresh = tmp_path / "fresh"
    _run(fresh, edited, FakeTeacher(slip_rate=0.08), **ids)
    for table in ("problems", "rollouts", "dataset"):
        assert pl.read_parquet(run / table).equals(pl.read_parquet(fresh / table)), table
    detail = json.loads(query(run, "SELECT detail FROM funnel WHERE stage = 'rollout'")[1][0][0])
    assert detail["generated_prompt_changed"] == 1 and detail["problems_reused"] == 59
    assert teacher.calls[0] == 1  # the edited problem's request only, then step scoring for its traces
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    # a retrained teacher: every problem is generated again, and the tables equal a fresh run's
    _run(run, edited, retrained := FakeTeacher(slip_rate=0.08, weights="v2"), **ids)
    assert sum(retrained.calls[:4]) == 60
    _run(fresh2 := tmp_path / "fresh2", edited, FakeTeacher(slip_rate=0.08, weights="v2"), **ids)
    for table in ("problems", "rollouts", "dataset"):
        assert pl.read_parquet(run / table).equals(pl.read_parquet(fresh2 / table)), table


def test_damaged_chunks_are_regenerated_and_the_tables_equal_an_undamaged_run(prefect_harness, tmp_path, input_file):
    from tracefactory.store import io

    run = tmp_path / "run"
    _run(run, input_file, FakeTeacher(slip_rate=0.08))
    clean = {t: pl.read_parquet(run / t) for t in ("problems", "rollouts", "dataset")}
    chunks = sorted((run / "_work" / "generations").glob("chunk-*.parquet"))
    chunks[0].write_bytes(chunks[0].read_bytes()[:-64])  # truncated
    data = bytearray(chunks[2].read_bytes())
    data[100:108] = bytes(b ^ 0xFF for b in data[100:108])  # flipped bytes, footer intact
    chunks[2].write_bytes(bytes(data))
    chunks[3].write_bytes(b"")  # empty
    io._COMMITS.clear()  # as a new process would: nothing verified yet
    teacher = FakeTeacher(slip_rate=0.08)
    _run(run, input_file, teacher)
    assert 0 < teacher.calls[0] < 62  # the damaged chunks' problems only
    assert len(list((run / "_work" / "quarantine").iterdir())) == 3
    for table, frame in clean.items():
        assert pl.read_parquet(run / table).equals(frame), table


def test_query_group_by_difficulty(prefect_harness, tmp_path, input_file):
    _run(tmp_path / "r", input_file, FakeTeacher(slip_rate=0.1))
    cols, rows = query(
        tmp_path / "r",
        "SELECT difficulty, count(*) AS n, min(curriculum_rank) AS first "
        "FROM dataset GROUP BY difficulty ORDER BY first",
    )
    assert cols == ["difficulty", "n", "first"]
    assert [r[0] for r in rows][0] == "easy" and len(rows) >= 2


def test_bad_rows_an_empty_source_and_a_source_whose_every_row_is_bad(prefect_harness, tmp_path):
    from tracefactory.errors import ConfigError

    teacher = FakeTeacher()
    result = _run(tmp_path / "r", FIXTURES / "bad_input.jsonl", teacher, **{"source.id_field": "id"})
    assert result["dataset_rows"] == 2  # the fixture's two good rows
    # an empty source: empty frames through every stage, an empty dataset, not a crash
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    result = _run(tmp_path / "r2", empty, FakeTeacher())
    assert result["dataset_rows"] == 0
    _, funnel = query(tmp_path / "r2", "SELECT stage, rows_in, kept FROM funnel")
    assert funnel[0] == ("load", 0, 0) and all(r[1] == 0 for r in funnel[1:])
    assert len(pl.read_parquet(tmp_path / "r2" / "dataset")) == 0
    # every row rejected (here: the wrong answer field): a clear error, the rejects written for a look
    teacher = FakeTeacher()
    with pytest.raises(ConfigError, match=r"all 60 rows rejected .*missing_answer.*answer_field='final'"):
        _run(
            tmp_path / "r3",
            FIXTURES.parents[1] / "data" / "demo" / "problems.jsonl",
            teacher,
            **{"source.answer_field": "final", "source.limit": 60},
        )
    assert teacher.calls == [] and len(pl.read_parquet(tmp_path / "r3" / "rejected")) == 60


def test_tasks_retry_unexpected_errors_but_not_clear_ones():
    from prefect.states import Failed

    from flows.build_dataset import _transient
    from tracefactory.errors import BackendError, ConfigError

    assert _transient(None, None, Failed(data=ConnectionResetError("hub hiccup")))
    assert not _transient(None, None, Failed(data=ConfigError("source.path", "x.jsonl", "an existing file")))
    assert not _transient(None, None, Failed(data=BackendError("model cannot load")))


def test_every_stage_is_its_own_completed_task_run(prefect_harness, tmp_path, input_file):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    overrides = {"source.path": str(input_file), "run.shard_size": 16, "grade.workers": 0, **QUIET}
    state = build_dataset(
        config=None, out=str(tmp_path / "r"), overrides=overrides, teacher=FakeTeacher(slip_rate=0.3), return_state=True
    )  # slips enough to leave problems unsolved: the rationalize tasks run
    assert state.is_completed()
    # the demo's adaptive budget: each round's shards (62 problems in shards of 16, then those still open,
    # numbered on), then the round's decision
    out = tmp_path / "r"
    rounds = json.loads(pl.read_parquet(out / "funnel").filter(pl.col("stage") == "rollout")["detail"][0])["rounds"]
    drawn = pl.read_parquet(out / "problems").select("rounds").to_series()
    n_shards = sum(-(-int((drawn > r).sum()) // 16) for r in range(rounds))
    assert rounds > 1 and n_shards > 4
    shards = [f"rollout-shard-{i}" for i in range(n_shards)]
    budget = [f"budget-round-{r}" for r in range(rounds)]
    # each round with samples to draw starts (or finds started) the teacher in a task of its own
    stages = ["load", *["start-teacher"] * rounds, *shards, *budget, "grade", "audit", "step_score", "select"]
    # the unsolved problems' hinted requests: shards numbered on from the rollouts', the teacher started for them
    tried = json.loads(pl.read_parquet(out / "funnel").filter(pl.col("stage") == "rationalize")["detail"][0])
    tried = tried["problems_tried"]
    assert tried > 0
    stages += ["start-teacher"] + [f"rationalize-shard-{n_shards + i}" for i in range(-(-tried // 16))]
    stages += ["rationalize", "difficulty"]
    stages += ["curriculum", "pairs", "write"]
    # task runs and their states reach the API asynchronously (the flow may return before the last are recorded):
    # wait until every expected run is there and completed
    deadline = time.monotonic() + 60
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
            )
        names = sorted(r.name for r in runs)
        states = {r.state_type.value for r in runs}
        if (names == sorted(stages) and states == {"COMPLETED"}) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert names == sorted(stages)
    assert states == {"COMPLETED"}


CRASH_AFTER_GRADING = """
import sys
from flows.build_dataset import build_dataset
from tracefactory.backends.fake import FakeTeacher
overrides = {"source.path": sys.argv[2], "run.shard_size": 16, "grade.workers": 0}
overrides.update({"rewrite.enabled": False, "dedup.enabled": False, "decontaminate.enabled": False})
overrides["sampling.budget.policy"] = "fixed"
overrides["rationalize.enabled"] = False  # it grades its rationales: this test is about the grade stage's
build_dataset(config=None, out=sys.argv[1], overrides=overrides, teacher=FakeTeacher(slip_rate=0.08))
"""


def _killed(script, out, input_file, failpoint):
    """`script` (the flow on `input_file` into `out`) in a process of its own, SIGKILLed at `failpoint`."""
    import os
    import signal
    import subprocess
    import sys

    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(out), str(input_file)],
        env={**os.environ, "TRACEFACTORY_FAILPOINT": failpoint},
        cwd=Path(__file__).parents[2],
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        assert proc.wait(timeout=300) == -signal.SIGKILL
    finally:
        try:
            os.killpg(proc.pid, signal.SIGKILL)  # its temporary Prefect server
        except ProcessLookupError:
            pass


def test_a_run_killed_after_grading_is_not_graded_again(prefect_harness, tmp_path, input_file, monkeypatch):

    no_star = {"rationalize.enabled": False}
    clean = tmp_path / "clean"
    _run(clean, input_file, FakeTeacher(slip_rate=0.08), **no_star)
    crashed = tmp_path / "crashed"
    _killed(CRASH_AFTER_GRADING, crashed, input_file, "grade.persisted")
    assert list((crashed / "_work" / "graded_slices").glob("*.parquet")) and not (crashed / "dataset").exists()

    from tracefactory.errors import BackendError

    def no_grading(*args, **kwargs):
        raise BackendError("graded again")  # one of ours: the task fails at once, no retries

    monkeypatch.setattr("tracefactory.stages.grade.grade_pairs", no_grading)
    _run(crashed, input_file, FakeTeacher(slip_rate=0.08), **no_star)  # graded rows read back; step scoring runs now
    for table in ("problems", "rollouts", "dataset"):
        assert pl.read_parquet(crashed / table).equals(pl.read_parquet(clean / table)), table
    funnel = [pl.read_parquet(d / "funnel").drop("seconds", "detail") for d in (clean, crashed)]
    assert funnel[0].equals(funnel[1])
    # an input that changes (here: the grading settings) is graded again
    with pytest.raises(BackendError, match="graded again"):
        _run(crashed, input_file, FakeTeacher(slip_rate=0.08), **no_star, **{"grade.drop_truncated": False})


def test_stage_log_lines_are_attached_to_their_task_runs(prefect_harness, tmp_path, input_file):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, LogFilter, LogFilterFlowRunId
    from prefect.logging.handlers import APILogHandler

    overrides = {"source.path": str(input_file), "run.shard_size": 16, "grade.workers": 0, **QUIET}
    state = build_dataset(
        config=None, out=str(tmp_path / "r"), overrides=overrides, teacher=FakeTeacher(slip_rate=0.3), return_state=True
    )  # slips enough to leave problems unsolved: the rationalize tasks run
    APILogHandler().flush()  # logs reach the API in batches: send what is queued
    run_id = state.state_details.flow_run_id
    want = {(stage, stage) for stage in ("load", "grade", "step_score", "select", "difficulty", "curriculum")}
    want.add(("rollout-shard-0", "rollout"))  # "rollout shard 0: ..."
    deadline = time.monotonic() + 30
    while True:
        with get_client(sync_client=True) as client:
            tasks = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run_id])))
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[run_id])))
        by_task = {t.id: t.name for t in tasks}
        lines = {(by_task.get(log.task_run_id), log.message.split()[0]) for log in logs if log.task_run_id}
        if want <= lines or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert want <= lines, sorted(want - lines)


def test_the_flow_refuses_a_run_directory_another_process_writes(prefect_harness, tmp_path, input_file):
    import subprocess
    import sys

    from tracefactory.errors import RunLockedError

    hold = "import sys, time\nfrom tracefactory.store.io import RunDir\nwith RunDir(sys.argv[1]).lock():\n"
    hold += "    print('held', flush=True)\n    time.sleep(600)\n"
    holder = subprocess.Popen([sys.executable, "-c", hold, str(tmp_path / "r")], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        teacher = FakeTeacher()
        with pytest.raises(RunLockedError, match=f"pid {holder.pid}"):
            _run(tmp_path / "r", input_file, teacher)
        assert teacher.calls == [] and not (tmp_path / "r" / "dataset").exists()
    finally:
        holder.kill()
        holder.wait()


def test_rewrite_dedup_and_decontamination_through_the_flow(prefect_harness, tmp_path):
    """Demo problems with their solutions, 4 GSM8K-test questions planted, one demo question twice:
    variants reach the dataset with lineage, exactly the planted ones are rejected as contaminated,
    the copy as a duplicate, and every stage's funnel row adds up and chains to the next."""
    demo = (Path(__file__).parents[2] / "data" / "demo" / "problems.jsonl").read_text().splitlines()[::5]
    gsm8k = (Path(__file__).parents[2] / "data" / "gsm8k" / "test.jsonl").read_text().splitlines()
    planted = [json.loads(gsm8k[i]) for i in (3, 50, 400, 1000)]
    rows = [json.loads(x) for x in demo]
    rows += [
        {"id": f"gsm-{k}", "question": r["question"], "answer": r["answer"].split("####")[-1].strip()}
        for k, r in enumerate(planted)
    ]
    rows.append({**rows[0], "id": "copy-of-first", "question": rows[0]["question"].upper()})
    source = tmp_path / "mixed.jsonl"
    source.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    over = {
        "source.solution_field": "solution",
        "rewrite.enabled": True,
        "dedup.enabled": True,
        "decontaminate.enabled": True,
    }
    run = tmp_path / "run"
    _run(run, source, FakeTeacher(slip_rate=0.08), **{"source.id_field": "id", **over})
    _, funnel = query(run, "SELECT stage, rows_in, kept, dropped FROM funnel")
    stage = {r[0]: r for r in funnel}
    assert [r[0] for r in funnel][:5] == ["load", "rewrite", "dedup", "decontaminate", "rollout"]
    assert all(r[1] == r[2] + r[3] for r in funnel)
    assert stage["load"][2] == 65 and stage["rewrite"][1] == 65  # one variant tried per problem
    assert stage["dedup"][1] == 65 + stage["rewrite"][2] and stage["dedup"][3] == 2  # the copy and its variant
    assert stage["decontaminate"][1] == stage["dedup"][2] and stage["rollout"][1] == stage["decontaminate"][2] * 8
    _, rej = query(run, "SELECT reason, problem_id, match FROM rejected WHERE problem_id IS NOT NULL ORDER BY 2")
    assert [r for r in rej if r[0] == "duplicate"] == [("duplicate", "copy-of-first", rows[0]["id"])]
    assert [r for r in rej if r[0] == "source_removed"] == [
        ("source_removed", "copy-of-first~perturb0", "copy-of-first")
    ]
    contaminated = sorted(r[1] for r in rej if r[0] == "contaminated")
    assert contaminated == ["gsm-0", "gsm-1", "gsm-2", "gsm-3"]  # exactly the planted ones, never a demo problem
    assert all(r[2].startswith("gsm8k-test:") for r in rej if r[0] == "contaminated")
    # variants have lineage in problems, rollouts and dataset; originals and variants compared by query
    _, lineage = query(run, "SELECT count(*) FROM problems WHERE rewrite_kind = 'perturb' AND rewrite_of IS NOT NULL")
    assert lineage[0][0] == stage["rewrite"][2] - 1 > 40  # less the copy's variant
    _, dataset = query(run, "SELECT count(*) FROM dataset WHERE rewrite_of IS NOT NULL")
    assert dataset[0][0] > 0
    _, rolls = query(run, "SELECT count(DISTINCT problem_id) FROM rollouts WHERE rewrite_kind = 'perturb'")
    assert rolls[0][0] == lineage[0][0]
    cols, compare = query(
        run,
        "SELECT rewrite_kind IS NULL AS original, count(*) AS problems, round(avg(pass_rate), 3) AS pass_rate "
        "FROM problems GROUP BY 1 ORDER BY 1",
    )
    assert [r[0] for r in compare] == [False, True]
    _, gaps = query(run, "SELECT count(*) FROM problems WHERE memorisation_gap IS NOT NULL")
    assert gaps[0][0] == lineage[0][0]  # every original with a variant has its gap
    # every variant's gold is its own: the fake teacher (a real solver of these stories) agrees with it
    _, solved = query(run, "SELECT avg(pass_rate) FROM problems WHERE rewrite_kind = 'perturb'")
    assert solved[0][0] > 0.7


ADAPTIVE = {"sampling.budget.policy": "adaptive"}


def _rows(out, table="rollouts"):
    return pl.read_parquet(out / table)


def test_an_adaptive_budget_draws_a_prefix_of_fixed_k_and_stops_settled_problems_after_one_round(
    prefect_harness, tmp_path, input_file
):
    teacher = FakeTeacher(slip_rate=0.05)
    quiet = {"step_score.enabled": False}
    fixed, ad = tmp_path / "fixed", tmp_path / "adaptive"
    _run(fixed, input_file, teacher, **quiet, **{"sampling.n": 64})
    # `stable` off: problems go on until settled or at max (a larger max must find some to continue)
    budget = {"sampling.budget.first": 16, "sampling.budget.max": 64, "sampling.budget.stable": 0.0}
    _run(ad, input_file, teacher, **quiet, **ADAPTIVE, **budget)
    a, f = _rows(ad), _rows(fixed)
    # sample j is sample j: the adaptive run's samples are fixed K=64's, text for text
    both = a.join(f, on=["problem_id", "sample_index"], how="left", suffix="_fixed")
    assert len(a) < len(f) and both["text_fixed"].null_count() == 0
    assert (
        both["text"].equals(both["text_fixed"], check_names=False)
        and (both["cot_tokens"] == both["cot_tokens_fixed"]).all()
    )
    problems = _rows(ad, "problems")
    assert set(problems["stop_reason"]) <= {"settled", "max_samples", "hopeless", "stable"}
    # a problem settled after the first round (16 of 16 correct: Wilson [0.81, 1], easy) got no second
    first = problems.filter((pl.col("stop_reason") == "settled") & (pl.col("rounds") == 1))
    assert len(first) and (first["samples_drawn"] == 16).all() and (first["n_correct"] == 16).all()
    assert a.filter(pl.col("problem_id").is_in(first["problem_id"].implode()))["sample_index"].max() == 15
    # every problem's accounting matches its rows: samples drawn, rounds, tokens
    per = a.group_by("problem_id").agg(pl.len().alias("rows"), pl.col("cot_tokens").sum().alias("tokens"))
    joined = problems.join(per, on="problem_id")
    assert (joined["rows"] == joined["samples_drawn"]).all() and (joined["tokens"] == joined["teacher_tokens"]).all()
    assert (joined["n_rollouts"] == joined["samples_drawn"]).all()
    rounds = {16: 1, 32: 2, 64: 3}
    assert all(rounds[d] == r for d, r in problems.select("samples_drawn", "rounds").iter_rows())
    funnel = _rows(ad, "funnel").filter(pl.col("stage") == "rollout").row(0, named=True)
    detail = json.loads(funnel["detail"])
    assert detail["rounds"] == 3 and sum(v for k, v in detail.items() if k.startswith("stopped_")) == len(problems)
    assert funnel["kept"] == len(a) and funnel["tokens"] == int(a["cot_tokens"].sum())
    # fixed K: one round, every problem `fixed`, sampling.n each
    fp = _rows(fixed, "problems")
    assert set(fp["stop_reason"]) == {"fixed"} and set(fp["samples_drawn"]) == {64} and set(fp["rounds"]) == {1}
    # a larger max draws only the new samples: of the problems that stopped at max_samples, from index 64 on
    store = ad / "_work" / "generations"
    before = set(store.glob("*.parquet"))
    _run(ad, input_file, teacher, **quiet, **ADAPTIVE, **{**budget, "sampling.budget.max": 128})
    new = pl.concat([pl.read_parquet(p) for p in set(store.glob("*.parquet")) - before])
    at_max = problems.filter(pl.col("stop_reason") == "max_samples")["problem_id"]
    assert len(new) and new["sample_index"].min() == 64 and set(new["problem_id"]) <= set(at_max)


def test_the_run_budget_is_never_exceeded_by_more_than_one_round(prefect_harness, tmp_path, input_file):
    bounds = [0, 4, 8, 16, 32, 64]
    for run_tokens in (20_000, 5_000):  # the second is less than the first round costs (~15,500 here)
        budget = {"sampling.budget.first": 4, "sampling.budget.max": 64, "sampling.budget.run_tokens": run_tokens}
        out = tmp_path / str(run_tokens)
        off = {"step_score.enabled": False, "rationalize.enabled": False}  # teacher_tokens: the rollouts' only
        _run(out, input_file, FakeTeacher(slip_rate=0.2), **off, **ADAPTIVE, **budget)
        rows, problems = _rows(out), _rows(out, "problems")
        last = max(lo for lo in bounds[:-1] if lo <= rows["sample_index"].max())
        before_last = int(rows.filter(pl.col("sample_index") < last)["cot_tokens"].sum())
        # a round starts only while the budget has room: what is spent beyond it is at most the last round's
        assert before_last < run_tokens
        total = int(rows["cot_tokens"].sum())
        assert (problems["stop_reason"] == "run_budget").sum() > 0
        assert int(problems["teacher_tokens"].sum()) == total
    # spent after the first round: no problem got a second (those not stopped by their tallies stop for the budget)
    assert set(problems["rounds"]) == {1} and "run_budget" in set(problems["stop_reason"])


CRASH_ADAPTIVE = """
import sys
from flows.build_dataset import build_dataset
from tracefactory.backends.fake import FakeTeacher
overrides = {"source.path": sys.argv[2], "run.shard_size": 16, "grade.workers": 0}
overrides.update({"rewrite.enabled": False, "dedup.enabled": False, "decontaminate.enabled": False})
overrides.update({"sampling.budget.policy": "adaptive", "sampling.budget.first": 4, "sampling.budget.max": 16})
build_dataset(config=None, out=sys.argv[1], overrides=overrides, teacher=FakeTeacher(slip_rate=0.2))
"""


def test_an_adaptive_run_killed_between_or_inside_rounds_resumes_to_identical_tables(
    prefect_harness, tmp_path, input_file
):
    over = {**ADAPTIVE, "sampling.budget.first": 4, "sampling.budget.max": 16}
    clean = tmp_path / "clean"
    _run(clean, input_file, FakeTeacher(slip_rate=0.2), **over)
    assert json.loads(_rows(clean, "funnel").filter(pl.col("stage") == "rollout")["detail"][0])["rounds"] == 3
    # the chunks of round 1 (shards 0-3: 62 problems in shards of 16); round 2's shards are numbered on from 4
    first_round = sum(int(p.name.split("-")[1]) < 4 for p in (clean / "_work" / "generations").glob("*.parquet"))
    kills = {"between": "budget.round_closed:1", "inside": f"rollout.chunk_committed:{first_round + 1}"}
    for where, failpoint in kills.items():
        crashed = tmp_path / where
        _killed(CRASH_ADAPTIVE, crashed, input_file, failpoint)
        shards = {int(p.name.split("-")[1]) for p in (crashed / "_work" / "generations").glob("*.parquet")}
        assert shards == set(range(4)) if where == "between" else max(shards) >= 4, (where, shards)
        _run(crashed, input_file, FakeTeacher(slip_rate=0.2), **over)
        for table in ("problems", "rollouts", "dataset"):
            assert pl.read_parquet(crashed / table).equals(pl.read_parquet(clean / table)), (where, table)
        funnel = [pl.read_parquet(d / "funnel").drop("seconds", "detail") for d in (clean, crashed)]
        assert funnel[0].equals(funnel[1]), where


def test_preference_pairs_in_trls_format_from_the_runs_own_traces(prefect_harness, tmp_path, input_file):
    import datasets

    out = tmp_path / "r"
    _run(out, input_file, FakeTeacher(slip_rate=0.3, thinks=True), **{"pairs.per_problem": 2})
    pairs, data, rollouts = _rows(out, "pairs"), _rows(out, "dataset"), _rows(out, "rollouts")
    assert len(pairs) and pairs.columns[:3] == ["prompt", "chosen", "rejected"]
    key = ["problem_id", "sample_index"]
    chosen = pairs.join(data, left_on=["problem_id", "chosen_sample_index"], right_on=key, how="left", suffix="_d")
    # chosen: a kept trace, its conversation exactly the dataset's; rejected: another trace of the same problem
    assert [p + c for p, c in zip(chosen["prompt"].to_list(), chosen["chosen"].to_list(), strict=True)] == chosen[
        "messages"
    ].to_list()
    rejected = pairs.join(rollouts, left_on=["problem_id", "rejected_sample_index"], right_on=key, how="left")
    assert (rejected["rejected"].list.first().struct.field("content") == rejected["cot"]).all()
    assert (rejected["rejected_tokens"] == rejected["cot_tokens"]).all()
    wrong = rejected.filter(pl.col("rejected_reason") == "wrong")
    assert len(wrong) and (wrong["drop_reason"] == "wrong_answer").all() and not wrong["correct"].any()
    assert pairs.select("problem_id", "rejected_sample_index").is_unique().all()
    assert (pairs["chosen_sample_index"] != pairs["rejected_sample_index"]).all()
    assert pairs["curriculum_rank"].is_sorted()
    # the funnel: problems with a kept trace = with a pair + without
    row = _rows(out, "funnel").filter(pl.col("stage") == "pairs").row(0, named=True)
    assert row["rows_in"] == data["problem_id"].n_unique() and row["kept"] == pairs["problem_id"].n_unique()
    assert json.loads(row["detail"])["pairs"] == len(pairs)
    # TRL's DPOTrainer reads prompt/chosen/rejected conversations: the table loads as such with `datasets`
    files = str(out / "pairs" / "*.parquet")
    loaded = datasets.load_dataset("parquet", data_files=files, split="train", cache_dir=str(tmp_path / "cache"))
    assert loaded.column_names[:3] == ["prompt", "chosen", "rejected"]
    assert loaded[0]["chosen"][0]["role"] == "assistant" and loaded[0]["prompt"][-1]["role"] == "user"
    # turned off, the run's pairs go: no table from an earlier run stays beside this run's
    _run(out, input_file, FakeTeacher(slip_rate=0.3, thinks=True), **{"pairs.enabled": False})
    assert not (out / "pairs").exists() and "pairs" not in set(_rows(out, "funnel")["stage"])


def test_planted_wrong_golds_are_flagged_and_kept_out(prefect_harness, tmp_path):
    demo = [json.loads(line) for line in (Path(__file__).parents[2] / "data/demo/problems.jsonl").open()][::5]
    planted = {r["id"] for r in demo if r["level"] == 1}  # 12 golds the teacher gets right most of the time, +100
    for r in demo:
        r["answer"] = str(int(r["answer"]) + 100) if r["id"] in planted else r["answer"]
    source = tmp_path / "planted.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in demo))
    out = tmp_path / "r"
    _run(out, source, FakeTeacher(slip_rate=0.05))  # right on most samples at every level
    problems, data, audit = _rows(out, "problems"), _rows(out, "dataset"), _rows(out, "audit")
    flagged = set(problems.filter(pl.col("gold_suspect"))["problem_id"])
    assert flagged == planted == set(audit["problem_id"])
    assert not set(data["problem_id"]) & planted  # none of their traces is taught
    rollouts = _rows(out, "rollouts").filter(pl.col("problem_id").is_in(list(planted)))
    assert not rollouts["correct"].any()  # no slip lands 100 off: no rollout reaches a planted gold
    assert (audit["majority_answer"].cast(int) == audit["answer"].cast(int) - 100).all()
    assert audit["majority_cot"].str.contains(r"\\boxed").all() and (audit["majority_share"] >= 0.6).all()
    # the funnel: grade -> audit -> step_score in completions, each stage adding up
    funnel = {r["stage"]: r for r in _rows(out, "funnel").iter_rows(named=True)}
    assert (
        funnel["grade"]["kept"] == funnel["audit"]["rows_in"]
        and funnel["audit"]["kept"] == funnel["step_score"]["rows_in"]
    )
    assert json.loads(funnel["audit"]["detail"]) == {"suspect_problems": len(planted)}
    # a gold that some rollout reaches is not suspect by default; allowed a share, its correct traces are dropped:
    # planted 10 off, where a third of this teacher's slips land
    for r in demo:
        r["answer"] = str(int(r["answer"]) - 90) if r["id"] in planted else r["answer"]
    source.write_text("".join(json.dumps(r) + "\n" for r in demo))
    out = tmp_path / "allowed"
    _run(out, source, FakeTeacher(slip_rate=0.3), **{"audit.gold_share": 0.3})
    problems, rollouts = _rows(out, "problems"), _rows(out, "rollouts")
    flagged = problems.filter(pl.col("gold_suspect"))
    assert set(flagged["problem_id"]) & planted  # most of them: a 30% slip rate leaves a thin majority at times
    hit = rollouts.filter(pl.col("problem_id").is_in(flagged["problem_id"].implode()) & pl.col("correct"))
    assert len(hit) and (hit["drop_reason"] == "gold_suspect").all()
    dropped = json.loads(_rows(out, "funnel").filter(pl.col("stage") == "audit")["dropped_by_reason"][0])
    assert dropped.get("gold_suspect", 0) == len(hit)


CRASH_STAR = """
import sys
from flows.build_dataset import build_dataset
from tracefactory.backends.fake import FakeTeacher
overrides = {"source.path": sys.argv[2], "run.shard_size": 16, "grade.workers": 0, "rationalize.enabled": True}
overrides.update({"rewrite.enabled": False, "dedup.enabled": False, "decontaminate.enabled": False})
overrides["sampling.budget.policy"] = "fixed"
build_dataset(config=None, out=sys.argv[1], overrides=overrides, teacher=FakeTeacher(slip_rate=0.05, hints="derive"))
"""


def test_star_rationales_of_unsolved_problems_verified_without_the_hint(prefect_harness, tmp_path):
    """Demo problems the fake solves, six it never solves unaided ("squares them") and one whose gold is planted
    wrong: the six get a verified rationale in their own table, the suspect gold is never hinted at."""
    demo = [json.loads(line) for line in (Path(__file__).parents[2] / "data/demo/problems.jsonl").open()][:40:4]
    demo[0]["answer"] = str(int(demo[0]["answer"]) + 100)  # a level-1 problem: the rollouts agree against it
    hard = [
        {
            "id": f"SQ-{k}",
            "level": 3,
            "question": f"Ann has {3 + k} stones. She gets {2 + k} more. She squares them. How many stones now?",
            "answer": str((5 + 2 * k) ** 2),
        }
        for k in range(6)
    ]
    source = tmp_path / "star.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in demo + hard))
    out, squares = tmp_path / "r", [r["id"] for r in hard]
    _run(out, source, FakeTeacher(slip_rate=0.05, hints="derive"), **{"rationalize.enabled": True})
    problems, data, rat = _rows(out, "problems"), _rows(out, "dataset"), _rows(out, "rationalized")
    assert sorted(rat["problem_id"]) == squares and rat["rationalized"].all() and rat.columns == data.columns
    assert not set(data["problem_id"]) & set(squares) and not data["rationalized"].any()  # include: false
    assert rat["question"].to_list() == [r["question"] for r in hard]  # the plain question, no hint in the row
    assert not rat["cot"].str.contains("Hint").any() and rat["curriculum_rank"].to_list() == list(range(6))
    flags = dict(problems.select("problem_id", "rationalized").iter_rows())
    assert {p for p, f in flags.items() if f} == set(squares)
    assert flags[demo[0]["id"]] is None and problems.filter(pl.col("gold_suspect"))["problem_id"].to_list() == [
        demo[0]["id"]
    ]
    assert (problems.filter(pl.col("rationalized"))["difficulty"] == "unsolved").all()  # pass rate: rollouts only
    funnel = {r["stage"]: r for r in _rows(out, "funnel").iter_rows(named=True)}
    row = funnel["rationalize"]
    assert row["rows_in"] == 6 * 4 and row["kept"] == 6
    assert json.loads(row["detail"]) == {"problems_recovered": 6, "problems_tried": 6, "skipped_gold_suspect": 1}
    assert funnel["curriculum"]["rows_in"] == funnel["select"]["kept"]  # the rationales are not in `dataset`
    tables = {t: _rows(out, t) for t in ("problems", "dataset", "rationalized", "rollouts")}
    # a re-run asks the teacher nothing (rationales by their own keys in the store, judged ones read back)
    again = FakeTeacher(slip_rate=0.05, hints="derive")
    _run(out, source, again, **{"rationalize.enabled": True})
    assert again.calls == [] and all(_rows(out, t).equals(f) for t, f in tables.items())
    # include: true puts them in `dataset` as well, last in the curriculum (pass rate 0), flagged
    _run(out, source, again, **{"rationalize.enabled": True, "rationalize.include": True})
    data = _rows(out, "dataset")
    assert data.filter(pl.col("rationalized"))["problem_id"].sort().to_list() == squares
    assert data.sort("curriculum_rank")["rationalized"].to_list()[-6:] == [True] * 6 and again.calls == []
    # SIGKILLed as the hinted requests' chunk is committed (after the rollouts' one): the resumed run asks for no
    # rationale again and its tables equal the uninterrupted run's
    crashed = tmp_path / "crashed"
    _killed(CRASH_STAR, crashed, source, "rollout.chunk_committed:2")
    assert (crashed / "_work" / "generations").exists() and not (crashed / "rationalized").exists()
    resumed = FakeTeacher(slip_rate=0.05, hints="derive")
    _run(crashed, source, resumed, **{"rationalize.enabled": True})
    assert resumed.hinted == 0
    for t, frame in tables.items():
        assert _rows(crashed, t).equals(frame), t
    # turned off: no rationalized table from an earlier run stays, and the problems say none was tried
    _run(out, source, again, **{"rationalize.enabled": False})
    assert not (out / "rationalized").exists() and _rows(out, "problems")["rationalized"].null_count() == 16


def test_problems_without_a_gold_get_a_majority_pseudo_gold_only_above_the_bars(prefect_harness, tmp_path):
    demo = [json.loads(line) for line in (Path(__file__).parents[2] / "data/demo/problems.jsonl").open()][::10]
    truth = {r["id"]: r["answer"] for r in demo}
    removed = {r["id"] for r in demo[::2]}
    for r in demo:
        if r["id"] in removed:
            del r["answer"]
    source = tmp_path / "goldless.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in demo))
    out = tmp_path / "r"
    _run(out, source, FakeTeacher(slip_rate=0.15), **{"source.gold": "majority"})
    problems, data, rollouts = _rows(out, "problems"), _rows(out, "dataset"), _rows(out)
    labelled = problems.filter(pl.col("gold_source") == "majority")
    unlabelled = problems.filter(pl.col("answer").is_null())
    assert set(labelled["problem_id"]) | set(unlabelled["problem_id"]) == removed
    assert len(labelled) and len(unlabelled)  # this teacher's slips leave some votes below the bars
    # only above the bars: the majority value has >= 60% of the answers and >= 4 votes
    for pid, gold in labelled.select("problem_id", "answer").iter_rows():
        answers = rollouts.filter(pl.col("problem_id") == pid)["pred_answer"].drop_nulls()
        agree = int((answers.cast(pl.Float64) == float(gold)).sum())
        assert agree >= 4 and agree >= 0.6 * len(answers) and gold == truth[pid]  # the teacher is mostly right
    for pid in unlabelled["problem_id"]:
        answers = rollouts.filter(pl.col("problem_id") == pid)["pred_answer"].drop_nulls()
        top = int(answers.cast(pl.Float64).value_counts(sort=True)["count"][0]) if len(answers) else 0
        assert top < 4 or top < 0.6 * len(answers)
        assert (rollouts.filter(pl.col("problem_id") == pid)["drop_reason"] == "no_gold").all()
    # marked everywhere, never mixed silently with verified rows; not suspect, never rationalized
    assert set(data.filter(pl.col("gold_source") == "majority")["problem_id"]) == set(labelled["problem_id"])
    assert (data.filter(~pl.col("problem_id").is_in(list(removed)))["gold_source"] == "source").all()
    assert not problems.filter(pl.col("problem_id").is_in(list(removed)))["gold_suspect"].any()
    funnel = {r["stage"]: r for r in _rows(out, "funnel").iter_rows(named=True)}
    row, detail = funnel["pseudo_gold"], json.loads(funnel["pseudo_gold"]["detail"])
    assert (row["rows_in"], row["kept"]) == (len(removed), len(labelled))
    assert funnel["grade"]["kept"] + detail["reached_pseudo_gold"] == funnel["audit"]["rows_in"]
    assert json.loads(funnel["load"]["detail"]) == {"no_gold": len(removed)}
    assert json.loads(funnel["rationalize"]["detail"])["skipped_no_gold"] == len(unlabelled)
    # none: kept without a gold, rolled out, never labelled or taught
    out = tmp_path / "none"
    _run(out, source, FakeTeacher(slip_rate=0.15), **{"source.gold": "none"})
    problems, data = _rows(out, "problems"), _rows(out, "dataset")
    assert problems.filter(pl.col("answer").is_null())["problem_id"].sort().to_list() == sorted(removed)
    assert not set(data["problem_id"]) & removed and "pseudo_gold" not in set(_rows(out, "funnel")["stage"])
