"""`tracefactory release` on real demo runs (the embedded teachers under vLLM): the folder loads with
`datasets.load_dataset` config by config, the card parses, the plots are images; the upload goes to a
local Hub endpoint (tests/integration/hubserver.py) as one commit and a tag, again without a commit,
and incrementally; the token is in no file or output."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets
import polars as pl
import pytest
import yaml
from hubserver import HubServer  # tests/integration/hubserver.py
from huggingface_hub import DatasetCard
from PIL import Image, ImageStat

from flows.build_dataset import build_dataset
from tracefactory.config import DEMO_PLAIN_CONFIG
from tracefactory.publish.query import query

pytestmark = pytest.mark.vllm
TOKEN = "hf_tracefactoryTESTtoken0123456789"
REPO = "tf-org/arith-demo"


def _cli(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "tracefactory.cli", *args], capture_output=True, text=True, env=env, timeout=300
    )


def _load(folder, config, cache):
    return datasets.load_dataset(str(folder), config, split="train", cache_dir=str(cache)).to_polars()


def test_a_release_folder_loads_config_by_config_as_the_run_has_it(plain_run, tmp_path):
    run, _ = plain_run
    folder = tmp_path / "release"
    done = _cli("release", str(run), "--repo-id", REPO, "--dry-run", "--out", str(folder), "--license", "apache-2.0")
    assert done.returncode == 0, done.stderr
    assert "release v1:" in done.stdout
    dataset = pl.read_parquet(run / "dataset").sort("curriculum_rank")
    key = ["problem_id", "sample_index"]
    default = _load(folder, "default", tmp_path / "cache")
    assert default.select(key).rows() == dataset.select(key).rows()  # every row, in curriculum order
    assert default["cot"].to_list() == dataset["cot"].to_list()
    # SFT-ready: `messages` loads as a list of {role, content}, the assistant turn = cot (think block inside)
    assert default["messages"].to_list() == dataset["messages"].to_list()
    turns = default["messages"][0].to_list()
    assert [t["role"] for t in turns] == ["user", "assistant"] and turns[1]["content"] == default["cot"][0]
    card = DatasetCard.load(folder / "README.md")
    configs = [c["config_name"] for c in card.data.configs]
    buckets = dataset["difficulty"].unique(maintain_order=True).to_list()
    assert configs == ["default", *buckets, "rollouts", "problems"] and card.data.license == "apache-2.0"
    for bucket in buckets:
        rows = _load(folder, bucket, tmp_path / "cache")
        assert rows.select(key).rows() == dataset.filter(pl.col("difficulty") == bucket).select(key).rows()
    rollouts = _load(folder, "rollouts", tmp_path / "cache")
    assert len(rollouts) == len(pl.read_parquet(run / "rollouts"))
    assert set(rollouts["drop_reason"].drop_nulls()) >= {"wrong_answer", "not_shortest"}
    assert len(_load(folder, "problems", tmp_path / "cache")) == len(pl.read_parquet(run / "problems"))
    # the card: the funnel as a table (each stage, in = kept + dropped), the plots it shows exist
    text = (folder / "README.md").read_text()
    funnel = pl.read_parquet(run / "funnel")
    for stage, rows_in, kept in funnel.select("stage", "rows_in", "kept").rows():
        assert f"| {stage} | " in text and f"| {rows_in:,} | {kept:,} | {rows_in - kept:,} |" in text
    assert "## Traces" in text and "cut at `max_tokens`" in text
    for plot in ("difficulty", "pass_rate", "cot_length", "tokens_per_trace", "reasoning_length"):
        assert f"(plots/{plot}.png)" in text
        image = Image.open(folder / "plots" / f"{plot}.png").convert("L")
        assert image.size[0] > 100 and max(ImageStat.Stat(image).stddev) > 10  # drawn on, not blank
    manifest = json.loads((folder / "manifest.json").read_text())
    assert manifest["inputs"]["source"]["sha256"] and manifest["code_version"]
    assert yaml.safe_load((folder / "config.yaml").read_text()) == manifest["config"]
    # DuckDB reads the release folder like a run, and both at once with a run column
    _, rows = query([run, folder], "SELECT run, count(*) FROM dataset GROUP BY run ORDER BY run")
    assert rows == [("release", len(dataset)), ("run", len(dataset))]
    assert query(folder, "SELECT count(*) FROM funnel")[1] == [(len(funnel),)]


def _snapshot(hub, folder: Path) -> Path:
    """The Hub repo's files at main, as a folder (what a clone would give)."""
    for path, data in hub.state.repos[REPO].head["files"].items():
        (folder / path).parent.mkdir(parents=True, exist_ok=True)
        (folder / path).write_bytes(data)
    return folder


