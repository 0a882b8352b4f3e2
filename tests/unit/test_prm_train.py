"""train-prm's training set: Math-Shepherd labels from a run's step scores, families held out by a seeded hash."""

import polars as pl
import pytest

from tracefactory.errors import ConfigError
from tracefactory.training.prm import data_hash, examples_from_runs, held_out, targets_of


def test_targets_good_up_to_the_first_bad_step_which_is_bad_and_the_rest_dropped():
    assert targets_of([1.0, 1.0, 0.0, 0.0], 2) == (1.0, 1.0, 0.0)
    assert targets_of([1.0, 1.0, 1.0], None) == (1.0, 1.0, 1.0)
    assert targets_of([0.0, 0.0], 0) == (0.0,)
    assert targets_of([0.75, 0.5, 0.0, 0.0], 2, "soft") == (0.75, 0.5, 0.0)


def test_held_out_families_are_a_seeded_share_independent_of_the_rest_of_the_data():
    fams = [f"L{i % 5 + 1}-{i:04d}" for i in range(2000)]
    share = sum(held_out(f, 0.2, 0) for f in fams) / len(fams)
    assert 0.17 < share < 0.23
    assert [held_out(f, 0.2, 0) for f in fams[:50]] == [held_out(f, 0.2, 0) for f in fams[:50]]
    assert [held_out(f, 0.2, 0) for f in fams] != [held_out(f, 0.2, 1) for f in fams]
    assert not any(held_out(f, 0.0, 0) for f in fams)


def _run(tmp_path, rollouts: list[dict]):
    problems = pl.DataFrame(
        {
            "problem_id": ["P1", "P1-v1", "P2"],
            "question": ["Ann has 3 pens. She gets 2 more.", "Ann has 4 pens. She gets 2 more.", "Bo has 9 cups."],
            "rewrite_of": [None, "P1", None],
            "n_correct": [2, 1, 0],  # P2: the teacher never solved it
        }
    )
    (tmp_path / "problems").mkdir()
    (tmp_path / "rollouts").mkdir()
    problems.write_parquet(tmp_path / "problems" / "part-0.parquet")
    schema = {
        "problem_id": pl.String,
        "steps": pl.List(pl.String),
        "step_scores": pl.List(pl.Float64),
        "first_bad_step": pl.Int64,
        "correct": pl.Boolean,
    }
    pl.DataFrame(rollouts, schema=schema).write_parquet(tmp_path / "rollouts" / "part-0.parquet")
    return tmp_path


def test_examples_from_a_run(tmp_path):
    ok = ["3 + 2 = 5", "The answer is \\boxed{5}."]
    run = _run(
        tmp_path,
        [
            {"problem_id": "P1", "steps": ok, "step_scores": [1.0, 1.0], "first_bad_step": None, "correct": True},
            {"problem_id": "P1", "steps": ok, "step_scores": [1.0, 1.0], "first_bad_step": None, "correct": True},
            {
                "problem_id": "P1",
                "steps": ["3 - 2 = 1", "x"],
                "step_scores": [0.0, 0.0],
                "first_bad_step": 0,
                "correct": False,
            },
            # every prefix could still reach the gold, but the answer is wrong: its last step is the bad one
            {
                "problem_id": "P1-v1",
                "steps": ["4 + 2 = 6", "The answer is 7."],
                "step_scores": [1.0, 1.0],
                "first_bad_step": None,
                "correct": False,
            },
            {"problem_id": "P2", "steps": ["9 = 9"], "step_scores": None, "first_bad_step": None, "correct": False},
            {"problem_id": "P2", "steps": ["9 + 1 = 10"], "step_scores": [0.0], "first_bad_step": 0, "correct": False},
        ],
    )
    ex = examples_from_runs([run])
    assert [(e.problem_id, e.family, e.targets, e.weight) for e in ex] == [
        ("P1", "P1", (1.0, 1.0), 2),  # sampled twice: one example of weight 2
        ("P1", "P1", (0.0,), 1),  # bad at step 0: step 1 dropped
        ("P1-v1", "P1", (1.0, 0.0), 1),  # a variant belongs to its original's family
    ]
    assert data_hash(ex) == data_hash(examples_from_runs([run]))
    assert data_hash(ex) != data_hash(ex[:2])
    # an unsolved problem's labels only say "too hard for the completer": left out unless asked for
    assert [e.problem_id for e in examples_from_runs([run], unsolved=True)] == ["P1", "P1", "P1-v1", "P2"]


def test_runs_without_tables_or_without_step_scores_are_refused(tmp_path):
    with pytest.raises(ConfigError, match="finished run directory"):
        examples_from_runs([tmp_path])
    run = _run(
        tmp_path,
        [{"problem_id": "P1", "steps": ["9 = 9"], "step_scores": None, "first_bad_step": None, "correct": True}],
    )
    with pytest.raises(ConfigError, match="step scores"):
        examples_from_runs([run])


def test_layers_keeps_the_teachers_first_layers_and_refuses_more_than_it_has():
    import torch
    from transformers import AutoModelForCausalLM

    from tracefactory.config import EMBEDDED_TEACHER, PLAIN_TEACHER
    from tracefactory.training.prm import build_net, build_tokenizer

    teacher = AutoModelForCausalLM.from_pretrained(str(PLAIN_TEACHER), dtype=torch.float32).state_dict()
    vocab = len(build_tokenizer())  # the teacher's vocabulary and the separator
    cfg, net = build_net(PLAIN_TEACHER, vocab, seed=0, layers=2)
    assert cfg.num_hidden_layers == 2 and len(net["model"].layers) == 2
    for name, value in net["model"].state_dict().items():
        if name.startswith("layers.") and not name.endswith("_proj.bias"):
            assert torch.equal(value, teacher[f"model.{name}"]), name  # copied, not re-initialised
    assert torch.equal(net["model"].norm.weight, teacher["model.norm.weight"])
    with pytest.raises(ConfigError, match="--layers"):
        build_net(PLAIN_TEACHER, vocab, seed=0, layers=5)
    # the R1-shaped teacher's think tags would sit on the separator's id: refused, naming the model to use
    with pytest.raises(ConfigError, match="teacher-plain"):
        build_net(EMBEDDED_TEACHER, vocab, seed=0)
