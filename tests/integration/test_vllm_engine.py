"""The embedded teachers under the real vLLM CPU engine — the default R1-shaped one (data/teacher) and the plain one
(data/teacher-plain) — and the whole flow on each."""

import json

import polars as pl
import pytest

from tracefactory.backends.prompts import build_prompt
from tracefactory.config import SamplingConfig, load_config
from tracefactory.grading.verify import extract_answer, is_correct
from tracefactory.publish.query import query
from tracefactory.store.schema import columns
from tracefactory.training.synth import generate

pytestmark = pytest.mark.vllm
PARAMS = SamplingConfig(n=4, temperature=0.7, max_tokens=200)


def _chat(q):
    return [{"role": "user", "content": q}]


def test_seeded_requests_do_not_depend_on_the_batch(plain_teacher):
    qs = [p.question for p in generate(1, seed=3)]  # one problem per level
    seeds = [11, 22, 33, 44, 55]
    full = [r.completions for r in plain_teacher.generate([_chat(q) for q in qs], 4, PARAMS, seeds)]
    part = [
        r.completions for r in plain_teacher.generate([_chat(qs[4]), _chat(qs[0])], 4, PARAMS, [seeds[4], seeds[0]])
    ]
    assert [c.text for c in part[0]] == [c.text for c in full[4]]
    assert [c.text for c in part[1]] == [c.text for c in full[0]]
    for completions in full:
        assert [c.index for c in completions] == [0, 1, 2, 3]
        for c in completions:
            assert c.finish_reason in ("stop", "length") and 0 < c.tokens <= 200
            assert c.tokens in (len(c.text), len(c.text) + 1)  # char-level tokenizer (+ EOS when stopped)
    assert len({c.text for c in full[4]}) > 1  # K samples, not K copies
    # sample j of a request seeded s is the first sample of one seeded s + j: rounds of an adaptive budget draw
    # what one request of K would (samples 2-3 asked alone, seeded +2)
    later = plain_teacher.generate([_chat(qs[4])], 2, PARAMS, [seeds[4] + 2])[0].completions
    assert [(c.text, c.tokens) for c in later] == [(c.text, c.tokens) for c in full[4][2:]]


@pytest.mark.parametrize("which", ["plain_teacher", "embedded_teacher"])
def test_teacher_solves_the_easiest_level(which, request):
    """Both teachers reach the gold on most level-1 samples (measured on 320: 0.934 each, bench/teacher_quality.py);
    the R1-shaped one's answer is read after its `</think>`, as the factory grades it."""
    from tracefactory.grading.think import ThinkSpec, opener_of
    from tracefactory.grading.verify import answer_of

    teacher = request.getfixturevalue(which)
    problems = [p for p in generate(10, seed=99, levels=(1,))]
    outs = teacher.generate([_chat(p.question) for p in problems], 4, PARAMS, list(range(10)))
    think = ThinkSpec("auto", opener_of(teacher.render(_chat(problems[0].question))))
    assert bool(think.opener) == (which == "embedded_teacher")
    answers = [
        (p.answer, answer_of(c.text, None, think)) for p, r in zip(problems, outs, strict=True) for c in r.completions
    ]
    right = sum(a is not None and is_correct(gold, a)[0] for gold, a in answers)
    assert right / 40 >= 0.8


def test_flow_on_the_plain_teacher(plain_run):
    out, result = plain_run
    data = pl.read_parquet(out / "dataset")
    assert data.columns == columns("dataset") and len(data) == result["dataset_rows"] > 0
    for gold, cot in zip(data["answer"], data["cot"], strict=True):
        assert is_correct(gold, extract_answer(cot))[0]
    rates = data["pass_rate"].to_list()
    assert rates == sorted(rates, reverse=True)
    # the demo config rewrites: re-numbered variants with their re-derived golds reach the dataset
    _, (variants,) = query(out, "SELECT count(*) FROM problems WHERE rewrite_kind = 'perturb'")
    assert variants[0] >= 40 and data["rewrite_of"].drop_nulls().len() > 0
    assert data["curriculum_rank"].to_list() == list(range(len(data)))
    _, buckets = query(out, "SELECT difficulty, count(*) FROM dataset GROUP BY difficulty")
    assert len(buckets) >= 3
    _, by_level = query(out, "SELECT level, avg(pass_rate) FROM problems GROUP BY level ORDER BY level")
    assert by_level[0][1] > by_level[-1][1]  # the teacher is better at level 1 than at level 5
    _, funnel = query(out, "SELECT rows_in, kept, dropped FROM funnel")
    assert all(i == k + d for i, k, d in funnel)
    # a teacher that does not think: the cot is the completion, the whole of it the response
    assert data["reasoning"].is_null().all() and data["think_closed"].is_null().all()
    assert (data["cot"] == data["response"]).all() and (data["response_tokens"] == data["cot_tokens"]).all()
    assert [m[-1]["content"] for m in data["messages"].to_list()] == data["cot"].to_list()


