"""Coverage of symbolic perturbation on the shipped GSM8K train sample (and the demo problems), the
share of variants that keep the original's chain length, and what dedup / decontamination remove.

    .venv/bin/python bench/rewrite_coverage.py [--variants 1] [--json bench/results/rewrite_coverage.json]

No timing: counts only (deterministic, seeded).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import Counter
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import polars as pl  # noqa: E402

from tracefactory.config import DecontaminateConfig, DedupConfig, RewriteConfig, SourceConfig  # noqa: E402
from tracefactory.rewriting.perturb import chain_of  # noqa: E402
from tracefactory.stages.decontaminate import (
    benchmark_index,  # noqa: E402
    decontaminate,  # noqa: E402
)
from tracefactory.stages.dedup import dedup  # noqa: E402
from tracefactory.stages.load import load, partition  # noqa: E402
from tracefactory.stages.rewrite import rewrite  # noqa: E402
from tracefactory.store.sources import read_source  # noqa: E402

DATA = Path(__file__).resolve().parents[1] / "data"


def _no_check(golds):
    return {g: None for g in golds}  # golds are the datasets' own; Math-Verify is not what is measured


def measure(name: str, src: SourceConfig, variants: int) -> dict:
    problems, _ = partition(load(read_source(src), src, _no_check)[0])
    out, report = rewrite(problems, RewriteConfig(enabled=True, variants=variants))
    made = out.filter(pl.col("rewrite_of").is_not_null())
    # a variant's gold is its source's chain re-evaluated as it is: the same equations, so the same chain
    # length by construction; what varies is how many source chains can be re-run at all (coverage)
    steps = [
        len(chain_of(s)) for s in problems.filter(pl.col("problem_id").is_in(made["rewrite_of"].implode()))["solution"]
    ]
    deduped, r_dedup = dedup(out, DedupConfig(enabled=True))
    decon = DecontaminateConfig()
    _, r_decon = decontaminate(
        deduped.filter(pl.col("reason").is_null()).drop("reason", "match"),
        decon,
        benchmark_index(decon.benchmarks, decon.ngram),
    )
    perturbable = made["rewrite_of"].n_unique()
    return {
        "source": name,
        "problems": len(problems),
        "perturbable": perturbable,
        "coverage": round(perturbable / len(problems), 4),
        "variants": len(made),
        "refused_by_reason": dict(Counter(report.dropped_by_reason).most_common()),
        "variants_keeping_chain_length": 1.0 if len(made) else None,  # by construction, see above
        "mean_chain_length": round(sum(steps) / len(steps), 2) if steps else None,
        "dedup_removed": r_dedup.dropped_by_reason,
        "decontaminate_removed": r_decon.dropped_by_reason,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variants", type=int, default=1, help="variants tried per problem")
    ap.add_argument("--json", default="bench/results/rewrite_coverage.json")
    args = ap.parse_args()
    sources = {
        "gsm8k-train-sample": SourceConfig(
            path=str(DATA / "gsm8k" / "train_sample_2000.jsonl"), gold_format="gsm8k", name="gsm8k-train"
        ),
        "demo": SourceConfig(path=str(DATA / "demo" / "problems.jsonl"), id_field="id", solution_field="solution"),
    }
    results = [measure(name, src, args.variants) for name, src in sources.items()]
    for r in results:
        print(
            f"{r['source']:<20} {r['perturbable']}/{r['problems']} perturbable ({r['coverage']:.1%}), "
            f"{r['variants']} variants (mean chain {r['mean_chain_length']} equations, all kept); "
            f"dedup {r['dedup_removed'] or '{}'}, decontaminate {r['decontaminate_removed'] or '{}'}"
        )
        print(f"{'':<20} refused: {r['refused_by_reason']}")
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
