"""The embedded teachers' training data and command: R1-shaped targets, the slip masked out of the loss, the CLI's
shape reaching the trainer, a plain model given the think tags."""

import json
import random
import re

import pytest

from tracefactory.grading.think import CLOSE, OPEN
from tracefactory.training.synth import SLIP_SHARE, make_problem, think_spans

pytest.importorskip("transformers")


def test_think_spans_join_to_the_target_and_only_a_slips_wrong_line_is_not_learned():
    slips = 0
    for seed in range(400):
        problem = make_problem(random.Random(seed), 3, "x")
        spans = think_spans(random.Random(seed), problem.solution)
        text = "".join(t for t, _ in spans)
        *lines, final = problem.solution.splitlines()
        written = text.splitlines()
        for line in lines:  # every equation of the solution: written, or reached by correcting a slip
            assert line in written or any(w.startswith(f"Wait, {line}, not ") for w in written)
        if CLOSE in text:  # closed once, then the summary: the last equation and the boxed gold
            summary = f"{lines[-1]}, so the answer is \\boxed{{{problem.answer}}}."
            assert text.count(CLOSE) == 1 and text.endswith(summary)
        else:  # stopped inside the block: a tentative answer only
            assert text.endswith(final)
        hidden = [t for t, learned in spans if not learned]
        assert len(hidden) <= 1
        if hidden:
            slips += 1
            a, op, b, wrong = re.fullmatch(r"(\d+) (\S) (\d+) = (\d+)\n", hidden[0]).groups()
            after = spans[[t for t, _ in spans].index(hidden[0]) + 1]
            assert after[1] and after[0].startswith(f"Wait, {a} {op} {b} = ") and after[0].endswith(f", not {wrong}.\n")
            assert f"{a} {op} {b} = {wrong}" not in problem.solution.splitlines()  # the slip is wrong
    assert abs(slips / 400 - SLIP_SHARE) < 0.06


def test_a_masked_span_is_read_but_never_learned(tmp_path):
    from tracefactory.training.teacher import _example, build_tokenizer

    tok = build_tokenizer(tmp_path, "think")
    ids, labels = _example(tok, "Q?", [("1 + 1 = 3\n", False), ("Wait, 1 + 1 = 2, not 3.\n", True), (CLOSE, True)])
    prompt = len(
        tok(
            tok.apply_chat_template([{"role": "user", "content": "Q?"}], tokenize=False, add_generation_prompt=True),
            add_special_tokens=False,
        )["input_ids"]
    )
    assert labels[: prompt + len("1 + 1 = 3\n")] == [-100] * (prompt + len("1 + 1 = 3\n"))
    assert labels[prompt + len("1 + 1 = 3\n") :] == ids[prompt + len("1 + 1 = 3\n") :]
    assert ids[-2:] == [tok.convert_tokens_to_ids(CLOSE), tok.eos_token_id]
    whole, whole_labels = _example(tok, "Q?", "1 + 1 = 2")  # a plain string: all of it learned
    assert whole_labels[:prompt] == [-100] * prompt and whole_labels[prompt:] == whole[prompt:]


def test_the_command_trains_the_shape_it_is_given_from_a_plain_model(tmp_path):
    """`--shape think --init PLAIN`: the think tokenizer and template, the embedding rows added for the tags,
    bare drills by default (the command once dropped --shape and trained a plain model)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tracefactory.config import PLAIN_TEACHER
    from tracefactory.training.teacher import main

    out = tmp_path / "r1"
    main(["--shape", "think", "--init", str(PLAIN_TEACHER), "--steps", "1", "--batch", "2", "--out", str(out)])
    info = json.loads((out / "training.json").read_text())
    assert info["shape"] == "think" and info["drill_format"] == "bare" and info["init"]["from"] == str(PLAIN_TEACHER)
    tok = AutoTokenizer.from_pretrained(str(out))
    assert tok.apply_chat_template([{"role": "user", "content": "q"}], tokenize=False, add_generation_prompt=True) == (
        f"Q: q\nA: {OPEN}\n"
    )
    model = AutoModelForCausalLM.from_pretrained(str(out))
    assert model.get_input_embeddings().num_embeddings == len(tok) == 102  # 100 characters and specials + the two tags
