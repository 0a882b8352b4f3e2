from pathlib import Path

import pytest

from tracefactory.backends.scorers import StepItem
from tracefactory.backends.step_eval import LabelledTrace, auroc, evaluate, first_error_f1, load_labelled
from tracefactory.store.schema import StepScores

PRM800K = Path(__file__).parents[2] / "data" / "prm800k" / "phase1_test_labeled_2000.jsonl"


@pytest.mark.parametrize(
    "pos,neg,expected",
    [
        ([0.9, 0.8], [0.1, 0.2], 1.0),
        ([0.1], [0.9], 0.0),
        ([0.5, 0.5], [0.5], 0.5),  # ties count half
        ([0.9, 0.3], [0.5], 0.5),
        ([], [0.5], None),
    ],
)
def test_auroc(pos, neg, expected):
    assert auroc(pos, neg) == expected


def _trace(labels, last_only=False):
    return LabelledTrace(StepItem("x", "q", "1", tuple(f"s{i}" for i in range(len(labels)))), tuple(labels), last_only)


def test_first_error_f1():
    traces = [_trace([1, -1, 1]), _trace([1, 1, -1]), _trace([1, 1]), _trace([1, 1])]
    results = [StepScores([1, 0, 0], 1), StepScores([1, 1, 1], None), StepScores([1, 1], None), StepScores([1, 0], 1)]
    m = first_error_f1(traces, results)
    assert m["acc_erroneous"] == 0.5 and m["acc_correct"] == 0.5 and m["first_error_f1"] == 0.5
    always_wrong = [StepScores([0, 0, 0], 0), StepScores([0, 0, 0], 0), StepScores([0, 0], 0), StepScores([0, 0], 0)]
    assert first_error_f1(traces, always_wrong)["first_error_f1"] == 0.0
    assert first_error_f1(traces[2:], results[2:])["first_error_f1"] is None  # no erroneous trace: undefined


class _Oracle:
    """Scores each step by its human label (what a perfect PRM would say)."""

    name = "oracle"

    def __init__(self, labels):
        self.labels = labels

    def close(self):
        pass

    def score(self, items):
        out = []
        for it in items:
            lbl = self.labels[it.problem_id]
            scores = [1.0 if x == 1 else 0.0 if x == -1 else 0.5 for x in lbl]
            out.append(StepScores(scores, next((i for i, x in enumerate(lbl) if x == -1), None)))
        return out


def test_evaluate_on_the_shipped_prm800k_sample():
    traces = load_labelled(PRM800K, limit=300)
    assert len(traces) == 300 and sum(t.last_only for t in traces) > 200
    perfect = evaluate(_Oracle({t.item.problem_id: t.labels for t in traces}), traces)
    assert perfect["step_auroc"] == 1.0 and perfect["first_error_f1"] == 1.0
    assert perfect["negative_steps"] > 0 and perfect["positive_steps"] > perfect["negative_steps"]


def test_eval_steps_command_reports_agreement_and_writes_the_manifest(tmp_path, monkeypatch):
    """The command's wiring (data, scorer from config, metrics, manifest) with a deterministic scorer;
    the vLLM PRM itself is tested in tests/integration/test_prm.py."""
    import json

    from typer.testing import CliRunner

    from tracefactory import pipeline
    from tracefactory.cli import app

    labels = {t.item.problem_id: t.labels for t in load_labelled(PRM800K, limit=150)}
    monkeypatch.setattr(pipeline, "make_scorer", lambda cfg, teacher, graded=None: _Oracle(labels))
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text("{}")
    result = CliRunner().invoke(
        app, ["eval-steps", "--data", str(PRM800K), "--limit", "150", "--run", str(tmp_path / "run")]
    )
    assert result.exit_code == 0, result.output
    figures = json.loads((tmp_path / "run" / "manifest.json").read_text())["step_eval"]
    assert figures["traces"] == 150 and figures["scorer"] == "oracle"
    assert figures["positive_steps"] > 0 and figures["negative_steps"] > 0 and figures["unscored"] < 150
    assert 0.0 <= figures["step_auroc"] <= 1.0 and figures["first_error_f1"] is not None
    bad = CliRunner().invoke(app, ["eval-steps", "--data", str(tmp_path / "missing.jsonl")])
    assert bad.exit_code == 2 and "--data" in bad.output


def test_a_limited_evaluation_set_is_a_seeded_sample_holding_both_labels():
    every = load_labelled(PRM800K)
    small = load_labelled(PRM800K, limit=20)
    assert len(small) == 20 and small == load_labelled(PRM800K, limit=20)  # seeded: the same sample
    assert any(-1 in t.labels for t in small) and any(-1 not in t.labels for t in small)
    assert all(-1 not in t.labels for t in every[:20])  # what the first 20 rows would have been
    ids = [t.item.problem_id for t in every]
    assert [ids.index(t.item.problem_id) for t in small] == sorted(ids.index(t.item.problem_id) for t in small)
    perfect = evaluate(_Oracle({t.item.problem_id: t.labels for t in small}), small)
    assert perfect["step_auroc"] == 1.0  # not None: both labels are there


def test_reference_labels_of_reasoning_with_checks_and_slips():
    from tracefactory.backends.step_eval import reference_first_bad

    ref = ["4 + 13 = 17", "17 + 19 = 36"]
    assert reference_first_bad(["4 + 13 = 17", "Check: 17 - 13 = 4.", "17 + 19 = 36"], ref) is None
    assert reference_first_bad(["4 + 13 = 17", "Check: 17 - 13 = 5.", "17 + 19 = 36"], ref) == 1  # a false check
    slip = ["4 + 13 = 18", "Wait, 4 + 13 = 17, not 18.", "17 + 19 = 36"]
    assert reference_first_bad(slip, ref) == 0  # a slip is bad even when the next line corrects it
    assert reference_first_bad(["4 + 13 = 17"], ref) == 1 and reference_first_bad([*ref, "36 + 1 = 37"], ref) == 2
