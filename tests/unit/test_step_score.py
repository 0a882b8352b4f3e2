"""Step segmentation, Monte-Carlo step scores (binary search vs every prefix), the step filter."""

import polars as pl
import pytest

from tracefactory.backends.fake import FakeTeacher
from tracefactory.backends.scorers import MonteCarloScorer, StepItem, reuse_pool
from tracefactory.config import GradeConfig, PromptConfig, SamplingConfig, StepScoreConfig, load_config
from tracefactory.grading.steps import split_steps
from tracefactory.grading.verify import judge_texts
from tracefactory.stages.grade import grade
from tracefactory.stages.rollout import rollout
from tracefactory.stages.step_score import LOW_STEP_SCORE, step_score
from tracefactory.training.synth import generate, make_problem


@pytest.mark.parametrize(
    "text,mode,expected",
    [
        ("a = 1\nb = 2\n\nThe answer is 3.", "line", ["a = 1", "b = 2", "The answer is 3."]),
        ("a = 1\nb = 2\n\nThe answer is 3.", "blank_line", ["a = 1\nb = 2", "The answer is 3."]),
        ("\n\n  \n", "line", []),
        ("", "blank_line", []),
        ("one. Step 2: two. Step 3: three", "regex", ["one.", "two.", "three"]),
    ],
)
def test_split_steps(text, mode, expected):
    assert split_steps(text, mode, r"Step \d+:") == expected


def _scorer(teacher, search="binary", reuse=None, n=4, label="soft"):
    return MonteCarloScorer(
        teacher,
        lambda pairs: judge_texts(pairs, workers=0),
        PromptConfig(),
        SamplingConfig(n=n, max_tokens=200),
        search=search,
        reuse=reuse,
        label=label,
    )


OPS = {"+": int.__add__, "-": int.__sub__, "*": int.__mul__, "/": int.__floordiv__}


def plant(lines, at, delta=7):
    """A slip in equation `at`, carried through the later equations (as a model that erred would),
    while the last line still states the original answer: right answer, wrong reasoning."""
    out, value = list(lines), None
    for k in range(at, len(lines) - 1):
        a, op, b = out[k].split(" = ")[0].split(" ")
        a = int(a) if value is None else value
        value = OPS[op](a, int(b)) + (delta if k == at else 0)
        out[k] = f"{a} {op} {b} = {value}"
    return out


def _planted(level=5, seed=3, at=1):
    import random

    p = make_problem(random.Random(seed), level, "p")
    return p, StepItem(p.id, p.question, p.answer, tuple(plant(p.solution.splitlines(), at)), seed=11)


def test_planted_error_scores_low_from_the_planted_step_on():
    p, item = _planted(at=2)
    clean = StepItem(p.id, p.question, p.answer, tuple(p.solution.splitlines()), seed=11)
    bad, good = _scorer(FakeTeacher(slip_rate=0.0), search="all").score([item, clean])
    assert bad.first_bad_step == 2
    assert bad.scores[:2] == [1.0, 1.0] and all(s == 0.0 for s in bad.scores[2:])
    assert good.first_bad_step is None and min(good.scores) == 1.0


def test_binary_search_finds_the_same_first_bad_step_with_fewer_tokens():
    cases = [_planted(level=5, seed=s, at=a) for s in range(4) for a in range(5)]
    items = [it for _, it in cases]
    binary = _scorer(FakeTeacher(slip_rate=0.0)).score(items)
    every = _scorer(FakeTeacher(slip_rate=0.0), search="all").score(items)
    assert (
        [b.first_bad_step for b in binary]
        == [e.first_bad_step for e in every]
        == [a for _ in range(4) for a in range(5)]
    )
    assert sum(b.tokens for b in binary) * 1.3 < sum(e.tokens for e in every)
    assert sum(b.probes for b in binary) < sum(e.probes for e in every)


def _mixed_items():
    """Planted-error and clean level-5 traces, for a teacher that slips (noisy, non-trivial values)."""
    items = []
    for seed in range(4):
        p, planted = _planted(level=5, seed=seed, at=1 + seed % 3)
        items += [planted, StepItem(p.id, p.question, p.answer, tuple(p.solution.splitlines()), seed=seed)]
    return items


