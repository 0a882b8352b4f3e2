"""The shipped GSM8K test set and MATH-500 load completely: every gold is extracted and parses."""

from pathlib import Path

import pytest

from tracefactory.config import load_config
from tracefactory.stages.load import load, partition
from tracefactory.store.sources import read_source


def _load(src):
    """(problems, rejected, report): the load stage and its partition."""
    parsed, report = load(read_source(src), src)
    return (*partition(parsed), report)


CONFIGS = Path(__file__).parents[2] / "configs"


@pytest.mark.parametrize("config,rows", [("gsm8k-r1-distill.yaml", 1319), ("math500-r1-distill.yaml", 500)])
def test_gpu_recipe_inputs_load_without_rejects(config, rows):
    cfg = load_config(CONFIGS / config)
    problems, rejected, report = _load(cfg.source)
    assert rejected["reason"].to_list() == [] and len(problems) == rows == report.kept


def test_math500_boxed_gold_equals_its_answer_field():
    cfg = load_config(CONFIGS / "math500-r1-distill.yaml")
    problems, _, _ = _load(cfg.source)
    raw = read_source(cfg.source)
    import json

    answers = {json.loads(r)["unique_id"]: json.loads(r)["answer"] for r in raw["raw"]}
    assert all(answers[pid] == gold for pid, gold in problems.select("problem_id", "answer").iter_rows())
