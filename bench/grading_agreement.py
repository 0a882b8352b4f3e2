"""Agreement of our grading with the shipped PRM800K sample's verdicts (`is_correct`), on the rows that
have a final answer: the text path (extract the answer from the solution's text, then grade) and the
direct path (the dataset's own `final_answer` graded against the gold); the rows that disagree, and how
many rows extract no answer. Also: MATH-500 and GSM8K-test reference solutions graded through the text
path against their own golds (all should be correct).

    .venv/bin/python bench/grading_agreement.py [--json bench/results/grading_agreement.json] [--show 40]

Counts only (deterministic), no timing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tracefactory.grading.verify import extract_answer, grade_pairs, gsm8k_gold  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def prm800k() -> dict:
    rows = [r for r in _rows(DATA / "prm800k" / "phase1_test_labeled_2000.jsonl") if r["final_answer"] is not None]
    texts = ["\n".join(r["steps"]) for r in rows]
    preds = [extract_answer(t) for t in texts]
    text_v = grade_pairs([(r["gold_answer"], p) for r, p in zip(rows, preds, strict=True)])
    direct_v = grade_pairs([(r["gold_answer"], r["final_answer"]) for r in rows])
    out = {"rows": len(rows), "no_answer": sum(p is None for p in preds), "disagree_text": [], "disagree_direct": []}
    agree = {"text": 0, "direct": 0}
    for r, p in zip(rows, preds, strict=True):
        for path, verdicts, pred in (("text", text_v, p), ("direct", direct_v, r["final_answer"])):
            ok = verdicts[(r["gold_answer"], pred)][0]
            if ok == r["is_correct"]:
                agree[path] += 1
            else:
                out[f"disagree_{path}"].append(
                    {"id": r["id"], "gold": r["gold_answer"], "pred": pred, "final_answer": r["final_answer"],
                     "dataset": r["is_correct"], "ours": ok}
                )  # fmt: skip
    out["agree_text"], out["agree_direct"] = agree["text"], agree["direct"]
    return out


def references() -> dict:
    math = _rows(DATA / "math" / "math500.jsonl")
    gsm = _rows(DATA / "gsm8k" / "test.jsonl")
    out = {}
    for name, pairs in (
        ("math500", [(r["answer"], r["solution"], r["unique_id"]) for r in math]),
        ("gsm8k_test", [(gsm8k_gold(r["answer"]), r["answer"], str(i)) for i, r in enumerate(gsm)]),
    ):
        preds = [(gold, extract_answer(text)) for gold, text, _ in pairs]
        verdicts = grade_pairs(preds)
        wrong = [
            {"id": i, "gold": g, "pred": p}
            for (g, _, i), (_, p) in zip(pairs, preds, strict=True)
            if not verdicts[(g, p)][0]
        ]
        out[name] = {"rows": len(pairs), "correct": len(pairs) - len(wrong), "not_correct": wrong}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default="bench/results/grading_agreement.json")
    ap.add_argument("--show", type=int, default=40, help="disagreements to print")
    args = ap.parse_args()
    p = prm800k()
    refs = references()
    print(f"PRM800K sample, rows with a final answer: {p['rows']}")
    print(
        f"  text path:   agrees with the dataset on {p['agree_text']}/{p['rows']},"
        f" no answer extracted: {p['no_answer']}"
    )
    print(f"  direct path: agrees with the dataset on {p['agree_direct']}/{p['rows']}")
    for d in p["disagree_text"][: args.show]:
        print(
            f"    text≠dataset {d['id']}: gold {d['gold']!r} ours {d['pred']!r} -> {d['ours']}, dataset {d['dataset']}"
        )
    for name, r in refs.items():
        print(f"{name} reference solutions, text path: {r['correct']}/{r['rows']} correct")
        for w in r["not_correct"][: args.show]:
            print(f"    {w['id']}: gold {w['gold']!r} extracted {w['pred']!r}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps({"prm800k": p, **refs}, indent=2) + "\n")


if __name__ == "__main__":
    main()