def test_upload_is_one_tagged_commit_again_no_commit_then_only_new_problems(
    plain_run, demo_subset, plain_teacher, tmp_path
):
    run, _ = plain_run
    with HubServer() as hub:
        env = {
            **os.environ,
            "HF_ENDPOINT": hub.url,
            "HF_HUB_DISABLE_XET": "1",
            "HF_TOKEN": TOKEN,
            "HF_HOME": str(tmp_path / "hf"),
        }
        out = tmp_path / "v1"
        first = _cli("release", str(run), "--repo-id", REPO, "--out", str(out), env=env)
        assert first.returncode == 0, first.stderr
        repo = hub.state.repos[REPO]
        assert len(repo.commits) == 1 and list(repo.tags) == ["v1"] and repo.tags["v1"] == repo.head["oid"]
        assert repo.commits[0]["summary"].startswith("Release v1: ")
        assert sorted(repo.head["files"]) == sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
        assert any(auth == f"Bearer {TOKEN}" for _, _, auth in hub.state.requests)  # the token was used ...

        # the same release again: the same bytes, so no commit and the tag stays where it was
        again = _cli("release", str(run), "--repo-id", REPO, "--tag", "v1", "--out", str(tmp_path / "v1b"), env=env)
        assert again.returncode == 0, again.stderr
        assert "no new commit" in again.stdout and len(repo.commits) == 1
        # without a tag: nothing new since v1, nothing released
        none = _cli("release", str(run), "--repo-id", REPO, "--out", str(tmp_path / "none"), env=env)
        assert none.returncode == 0 and "nothing to release" in none.stdout and len(repo.commits) == 1

        # a later run with 6 more problems (same run directory: the old problems' generations are reused)
        grown = tmp_path / "grown"
        shutil.copytree(run, grown)
        more = tmp_path / "more.jsonl"
        extra = (Path(__file__).parents[2] / "data" / "demo" / "problems.jsonl").read_text().splitlines()[1::50]
        more.write_text(demo_subset.read_text() + "\n".join(extra) + "\n")
        overrides = {"source.path": str(more), "run.shard_size": 32}
        build_dataset(config=str(DEMO_PLAIN_CONFIG), out=str(grown), teacher=plain_teacher, overrides=overrides)
        # ... and so is the latest tag again from a run with other problems
        clash = _cli("release", str(grown), "--repo-id", REPO, "--tag", "v1", "--out", str(tmp_path / "x"), env=env)
        assert clash.returncode == 2 and "v1 was released with other problems" in clash.stdout
        assert len(repo.commits) == 1
        second = _cli("release", str(grown), "--repo-id", REPO, "--out", str(tmp_path / "v2"), env=env)
        assert second.returncode == 0, second.stderr
        assert len(repo.commits) == 2 and list(repo.tags) == ["v1", "v2"]
        info = json.loads((tmp_path / "v2" / "release.json").read_text())
        old = set(pl.read_parquet(run / "problems")["problem_id"])
        added = pl.read_parquet(grown / "problems").filter(~pl.col("problem_id").is_in(list(old)))
        assert info["added"]["problems"] == len(added) >= 6 and info["previous_tag"] == "v1"
        card = (tmp_path / "v2" / "README.md").read_text()
        assert f"**Added in v2** (since v1): {len(added):,} new problems" in card
        # a tag names one content: an earlier tag is refused before anything is sent
        clash = _cli("release", str(grown), "--repo-id", REPO, "--tag", "v1", "--out", str(tmp_path / "x"), env=env)
        assert clash.returncode == 2 and "a tag not used by an earlier release (v1, v2)" in clash.stdout
        assert len(repo.commits) == 2
        # the repository now holds both releases' files; every config loads them all
        files = hub.state.repos[REPO].head["files"]
        assert "data/default/release-0001.parquet" in files and "data/default/release-0002.parquet" in files
        snap = _snapshot(hub, tmp_path / "snapshot")
        everything = _load(snap, "problems", tmp_path / "cache")
        assert everything["problem_id"].n_unique() == len(everything) == len(old) + len(added)

        # ... and is nowhere else: not in our output, the run's logs, the release folders, the card
        outputs = [first.stdout, first.stderr, again.stdout, again.stderr, second.stdout, second.stderr]
        assert not any(TOKEN in o for o in outputs)
        for root in (run, grown, out, tmp_path / "v2"):
            for p in root.rglob("*"):
                if p.is_file() and p.stat().st_size < 50_000_000:
                    assert TOKEN.encode() not in p.read_bytes(), p


