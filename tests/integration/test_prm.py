"""The shipped PRM (data/prm, Qwen2.5-Math-PRM's format) under vLLM's CPU pooling runner, train-prm, demo-prm."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import polars as pl
import pytest

from tracefactory.backends.scorers import StepItem
from tracefactory.config import EMBEDDED_TEACHER, PLAIN_TEACHER, REPO_ROOT
from tracefactory.errors import ConfigError
from tracefactory.grading.steps import split_steps

pytestmark = pytest.mark.vllm
SHIPPED = REPO_ROOT / "data" / "prm"
ITEMS = [
    StepItem("a", "What is 1+2?", "3", ("1 + 2 = 3", "The answer is \\boxed{3}.")),
    StepItem("b", "Ann has 5 pens.", "9", ("5 + 2 = 7", "7 + 2 = 9", "9 - 0 = 9", "The answer is 9.")),
    StepItem("c", "q", "1", ("The answer is 1.",)),
]


@pytest.fixture(scope="module")
def prm():
    from tracefactory.backends.prm import VLLMPRMScorer

    scorer = VLLMPRMScorer(str(SHIPPED), system=None, max_model_len=256)
    yield scorer
    scorer.close()


def test_one_score_per_step_for_a_batch_of_different_lengths(prm):
    results = prm.score(ITEMS)
    assert [len(r.scores) for r in results] == [2, 4, 1]
    assert all(0.0 < s < 1.0 for r in results for s in r.scores)
    again = prm.score(ITEMS[1:2])[0].scores
    assert again == pytest.approx(results[1].scores, abs=1e-5)  # batching does not change a trace's scores


def test_vllm_scores_what_the_training_code_scores(prm):
    """The served model is the trained one: same tokens (spaces and newlines included), same weights, same head."""
    from safetensors.torch import load_file

    from tracefactory.backends.prm import load_tokenizer
    from tracefactory.training.prm import Example, build_net, encode, step_probabilities

    tok = load_tokenizer(str(SHIPPED))
    layers = json.loads((SHIPPED / "config.json").read_text())["num_hidden_layers"]
    _, net = build_net(PLAIN_TEACHER, len(tok), seed=0, layers=layers)
    net.load_state_dict({k: v.float() for k, v in load_file(str(SHIPPED / "model.safetensors")).items()})
    examples = [Example(it.problem_id, "", it.question, it.steps, (1.0,) * len(it.steps)) for it in ITEMS]
    trained = step_probabilities(net, encode(tok, examples, 512), tok.pad_token_id)
    served = [r.scores for r in prm.score(ITEMS)]
    assert [len(s) for s in served] == [len(t) for t in trained] == [2, 4, 1]
    for s, t in zip(served, trained, strict=True):
        assert s == pytest.approx(t, abs=1e-4)


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


def test_a_checkpoint_without_the_heads_biases_is_refused_before_vllm_loads_it(tmp_path):
    """vLLM leaves a missing linear bias uninitialised (no error): NaN or saturated scores by process."""
    from safetensors.torch import load_file, save_file

    from tracefactory.backends.prm import VLLMPRMScorer

    broken = tmp_path / "prm"
    shutil.copytree(SHIPPED, broken)
    weights = load_file(str(SHIPPED / "model.safetensors"))
    save_file({k: v for k, v in weights.items() if k != "score.2.bias"}, str(broken / "model.safetensors"))
    scorer = VLLMPRMScorer(str(broken))
    with pytest.raises(ConfigError, match="score.2.bias"):
        scorer.score(ITEMS[:1])
    assert scorer._llm is None


SCORE_IN_A_FRESH_PROCESS = """
import json, sys
from tracefactory.backends.prm import VLLMPRMScorer
from tracefactory.backends.scorers import StepItem
items = [StepItem(*row[:3], tuple(row[3])) for row in json.loads(sys.argv[2])]
scorer = VLLMPRMScorer(sys.argv[1])
print("SCORES", json.dumps([r.scores for r in scorer.score(items)]))
scorer.close()
"""


def test_the_same_inputs_score_the_same_in_two_fresh_processes():
    rows = json.dumps([[it.problem_id, it.question, it.gold, list(it.steps)] for it in ITEMS])
    runs = []
    for _ in range(2):
        done = subprocess.run(
            [sys.executable, "-c", SCORE_IN_A_FRESH_PROCESS, str(SHIPPED), rows],
            capture_output=True,
            text=True,
            timeout=300,
            cwd=REPO_ROOT,
        )
        line = [ln for ln in done.stdout.splitlines() if ln.startswith("SCORES ")]
        assert done.returncode == 0 and line, done.stderr[-2000:]
        runs.append(json.loads(line[0][len("SCORES ") :]))
    assert runs[0] == runs[1]
    flat = [s for r in runs[0] for s in r]
    assert len(flat) == 7 and all(0.0 < s < 1.0 for s in flat)  # finite, not saturated


def test_the_shipped_prm_separates_right_from_wrong_steps_on_the_teachers_rollouts(prm, plain_run):
    """Every rollout of the demo run's original problems, each step labelled exactly from the problem's reference
    chain (good while the trace follows it; the first departure bad; later steps left out). Most of these problems
    were in the PRM's training run, so this checks that the shipped weights load and score under vLLM as trained
    (held-out figures: bench/prm_quality.py), not how well it generalises."""
    from tracefactory.backends.step_eval import auroc, reference_first_bad

    run, _ = plain_run
    ref = {r["id"]: r for r in map(json.loads, (REPO_ROOT / "data/demo/problems.jsonl").read_text().splitlines())}
    rollouts = pl.read_parquet(run / "rollouts").filter(pl.col("problem_id").is_in(list(ref)))
    items, truth = [], []
    for pid, text in rollouts.select("problem_id", "text").iter_rows():
        steps = split_steps(text, "line")
        reference = ref[pid]["solution"].splitlines()
        if steps:
            items.append(StepItem(pid, ref[pid]["question"], ref[pid]["answer"], tuple(steps)))
            truth.append(reference_first_bad(steps, reference))
    pos, neg = [], []
    for result, bad in zip(prm.score(items), truth, strict=True):
        for i, s in enumerate(result.scores[: len(result.scores) if bad is None else bad + 1]):
            (neg if i == bad else pos).append(s)
    assert len(items) > 300 and len(neg) > 100
    assert auroc(pos, neg) > 0.85


def test_train_prm_trains_a_loadable_prm_from_a_run_and_records_its_data(plain_run, tmp_path):
    from tracefactory.backends.prm import VLLMPRMScorer
    from tracefactory.training.prm import data_hash, examples_from_runs

    run, _ = plain_run
    out = tmp_path / "prm"
    done = subprocess.run(
        [sys.executable, "-m", "tracefactory.cli", "train-prm", str(run), "--out", str(out), "--epochs", "1"]
        + ["--layers", "2"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "trained on" in done.stdout
    info = json.loads((out / "training.json").read_text())
    assert info["data_sha256"] == data_hash(examples_from_runs([run]))
    assert info["data_sha256"] in (out / "README.md").read_text()
    assert info["train_traces"] > 0 and info["optimizer_steps"] >= 1
    assert info["layers"] == json.loads((out / "config.json").read_text())["num_hidden_layers"] == 2
    scorer = VLLMPRMScorer(str(out), max_model_len=256)
    try:
        results = scorer.score(ITEMS)
    finally:
        scorer.close()
    assert [len(r.scores) for r in results] == [2, 4, 1]


def test_demo_prm_config_filters_with_the_shipped_prm(plain_run, plain_teacher, demo_subset, tmp_path):
    """configs/demo-prm.yaml over the demo run's rollouts (a copy; generations reused): the PRM's step_score row."""
    from flows.build_dataset import build_dataset
    from tracefactory.publish.query import query

    run, _ = plain_run
    out = tmp_path / "run"
    shutil.copytree(run, out)
    build_dataset(
        config=str(REPO_ROOT / "configs" / "demo-prm.yaml"),
        out=str(out),
        teacher=plain_teacher,
        overrides={"source.path": str(demo_subset), "run.shard_size": 32},
    )
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["config"]["step_score"]["scorer"] == "prm"
    assert Path(manifest["config"]["step_score"]["prm_model"]) == SHIPPED
    _, rows = query(out, "SELECT rows_in, kept, dropped_by_reason, tokens FROM funnel WHERE stage = 'step_score'")
    ((rows_in, kept, dropped, tokens),) = rows
    assert rows_in == pl.read_parquet(out / "rollouts").filter(pl.col("correct"))["correct"].len() and tokens == 0
    scored = pl.read_parquet(out / "rollouts").filter(pl.col("step_scores").is_not_null())
    assert len(scored) == rows_in
    assert scored["step_scores"].explode().is_between(0.0, 1.0, closed="none").all()
    threshold = manifest["config"]["step_score"]["threshold"]
    assert threshold == json.loads((SHIPPED / "training.json").read_text())["threshold"]
    low = scored.filter(pl.col("prm_min") <= threshold)
    assert (low["drop_reason"] == "low_step_score").all() and rows_in - kept == len(low)
    assert low["first_bad_step"].is_not_null().all()  # the first step at or below the threshold
    assert scored.filter(pl.col("prm_min") > threshold)["first_bad_step"].is_null().all()
