"""DuckDB over a run directory: every table folder becomes a view of the same name.

The connection is read-only in effect: only SELECT-like statements run (no COPY, no CREATE, no SET),
files can be read only inside the run directory, and the configuration is locked — `query` cannot
overwrite a run's files or read anything else on the machine, whatever SQL it is given.
"""

from __future__ import annotations

from pathlib import Path

import duckdb

from tracefactory.errors import ConfigError
from tracefactory.io import RunDir

READ_ONLY = {"SELECT", "EXPLAIN"}  # SUMMARIZE and DESCRIBE parse as SELECT


def connect(run_dir: str | Path) -> duckdb.DuckDBPyConnection:
    run = RunDir(run_dir)
    tables = run.tables()
    if not tables:
        raise ConfigError("RUN_DIR", str(run_dir), "a run directory with tables (made by `tracefactory run`)")
    root = str(run.root.resolve())
    con = duckdb.connect()
    for name in tables:
        glob = str(Path(root) / name / "*.parquet").replace("'", "''")
        con.execute(f"CREATE VIEW \"{name}\" AS SELECT * FROM read_parquet('{glob}')")
    con.execute(f"SET allowed_directories = ['{root.rstrip('/').replace(chr(39), chr(39) * 2)}/']")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    for statement in con.extract_statements(sql):
        kind = str(statement.type).rsplit(".", 1)[-1]
        if kind not in READ_ONLY:
            raise ConfigError("SQL", statement.query.strip()[:80], "read-only SQL: SELECT (or WITH/SUMMARIZE/EXPLAIN)")


def query(run_dir: str | Path, sql: str):
    """(column names, rows) of `sql` run against the run's views."""
    con = connect(run_dir)
    try:
        _read_only(con, sql)
        rel = con.execute(sql)
        return [d[0] for d in rel.description or []], rel.fetchall()
    finally:
        con.close()
