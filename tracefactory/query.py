"""DuckDB over a run directory: every table folder becomes a view of the same name."""

from __future__ import annotations

from pathlib import Path

import duckdb

from tracefactory.errors import ConfigError
from tracefactory.io import RunDir


def connect(run_dir: str | Path) -> duckdb.DuckDBPyConnection:
    run = RunDir(run_dir)
    tables = run.tables()
    if not tables:
        raise ConfigError("RUN_DIR", str(run_dir), "a run directory with tables (made by `tracefactory run`)")
    con = duckdb.connect()
    for name in tables:
        glob = str((run.root / name / "*.parquet").resolve()).replace("'", "''")
        con.execute(f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{glob}')")
    return con


def query(run_dir: str | Path, sql: str):
    """(column names, rows) of `sql` run against the run's views."""
    con = connect(run_dir)
    try:
        rel = con.execute(sql)
        return [d[0] for d in rel.description or []], rel.fetchall()
    finally:
        con.close()
