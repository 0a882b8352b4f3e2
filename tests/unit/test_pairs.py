"""The pairs stage's rules on the rows the stages before it leave: which trace is set against a kept one."""

import polars as pl
import pytest

from tracefactory.config import PairsConfig
from tracefactory.stages.curriculum import MESSAGES_TYPE
from tracefactory.stages.pairs import pairs
from tracefactory.store.schema import columns


def _rollouts(rows):
    """(problem, sample, correct, drop_reason, cot_tokens, prm_min) -> rollout rows as grade/step_score/select
    leave them."""
    return pl.DataFrame(
        [
            {
                "problem_id": p,
                "sample_index": j,
                "correct": ok,
                "drop_reason": why,
                "cot_tokens": tokens,
                "prm_min": prm,
                "cot": f"{p}/{j}",
                "pred_answer": "7" if ok else f"wrong-{j}",
            }
            for p, j, ok, why, tokens, prm in rows
        ],
        schema_overrides={"drop_reason": pl.String, "prm_min": pl.Float64},
    )


def _dataset(kept):
    """(problem, sample, cot_tokens, rank) -> the dataset rows of the kept traces."""
    return pl.DataFrame(
        {
            "problem_id": [p for p, *_ in kept],
            "sample_index": [j for _, j, _, _ in kept],
            "cot_tokens": [t for *_, t, _ in kept],
            "curriculum_rank": [r for *_, r in kept],
            "messages": [
                [{"role": "user", "content": f"q {p}"}, {"role": "assistant", "content": f"{p}/{j}"}]
                for p, j, *_ in kept
            ],
            "question": [f"q {p}" for p, *_ in kept],
            "cot": [f"{p}/{j}" for p, j, *_ in kept],
            "answer": ["7"] * len(kept),
            "difficulty": ["medium"] * len(kept),
            "source": ["s"] * len(kept),
            "level": [None] * len(kept),
            "rewrite_of": [None] * len(kept),
            "rewrite_kind": [None] * len(kept),
            "teacher": ["t"] * len(kept),
        },
        schema_overrides={
            "messages": MESSAGES_TYPE,
            "level": pl.String,
            "rewrite_of": pl.String,
            "rewrite_kind": pl.String,
        },
    )


ROLLOUTS = _rollouts(
    [
        # a: kept 0 (40 tokens); wrong 1 (90), 2 (38), 3 (42): 2 and 3 are 2 tokens off, the lower index wins
        ("a", 0, True, None, 40, 1.0),
        ("a", 1, False, "wrong_answer", 90, None),
        ("a", 2, False, "wrong_answer", 38, None),
        ("a", 3, False, "wrong_answer", 42, None),
        ("a", 4, True, "not_shortest", 60, 1.0),
        # b: no wrong answer; two step-filter drops (the lower score first), a longer correct trace
        ("b", 0, True, None, 30, 1.0),
        ("b", 1, True, "low_step_score", 35, 0.5),
        ("b", 2, True, "low_step_score", 35, 0.0),
        ("b", 3, True, "not_shortest", 80, 1.0),
        # c: only correct traces of the kept one's length, and an unanswered one: nothing to set against it
        ("c", 0, True, None, 25, 1.0),
        ("c", 1, True, "not_shortest", 25, 1.0),
        ("c", 2, False, "no_answer", 10, None),
        # d: a wrong trace but no kept one: not in the dataset, no pair
        ("d", 0, False, "wrong_answer", 50, None),
    ]
)
DATASET = _dataset([("a", 0, 40, 0), ("b", 0, 30, 1), ("c", 0, 25, 2)])


def test_each_rule_in_order_and_the_funnel_adds_up():
    out, report = pairs(ROLLOUTS, PairsConfig(enabled=True), DATASET)
    assert out.columns == columns("pairs") and out.columns[:3] == ["prompt", "chosen", "rejected"]
    got = out.select("problem_id", "chosen_sample_index", "rejected_sample_index", "rejected_reason").rows()
    assert got == [("a", 0, 2, "wrong"), ("b", 0, 2, "low_step_score")]
    a = out.row(0, named=True)
    assert a["prompt"] == [{"role": "user", "content": "q a"}]
    assert a["chosen"] == [{"role": "assistant", "content": "a/0"}]
    assert a["rejected"] == [{"role": "assistant", "content": "a/2"}]
    assert (a["chosen_tokens"], a["rejected_tokens"], a["rejected_answer"]) == (40, 38, "wrong-2")
    assert (report.rows_in, report.kept, report.dropped_by_reason) == (3, 2, {"no_rejected": 1})
    assert report.detail == {"pairs": 2, "rejected_wrong": 1, "rejected_low_step_score": 1}


def test_rules_can_be_chosen_and_pairs_per_problem_take_distinct_rejected_traces():
    out, report = pairs(ROLLOUTS, PairsConfig(enabled=True, rejected=("longest_correct",), per_problem=2), DATASET)
    # a: the longest correct (4, 60 tokens); b: 3 (80 tokens), not the step-filter drops (35 tokens, not rules
    # here); one each: no second longer correct trace
    assert out.select("problem_id", "rejected_sample_index", "rejected_reason").rows() == [
        ("a", 4, "longest_correct"),
        ("b", 3, "longest_correct"),
    ]
    out, report = pairs(ROLLOUTS, PairsConfig(enabled=True, per_problem=3), DATASET)
    a = out.filter(pl.col("problem_id") == "a")
    assert a["rejected_sample_index"].to_list() == [2, 3, 1]  # wrong ones by closeness in length
    b = out.filter(pl.col("problem_id") == "b")
    assert b.select("rejected_sample_index", "rejected_reason").rows() == [
        (2, "low_step_score"),
        (1, "low_step_score"),
        (3, "longest_correct"),
    ]
    assert report.detail["pairs"] == len(out) == 6 and report.kept == 2


def test_no_kept_trace_no_pair_and_the_order_of_rows_does_not_matter():
    shuffled = ROLLOUTS.sample(fraction=1.0, shuffle=True, seed=3)
    a, _ = pairs(ROLLOUTS, PairsConfig(enabled=True), DATASET)
    b, _ = pairs(shuffled, PairsConfig(enabled=True), DATASET.reverse())
    assert a.equals(b)
    empty, report = pairs(ROLLOUTS, PairsConfig(enabled=True), DATASET.clear())
    assert empty.is_empty() and empty.columns == columns("pairs") and report.rows_in == 0


@pytest.mark.parametrize(
    "over, field",
    [
        ({"pairs.rejected": []}, "pairs.rejected"),
        ({"pairs.rejected": ["wrong", "wrong"]}, "pairs.rejected"),
        ({"pairs.rejected": ["random"]}, "pairs.rejected"),
        ({"pairs.per_problem": 0}, "pairs.per_problem"),
    ],
)
def test_a_bad_pairs_config_names_its_field(over, field):
    from tracefactory.config import load_config
    from tracefactory.errors import ConfigError

    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        load_config(None, over)
