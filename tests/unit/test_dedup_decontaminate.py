"""dedup (exact + MinHash-LSH near) and decontaminate (n-gram overlap with benchmark questions)."""

import json
from pathlib import Path

import polars as pl

from tracefactory.config import Benchmark, DecontaminateConfig, DedupConfig
from tracefactory.stages.decontaminate import benchmark_index
from tracefactory.stages.decontaminate import decontaminate as _decontaminate
from tracefactory.stages.dedup import dedup

DATA = Path(__file__).parents[2] / "data"
GSM8K_TEST = [json.loads(x) for x in (DATA / "gsm8k" / "test.jsonl").read_text().splitlines()]
MATH500 = [json.loads(x) for x in (DATA / "math" / "math500.jsonl").read_text().splitlines()]
LONG = (
    "A baker makes 48 loaves of bread every morning and sells them at the market in the town square, "
    "where each loaf costs 3 dollars. How much money does the baker make in a week?"
)


def decontaminate(problems, cfg):
    return _decontaminate(problems, cfg, benchmark_index(cfg.benchmarks, cfg.ngram))


def _frame(questions):
    return pl.DataFrame({"problem_id": [f"p{i}" for i in range(len(questions))], "question": questions})


def test_exact_and_near_duplicates_keep_the_first_copy():
    questions = [
        LONG,
        "  a BAKER makes 48 loaves of bread every morning, and sells them at the market in the town square "
        "where each loaf costs 3 dollars!! How much money does the baker make in a week?",  # same, normalised
        LONG.replace("every morning", "each morning"),  # one word changed: near
        LONG.replace("48", "52"),  # a perturbed variant: other numbers, not a duplicate
        "Jo has 3 pens. How many pens does Jo have?",
    ]
    out, report = dedup(_frame(questions), DedupConfig(near_threshold=0.8))
    assert out["reason"].to_list() == [None, "duplicate", "near_duplicate", None, None]
    assert out["match"].to_list() == [None, "p0", "p0", None, None]
    assert report.dropped_by_reason == {"duplicate": 1, "near_duplicate": 1} and report.kept == 3
    exact_only, _ = dedup(_frame(questions), DedupConfig(near_threshold=None))
    assert exact_only["reason"].to_list() == [None, "duplicate", None, None, None]
    # deterministic: the same input, the same copies kept
    again, _ = dedup(_frame(questions), DedupConfig(near_threshold=0.8))
    assert again.equals(out)


def test_benchmark_questions_and_their_rewrites_are_contaminated_with_the_matching_item():
    cfg = DecontaminateConfig()
    planted = [GSM8K_TEST[7]["question"], MATH500[3]["problem"], GSM8K_TEST[100]["question"].replace("5", "6")]
    clean = ["Jo has 3 pens. She gets 2 more. How many pens does Jo have now?", LONG]
    out, report = decontaminate(_frame(planted + clean), cfg)
    assert out["reason"].to_list() == ["contaminated"] * 3 + [None, None]
    assert out["match"].to_list()[:2] == ["gsm8k-test:7", f"math500:{MATH500[3]['unique_id']}"]
    assert out["match"][2].startswith("gsm8k-test:")
    assert report.dropped_by_reason == {"contaminated": 3}
    # 13-grams are stricter: a question sharing only a short stretch passes
    shared8 = "Jo walks to school. " + " ".join(GSM8K_TEST[7]["question"].split()[:9]) + " zebra."
    assert decontaminate(_frame([shared8]), cfg)[0]["reason"][0] == "contaminated"
    assert decontaminate(_frame([shared8]), DecontaminateConfig(ngram=13))[0]["reason"][0] is None


def test_the_shipped_benchmarks_do_not_flag_the_demo_problems(tmp_path):
    demo = [json.loads(x)["question"] for x in (DATA / "demo" / "problems.jsonl").read_text().splitlines()]
    out, report = decontaminate(_frame(demo), DecontaminateConfig())
    assert report.kept == 300
    custom = tmp_path / "bench.jsonl"
    custom.write_text(json.dumps({"q": demo[5], "uid": "x-1"}) + "\n")
    cfg = DecontaminateConfig(benchmarks=(Benchmark("mine", str(custom), "q", "uid"),))
    flagged = decontaminate(_frame(demo), cfg)[0].filter(pl.col("match") == "mine:x-1")["problem_id"].to_list()
    assert "p5" in flagged and len(flagged) < 5  # itself, and any templated twin sharing 8 words with it


def test_a_removed_original_takes_its_variants_and_their_paraphrases_with_it():
    frame = pl.DataFrame(
        {
            "problem_id": ["p0", "p1", "p1~perturb0", "p1~perturb0~paraphrase0", "p1~paraphrase0"],
            "question": [
                LONG,
                LONG + " ",  # the same after normalising: a duplicate of p0
                LONG.replace("48", "52"),
                "Consider this. " + LONG.replace("48", "52").replace("town square", "plaza"),
                "Consider this. " + LONG.replace("town square", "plaza"),
            ],
            "rewrite_of": [None, None, "p1", "p1~perturb0", "p1"],
        }
    )
    out, report = dedup(frame, DedupConfig(near_threshold=None))
    assert out["reason"].to_list() == [None, "duplicate", "source_removed", "source_removed", "source_removed"]
    assert out["match"].to_list() == [None, "p0", "p1", "p1~perturb0", "p1"]
    assert report.kept == 1
