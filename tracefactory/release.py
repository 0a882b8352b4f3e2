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
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl
import yaml

from tracefactory import io
from tracefactory.errors import ConfigError, TraceFactoryError
from tracefactory.schema import (
    ANSWER,
    COT_TOKENS,
    CURRICULUM_RANK,
    DIFFICULTY,
    PASS_RATE,
    PROBLEM_ID,
    QUESTION,
    SCHEMA_DIR,
    UNSOLVED,
)
from tracefactory.textnorm import normalise

log = logging.getLogger("tracefactory")

RELEASE_JSON = "release.json"
HASHES = "problem_hashes.parquet"
PLOTS = {
    "difficulty": "Problems per difficulty bucket",
    "pass_rate": "Teacher pass rate per problem",
    "cot_length": "Chain-of-thought length (tokens) by difficulty",
    "tokens_per_trace": "Rollout tokens spent per accepted trace, by difficulty",
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


def problem_hash(question: str, answer: str) -> str:
    """A problem's identity across runs and releases: its normalised question and gold."""
    return hashlib.sha256(f"{normalise(question)}\x00{normalise(answer)}".encode()).hexdigest()[:32]


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
    if not manifest_path.is_file() or json.loads(manifest_path.read_text()).get("status") != "complete":
        raise ConfigError("RUN_DIR", str(run_dir), "a finished run (its manifest.json says status: complete)")
    manifest = json.loads(manifest_path.read_text())
    tables = {t: run.read_table(t) for t in ("problems", "rollouts", "dataset", "funnel")}

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
    buckets = [b for b in _bucket_order(dataset)]
    frames.update({b: dataset.filter(pl.col(DIFFICULTY) == b) for b in buckets})
    frames.update({"rollouts": rollouts, "problems": problems_out})
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
        "run": {
            "name": manifest.get("name"),
            "config_hash": manifest.get("config_hash"),
            "created": manifest.get("created"),
        },
    }
    tables["funnel"].write_parquet(out / "funnel.parquet", statistics=False)  # the whole run's (for `query`)
    (out / RELEASE_JSON).write_text(json.dumps(info, indent=2, sort_keys=True) + "\n")
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
    head = f"# the resolved config of run {manifest.get('name')!r} (config hash {manifest.get('config_hash')})\n"
    (out / "config.yaml").write_text(head + yaml.safe_dump(manifest["config"], sort_keys=False))
    _plots(out / "plots", problems_out, dataset, rollouts)
    release = Release(out, tag, sequence, previous_tag, len(new), rows)
    (out / "README.md").write_text(card(release, info, manifest, tables["funnel"], configs, license))
    return release


def _bucket_order(dataset: pl.DataFrame) -> list[str]:
    """Difficulty buckets in the order the curriculum meets them."""
    return list(dict.fromkeys(dataset.sort(CURRICULUM_RANK)[DIFFICULTY].to_list()))


# ---- plots -----------------------------------------------------------------------------------------


def _plots(folder: Path, problems: pl.DataFrame, dataset: pl.DataFrame, rollouts: pl.DataFrame) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    order = [*_bucket_order(dataset), *sorted(set(problems[DIFFICULTY].drop_nulls()) - set(dataset[DIFFICULTY]))]
    counts = dict(problems.group_by(DIFFICULTY).len().iter_rows())
    spent = dict(rollouts.group_by(PROBLEM_ID).agg(pl.col(COT_TOKENS).sum()).iter_rows())
    per_bucket_tokens = {
        b: sum(spent.get(p, 0) for p in problems.filter(pl.col(DIFFICULTY) == b)[PROBLEM_ID]) for b in order
    }
    accepted = dict(dataset.group_by(DIFFICULTY).len().iter_rows())

    def save(name: str, draw) -> None:
        fig, ax = plt.subplots(figsize=(6, 3.5), dpi=100)
        draw(ax)
        ax.set_title(PLOTS[name])
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", metadata={"Software": None})
        plt.close(fig)

    def difficulty(ax):
        ax.bar(order, [counts.get(b, 0) for b in order], color="#4c72b0")
        ax.set_ylabel("problems")

    def pass_rate(ax):
        n = max(problems["n_rollouts"].max() or 1, 1)  # pass rates are multiples of 1/n: one bar each
        edges = [(k - 0.5) / n for k in range(n + 2)]
        ax.hist(problems[PASS_RATE].drop_nulls().to_list(), bins=edges, color="#55a868", rwidth=0.85)
        ax.set_xlabel("pass rate")
        ax.set_ylabel("problems")

    def cot_length(ax):
        present = [b for b in order if b in accepted]
        data = [dataset.filter(pl.col(DIFFICULTY) == b)[COT_TOKENS].to_list() for b in present]
        if present:
            ax.boxplot(data, tick_labels=present)
        ax.set_ylabel("tokens")

    def tokens_per_trace(ax):
        present = [b for b in order if accepted.get(b)]
        total = sum(spent.values()) / max(len(dataset), 1)  # with what unsolved problems cost
        ax.bar([*present, "all (with unsolved)"], [*(per_bucket_tokens[b] / accepted[b] for b in present), total])
        ax.set_ylabel("rollout tokens / accepted trace")

    for name, draw in (
        ("difficulty", difficulty),
        ("pass_rate", pass_rate),
        ("cot_length", cot_length),
        ("tokens_per_trace", tokens_per_trace),
    ):
        save(name, draw)


