"""`tracefactory release`: a finished run -> a Hugging Face dataset release (a folder; one commit and a tag).

The folder (see `build`):

    README.md                              the dataset card (YAML `configs:` for `datasets.load_dataset`)
    data/default/release-0001.parquet      the dataset in curriculum order (`default`)
    data/<bucket>/release-0001.parquet     one config per difficulty bucket (easy, medium, hard ...)
    data/rollouts/release-0001.parquet     every trace with its verdict and drop reason (`rollouts`)
    data/problems/release-0001.parquet     every problem with its pass rate and difficulty (`problems`)
    plots/*.png                            the card's figures
    manifest.json, config.yaml             the run's lineage (input hashes, code version, seeds) and config
    funnel.parquet                         the run's funnel (the card's table; `tracefactory query` reads it)
    release.json, problem_hashes.parquet   what this release is, and every problem released so far

Releases are incremental: a problem is identified by a hash of its normalised question and gold, and a
release carries only the problems no earlier release of the repository has (its files are added beside
the earlier releases' files, which the configs' globs keep loading). Building the same release again
(same run, same tag, same previous release) gives the same bytes, so uploading it again makes no commit.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import polars as pl
import yaml

from tracefactory.errors import ConfigError, TraceFactoryError
from tracefactory.publish.card import bucket_order, card, plots, trace_stats
from tracefactory.rewriting.textnorm import normalise
from tracefactory.store import io
from tracefactory.store.schema import (
    ANSWER,
    CURRICULUM_RANK,
    DIFFICULTY,
    MAJORITY_COT,
    PROBLEM_ID,
    QUESTION,
)

RELEASE_JSON = "release.json"
HASHES = "problem_hashes.parquet"
FUNNEL = "funnel.parquet"
# a release folder's tables, as `tracefactory query` reads them
TABLES = {
    "dataset": "data/default",
    "rollouts": "data/rollouts",
    "problems": "data/problems",
    "pairs": "data/pairs",
    "audit": "data/audit",
    "rationalized": "data/rationalized",
}
REPO_ID = r"[\w.-]+/[\w.-]+"


class NothingNew(TraceFactoryError):
    """Every problem of the run is already in an earlier release."""


@dataclass(frozen=True)
class Release:
    folder: Path
    tag: str
    sequence: int
    previous_tag: str | None
    added_problems: int
    rows: dict[str, int]  # config -> rows in this release


def problem_hash(question: str, answer: str | None) -> str:
    """A problem's identity across runs and releases: its normalised question and its gold without spaces
    (not word-normalised: that would make -3 and 3, or 1/2 and 12, one gold)."""
    gold = "".join((answer or "").split())  # a problem kept without a gold (source.gold: none, or below the bars)
    return hashlib.sha256(f"{normalise(question)}\x00{gold}".encode()).hexdigest()[:32]


def read_previous(folder: str | Path | None) -> tuple[dict | None, pl.DataFrame | None]:
    """The previous release's `release.json` and problem hashes from a release folder (None: first release)."""
    if folder is None:
        return None, None
    folder = Path(folder)
    if not (folder / RELEASE_JSON).is_file() or not (folder / HASHES).is_file():
        raise ConfigError("--previous", str(folder), f"a release folder with {RELEASE_JSON} and {HASHES}")
    return json.loads((folder / RELEASE_JSON).read_text()), pl.read_parquet(folder / HASHES)


