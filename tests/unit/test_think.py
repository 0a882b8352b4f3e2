"""Trace anatomy: think blocks, where the answer is read from, and the grade stage's refusals."""

import httpx
import polars as pl
import pytest

from tracefactory.backends.fake import FakeTeacher
from tracefactory.backends.openai_teacher import OpenAITeacher, rejoin
from tracefactory.config import GradeConfig, PromptConfig, RolloutConfig, SamplingConfig, TeacherConfig
from tracefactory.grading.think import EMPTY_RESPONSE, MALFORMED, UNCLOSED, ThinkSpec, dissect, opener_of, split_tokens
from tracefactory.stages.grade import grade
from tracefactory.stages.rollout import rollout

R1 = "<think>\n"

# (completion as generated, template opener, mode) -> (cot, reasoning, response, closed, problem)
CASES = [
    # the template opened the block (R1-distill): the opening is restored in front
    (
        "7 + 5 = 12\n</think>\n\nSo \\boxed{12}.",
        R1,
        "auto",
        (R1 + "7 + 5 = 12\n</think>\n\nSo \\boxed{12}.", "7 + 5 = 12", "So \\boxed{12}.", True, None),
    ),
    # the model opened it itself (QwQ / Qwen3 style): nothing to restore
    (
        "<think>\nhm\n</think>\nok \\boxed{1}",
        "",
        "auto",
        ("<think>\nhm\n</think>\nok \\boxed{1}", "hm", "ok \\boxed{1}", True, None),
    ),
    # a tentative answer inside an unclosed block is no answer
    (
        "7 + 5 = 12\nThe answer is \\boxed{12}.",
        R1,
        "auto",
        (R1 + "7 + 5 = 12\nThe answer is \\boxed{12}.", "7 + 5 = 12\nThe answer is \\boxed{12}.", "", False, UNCLOSED),
    ),
    # the end tag without the opening and an unknown template: the R1 convention restores `<think>\n`
    ("a\n</think>\n\n\\boxed{2}", "", "auto", (R1 + "a\n</think>\n\n\\boxed{2}", "a", "\\boxed{2}", True, None)),
    # closed twice, or opened again inside: refused
    (
        "a\n</think>\nb\n</think>\n\\boxed{2}",
        R1,
        "auto",
        (R1 + "a\n</think>\nb\n</think>\n\\boxed{2}", "a", "b\n</think>\n\\boxed{2}", True, MALFORMED),
    ),
    (
        "a\n<think>\nb\n</think>\n\\boxed{2}",
        R1,
        "auto",
        (R1 + "a\n<think>\nb\n</think>\n\\boxed{2}", "a\n<think>\nb", "\\boxed{2}", True, MALFORMED),
    ),
    # closed with nothing after it
    ("a\n</think>\n\n", R1, "auto", (R1 + "a\n</think>\n\n", "a", "", True, EMPTY_RESPONSE)),
    # a teacher that does not think: the whole completion is the answer text
    (
        "5 + 2 = 7\nThe answer is \\boxed{7}.",
        "",
        "auto",
        ("5 + 2 = 7\nThe answer is \\boxed{7}.", None, "5 + 2 = 7\nThe answer is \\boxed{7}.", None, None),
    ),
    # thinking forced on for a completion without tags: it never closed its block
    ("5 + 2 = 7", "", "on", (R1 + "5 + 2 = 7", "5 + 2 = 7", "", False, UNCLOSED)),
    # thinking off: tags are plain text
    ("a\n</think>\n\\boxed{2}", R1, "off", ("a\n</think>\n\\boxed{2}", None, "a\n</think>\n\\boxed{2}", None, None)),
]


@pytest.mark.parametrize("text,opener,mode,want", CASES)
def test_dissect(text, opener, mode, want):
    a = dissect(text, opener, mode)
    assert (a.cot, a.reasoning, a.response, a.closed, a.problem) == want


def test_opener_of_rendered_prompts():
    assert opener_of("Q: hi\nA: <think>\n") == "<think>\n"
    assert opener_of("<|Assistant|><think>\n") == "<think>\n"
    assert opener_of("Q: hi\nA: ") == ""
    assert opener_of("Q: what does <think> mean?\nA: ") == ""  # a tag in the question opens nothing


def test_token_split():
    text = "abcd</think>ef"
    a = dissect(text, R1)
    assert split_tokens(10, text, a, 6) == (6, 4)  # the teacher's own count wins
    assert split_tokens(14, text, a, None) == (12, 2)  # else by characters
    assert split_tokens(9, "abc", dissect("abc", R1), None) == (9, 0)  # unclosed: all reasoning
    assert split_tokens(9, "abc", dissect("abc", ""), None) == (None, 9)  # no block


