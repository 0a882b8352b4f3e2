# ruff: noqa: E501  (the teacher outputs below are kept whole, as written)
"""Paraphrase through the teacher: tolerant parsing, and the answer-preservation gate."""

from functools import partial

import polars as pl
import pytest

from tracefactory.backends.fake import FakeTeacher
from tracefactory.config import PromptConfig, RewriteConfig, SamplingConfig
from tracefactory.grading.verify import judge_texts
from tracefactory.rewriting.paraphrase import INSTRUCTION, parse_paraphrase
from tracefactory.stages.rewrite import Paraphraser, rewrite
from tracefactory.training.synth import generate

# Real outputs: the plain embedded teacher (data/teacher-plain) given `paraphrase_prompt` for demo problems (seeds
# 0-5, temperature 0.7). It was trained only to solve such problems, so it solves (badly) instead of
# rewording: each is refused before the gate.
PLAIN_OUTPUTS = [  # (question, what the teacher wrote)
    ("Ben has 18 cards. He uses 4. How many cards does Ben have now?", "10 / 3 = 6\n6 / 2 = 2\nThe ann / 2}."),
    (
        "Gus has 13 shells. He gives away 7. How many shells does Gus have now?",
        "10 / 3 = 5\n5 * 2 = 10\n10 * 3 = 30\n30 * 3 = 90\n90 / 2 = 18\nThe answer is \\boxed{18}.",
    ),
    (
        "Dev has 23 stamps. He finds 7 more. He uses 18. How many stamps does Dev have now?",
        "10 * 3 = 100\n100 / 2 = 70\n70 * 2 = 700\n70 / 2 = 170\n170 * 2 = 280\nThe answer is \\boxed{280}.",
    ),
    (
        "Dev has 28 apples. He triples them. He uses 20. He uses 3. How many apples does Dev have now?",
        "7 * 2 = 78\n78 * 2 = 96\n96 * 2 = 1326\n132 - 28 = 388\n388 / 2 = 166\n166 / 2 = 18\nThe answer is \\boxed{18}.",
    ),
    (
        "Eli has 6 pens. He gets 22 more. He splits them into 4 equal groups and keeps one. He doubles them. He sells 2. How many pens does Eli have now?",
        "10 / 2 = 10\n10 / 4 = 8\n8 * 2 = 8\n8 * 4 = 26\nThe an / 2 = \\boxed{26}.",
    ),
    (
        "Cara has 150 shells. She ends up with 7 times as many. She ends up with 7 times as many. She gives away 8. She gives away 29. She gives away 92. How many shells does Cara have now?",
        "10 / 5 = 5\n5 * 7 = 25\nThe annnnnnnnnnnnnnnnnnn ann an / 2 = 9\n9 / 2 = 7\n7 * 3 = 21\nThe answer is \\boxed{21}.",
    ),
]


@pytest.mark.parametrize("question, text", PLAIN_OUTPUTS)
def test_what_the_plain_teacher_writes_is_refused(question, text):
    parsed, reason = parse_paraphrase(text, question)
    assert parsed is None and reason in {"solved_not_paraphrased", "numbers_changed"}


Q = "Ben has 18 cards. He uses 4. How many cards does Ben have now?"
PARSE = [  # (what a teacher wrote, the paraphrase parsed out, or the reason there is none)
    # the wrappers instruction-tuned models put around an answer (constructed, in their usual forms)
    (
        'Sure! Here is the rewritten problem:\n\n"Ben starts with 18 cards and uses 4 of them. How many does he have left?"',
        "Ben starts with 18 cards and uses 4 of them. How many does he have left?",
    ),
    (
        "**Rewritten problem:** Ben owns 18 cards; he uses 4. How many cards remain with Ben?\n\nAnswer: not solved",
        "Ben owns 18 cards; he uses 4. How many cards remain with Ben?",
    ),
    (
        "```\nBen owns 18 cards and uses 4. How many cards remain?\n```",
        "Ben owns 18 cards and uses 4. How many cards remain?",
    ),
    (
        "Paraphrase: Ben had 18 cards, then used 4. How many cards does he have at the end?",
        "Ben had 18 cards, then used 4. How many cards does he have at the end?",
    ),
    ("Ben has 18 cards. He uses 4. How many cards does Ben have now?", "paraphrase_identical"),
    ("Ben has 18 cards and uses 5. How many does Ben have now?", "numbers_changed"),
    ("Ben has 18 cards. He uses 4. 18 - 4 = 14. The answer is 14.", "solved_not_paraphrased"),
    ("Ben.", "paraphrase_unparseable"),
    ("", "paraphrase_empty"),
]


@pytest.mark.parametrize("text, expected", PARSE)
def test_parsing_is_tolerant_of_wrappers_and_strict_about_content(text, expected):
    parsed, reason = parse_paraphrase(text, Q)
    assert (parsed if parsed is not None else reason) == expected


class _Rewording(FakeTeacher):
    """A stand-in for a teacher that can paraphrase: `reword` turns the question into its 'paraphrase'
    (for paraphrase prompts); other prompts are solved as FakeTeacher does."""

    def __init__(self, reword, **kw):
        super().__init__(**kw)
        self.reword = reword

    def _one(self, prompt, seed, n, params):
        from tracefactory.backends.base import Completion, RequestResult

        text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        if text.startswith(INSTRUCTION.split("{")[0]):
            question = text.split("Problem: ", 1)[1]
            return RequestResult.of([Completion(f"Rewritten problem: {self.reword(question)}", 20, "stop", 0)])
        return super()._one(prompt, seed, n, params)


