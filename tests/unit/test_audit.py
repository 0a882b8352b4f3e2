"""The gold audit on graded rollouts: a gold the rollouts agree against is suspect, above both bars only."""

import polars as pl
import pytest

from tracefactory.config import AuditConfig
from tracefactory.stages.audit import audit
from tracefactory.store.schema import columns


def _graded(rows):
    """(problem, [pred answers], gold) -> graded rows: correct when the prediction is the gold."""
    out = []
    for p, preds, gold in rows:
        for j, pred in enumerate(preds):
            ok = pred == gold
            why = None if ok else ("no_answer" if pred is None else "wrong_answer")
            out.append(
                {
                    "problem_id": p,
                    "sample_index": j,
                    "pred_answer": pred,
                    "correct": ok,
                    "drop_reason": why,
                    "cot": f"{p}/{j}",
                }
            )
    return pl.DataFrame(out, schema_overrides={"pred_answer": pl.String, "drop_reason": pl.String})


ROWS = [
    ("planted", ["14", "14", "14.0", "14", "3", "15"], "15"),  # 4 of 6 say 14 (14.0 is 14): 0.67, 4 votes
    ("split", ["14", "14", "14", "9", "9", "9"], "15"),  # 3 and 3: no majority
    ("few", ["2", "2", "2", None, None, None], "5"),  # 3 of 3 answered: share 1, but 3 votes
    ("right", ["5", "5", "5", "5", "6", "6"], "5"),  # the gold wins
    (
        "fraction",
        ["\\frac{1}{2}", "0.5", "1/2", "0.5", "1"],
        "1",
    ),  # values: 1/2 x4 (the text 1/2 too? no: not a number)
]
PROBLEMS = pl.DataFrame(
    {
        "problem_id": [p for p, _, _ in ROWS] + ["no_rollouts"],
        "question": ["q"] * (len(ROWS) + 1),
        "answer": [g for _, _, g in ROWS] + ["1"],
        "source": ["s"] * (len(ROWS) + 1),
        "level": [None] * (len(ROWS) + 1),
    },
    schema_overrides={"level": pl.String},
)


def test_suspect_only_above_the_bars_and_its_correct_traces_are_dropped():
    graded = _graded(ROWS)
    # planted and fraction: one rollout of 6 (5) reaches the gold — allowed here, up to a fifth
    (out, verdicts, table), report = audit(graded, AuditConfig(enabled=True, gold_share=0.2), PROBLEMS)
    v = {r["problem_id"]: r for r in verdicts.iter_rows(named=True)}
    assert {p for p, r in v.items() if r["gold_suspect"]} == {"planted", "fraction"}
    assert (v["planted"]["majority_answer"], v["planted"]["majority_votes"]) == ("14", 4)
    assert v["planted"]["majority_share"] == pytest.approx(4 / 6) and v["planted"]["n_answered"] == 6
    assert v["few"]["majority_votes"] == 3 and v["few"]["n_answered"] == 3 and not v["few"]["gold_suspect"]
    assert v["split"]["majority_votes"] == 3 and v["split"]["majority_answer"] == "14"  # tie: the first written
    assert v["right"]["majority_answer"] == "6" and not v["right"]["gold_suspect"]
    assert (v["fraction"]["majority_votes"], v["fraction"]["majority_answer"]) == (4, "\\frac{1}{2}")
    assert v["no_rollouts"]["n_answered"] == 0 and v["no_rollouts"]["gold_suspect"] is False
    # the suspects' right traces (planted's 15, fraction's 1) are dropped; nothing else changes
    changed = out.join(graded, on=["problem_id", "sample_index"], suffix="_before").filter(
        pl.col("drop_reason").ne_missing(pl.col("drop_reason_before"))
    )
    assert sorted(changed.select("problem_id", "sample_index", "drop_reason").rows()) == [
        ("fraction", 4, "gold_suspect"),
        ("planted", 5, "gold_suspect"),
    ]
    correct = int(graded["correct"].sum())
    assert (report.rows_in, report.kept, report.dropped_by_reason) == (correct, correct - 2, {"gold_suspect": 2})
    assert report.detail == {"suspect_problems": 2}
    assert table.columns == columns("audit") and table["problem_id"].to_list() == ["fraction", "planted"]
    assert table["majority_cot"].to_list() == ["fraction/0", "planted/0"]


def test_lower_bars_flag_more_and_exclude_off_keeps_the_traces():
    graded = _graded(ROWS)
    cfg = AuditConfig(enabled=True, share=0.6, min_votes=3, gold_share=0.2, exclude=False)
    (out, verdicts, table), report = audit(graded, cfg, PROBLEMS)
    assert set(verdicts.filter(pl.col("gold_suspect"))["problem_id"]) == {"planted", "few", "fraction"}
    assert out.equals(graded) and report.dropped == 0 and report.detail == {"suspect_problems": 3}
    assert table["problem_id"].to_list() == ["few", "fraction", "planted"]  # most confident first


def test_by_default_a_gold_that_some_rollout_reaches_is_not_suspect():
    rows = [*ROWS, ("never", ["14", "14", "14", "14", "3", "16"], "15")]  # planted's votes, none reaching the gold
    problems = pl.concat([PROBLEMS, PROBLEMS.head(1).with_columns(pl.lit("never").alias("problem_id"))])
    (out, verdicts, table), report = audit(_graded(rows), AuditConfig(enabled=True), problems)
    assert set(verdicts.filter(pl.col("gold_suspect"))["problem_id"]) == {"never"}
    assert report.dropped == 0 and report.detail == {"suspect_problems": 1}  # it had no correct trace to drop


def test_a_bad_audit_config_names_its_field():
    from tracefactory.config import load_config
    from tracefactory.errors import ConfigError

    with pytest.raises(ConfigError, match=r"audit\.share"):
        load_config(None, {"audit.share": 0.5})
    with pytest.raises(ConfigError, match=r"audit\.min_votes"):
        load_config(None, {"audit.min_votes": 0})
    with pytest.raises(ConfigError, match=r"audit\.gold_share"):
        load_config(None, {"audit.gold_share": 0.5})