def _problems(fake, n=40):
    from tracefactory.training.synth import generate

    ps = generate(n // 5, seed=3)
    return pl.DataFrame(
        {"problem_id": [p.id for p in ps], "question": [p.question for p in ps], "answer": [p.answer for p in ps]}
    )


def test_grade_reads_the_response_only_and_refuses_unclosed_blocks():
    fake = FakeTeacher(thinks=True, unclosed_rate=0.2, slip_rate=0.0)
    problems = _problems(fake)
    cfg = RolloutConfig(SamplingConfig(n=4, max_tokens=512), PromptConfig())
    rolled, _ = rollout(problems, cfg, fake)
    spec = ThinkSpec("auto", "<think>\n")
    graded, report = grade(rolled, GradeConfig(workers=0), problems, spec)
    unclosed = graded.filter(pl.col("think_closed").not_())
    assert len(unclosed) > 0 and (unclosed["drop_reason"] == UNCLOSED).all() and not unclosed["correct"].any()
    assert unclosed["text"].str.contains("boxed").all()  # each held a (right) tentative answer inside the block
    closed = graded.filter(pl.col("think_closed"))
    assert closed["correct"].all() and closed["cot"].str.starts_with("<think>\n").all()
    assert (closed["reasoning_tokens"] + closed["response_tokens"] == closed["cot_tokens"]).all()
    assert report.dropped_by_reason.get(UNCLOSED) == len(unclosed)
    # the same completions read as a teacher that does not think would grade the tentative answers correct
    plain, _ = grade(rolled, GradeConfig(workers=0), problems, ThinkSpec("off"))
    assert plain["correct"].all() and plain["reasoning"].is_null().all()


def test_truncated_inside_the_block_is_truncated():
    fake = FakeTeacher(thinks=True, slip_rate=0.0)
    problems = _problems(fake, 10)
    rolled, _ = rollout(problems, RolloutConfig(SamplingConfig(n=2, max_tokens=12), PromptConfig()), fake)
    graded, _ = grade(rolled, GradeConfig(workers=0, drop_truncated=False), problems, ThinkSpec("auto", R1))
    cut = graded.filter(pl.col("finish_reason") == "length")
    assert len(cut) and not cut["correct"].any()  # cut inside the block: unclosed, never graded
    graded, _ = grade(rolled, GradeConfig(workers=0), problems, ThinkSpec("auto", R1))
    assert (graded.filter(pl.col("finish_reason") == "length")["drop_reason"] == "truncated").all()


# ---- what servers send ---------------------------------------------------------------------------

# vLLM's deepseek_r1 parser on "a\n</think>\n\nb": reasoning "a\n", content "\n\nb"
SHAPES = [
    ({"content": "x \\boxed{1}"}, None, "x \\boxed{1}"),  # no parser: no reasoning field
    ({"content": "x", "reasoning": None}, None, "x"),  # parser on, nothing recognised
    ({"content": "\n\nb", "reasoning": "a\n"}, None, "a\n</think>\n\nb"),
    ({"content": "\n\nb", "reasoning_content": "a\n"}, None, "a\n</think>\n\nb"),  # older vLLM, DeepSeek's API
    ({"content": None, "reasoning": "a\nb"}, None, "a\nb"),  # budget ran out inside the block
    # with token ids and the tags' ids: a block closed with nothing after it, a block the model opened
    ({"content": None, "reasoning": "a\n"}, [5, 101], "a\n</think>"),
    ({"content": None, "reasoning": "a\n"}, [5, 6], "a\n"),
    ({"content": "\nb", "reasoning": "\na"}, [100, 5, 101, 6], "<think>\na</think>\nb"),
]


@pytest.mark.parametrize("message,ids,text", SHAPES)
def test_rejoin(message, ids, text):
    assert rejoin(message, ids, {"<think>": 100, "</think>": 101}) == text


def _server(choices):
    def handler(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/tokenize":
            import json

            prompt = json.loads(request.content)["prompt"]
            return httpx.Response(200, json={"tokens": [{"<think>": 100, "</think>": 101}[prompt]]})
        return httpx.Response(200, json={"choices": choices, "usage": {"completion_tokens": 9}})

    cfg = TeacherConfig(kind="openai", base_url="http://srv/v1", model="m", retries=0)
    return OpenAITeacher(cfg, progress=False, transport=httpx.MockTransport(handler))


def test_reasoning_fields_from_a_server_are_rejoined_and_counted():
    choices = [
        {
            "index": 0,
            "message": {"content": "\n\nok \\boxed{3}", "reasoning": "1 + 2 = 3\n"},
            "token_ids": [1] * 4 + [101] + [2] * 4,
        },
        {
            "index": 1,
            "message": {"content": None, "reasoning": "1 + 2 = 3\n\\boxed{3}"},
            "token_ids": [1] * 9,
            "finish_reason": "length",
        },
    ]
    out = _server(choices).generate([[{"role": "user", "content": "q"}]], 2, SamplingConfig(n=2), [0])[0].completions
    assert out[0].text == "1 + 2 = 3\n</think>\n\nok \\boxed{3}" and out[0].reasoning_tokens == 5
    assert (
        out[1].text == "1 + 2 = 3\n\\boxed{3}" and out[1].reasoning_tokens is None and out[1].finish_reason == "length"
    )
    verdicts = [dissect(c.text, R1) for c in out]
    assert [v.response for v in verdicts] == ["ok \\boxed{3}", ""] and verdicts[1].problem == UNCLOSED