def test_the_r1_shaped_teacher_through_the_flow(demo_run):
    """The demo (the embedded R1-shaped teacher): the template's opening restored in every cot, reasoning and
    response apart, the answer read from the response, unclosed blocks counted and never graded correct."""
    out, result = demo_run
    data = pl.read_parquet(out / "dataset")
    assert len(data) == result["dataset_rows"] > 0
    assert data["cot"].str.starts_with("<think>\n").all() and data["cot"].str.contains("</think>").all()
    assert data["reasoning"].is_not_null().all() and (data["response"].str.len_chars() > 0).all()
    assert data["think_closed"].all()
    assert (data["reasoning_tokens"] + data["response_tokens"] == data["cot_tokens"]).all()
    for gold, response in zip(data["answer"], data["response"], strict=True):
        assert is_correct(gold, extract_answer(response))[0]
    rollouts = pl.read_parquet(out / "rollouts")
    # ~1% of this teacher's completions stop inside the block (the demo: 54 of 4,704): maybe none of these 470
    unclosed = rollouts.filter(pl.col("drop_reason") == "think_unclosed")
    assert not unclosed["think_closed"].any() and not unclosed["correct"].any()
    assert len(unclosed) == rollouts.filter(pl.col("think_closed").not_() & (pl.col("finish_reason") == "stop")).height
    assert (unclosed["finish_reason"] == "stop").all()
    assert (unclosed["reasoning_tokens"] == unclosed["cot_tokens"]).all()
    grade = pl.read_parquet(out / "funnel").filter(pl.col("stage") == "grade")
    assert json.loads(grade["dropped_by_reason"][0]).get("think_unclosed", 0) == len(unclosed)
    # steps are the reasoning's, never the summary after </think>
    scored = rollouts.filter(pl.col("steps").is_not_null() & pl.col("think_closed"))
    for steps, reasoning in scored.select("steps", "reasoning").head(50).iter_rows():
        assert "\n".join(steps) == reasoning.strip() and not any("boxed" in s for s in steps)


def test_a_real_cut_inside_the_block_is_never_an_answer(embedded_teacher):
    """The embedded teacher's completions of level-5 problems cut at 24 tokens, inside the think block: no end tag,
    no token count for the reasoning, and no answer read from them, whatever they hold."""
    from tracefactory.grading.think import ThinkSpec, dissect, opener_of
    from tracefactory.grading.verify import answer_of

    problems = generate(3, seed=8, levels=(5,))
    outs = embedded_teacher.generate([_chat(p.question) for p in problems], 2, SamplingConfig(n=2, max_tokens=24))
    think = ThinkSpec("auto", opener_of(embedded_teacher.render(_chat(problems[0].question))))
    cut = [c for r in outs for c in r.completions]
    assert len(cut) == 6 and all(c.finish_reason == "length" and c.tokens == 24 for c in cut)
    for c in cut:
        assert dissect(c.text, think.opener, think.mode).closed is False and c.reasoning_tokens is None
        assert answer_of(c.text, None, think) is None


