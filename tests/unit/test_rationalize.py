"""STaR rationalization (stages/rationalize.py) with the FakeTeacher, which never solves a "squares them" step
unaided (it guesses) but, shown the answer, writes a derivation (`derive`), says it was told the answer
(`restate`) or states it after steps that derive nothing (`assert`)."""

import polars as pl
import pytest

from tracefactory.backends.factory import make_verifier
from tracefactory.backends.fake import FakeTeacher
from tracefactory.config import load_config
from tracefactory.stages.grade import grade
from tracefactory.stages.rationalize import (
    MENTIONS_HINT,
    NOT_DERIVED,
    NOT_RETURNED,
    TOO_FEW_STEPS,
    hint,
    hinted,
    rationalize,
    unsolved,
)
from tracefactory.stages.rollout import rollout

PROBLEMS = pl.DataFrame(
    {
        "problem_id": [f"sq-{k}" for k in range(4)],
        "question": [
            f"Ann has {3 + k} stones. She gets {2 + k} more. She squares them. How many stones does Ann have now?"
            for k in range(4)
        ],
        "answer": [str((5 + 2 * k) ** 2) for k in range(4)],
    }
)


def _cfg(**over):
    return load_config(None, {"grade.workers": 0, "rationalize.enabled": True, **over})


def _judge(teacher, cfg, problems=PROBLEMS):
    """The hinted requests through the teacher, graded, then the stage (as the flow runs it, minus the store)."""
    asked = hinted(problems, cfg.rationalize)
    frame, _ = rollout(asked, cfg.rollout, teacher, samples=(0, cfg.rationalize.n))
    graded, _ = grade(frame, cfg.grade, problems)
    split = (cfg.step_score.split, cfg.step_score.pattern)
    return rationalize(graded, cfg.rationalize, problems, split, make_verifier(cfg, teacher))


def test_the_fake_teacher_never_solves_these_unaided():
    cfg = _cfg()
    frame, _ = rollout(PROBLEMS, cfg.rollout, FakeTeacher(slip_rate=0.0, hints="derive"), samples=(0, 8))
    graded, _ = grade(frame, cfg.grade, PROBLEMS)
    assert not graded["correct"].any()


def test_a_derivation_is_kept_the_shortest_per_problem_and_verification_costs_tokens():
    cfg = _cfg()
    out, report = _judge(FakeTeacher(slip_rate=0.05, hints="derive"), cfg)
    kept = out.filter(pl.col("drop_reason").is_null())
    assert sorted(kept["problem_id"]) == sorted(PROBLEMS["problem_id"])  # one per problem (keep: 1)
    assert kept["rationalized"].all() and (kept["step_tokens"] > 0).all()  # verified by continuing its steps
    # the stored trace is the completion: no hint text in it, and its answer is the gold
    assert not kept["cot"].str.contains("Hint").any()
    gold = dict(PROBLEMS.select("problem_id", "answer").iter_rows())
    assert all(f"\\boxed{{{gold[p]}}}" in c for p, c in kept.select("problem_id", "cot").iter_rows())
    assert report.rows_in == len(PROBLEMS) * cfg.rationalize.n == report.kept + report.dropped
    assert report.detail == {"problems_tried": 4, "problems_recovered": 4}
    assert report.tokens == int(out["cot_tokens"].sum() + out["step_tokens"].sum())
    assert set(report.dropped_by_reason) <= {"not_shortest", "wrong_answer"}  # the rest: longer, or a slip


def test_a_rationale_that_restates_the_hint_is_dropped_by_its_words_or_by_its_steps():
    out, report = _judge(FakeTeacher(slip_rate=0.0, hints="restate"), _cfg())
    assert report.kept == 0 and report.dropped_by_reason == {MENTIONS_HINT: 16}
    # without the phrase filter, the continuation check catches it: its steps lead nowhere without the hint
    out, report = _judge(FakeTeacher(slip_rate=0.0, hints="restate"), _cfg(**{"rationalize.hint_phrases": []}))
    assert report.kept == 0 and report.dropped_by_reason == {NOT_DERIVED: 16}
    # ... and a rationale shorter than min_steps is no derivation, whatever it says
    over = {"rationalize.hint_phrases": [], "rationalize.min_steps": 3}
    out, report = _judge(FakeTeacher(slip_rate=0.0, hints="restate"), _cfg(**over))
    assert report.dropped_by_reason == {TOO_FEW_STEPS: 16} and (out["step_tokens"] == 0).all()