# ---- the card ---------------------------------------------------------------------------------------


def _schema_rows(table: str) -> list[tuple[str, str, str]]:
    spec = json.loads((SCHEMA_DIR / f"{table}.json").read_text())
    return [(c["name"], c["type"], c.get("description", "")) for c in spec["columns"]]


def _number(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:,.3f}".rstrip("0").rstrip(".") if abs(v) < 1000 else f"{v:,.0f}"
    if isinstance(v, int):
        return f"{v:,}"
    return "" if v is None else str(v)


def _reasons(raw: str | None) -> str:
    reasons = json.loads(raw) if raw else {}
    return ", ".join(f"{k} {v:,}" for k, v in reasons.items() if v) or "-"


def card(release: Release, info: dict, manifest: dict, funnel: pl.DataFrame, configs: list[str], license: str) -> str:
    cfg = manifest["config"]
    teacher = manifest.get("teacher", {})
    buckets = [c for c in configs if c not in ("default", "rollouts", "problems")]
    front = {
        "license": license,
        "pretty_name": f"{info['repo_id'].split('/')[-1]} (tracefactory)",
        "tags": ["reasoning", "chain-of-thought", "distillation", "tracefactory"],
        "task_categories": ["text-generation"],
        "configs": [
            {
                "config_name": c,
                "data_files": [{"split": "train", "path": f"data/{c}/*.parquet"}],
                **({"default": True} if c == "default" else {}),
            }
            for c in configs
        ],
    }
    r = release.rows
    lines = [
        "---",
        yaml.safe_dump(front, sort_keys=False).rstrip(),
        "---",
        "",
        f"# {info['repo_id']}",
        "",
        f"Chain-of-thought traces distilled from **{teacher.get('name', cfg['teacher']['model'])}**, graded against"
        " gold answers, filtered by a process reward model and ordered easy-to-hard, made with"
        " tracefactory from the run `"
        f"{manifest.get('name')}` ({manifest.get('created')}). Release **{release.tag}**"
        + (f", after {release.previous_tag}" if release.previous_tag else "")
        + ".",
        "",
        f"**Added in {release.tag}**"
        + (f" (since {release.previous_tag})" if release.previous_tag else "")
        + f": {release.added_problems:,} new problems, {r['default']:,} training rows,"
        f" {r['rollouts']:,} rollouts. Problems already in an earlier release (same normalised question and"
        " gold) are not repeated; each release adds its own files, and every config loads all of them.",
        "",
        "## Configs",
        "",
        "| config | rows in this release | what it is |",
        "|---|---:|---|",
        f"| `default` | {r['default']:,} | one row per kept trace: `question`, `cot`, `answer`, in curriculum"
        " order (`curriculum_rank`) |",
        *[f"| `{b}` | {r.get(b, 0):,} | the `{b}` difficulty bucket of `default` |" for b in buckets],
        f"| `rollouts` | {r['rollouts']:,} | every trace the teacher wrote, right or wrong, with its verdict"
        " (`correct`) and why it was dropped (`drop_reason`): negatives for DPO |",
        f"| `problems` | {r['problems']:,} | every problem with the teacher's pass rate and its difficulty |",
        "",
        "```python",
        "from datasets import load_dataset",
        "",
        f'ds = load_dataset("{info["repo_id"]}")                # default: curriculum order',
        *[f'{b} = load_dataset("{info["repo_id"]}", "{b}")' for b in buckets[:1]],
        f'rollouts = load_dataset("{info["repo_id"]}", "rollouts")',
        "```",
        "",
        f'A release is a tag: `load_dataset("{info["repo_id"]}", revision="{release.tag}")`.',
        "",
        "## How it was made",
        "",
        f"- **Teacher**: `{teacher.get('name')}` ({teacher.get('kind')}), {cfg['sampling']['n']} samples per problem,"
        f" temperature {cfg['sampling']['temperature']}, top-p {cfg['sampling']['top_p']},"
        f" at most {cfg['sampling']['max_tokens']} tokens, seed {cfg['sampling']['seed']}.",
        "- **Grading**: the final answer extracted from each trace is checked against the gold with Math-Verify"
        f" ({cfg['grade']['timeout_s']} s budget per answer"
        + (", truncated traces dropped" if cfg["grade"].get("drop_truncated") else "")
        + ").",
        f"- **Step filter**: {_step_filter(cfg)}",
        f"- **Selection**: the {cfg['select']['keep']} shortest correct trace(s) per problem; **difficulty** from the"
        f" teacher's pass rate (bucket lower bounds {', '.join(f'{n} ≥ {b}' for n, b in cfg['difficulty']['buckets'])};"
        f" pass rate 0 is `{UNSOLVED}`); **curriculum** {cfg['curriculum']['order'].replace('_', ' ')}.",
        f"- **Rewriting and filtering of problems**: {_problem_stages(cfg)}",
        "",
        "## Funnel",
        "",
        "What each stage of the run kept (the whole run; this release holds its new problems).",
        "",
        "| stage | unit | in | kept | dropped | reasons | seconds |",
        "|---|---|---:|---:|---:|---|---:|",
        *[
            f"| {f['stage']} | {f['unit']} | {_number(f['rows_in'])} | {_number(f['kept'])} |"
            f" {_number(f['rows_in'] - f['kept'])} | {_reasons(f.get('dropped_by_reason'))} | {f['seconds']:,.1f} |"
            for f in funnel.iter_rows(named=True)
        ],
        "",
        "## Plots",
        "",
        *[f"![{title}](plots/{name}.png)\n" for name, title in PLOTS.items()],
        "## Schema (`default` and the difficulty configs)",
        "",
        "| column | type | description |",
        "|---|---|---|",
        *[f"| `{n}` | {t} | {d} |" for n, t, d in _schema_rows("dataset")],
        "",
        "## Sources and licence",
        "",
        f"Released under `{license}`.",
        "",
        *_sources(manifest),
        "",
        "## Lineage",
        "",
        f"`manifest.json` (input hashes, teacher identity, seeds, package versions, code version"
        f" `{manifest.get('code_version')}`) and `config.yaml` (the resolved config, config hash"
        f" `{manifest.get('config_hash')}`) are beside the data; `release.json` says what this release added and"
        " `problem_hashes.parquet` lists every problem released so far.",
        "",
    ]
    return "\n".join(lines)