def test_the_release_flow_builds_then_finds_nothing_new_after_it(prefect_harness, plain_run, tmp_path):
    from flows.release import release_dataset

    run, _ = plain_run
    first = release_dataset(run_dir=str(run), repo_id=REPO, out=str(tmp_path / "v1"), dry_run=True)
    assert first["tag"] == "v1" and first["rows"]["default"] == len(pl.read_parquet(run / "dataset"))
    again = release_dataset(
        run_dir=str(run), repo_id=REPO, out=str(tmp_path / "v2"), dry_run=True, previous=str(tmp_path / "v1")
    )
    assert again["released"] is False and "already in release v1" in again["reason"]


def test_export_gives_messages_and_sharegpt_conversations(plain_run, tmp_path):
    run, _ = plain_run
    dataset = pl.read_parquet(run / "dataset").sort("curriculum_rank")
    done = _cli("export", str(run), str(tmp_path / "sft.jsonl"))
    assert done.returncode == 0, done.stderr
    rows = [json.loads(line) for line in (tmp_path / "sft.jsonl").read_text().splitlines()]
    assert [r["messages"] for r in rows] == dataset["messages"].to_list()
    done = _cli("export", str(run), str(tmp_path / "sft.parquet"), "--format", "sharegpt")
    assert done.returncode == 0, done.stderr
    share = pl.read_parquet(tmp_path / "sft.parquet")
    first = share["conversations"][0].to_list()
    assert [t["from"] for t in first] == ["human", "gpt"] and first[1]["value"] == dataset["cot"][0]
    assert share["system"].is_null().all() and share["curriculum_rank"].to_list() == list(range(len(share)))
    assert _cli("export", str(run), str(tmp_path / "x.csv")).returncode == 2  # one clear line, not a traceback


def test_sharegpt_keeps_the_system_prompt_apart():
    from tracefactory.publish.export import sharegpt

    turns = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "q"},
        {"role": "assistant", "content": "a"},
    ]
    assert sharegpt(turns) == ("be brief", [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}])


def test_a_release_of_the_r1_shaped_run_has_think_blocks_in_messages_and_the_card(demo_run, tmp_path):
    run, _ = demo_run
    folder = tmp_path / "release"
    done = _cli("release", str(run), "--repo-id", REPO, "--dry-run", "--out", str(folder))
    assert done.returncode == 0, done.stderr
    default = _load(folder, "default", tmp_path / "cache")
    assistant = [m[-1]["content"] for m in default["messages"].to_list()]
    assert assistant == default["cot"].to_list() and all(
        a.startswith("<think>\n") and "</think>" in a for a in assistant
    )
    text = (folder / "README.md").read_text()
    info = json.loads((folder / "release.json").read_text())["traces"]
    rollouts = pl.read_parquet(run / "rollouts")
    for reason in ("think_unclosed", "think_malformed", "empty_response"):
        assert info[reason] == rollouts.filter(pl.col("drop_reason") == reason).height, reason
    assert info["think_closed_rate"] == round(rollouts["think_closed"].mean(), 4) > 0.9
    assert f"{info['think_unclosed']:,} stopped without closing it" in text and "(plots/reasoning_length.png)" in text
    # the demo's preference pairs: their own config, in TRL's conversational format, the chosen turn a dataset row's
    card = DatasetCard.load(folder / "README.md")
    assert "pairs" in [c["config_name"] for c in card.data.configs]
    pairs = _load(folder, "pairs", tmp_path / "cache")
    assert len(pairs) == len(pl.read_parquet(run / "pairs")) > 0 and pairs.columns[:3] == [
        "prompt",
        "chosen",
        "rejected",
    ]
    assert set(pairs["chosen"].list.first().struct.field("content")) <= set(default["cot"])
    assert 'load_dataset("tf-org/arith-demo", "pairs")' in text
    assert query(folder, "SELECT count(*) FROM pairs")[1] == [(len(pairs),)]  # DuckDB reads the release's pairs too
    # the demo's adaptive budget, as the funnel tells it
    problems = pl.read_parquet(run / "problems")
    stops = problems["stop_reason"].value_counts().sort("stop_reason").rows()
    assert "an adaptive budget: 2 samples per problem" in text and f"over {problems['rounds'].max()} rounds" in text
    assert all(f"{reason} {count:,}" in text for reason, count in stops)