def test_steps_that_derive_nothing_fail_the_continuation_but_pass_the_answer_check_alone():
    out, report = _judge(FakeTeacher(slip_rate=0.0, hints="assert"), _cfg())
    assert report.kept == 0 and report.dropped_by_reason == {NOT_DERIVED: 16}
    out, report = _judge(FakeTeacher(slip_rate=0.0, hints="assert"), _cfg(**{"rationalize.verify": "answer"}))
    assert report.kept == 4  # why `verify: continue` is the default


def test_a_request_that_failed_is_counted_not_lost():
    failing = FakeTeacher(
        slip_rate=0.0, hints="derive", fail_questions=[hinted(PROBLEMS, _cfg().rationalize)["question"][0]]
    )
    out, report = _judge(failing, _cfg())
    assert report.dropped_by_reason[NOT_RETURNED] == 4 and report.detail["problems_recovered"] == 3


def test_unsolved_skips_solved_problems_suspect_golds_and_problems_without_a_gold():
    problems = PROBLEMS.with_columns(
        pl.Series("gold_suspect", [None, True, False, False]), pl.Series("answer", ["25", "49", "81", None])
    )
    graded = pl.DataFrame(
        {"problem_id": ["sq-0", "sq-1", "sq-2", "sq-2", "sq-3"], "correct": [False, False, False, True, False]}
    )
    tried, skipped = unsolved(graded, problems)
    assert tried["problem_id"].to_list() == ["sq-0"]
    assert skipped == {"skipped_gold_suspect": 1, "skipped_no_gold": 1}


def test_the_hint_keeps_latex_braces_and_a_template_without_its_fields_is_refused():
    assert (
        hint(r"Find $\frac{1}{2}$ of {x}.", "3", "{question} (answer: {answer})")
        == r"Find $\frac{1}{2}$ of {x}. (answer: 3)"
    )
    with pytest.raises(Exception, match="rationalize.hint_template"):
        _cfg(**{"rationalize.hint_template": "{question} only"})
    with pytest.raises(Exception, match="rationalize.hint_phrases"):
        _cfg(**{"rationalize.hint_phrases": ["("]})


def test_the_card_says_what_rationalization_recovered_and_how_it_was_checked():
    from tracefactory.publish.card import _rationalize
    from tracefactory.store.report import funnel_frame

    cfg = _cfg()
    _, report = _judge(FakeTeacher(slip_rate=0.05, hints="derive"), cfg)
    (line,) = _rationalize(cfg.to_dict(), funnel_frame([report]))
    assert "the 4 problems no rollout solved were asked again with the gold as a hint, 4 samples each" in line
    assert "4 problems recovered (4 rationales" in line and "without the hint" in line


@pytest.mark.parametrize("share, kept", [(0.25, 0), (0.5, 4), (None, 0)])
def test_one_lucky_continuation_is_not_a_derivation(share, kept):
    """The verdict on the share of continuations that reach the gold (the demo's one early survivor reached its
    small gold, 2, from steps whose arithmetic was wrong: one continuation of four did)."""
    cfg = _cfg()
    asked = hinted(PROBLEMS, cfg.rationalize)
    frame, _ = rollout(asked, cfg.rollout, FakeTeacher(slip_rate=0.0, hints="derive"), samples=(0, cfg.rationalize.n))
    graded, _ = grade(frame, cfg.grade, PROBLEMS)
    split = (cfg.step_score.split, cfg.step_score.pattern)
    out, report = rationalize(graded, cfg.rationalize, PROBLEMS, split, lambda items: [(share, 10)] * len(items))
    assert report.kept == kept
    if not kept:
        assert set(report.dropped_by_reason) == {NOT_DERIVED if share is not None else "unverified"}
