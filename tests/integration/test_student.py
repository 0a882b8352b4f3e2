"""The student benchmark on the shared demo run: each arm holds what it claims to, every arm is cut to one
budget, and a student's weights reloaded into a running engine answer exactly as a fresh engine does."""

from __future__ import annotations

import json
import sys
from collections import Counter
from pathlib import Path

import polars as pl
import pytest

from tracefactory.errors import ConfigError
from tracefactory.training.student import (
    Evaluator,
    TrainSettings,
    finetune,
    held_out_problems,
    pools,
    run_questions,
    training_sets,
)

pytestmark = pytest.mark.vllm
ROOT = Path(__file__).resolve().parents[2]


def words(text: str) -> int:
    return len(text.split()) + 1


def test_arms_hold_what_they_claim(plain_run):
    run, _ = plain_run
    problems = pl.read_parquet(run / "problems")
    originals = set(problems.filter(pl.col("rewrite_of").is_null())["problem_id"])
    rollouts = pl.read_parquet(run / "rollouts").filter(pl.col("problem_id").is_in(list(originals)))
    dataset = pl.read_parquet(run / "dataset").sort("curriculum_rank")
    arms = pools(run, seed=1)

    texts = Counter((r.problem_id, r.target) for r in arms["a"])
    assert texts == Counter(rollouts.filter(pl.col("text") != "").select("problem_id", "text").iter_rows())
    correct = rollouts.filter(pl.col("correct"))
    assert Counter((r.problem_id, r.target) for r in arms["b"]) == Counter(
        correct.select("problem_id", "text").iter_rows()
    )
    # c: exactly one correct trace per solved problem
    assert sorted(r.problem_id for r in arms["c"]) == sorted(set(correct["problem_id"]))
    assert all((r.problem_id, r.target) in texts for r in arms["c"])
    # d: the dataset's originals, in curriculum order; e: the same rows, shuffled; f: every dataset row. A kept
    # trace's target is its completion: the cot minus the `<think>\n` the student's prompt already ends with
    d = dataset.filter(pl.col("problem_id").is_in(list(originals)))
    assert [(r.problem_id, r.target) for r in arms["d"]] == [
        (pid, cot.removeprefix("<think>\n")) for pid, cot in d.select("problem_id", "cot").iter_rows()
    ]
    assert Counter(arms["e"]) == Counter(arms["d"]) and arms["e"] != arms["d"]
    assert [r.problem_id for r in arms["f"]] == dataset["problem_id"].to_list()
    assert len(arms["f"]) > len(arms["d"])  # the demo rewrites: variants are in f only
    # the seed changes the shuffled arms, never the curriculum ones
    again = pools(run, seed=2)
    assert again["d"] == arms["d"] and again["f"] == arms["f"]
    assert again["a"] != arms["a"] and Counter(again["a"]) == Counter(arms["a"])


def test_every_arm_is_cut_to_one_budget(plain_run):
    run, _ = plain_run
    by_seed, budget = training_sets(run, list("abcdef"), seeds=[1], count=words)
    sets = by_seed[1]
    totals = {arm: sum(r.tokens for r in rows) for arm, rows in sets.items()}
    smallest = min(sum(words(r.target) for r in rows) for rows in pools(run, seed=1).values())
    assert budget == smallest
    longest = max(words(r.target) for rows in sets.values() for r in rows)
    for arm, total in totals.items():
        assert budget - longest < total <= budget, arm  # greedy fill: short of the budget by less than one row
    # a cut keeps the arm's order: d stays in curriculum order
    ranks = {r.target: i for i, r in enumerate(pools(run, seed=1)["d"])}
    cut = training_sets(run, ["d"], seeds=[1], count=words, budget=budget // 2)[0][1]
    assert [ranks[r.target] for r in cut["d"]] == sorted(ranks[r.target] for r in cut["d"])
    assert sum(r.tokens for r in cut["d"]) <= budget // 2
    with pytest.raises(ConfigError, match="arms among"):
        training_sets(run, ["z"], seeds=[1], count=words)


def test_missing_tables_are_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="missing: rollouts, problems, dataset"):
        pools(tmp_path, seed=1)


