"""Stage unit tests on small hand-made frames and the deterministic FakeTeacher."""

import polars as pl
import pytest

from tracefactory.backends.fake import FakeTeacher
from tracefactory.config import CurriculumConfig, DifficultyConfig, GradeConfig, PromptConfig, SelectConfig, load_config
from tracefactory.stages.curriculum import MESSAGES_TYPE, conversations, curriculum, messages
from tracefactory.stages.difficulty import difficulty, wilson
from tracefactory.stages.grade import grade
from tracefactory.stages.rollout import request_seed, rollout
from tracefactory.stages.select import select, selected
from tracefactory.store.report import StageReport
from tracefactory.training.synth import generate

PROBLEMS = pl.DataFrame(
    [
        {"problem_id": p.id, "question": p.question, "answer": p.answer, "source": "t", "level": str(p.level)}
        for p in generate(4, seed=7)
    ]
)


def _rollouts(rows):
    base = {"rollout_key": "k", "seed": 0, "teacher": "t", "finish_reason": "stop"}
    return pl.DataFrame([{**base, **r} for r in rows])


def test_rollout_one_call_k_samples_and_stable_seeds():
    cfg = load_config(None, {"sampling.n": 3})
    teacher = FakeTeacher(slip_rate=0.2)
    frame, report = rollout(PROBLEMS, cfg.rollout, teacher)
    assert teacher.calls == [len(PROBLEMS)]  # the whole batch in one generate()
    assert len(frame) == 3 * len(PROBLEMS) and report.kept == report.rows_in
    assert frame.group_by("problem_id").agg(pl.col("sample_index").sort())["sample_index"].to_list()[0] == [0, 1, 2]
    # a problem's request seed does not depend on which batch it is in
    again, _ = rollout(PROBLEMS.reverse().head(5), cfg.rollout, FakeTeacher(slip_rate=0.2))
    joined = again.join(frame, on=["problem_id", "sample_index"], suffix="_b")
    assert (joined["text"] == joined["text_b"]).all() and (joined["seed"] == joined["seed_b"]).all()
    assert report.tokens == frame["cot_tokens"].sum()
    assert request_seed(0, "a") != request_seed(1, "a") and request_seed(0, "a") < 2**31 - 2**16


def test_grade_marks_reasons_and_truncation():
    rows = [
        {
            "problem_id": "L1-0000",
            "sample_index": 0,
            "text": "x\nThe answer is \\boxed{%s}." % PROBLEMS["answer"][0],
            "cot_tokens": 10,
        },
        {"problem_id": "L1-0000", "sample_index": 1, "text": "The answer is \\boxed{-99999}.", "cot_tokens": 5},
        {"problem_id": "L1-0000", "sample_index": 2, "text": "I give up", "cot_tokens": 3},
        {
            "problem_id": "L1-0000",
            "sample_index": 3,
            "text": "\\boxed{%s}" % PROBLEMS["answer"][0],
            "cot_tokens": 200,
            "finish_reason": "length",
        },
    ]
    out, report = grade(_rollouts(rows), GradeConfig(workers=0), PROBLEMS)
    assert out["correct"].to_list() == [True, False, False, False]
    assert out["drop_reason"].to_list() == [None, "wrong_answer", "no_answer", "truncated"]
    assert report.kept == 1 and report.dropped_by_reason == {"no_answer": 1, "truncated": 1, "wrong_answer": 1}


def _graded(rows):
    return _rollouts(
        [{"text": "t", "pred_answer": "1", "drop_reason": None if r["correct"] else "wrong_answer", **r} for r in rows]
    )


def test_select_keeps_shortest_correct_with_stable_ties():
    rows = [
        {"problem_id": "a", "sample_index": i, "cot_tokens": t, "correct": c}
        for i, (t, c) in enumerate([(30, True), (10, False), (20, True), (20, True)])
    ]
    out, report = select(_graded(rows), SelectConfig(keep=1))
    assert selected(out)["sample_index"].to_list() == [2]  # 20 tokens, lower index wins the tie
    assert report.rows_in == 3 and report.kept == 1 and report.dropped_by_reason == {"not_shortest": 2}
    out2, _ = select(_graded(rows), SelectConfig(keep=2))
    assert sorted(selected(out2)["sample_index"].to_list()) == [2, 3]
    assert out["drop_reason"][1] == "wrong_answer"  # annotations of other stages are kept


