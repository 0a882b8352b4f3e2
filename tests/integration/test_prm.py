"""A tiny PRM with Qwen2.5-Math-PRM's architecture under vLLM's CPU pooling runner."""

import pytest

from tracefactory.backends.scorers import StepItem
from tracefactory.config import EMBEDDED_TEACHER
from tracefactory.errors import ConfigError

pytestmark = pytest.mark.vllm


@pytest.fixture(scope="module")
def prm(tmp_path_factory):
    from tracefactory.backends.prm import VLLMPRMScorer
    from tracefactory.tiny_prm import build

    scorer = VLLMPRMScorer(str(build(tmp_path_factory.mktemp("prm") / "tiny-prm")), system=None, max_model_len=256)
    yield scorer
    scorer.close()


def test_one_score_per_step_for_a_batch_of_different_lengths(prm):
    items = [
        StepItem("a", "What is 1+2?", "3", ("1 + 2 = 3", "The answer is \\boxed{3}.")),
        StepItem("b", "Ann has 5 pens.", "9", ("5 + 2 = 7", "7 + 2 = 9", "9 - 0 = 9", "The answer is 9.")),
        StepItem("c", "q", "1", ("The answer is 1.",)),
    ]
    results = prm.score(items)
    assert [len(r.scores) for r in results] == [2, 4, 1]
    assert all(0.0 <= s <= 1.0 for r in results for s in r.scores)
    again = prm.score(items[1:2])[0].scores
    assert again == pytest.approx(results[1].scores, abs=1e-3)  # batching does not change a trace's scores


def test_too_long_and_separator_inside_a_step_are_skipped_not_crashed(prm):
    long = StepItem("d", "q", "1", tuple(f"{i} + 1 = {i + 1}" for i in range(40)))
    sneaky = StepItem("e", "q", "1", ("a <extra_0> b", "c"))
    ok = StepItem("f", "q", "1", ("x = 1", "The answer is 1."))
    results = prm.score([long, sneaky, ok])
    assert [r.note for r in results] == ["too_long", "step_count_mismatch", None]
    assert len(results[2].scores) == 2


def test_a_model_without_the_separator_fails_before_scoring():
    from tracefactory.backends.prm import VLLMPRMScorer

    scorer = VLLMPRMScorer(str(EMBEDDED_TEACHER))  # the teacher's tokenizer has no <extra_0>
    with pytest.raises(ConfigError, match="prm_separator"):
        scorer.score([StepItem("a", "q", "1", ("s",))])
    assert scorer._llm is None  # the engine never started