def test_hard_labels_stop_at_the_first_success_and_equal_fixed_n_labels():
    items = _mixed_items()
    soft = _scorer(FakeTeacher(slip_rate=0.1), search="all", n=6).score(items)
    hard = _scorer(FakeTeacher(slip_rate=0.1), search="all", n=6, label="hard").score(items)
    assert any(0 < v < 1 for r in soft for v in r.scores)  # the teacher really slips: soft values vary
    for s, h in zip(soft, hard, strict=True):
        assert h.scores == [float(v > 0) for v in s.scores]
        assert h.first_bad_step == s.first_bad_step
    assert sum(h.tokens for h in hard) * 2 < sum(s.tokens for s in soft)


def test_scan_stops_at_the_first_bad_step_and_agrees_with_every_prefix():
    items = _mixed_items()
    every = _scorer(FakeTeacher(slip_rate=0.1), search="all", n=6, label="hard").score(items)
    scan = _scorer(FakeTeacher(slip_rate=0.1), search="scan", n=6, label="hard").score(items)
    assert [r.first_bad_step for r in scan] == [r.first_bad_step for r in every]
    assert any(r.first_bad_step is not None for r in every) and any(r.first_bad_step is None for r in every)
    for s, e, it in zip(scan, every, items, strict=True):
        assert s.scores == e.scores
        stop = e.first_bad_step if e.first_bad_step is not None else len(it.steps) - 2
        assert s.probes == stop + 1 <= e.probes


def test_rollout_completions_sharing_a_prefix_are_reused():
    p, item = _planted(at=3)
    head = item.steps[:2]
    pool = {p.id: [(head + ("x = 1", "The answer is \\boxed{%s}." % p.answer), True)] * 4}
    fresh = _scorer(FakeTeacher(slip_rate=0.0), search="all").score([item])[0]
    reused = _scorer(FakeTeacher(slip_rate=0.0), search="all", reuse=pool).score([item])[0]
    assert reused.first_bad_step == fresh.first_bad_step == 3
    assert reused.tokens < fresh.tokens


def _graded(count: int, seed: int, levels: tuple[int, ...], n: int, slip_rate: float = 0.0):
    """`count` generated problems per level, rolled out `n` times by the fake teacher and graded."""
    cfg = load_config(None, {"sampling.n": n})
    problems = pl.DataFrame(
        [
            {"problem_id": p.id, "question": p.question, "answer": p.answer, "source": "t", "level": str(p.level)}
            for p in generate(count, seed=seed, levels=levels)
        ]
    )
    gens, _ = rollout(problems, cfg.rollout, FakeTeacher(slip_rate=slip_rate))
    graded, _ = grade(gens, GradeConfig(workers=0), problems)
    return problems, graded


def test_single_step_and_stage_filter_annotate_before_dropping():
    problems, graded = _graded(3, seed=5, levels=(3, 4), n=4)
    # plant a slip in the middle of one correct trace: it still "looks" finished but its step 1 is wrong
    text = plant(graded["text"][0].splitlines(), 1)
    graded = graded.with_columns(
        pl.when(pl.int_range(pl.len()) == 0).then(pl.lit("\n".join(text))).otherwise(pl.col("text")).alias("text")
    )
    scfg = StepScoreConfig(enabled=True, n=3)
    scorer = _scorer(FakeTeacher(slip_rate=0.0), reuse=reuse_pool(graded, scfg.split, scfg.pattern), n=3)
    out, report = step_score(graded, scfg, problems, scorer)
    row = out.row(0, named=True)
    assert row["drop_reason"] == LOW_STEP_SCORE and row["first_bad_step"] == 1 and row["prm_min"] == 0.0
    assert row["steps"] == text and len(row["step_scores"]) == len(text)
    assert report.rows_in == int(graded["correct"].sum()) and report.dropped_by_reason == {LOW_STEP_SCORE: 1}
    kept = out.filter(pl.col("drop_reason").is_null())
    assert (kept["prm_min"] > 0).all() and kept["first_bad_step"].is_null().all()
    assert _scorer(FakeTeacher()).score([StepItem("a", "q", "1", ("The answer is 1.",))])[0].scores == [1.0]


def test_prefixes_longer_than_the_teachers_context_are_skipped_not_crashed():
    p, item = _planted(level=5, seed=1, at=3)
    short = StepItem(
        "s",
        "Ann has 3 pens. She gets 2 more. How many pens does Ann have now?",
        "5",
        ("3 + 2 = 5", "The answer is \\boxed{5}."),
    )
    teacher = FakeTeacher(slip_rate=0.0, context_chars=len(p.question) + 20)
    long_res, short_res = _scorer(teacher, search="all").score([item, short])
    assert long_res.note == "too_long" and long_res.scores == []
    assert short_res.note is None and short_res.scores == [1.0, 1.0]