def _problems():
    rows = [
        {
            "row_index": i,
            "problem_id": p.id,
            "question": p.question,
            "answer": p.answer,
            "level": str(p.level),
            "source": "t",
            "solution": p.solution,
            "rewrite_of": None,
            "rewrite_kind": None,
        }
        for i, p in enumerate(generate(4, seed=11, levels=(1, 2)))
    ]
    return pl.DataFrame(rows, schema={k: (pl.Int64 if k == "row_index" else pl.String) for k in rows[0]})


def _rewrite(teacher):
    cfg = RewriteConfig(enabled=True, kinds=("paraphrase",), paraphrase_verify_n=4, paraphrase_min_pass_rate=0.75)
    p = Paraphraser(teacher, partial(judge_texts, workers=0), PromptConfig(), SamplingConfig(n=4))
    return rewrite(_problems(), cfg, p)


def test_a_paraphrase_that_keeps_the_answer_passes_the_gate():
    out, report = _rewrite(_Rewording(lambda q: "Consider this. " + q, slip_rate=0.0))
    variants = out.filter(pl.col("rewrite_kind") == "paraphrase")
    assert report.kept == len(variants) == 8 and report.rows_in == 8
    originals = dict(_problems().select("problem_id", "answer").iter_rows())
    for pid, src, q, a in variants.select("problem_id", "rewrite_of", "question", "answer").iter_rows():
        assert pid == f"{src}~paraphrase0" and q.startswith("Consider this.") and a == originals[src]


def test_a_paraphrase_that_changes_the_meaning_is_stopped_by_the_gate():
    # same numbers, another story: "uses" becomes "gets ... more" (the teacher now reaches another answer)
    def twist(q):
        return (
            q.replace("uses ", "gets ")
            .replace("loses ", "gets ")
            .replace("sells ", "gets ")
            .replace("gives away ", "gets ")
            .replace(". How", " more. How")
            if any(w in q for w in ("uses", "loses", "sells", "gives away"))
            else q
        )

    out, report = _rewrite(_Rewording(twist, slip_rate=0.0))
    assert report.kept == 0
    assert set(report.dropped_by_reason) <= {"not_answer_preserving", "paraphrase_identical"}
    assert report.dropped_by_reason.get("not_answer_preserving", 0) >= 4


def test_without_a_teacher_paraphrasing_is_counted_not_crashed():
    cfg = RewriteConfig(enabled=True, kinds=("perturb", "paraphrase"))
    out, report = rewrite(_problems(), cfg)
    perturbed = out.filter(pl.col("rewrite_kind") == "perturb").height
    assert perturbed > 0 and report.kept == perturbed
    # paraphrase attempts: the 8 originals and their perturbed variants
    assert report.rows_in == 16 + perturbed and report.dropped_by_reason.get("no_teacher") == 8 + perturbed


def test_a_perturbed_variant_is_paraphrased_and_gated_on_its_re_derived_gold():
    cfg = RewriteConfig(enabled=True, kinds=("perturb", "paraphrase"), paraphrase_verify_n=4)
    p = Paraphraser(
        _Rewording(lambda q: "Consider this. " + q, slip_rate=0.0),
        partial(judge_texts, workers=0),
        PromptConfig(),
        SamplingConfig(n=4),
    )
    out, report = rewrite(_problems(), cfg, p)
    rows = {r["problem_id"]: r for r in out.iter_rows(named=True)}
    perturbed = [r for r in rows.values() if r["rewrite_kind"] == "perturb"]
    assert perturbed and report.kept == 8 + 2 * len(perturbed)
    for v in perturbed:
        twice = rows[f"{v['problem_id']}~paraphrase0"]
        assert twice["rewrite_of"] == v["problem_id"] and twice["rewrite_kind"] == "paraphrase"
        assert twice["question"] == "Consider this. " + v["question"] and twice["answer"] == v["answer"]
        assert v["answer"] != rows[v["rewrite_of"]]["answer"] or v["question"] != rows[v["rewrite_of"]]["question"]
    # each original is followed by all its descendants
    ids = out["problem_id"].to_list()
    assert [i.split("~")[0] for i in ids[8:]] == sorted((i.split("~")[0] for i in ids[8:]), key=ids.index)

    # the gate checks a paraphrased variant against the variant's gold, not its original's: a teacher that
    # solves every reworded variant as if it had its original's numbers fails all of them
    back = {v["question"]: rows[v["rewrite_of"]]["question"] for v in perturbed}
    stale = _Stale(back, lambda q: "Consider this. " + q, slip_rate=0.0)
    out, report = rewrite(_problems(), cfg, Paraphraser(stale, p.judge, p.prompt, p.sampling))
    assert out.filter(pl.col("rewrite_of").str.contains("~perturb")).height == 0
    assert out.filter(pl.col("rewrite_kind") == "paraphrase").height == 8  # the originals' pass
    assert report.dropped_by_reason == {"not_answer_preserving": len(perturbed)}


class _Stale(_Rewording):
    def __init__(self, back, reword, **kw):
        super().__init__(reword, **kw)
        self.back = back

    def _one(self, prompt, seed, n, params):
        text = prompt[-1]["content"] if isinstance(prompt, list) else prompt
        if not text.startswith(INSTRUCTION.split("{")[0]):  # a solve request: the original's numbers
            for new, old in self.back.items():
                text = text.replace(new, old)
            prompt = text if isinstance(prompt, str) else [*prompt[:-1], {**prompt[-1], "content": text}]
        return super()._one(prompt, seed, n, params)