def build(
    run_dir: str | Path,
    out: str | Path,
    repo_id: str,
    tag: str | None = None,
    previous: tuple[dict | None, pl.DataFrame | None] = (None, None),
    license: str = "other",
) -> Release:
    """Write the release folder for `run_dir` at `out` (replacing it), relative to the `previous` release."""
    run = io.RunDir(run_dir)
    manifest_path = run.root / "manifest.json"
    manifest = json.loads(manifest_path.read_text()) if manifest_path.is_file() else {}
    if manifest.get("status") != "complete":
        raise ConfigError("RUN_DIR", str(run_dir), "a finished run (its manifest.json says status: complete)")
    tables = {t: run.read_table(t) for t in ("problems", "rollouts", "dataset", "funnel")}
    made = run.tables()  # the optional tables (pairs, audit, rationalized) where the run made them
    pairs = run.read_table("pairs") if "pairs" in made else None
    audit = run.read_table("audit") if "audit" in made else None
    rationalized = run.read_table("rationalized") if "rationalized" in made else None

    prev, prev_hashes = previous
    prev_hashes = (
        prev_hashes if prev_hashes is not None else pl.DataFrame(schema={"hash": pl.String, "release": pl.Int64})
    )
    again = prev is not None and tag is not None and prev["tag"] == tag  # the same release, built again
    sequence = prev["sequence"] if again else (prev["sequence"] + 1 if prev else 1)
    tag = tag or f"v{sequence}"
    known = prev_hashes.filter(pl.col("release") < sequence)
    if prev is not None and not again and tag in prev.get("tags", []):
        raise ConfigError("--tag", tag, f"a tag not used by an earlier release ({', '.join(prev['tags'])})")

    problems = tables["problems"].with_columns(
        pl.struct(QUESTION, ANSWER).map_elements(lambda r: problem_hash(r[QUESTION], r[ANSWER]), pl.String).alias("_h")
    )
    new = problems.filter(~pl.col("_h").is_in(known["hash"].implode()))
    if again and set(new["_h"]) != set(prev_hashes.filter(pl.col("release") == sequence)["hash"]):
        raise ConfigError("--tag", tag, f"a new tag: {tag} was released with other problems than this run has")
    if new.is_empty():
        raise NothingNew(f"every problem of {run_dir} is already in release {prev['tag'] if prev else '?'}")
    ids = new[PROBLEM_ID].implode()
    dataset = tables["dataset"].filter(pl.col(PROBLEM_ID).is_in(ids)).sort(CURRICULUM_RANK)
    rollouts = tables["rollouts"].filter(pl.col(PROBLEM_ID).is_in(ids))
    problems_out = new.drop("_h")

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)
    (out / "plots").mkdir(parents=True)
    name = f"release-{sequence:04d}.parquet"
    frames = {"default": dataset}
    frames.update({b: dataset.filter(pl.col(DIFFICULTY) == b) for b in bucket_order(dataset)})
    frames.update({"rollouts": rollouts, "problems": problems_out})
    if pairs is not None:
        pairs = pairs.filter(pl.col(PROBLEM_ID).is_in(ids)).sort(CURRICULUM_RANK)
    if audit is not None:
        audit = audit.filter(pl.col(PROBLEM_ID).is_in(ids))
    if rationalized is not None:
        rationalized = rationalized.filter(pl.col(PROBLEM_ID).is_in(ids)).sort(CURRICULUM_RANK)
    # a config without rows in this release gets no file (an empty one would be a config that loads nothing)
    optional = (("pairs", pairs), ("audit", audit), ("rationalized", rationalized))
    frames.update({name: f for name, f in optional if f is not None and len(f)})
    for config, frame in frames.items():
        (out / "data" / config).mkdir(parents=True)
        frame.write_parquet(out / "data" / config / name, statistics=False)
    configs = list(dict.fromkeys([*(prev or {}).get("configs", []), *frames]))  # every config ever released

    hashes = pl.concat(
        [known, pl.DataFrame({"hash": new["_h"], "release": pl.Series([sequence] * len(new), dtype=pl.Int64)})]
    ).unique("hash", keep="first")
    hashes.sort("hash").write_parquet(out / HASHES, statistics=False)
    rows = {c: len(f) for c, f in frames.items()}
    tags = [*[t for t in (prev or {}).get("tags", []) if t != tag], tag] if not again else prev["tags"]
    previous_tag = (prev or {}).get("previous_tag") if again else (prev or {}).get("tag")
    info = {
        "repo_id": repo_id,
        "tag": tag,
        "sequence": sequence,
        "previous_tag": previous_tag,
        "tags": tags,
        "configs": configs,
        "added": {"problems": len(new), "rows": rows},
        "traces": trace_stats(rollouts, dataset),
        "audit": None
        if audit is None
        else {"problems": len(new), "suspects": len(audit), "first": audit.head(10).drop(MAJORITY_COT).to_dicts()},
        "run": {
            "name": manifest.get("name"),
            "config_hash": manifest.get("config_hash"),
            "created": manifest.get("created"),
        },
    }
    tables["funnel"].write_parquet(out / FUNNEL, statistics=False)  # the whole run's (for `query`)
    (out / RELEASE_JSON).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    head = f"# the resolved config of run {manifest.get('name')!r} (config hash {manifest.get('config_hash')})\n"
    (out / "config.yaml").write_text(head + yaml.safe_dump(manifest["config"], sort_keys=False))
    plots(out / "plots", problems_out, dataset, rollouts)
    release = Release(out, tag, sequence, previous_tag, len(new), rows)
    (out / "README.md").write_text(card(info, manifest, tables["funnel"], configs, license))
    return release


