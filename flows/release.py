"""@flow release_dataset: a finished run -> a Hugging Face dataset release (see `tracefactory.publish.release`);
@flow build_and_release: build_dataset, then release_dataset on its run directory — what a scheduled
deployment runs (`prefect.yaml`): each run resumes the same run directory, generates only what is new in
the source, and publishes only the problems no earlier release has."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from flows.build_dataset import build_dataset
from tracefactory.config import load_config
from tracefactory.publish import release
from tracefactory.store import io


@task(name="release-build", cache_policy=NO_CACHE)
def build_task(
    run_dir: str, repo_id: str, out: str, tag: str | None, license: str, dry_run: bool, previous: str | None
):
    prev = release.previous_release(repo_id, dry_run, previous)
    return release.build(run_dir, out, repo_id, tag=tag, previous=prev, license=license)


@task(name="release-upload", cache_policy=NO_CACHE, retries=2, retry_delay_seconds=30)
def upload_task(made: release.Release, repo_id: str, private: bool) -> release.Uploaded:
    return release.upload(made, repo_id, private=private)


@flow(name="release_dataset")
def release_dataset(
    run_dir: str,
    repo_id: str,
    tag: str | None = None,
    out: str | None = None,
    license: str = "other",
    private: bool = False,
    dry_run: bool = False,
    previous: str | None = None,
) -> dict[str, Any]:
    """Release RUN_DIR to the Hub dataset repo REPO_ID (see `tracefactory release --help`)."""
    folder = out or str(Path(run_dir) / "release")
    try:
        made = build_task(run_dir, repo_id, folder, tag, license, dry_run, previous)
    except release.NothingNew as exc:
        return {"released": False, "reason": str(exc)}
    result = {"released": not dry_run, "tag": made.tag, "added_problems": made.added_problems, "rows": made.rows}
    if not dry_run:
        done = upload_task(made, repo_id, private)
        result.update(commit=done.commit, committed=done.committed, url=done.url)
    create_markdown_artifact(
        key="release",
        markdown=f"# {repo_id} {made.tag}\n\n{made.added_problems:,} new problems; rows: {made.rows}",
    )
    return result


@flow(name="build_and_release")
def build_and_release(
    repo_id: str,
    config: str | None = None,
    out: str | None = None,
    overrides: dict[str, Any] | None = None,
    license: str = "other",
    private: bool = False,
    dry_run: bool = False,
) -> dict[str, Any]:
    """build_dataset for CONFIG into OUT (default runs/<name>), then release it to REPO_ID."""
    run_dir = out or str(io.default_run_dir(load_config(config, overrides).name))
    built = build_dataset(config=config, out=run_dir, overrides=overrides)
    released = release_dataset(run_dir=run_dir, repo_id=repo_id, license=license, private=private, dry_run=dry_run)
    return {"build": built, "release": released}