def test_wilson_interval():
    lo, hi = wilson(8, 8)
    assert hi == pytest.approx(1.0) and 0.6 < lo < 0.7
    lo, hi = wilson(0, 8)
    assert lo == 0.0 and 0.3 < hi < 0.4
    lo, hi = wilson(4, 8)
    assert lo < 0.5 < hi and (0.5 - lo) == pytest.approx(hi - 0.5)


def test_difficulty_buckets_and_unsolved_stay():
    probs = PROBLEMS.head(4)
    ids = probs["problem_id"].to_list()
    pattern = {ids[0]: [True] * 8, ids[1]: [True] * 4 + [False] * 4, ids[2]: [True] + [False] * 7, ids[3]: [False] * 8}
    rows = [
        {"problem_id": pid, "sample_index": i, "correct": c, "cot_tokens": 5}
        for pid, cs in pattern.items()
        for i, c in enumerate(cs)
    ]
    out, report = difficulty(probs, DifficultyConfig(), _graded(rows))
    tags = dict(out.select("problem_id", "difficulty").iter_rows())
    assert [tags[i] for i in ids] == ["easy", "medium", "hard", "unsolved"]
    assert out["n_rollouts"].to_list() == [8] * 4 and out["pass_rate"].to_list() == [1.0, 0.5, 0.125, 0.0]
    assert report.kept == 3 and report.dropped_by_reason == {"unsolved": 1}


def test_curriculum_orders_easy_to_hard_with_stable_ranks():
    cfg = load_config(None, {"sampling.n": 8})
    gens, _ = rollout(PROBLEMS, cfg.rollout, FakeTeacher(slip_rate=0.08))
    graded, _ = grade(gens, GradeConfig(workers=0), PROBLEMS)
    chosen, _ = select(graded, SelectConfig())
    tagged, _ = difficulty(PROBLEMS, DifficultyConfig(), chosen)
    data, report = curriculum(chosen, CurriculumConfig(), tagged)
    assert data["curriculum_rank"].to_list() == list(range(len(data)))
    rates = data["pass_rate"].to_list()
    assert rates == sorted(rates, reverse=True) and rates[0] > rates[-1]
    again, _ = curriculum(chosen.reverse(), CurriculumConfig(), tagged.reverse())
    assert again.equals(data)
    hard_first, _ = curriculum(chosen, CurriculumConfig(order="hard_first"), tagged)
    assert hard_first["pass_rate"].to_list() == sorted(rates) and len(hard_first) == len(data)
    for row in data.iter_rows(named=True):
        assert f"\\boxed{{{row['answer']}}}" in row["cot"]
    assert report.rows_in == report.kept == len(data) == len(selected(chosen))


def test_stage_report_must_add_up():
    with pytest.raises(ValueError, match="does not add up"):
        StageReport("x", "rows", 10, 5, {"bad": 4})


@pytest.mark.parametrize(
    "prompt",
    [
        PromptConfig(),
        PromptConfig(template="Q: {question}\nThink first.", system="You are careful."),
        PromptConfig(template="{question} =", chat=False),
    ],
)
def test_conversations_built_as_columns_equal_each_trace_built_alone(prompt):
    questions = ["What is 2+2?", "", "Ünïcode \\frac{1}{2} ✓", "a\nb"] * 3
    cots = ["<think>\nadd</think> 4", "x", "", "\\boxed{5}"] * 3
    built = conversations(pl.Series(questions), pl.Series(cots), prompt)
    assert built.to_list() == [messages(q, c, prompt) for q, c in zip(questions, cots, strict=True)]
    assert built.dtype == MESSAGES_TYPE
    assert conversations(pl.Series([], dtype=pl.String), pl.Series([], dtype=pl.String), prompt).dtype == MESSAGES_TYPE