# ---- the Hub ---------------------------------------------------------------------------------------


def previous_release(repo_id: str, dry_run: bool, folder: str | Path | None) -> tuple[dict | None, pl.DataFrame | None]:
    """What a release builds on: with `dry_run`, the release folder `folder` (None: a first release);
    otherwise the repository's latest release on the Hub."""
    if dry_run:
        return read_previous(folder)
    with tempfile.TemporaryDirectory() as tmp:
        return fetch_previous(repo_id, Path(tmp))


def fetch_previous(repo_id: str, folder: Path) -> tuple[dict | None, pl.DataFrame | None]:
    """The latest release of `repo_id` on the Hub (None, None when the repo or its release files do not exist).
    The token comes from HF_TOKEN or `hf auth login`, as huggingface_hub finds it."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import EntryNotFoundError, RepositoryNotFoundError

    api = HfApi()
    try:
        paths = [api.hf_hub_download(repo_id, f, repo_type="dataset", local_dir=folder) for f in (RELEASE_JSON, HASHES)]
    except (RepositoryNotFoundError, EntryNotFoundError):
        return None, None
    return json.loads(Path(paths[0]).read_text()), pl.read_parquet(paths[1])


@dataclass(frozen=True)
class Uploaded:
    commit: str
    committed: bool  # False: the Hub already had exactly these files (nothing was changed)
    url: str


def upload(release: Release, repo_id: str, private: bool = False) -> Uploaded:
    """The release folder as one commit on the dataset repo `repo_id` (created if missing), tagged
    `release.tag`. Files the Hub already has byte for byte are not sent; when none changed there is no
    commit (huggingface_hub skips empty commits) and the tag is left as it is."""
    from huggingface_hub import HfApi
    from huggingface_hub.utils import disable_progress_bars
    from huggingface_hub.utils import logging as hf_logging

    disable_progress_bars()  # the console shows our lines; the upload is one line when it is done
    hf_logging.set_verbosity_error()  # "no files have been modified": our own line says so
    api = HfApi()
    api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True)
    before = api.repo_info(repo_id, repo_type="dataset").sha
    message = (
        f"Release {release.tag}: {release.added_problems:,} new problems, {release.rows['default']:,} training rows"
    )
    info = api.upload_folder(
        folder_path=str(release.folder), repo_id=repo_id, repo_type="dataset", commit_message=message
    )
    committed = info.oid != before
    if committed:
        api.create_tag(repo_id, tag=release.tag, revision=info.oid, repo_type="dataset", tag_message=message)
    return Uploaded(info.oid, committed, info.commit_url)
