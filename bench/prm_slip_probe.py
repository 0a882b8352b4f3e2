"""Does the PRM check arithmetic? A planted slip against the reference step, on fresh generator problems.

    .venv/bin/python bench/prm_slip_probe.py [PRM_DIR] [--problems 20]

For each problem (seed 4242, 20 per level by default: never trained on), one equation of the reference
solution gets its result changed by ±1..3 (and the next equation, if it starts from that result, follows it);
the PRM scores the clean and the slipped solution. Prints the share of slipped steps scored lower than the
same clean step (0.5 = blind to the slip), and how many clean and slipped solutions the calibrated filter flags.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from tracefactory.backends.prm import VLLMPRMScorer
from tracefactory.backends.scorers import StepItem
from tracefactory.training.synth import generate

ROOT = Path(__file__).resolve().parents[1]


def slip(solution: list[str], at: int, rng: random.Random) -> list[str]:
    out = list(solution)
    lhs, result = out[at].rsplit(" = ", 1)
    wrong = str(int(result) + rng.choice([-3, -2, -1, 1, 2, 3]))
    out[at] = f"{lhs} = {wrong}"
    if at + 1 < len(out) - 1 and out[at + 1].split(" ", 1)[0] == result:
        out[at + 1] = f"{wrong} {out[at + 1].split(' ', 1)[1]}"
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("prm", nargs="?", type=Path, default=ROOT / "data" / "prm")
    ap.add_argument("--problems", type=int, default=20, help="per level")
    args = ap.parse_args()
    threshold = json.loads((args.prm / "training.json").read_text())["threshold"]
    rng = random.Random(0)
    clean, slipped, where = [], [], []
    for p in generate(args.problems, seed=4242):
        steps = p.solution.splitlines()
        at = rng.randrange(len(steps) - 1)
        clean.append(StepItem(p.id, p.question, p.answer, tuple(steps)))
        slipped.append(StepItem(p.id, p.question, p.answer, tuple(slip(steps, at, rng))))
        where.append(at)
    scorer = VLLMPRMScorer(str(args.prm), bad_below=threshold)
    try:
        ok, bad = scorer.score(clean), scorer.score(slipped)
    finally:
        scorer.close()
    lower = sum(b.scores[i] < c.scores[i] for c, b, i in zip(ok, bad, where, strict=True))
    print(
        f"{len(clean)} problems: slipped step scored below the clean one in {lower / len(clean):.0%}; "
        f"flagged at threshold {threshold}: clean {sum(r.first_bad_step is not None for r in ok)}, "
        f"slipped {sum(r.first_bad_step is not None for r in bad)}"
    )


if __name__ == "__main__":
    main()