def test_messages_are_the_prompt_the_teacher_saw_and_the_turn_it_wrote(demo_run, embedded_teacher):
    """Rendering a row's conversation up to the user turn with the teacher's chat template gives exactly the prompt
    the teacher was sent; the assistant turn is the template's generation prefix + the completion."""
    out, _ = demo_run
    data = pl.read_parquet(out / "dataset")
    texts = dict(
        pl.read_parquet(out / "rollouts")
        .select(pl.concat_str("problem_id", pl.col("sample_index").cast(str)), "text")
        .iter_rows()
    )
    tok = embedded_teacher.tokenizer()
    cfg = load_config(None, {"source.path": "x"})
    for row in data.head(20).iter_rows(named=True):
        *prompt, answer = row["messages"]
        sent = embedded_teacher.render(build_prompt(row["question"], cfg.prompt))
        rendered = tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        assert rendered == sent and sent.endswith("A: <think>\n")
        completion = texts[row["problem_id"] + str(row["sample_index"])]
        assert answer == {"role": "assistant", "content": "<think>\n" + completion} and answer["content"] == row["cot"]
    # why the assistant turn is stored, never re-rendered: the R1-style template drops the reasoning of a past turn
    again = tok.apply_chat_template(data["messages"][0].to_list(), tokenize=False)
    assert data["cot"][0] not in again and "<think>" not in again and "</think>" not in again
    assert data["response"][0] in again


def test_monte_carlo_scores_a_planted_error_low(plain_teacher):
    """A correct level-2 trace of the real teacher, with a slip planted in its second equation (carried
    into later equations, final answer unchanged): the first step stays high, the planted one and
    everything after it score 0."""
    from tracefactory.backends.scorers import MonteCarloScorer, StepItem
    from tracefactory.config import PromptConfig
    from tracefactory.grading.verify import judge_texts

    problems = generate(6, seed=21, levels=(2,))
    outs = plain_teacher.generate([_chat(p.question) for p in problems], 4, PARAMS, list(range(6)))
    p, trace = next(
        (p, c.text)
        for p, r in zip(problems, outs, strict=True)
        for c in r.completions
        if is_correct(p.answer, extract_answer(c.text))[0]
    )
    lines = trace.splitlines()
    lhs, value = lines[1].rsplit("= ", 1)
    lines[1] = f"{lhs}= {int(value) + 9}"  # a level-2 trace: two equations, then the answer line
    scorer = MonteCarloScorer(
        plain_teacher,
        lambda pairs: judge_texts(pairs),
        PromptConfig(),
        SamplingConfig(n=8, temperature=0.7, max_tokens=200),
        search="all",
    )
    planted, clean = scorer.score(
        [
            StepItem(p.id, p.question, p.answer, tuple(lines), seed=5),
            StepItem(p.id, p.question, p.answer, tuple(trace.splitlines()), seed=5),
        ]
    )
    assert planted.scores[0] >= 0.5
    assert planted.first_bad_step == 1 and planted.scores[1:] == [0.0] * (len(lines) - 1)
    assert clean.first_bad_step is None and min(clean.scores) >= 0.5


def test_the_paraphrase_gate_rejects_what_the_plain_teacher_writes(plain_teacher):
    """The plain embedded teacher cannot paraphrase (it only ever learned to solve): every attempt must be
    refused — by the parser or by the answer-preservation gate — and counted by its reason."""
    from functools import partial

    from tracefactory.config import load_config
    from tracefactory.grading.verify import judge_texts
    from tracefactory.stages.load import load, partition
    from tracefactory.stages.rewrite import Paraphraser, rewrite
    from tracefactory.store.sources import read_source

    cfg = load_config(None, {"source.limit": 20, "rewrite.kinds": ["paraphrase"], "rewrite.variants": 2})
    problems, _ = partition(load(read_source(cfg.source), cfg.source, lambda golds: {g: None for g in golds})[0])
    p = Paraphraser(plain_teacher, partial(judge_texts, workers=0), cfg.prompt, cfg.sampling)
    out, report = rewrite(problems, cfg.rewrite, p)
    assert report.rows_in == 40 and report.kept == 0 and len(out) == 20
    assert sum(report.dropped_by_reason.values()) == 40
    assert set(report.dropped_by_reason) <= {
        "solved_not_paraphrased",
        "numbers_changed",
        "paraphrase_unparseable",
        "paraphrase_identical",
        "paraphrase_empty",
        "not_answer_preserving",
    }
