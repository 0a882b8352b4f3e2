"""DuckDB over run directories and release folders: every table becomes a view of the same name.

A run directory's table folders (`problems`, `rollouts`, `dataset`, `rejected`, `funnel`) are its views; a
release folder (`tracefactory release`) gives `dataset` (the curriculum-ordered default config), `rollouts`,
`problems` and `funnel`. With several sources, each view is their union by column name with a `run` column
(the folder's name) saying which source a row came from.

The connection is read-only in effect: only SELECT-like statements run (no COPY, no CREATE, no SET),
files can be read only inside the given folders, and the configuration is locked — `query` cannot
overwrite a run's files or read anything else on the machine, whatever SQL it is given.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa

from tracefactory.errors import ConfigError
from tracefactory.publish.release import FUNNEL, RELEASE_JSON, TABLES
from tracefactory.store.io import RunDir

READ_ONLY = {"SELECT", "EXPLAIN"}  # SUMMARIZE and DESCRIBE parse as SELECT


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _tables(folder: Path) -> dict[str, str]:
    """{view: parquet glob} of a run directory or a release folder."""
    if (folder / RELEASE_JSON).is_file():
        found = {t: str(folder / d / "*.parquet") for t, d in TABLES.items() if any((folder / d).glob("*"))}
        if (folder / FUNNEL).is_file():
            found["funnel"] = str(folder / FUNNEL)
        return found
    return {name: str(folder / name / "*.parquet") for name in RunDir(folder).tables()}


def _labels(folders: list[Path]) -> list[str]:
    names = [f.name for f in folders]
    return names if len(set(names)) == len(names) else [str(f) for f in folders]


def connect(sources: str | Path | list[str | Path]) -> duckdb.DuckDBPyConnection:
    given_as = sources if isinstance(sources, list) else [sources]
    folders = [Path(s).resolve() for s in given_as]
    found = {}
    for given, folder in zip(given_as, folders, strict=True):
        found[folder] = _tables(folder)
        if not found[folder]:
            raise ConfigError(
                "RUN_DIR", str(given), "a run directory with tables (made by `tracefactory run`) or a release folder"
            )
    con = duckdb.connect()
    several = len(folders) > 1
    for view in dict.fromkeys(t for tables in found.values() for t in tables):
        parts = []
        for folder, label in zip(folders, _labels(folders), strict=True):
            if view in found[folder]:
                run = f", {_quote(label)} AS run" if several else ""
                parts.append(f"SELECT *{run} FROM read_parquet({_quote(found[folder][view])}, union_by_name = true)")
        con.execute(f'CREATE VIEW "{view}" AS ' + " UNION ALL BY NAME ".join(parts))
    allowed = ", ".join(_quote(str(f).rstrip("/") + "/") for f in folders)
    con.execute(f"SET allowed_directories = [{allowed}]")
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


def _read_only(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    for statement in con.extract_statements(sql):
        kind = str(statement.type).rsplit(".", 1)[-1]
        if kind not in READ_ONLY:
            raise ConfigError("SQL", statement.query.strip()[:80], "read-only SQL: SELECT (or WITH/SUMMARIZE/EXPLAIN)")


def query_arrow(sources: str | Path | list[str | Path], sql: str) -> pa.Table:
    """The result of `sql` over the sources' views, as an Arrow table."""
    con = connect(sources)
    try:
        _read_only(con, sql)
        return con.sql(sql).to_arrow_table()
    finally:
        con.close()


def query(sources: str | Path | list[str | Path], sql: str):
    """(column names, rows) of `sql` run against the sources' views."""
    table = query_arrow(sources, sql)
    return table.column_names, rows_of(table)


def rows_of(table: pa.Table) -> list[tuple]:
    return [tuple(r.values()) for r in table.to_pylist()]