def test_a_teacher_that_fails_for_good_leaves_the_trace_unscored_as_teacher_error():
    p, item = _planted(level=3, seed=2, at=1)
    teacher = FakeTeacher(slip_rate=0.0, fail_questions=[p.question])
    [res] = _scorer(teacher, search="all").score([item])
    assert res.note == "teacher_error" and res.scores == []


@pytest.mark.parametrize("policy", ["keep", "drop"])
@pytest.mark.parametrize("max_steps,why", [(64, "too_long"), (5, "too_many_steps")])
def test_unscorable_traces_are_kept_or_dropped_with_their_reason(policy, max_steps, why):
    problems, graded = _graded(2, seed=9, levels=(1, 5), n=2)
    level = dict(problems.select("problem_id", "level").iter_rows())
    room = max(len(q) for q, lvl in problems.select("question", "level").iter_rows() if lvl == "1") + 40
    assert all(len(q) > room for q, lvl in problems.select("question", "level").iter_rows() if lvl == "5")
    teacher = FakeTeacher(slip_rate=0.0, context_chars=room)  # level-1 prefixes fit, level-5 questions do not
    scfg = StepScoreConfig(enabled=True, n=2, max_steps=max_steps, unscored=policy)
    out, report = step_score(graded, scfg, problems, _scorer(teacher, n=2))
    assert report.rows_in == int(graded["correct"].sum()) == report.kept + report.dropped
    correct = out.filter(pl.col("correct"))
    by_level = {lvl: correct.filter(pl.col("problem_id").replace_strict(level) == lvl) for lvl in ("1", "5")}
    assert len(by_level["5"]) > 0 and by_level["5"]["step_scores"].is_null().all()
    assert by_level["1"]["step_scores"].is_not_null().all()
    if policy == "drop":
        assert set(by_level["5"]["drop_reason"]) == {f"unscored_{why}"}
        assert report.dropped_by_reason == {f"unscored_{why}": len(by_level["5"])}
    else:
        assert by_level["5"]["drop_reason"].is_null().all()
        assert report.dropped_by_reason == {} and report.kept == report.rows_in


def test_step_scores_are_persisted_block_by_block():
    from tracefactory.backends.scorers import CachedScorer

    items = _mixed_items()
    saved = []

    class DiesOnThirdBlock:
        name = "mc"
        calls = 0

        def close(self):
            pass

        def score(self, chunk):
            self.calls += 1
            if self.calls == 3:
                raise RuntimeError("engine died")
            return _scorer(FakeTeacher(slip_rate=0.0), n=2).score(chunk)

    cache = {}
    scorer = CachedScorer(DiesOnThirdBlock(), cache, block=3, on_block=lambda: saved.append(len(cache)))
    with pytest.raises(RuntimeError):
        scorer.score(items)
    assert saved == [3, 6] and len(cache) == 6  # two blocks done and saved before the crash
    again = DiesOnThirdBlock()
    again.calls = 10  # a healthy engine: only the 2 unscored traces are scored
    results = CachedScorer(again, cache, block=3).score(items)
    assert again.calls == 11 and len(results) == len(items) == 8


def test_scope_all_scores_wrong_answer_traces_without_filtering_them():
    problems, graded = _graded(4, seed=7, levels=(2, 3), n=4, slip_rate=0.3)
    wrong = graded["drop_reason"] == "wrong_answer"
    assert wrong.any() and graded["correct"].any()
    runs = {}
    for scope in ("correct", "all"):
        scfg = StepScoreConfig(enabled=True, n=3, search="scan", scope=scope)
        scorer = _scorer(FakeTeacher(slip_rate=0.0), reuse=reuse_pool(graded, scfg.split, scfg.pattern), n=3)
        runs[scope] = step_score(graded, scfg, problems, scorer)
    (narrow, r1), (wide, r2) = runs["correct"], runs["all"]
    assert narrow.filter(wrong)["step_scores"].is_null().all()
    scored_wrong = wide.filter(wrong)
    assert scored_wrong["step_scores"].is_not_null().all()
    # a wrong answer has a bad step somewhere, and the teacher that slips never finishes from it
    assert scored_wrong["first_bad_step"].is_not_null().all()
    assert (scored_wrong["drop_reason"] == "wrong_answer").all()  # still dropped as before, not low_step_score
    # the correct traces and the funnel row are the same either way
    assert wide.filter(~wrong).equals(narrow.filter(~wrong))
    assert (r1.rows_in, r1.kept, r1.dropped_by_reason) == (r2.rows_in, r2.kept, r2.dropped_by_reason)
    assert r2.tokens > r1.tokens