def test_bench_end_to_end_and_reload_equals_a_fresh_engine(plain_run, tmp_path):
    """A tiny bench run (every arm, 2 seeds); then the teacher, which the bench scored after reloading it over
    the base's weights, is scored again by a fresh engine started on the teacher: the same answers, token for
    token. (vLLM 0.32's in-place reload alone leaves a tied output head on the old weights.)"""
    sys.path.insert(0, str(ROOT / "bench"))
    import student as bench

    run, _ = plain_run
    out = tmp_path / "student.json"
    argv = ["--run", str(run), "--seeds", "1,2", "--steps", "3", "--batch-tokens", "256", "--base-steps", "5",
            "--eval-per-level", "6", "--work", str(tmp_path / "work"), "--out", str(out), "--jobs", "2"]  # fmt: skip
    result = bench.main(argv)
    assert json.loads(out.read_text())["rows"] == json.loads(json.dumps(result["rows"]))
    rows = {r["arm"]: r for r in result["rows"]}
    assert list(rows) == ["base", "teacher", *"abcdef"]
    n = result["held_out"]["problems"]
    assert n == 30 - result["held_out"]["removed_as_in_run"]
    for arm in "abcdef":
        assert rows[arm]["seeds"] == 2 and len(rows[arm]["correct"]) == 2 and len(rows[arm]["correct"][0]) == n
        assert max(t["target_tokens"] for t in rows[arm]["trained"]) <= result["budget_target_tokens"]
        assert rows[arm]["ci95"][0] <= rows[arm]["accuracy"] <= rows[arm]["ci95"][1]
    assert {c["arms"] for c in result["claims"]} == {"d-a", "d-b", "d-c", "b-a", "d-e", "f-d"}
    assert rows["teacher"]["accuracy"] > rows["base"]["accuracy"]  # the base has never seen a word problem
    assert rows["teacher"]["arithmetic"] > 0.8 > rows["base"]["arithmetic"]  # a 5-step base cannot add yet

    assert result["settings"]["jobs"] == 2  # students trained two at a time, in processes of their own
    # a rerun reuses a student trained from the same base, rows, settings and seed (here: trained in one of the
    # bench's worker processes, reused in this one); other rows retrain it
    student = tmp_path / "work" / "d-s1"
    settings = TrainSettings(steps=3, batch_tokens=256)
    sets = training_sets(run, ["d"], [1], bench.token_counter(bench.TEACHER), result["budget_target_tokens"])[0][1]
    made = (student / "model.safetensors").stat().st_mtime_ns
    assert finetune(tmp_path / "work" / "base", sets["d"], student, settings, 1) == rows["d"]["trained"][0]
    assert (student / "model.safetensors").stat().st_mtime_ns == made
    finetune(tmp_path / "work" / "base", sets["d"][1:], student, settings, 1)
    assert (student / "model.safetensors").stat().st_mtime_ns != made

    problems, _ = held_out_problems(6, 8080, run_questions(run))
    assert " ".join(p.id for p in problems) == result["held_out"]["ids"]
    fresh = Evaluator(bench.TEACHER)
    try:
        scored = fresh.score(bench.TEACHER, problems)
    finally:
        fresh.close()
    assert "".join("1" if s.correct else "0" for s in scored) == rows["teacher"]["correct"][0]
    assert " ".join(str(s.tokens) for s in scored) == rows["teacher"]["answer_tokens"][0]


def test_preset_sets_defaults_that_flags_override():
    sys.path.insert(0, str(ROOT / "bench"))
    import student as bench

    args = bench.parse_args(["--preset", "discriminate"])
    assert (args.arms, args.seeds, args.steps, args.jobs) == (["a", "b", "d"], [1, 2, 3], 1000, 1)
    args = bench.parse_args(["--preset", "discriminate", "--seeds", "4", "--steps", "20", "--jobs", "2"])
    assert (args.arms, args.seeds, args.steps, args.jobs) == (["a", "b", "d"], [4], 20, 2)
    assert bench.parse_args([]).arms == list("abcdef")
    with pytest.raises(SystemExit):
        bench.parse_args(["--preset", "nonsense"])
    with pytest.raises(SystemExit):
        bench.parse_args(["--jobs", "0"])
