"""`tracefactory run | query` — the command line."""

from __future__ import annotations

import json
import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.console import Console
from rich.table import Table

from tracefactory.errors import TraceFactoryError

app = typer.Typer(help="tracefactory: verified, curriculum-ordered reasoning traces from a vLLM teacher.",
                  no_args_is_help=True, add_completion=False)
console = Console() if sys.stdout.isatty() else Console(width=160)  # logs and pipes: don't wrap at 80


def _fail(exc: Exception) -> None:
    console.print(f"[bold red]error:[/] {exc}")
    raise typer.Exit(2)


@app.command()
def run(
    config: Optional[Path] = typer.Argument(None, help="YAML config; omit for the embedded demo"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="run directory (default: runs/<name>)"),
    set_: list[str] = typer.Option([], "--set", help="override a config value, e.g. --set sampling.n=4"),
    task_runner: Optional[str] = typer.Option(None, "--task-runner",
                                              help="local (default) or ray: shard tasks on a Ray cluster"),
    ray_address: Optional[str] = typer.Option(None, "--ray-address",
                                              help="Ray cluster to join, e.g. auto or ray://head:10001 "
                                                   "(default: start a local Ray instance)"),
) -> None:
    """Run the Prefect flow `build_dataset`. Re-running into the same --out resumes: finished requests
    are never generated again."""
    from tracefactory.config import load_config

    try:
        overrides = dict(_parse_override(s) for s in set_)
        if task_runner is not None:
            overrides["run.task_runner"] = task_runner
        if ray_address is not None:
            overrides.setdefault("run.task_runner", "ray")
            overrides["run.ray_address"] = ray_address
        load_config(config, overrides)  # fail fast, before Prefect or the engine start
    except TraceFactoryError as exc:
        _fail(exc)
    # the temporary server's telemetry heartbeat contends for its SQLite file and logs spurious errors
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)  # Prefect's API calls, one line each
    from flows.build_dataset import run_build

    try:
        result = run_build(config=str(config) if config else None, out=str(out) if out else None,
                               overrides=overrides)
    except TraceFactoryError as exc:
        _fail(exc)
    _print_funnel(Path(result["run_dir"]))
    console.print(f"dataset rows: {result['dataset_rows']}  ->  {result['run_dir']}")


def _parse_override(text: str) -> tuple[str, object]:
    from tracefactory.errors import ConfigError

    if "=" not in text:
        raise ConfigError("--set", text, "KEY=VALUE, e.g. sampling.n=4")
    key, value = text.split("=", 1)
    import yaml

    return key.strip(), yaml.safe_load(value)


def _print_funnel(run_dir: Path) -> None:
    from tracefactory.query import query

    cols, rows = query(run_dir, "SELECT stage, unit, rows_in, kept, dropped, dropped_by_reason, "
                                "round(seconds, 1) AS seconds, tokens FROM funnel")
    _print_table(cols, rows, title="funnel")


def _print_table(cols: list[str], rows: list[tuple], title: str | None = None) -> None:
    table = Table(title=title)
    for c in cols:
        table.add_column(c)
    for r in rows:
        table.add_row(*("" if v is None else str(v) for v in r))
    console.print(table)


@app.command("eval-steps")
def eval_steps(
    config: Optional[Path] = typer.Argument(None, help="YAML config whose step_score section picks the scorer"),
    data: Path = typer.Option(Path("data/prm800k/phase1_test_labeled_2000.jsonl"), help="labelled steps (PRM800K)"),
    limit: int = typer.Option(200, help="score at most this many labelled traces"),
    run_dir: Optional[Path] = typer.Option(None, "--run", help="also write the figures into RUN/manifest.json"),
) -> None:
    """Agreement of the configured step scorer with human step labels: step AUROC, first-error F1."""
    from tracefactory import io, pipeline
    from tracefactory.backends import make_teacher
    from tracefactory.config import load_config

    try:
        cfg = load_config(config)
        if not data.is_file():
            from tracefactory.errors import ConfigError

            raise ConfigError("--data", str(data), "an existing PRM800K-format JSONL file")
        teacher = make_teacher(cfg.teacher)
        try:
            result = pipeline.evaluate_steps(cfg, teacher, str(data), limit)
        finally:
            getattr(teacher, "close", lambda: None)()
    except TraceFactoryError as exc:
        _fail(exc)
    console.print_json(json.dumps(result))
    if run_dir:
        manifest = json.loads((run_dir / "manifest.json").read_text())
        io.write_json({**manifest, "step_eval": result}, run_dir / "manifest.json")


@app.command("query")
def query_cmd(
    run_dir: Path = typer.Argument(..., help="a run directory"),
    sql: str = typer.Argument(..., help="SQL over views problems, rollouts, dataset, rejected, funnel"),
    as_json: bool = typer.Option(False, "--json", help="print JSON lines instead of a table"),
) -> None:
    """Query a run's tables with DuckDB."""
    import duckdb

    from tracefactory.query import query

    try:
        cols, rows = query(run_dir, sql)
    except (TraceFactoryError, duckdb.Error) as exc:
        _fail(exc)
    if as_json:
        for r in rows:
            sys.stdout.write(json.dumps(dict(zip(cols, r)), default=str) + "\n")
    else:
        _print_table(cols, rows)


if __name__ == "__main__":
    app()