def _problem_stages(cfg: dict) -> str:
    rewrite, dedup, decon = cfg.get("rewrite", {}), cfg.get("dedup", {}), cfg.get("decontaminate", {})
    parts = [f"rewriting {', '.join(rewrite['kinds'])}" if rewrite.get("enabled") else "no rewriting"]
    near = f"duplicates and near-duplicates removed (MinHash, Jaccard ≥ {dedup.get('near_threshold')})"
    parts.append(near if dedup.get("enabled") else "no dedup")
    if decon.get("enabled"):
        names = ", ".join(b["name"] for b in decon.get("benchmarks", []))
        parts.append(f"questions sharing a {decon.get('ngram')}-gram with {names} removed")
    else:
        parts.append("no decontamination")
    return "; ".join(parts) + "."


def _step_filter(cfg: dict) -> str:
    s = cfg.get("step_score", {})
    if not s.get("enabled"):
        return "off (traces are not scored step by step)."
    if s["scorer"] == "monte_carlo":
        how = (
            f"each step scored by Monte-Carlo continuations of the teacher ({s['n']} per step, {s['label']} labels,"
            f" {s['search']} search, Math-Shepherd style)"
        )
    else:
        how = f"each step scored by the process reward model `{s.get('prm_model')}`"
    return (
        f"steps split by {s['split']}; {how}; a trace is kept when the {s['aggregate']} of its step scores is above"
        f" {s['threshold']} (unscored traces: {s['unscored']})."
    )


def _sources(manifest: dict) -> list[str]:
    src = manifest.get("inputs", {}).get("source", {})
    path = src.get("path")
    name = Path(path).name if path else manifest["config"]["source"].get("path")
    out = [f"- Problems: `{name}`" + (f" (sha256 `{src['sha256'][:16]}…`)" if src.get("sha256") else "")]
    if path:  # the licence notes shipped beside the source file
        folder = Path(path).parent
        for note in ("SOURCE.md", "LICENSE"):
            lines = [ln.strip() for ln in (folder / note).read_text().splitlines()] if (folder / note).is_file() else []
            said = next((ln for ln in lines if "licen" in ln.lower()), next((ln for ln in lines if ln), None))
            if said:
                out.append(f"  - {note}: {said.lstrip('# ')}")
    out.append(
        "- Traces: written by the teacher above; its licence and terms of use apply to them as well as this one."
    )
    return out


# ---- the Hub ---------------------------------------------------------------------------------------


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
