"""Connections: the standard libpq variables, or the project's embedded PostgreSQL.

When no PGHOST is set, an embedded server (pgserver) is started, or reused (it keeps running
between commands), under ``<project>/.pgdata`` (the working directory's by default), and the PG*
variables are set for this process and its children (dbt among them), so one environment drives dbt
and the sender.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import psycopg
from psycopg import sql

from sender.errors import UserError

PG_VARS = ("PGHOST", "PGPORT", "PGUSER", "PGPASSWORD", "PGDATABASE")


def embedded_env(data_dir: Path) -> dict[str, str]:
    """Start (or reuse) the embedded server in data_dir and return the PG* variables that reach it."""
    with warnings.catch_warnings():  # platformdirs warns when XDG_RUNTIME_DIR is unset
        warnings.simplefilter("ignore")
        import pgserver  # imported lazily: only needed without PGHOST

        server = pgserver.get_server(data_dir, cleanup_mode=None)
    info = server.get_postmaster_info()
    return {"PGHOST": str(info.socket_dir), "PGPORT": str(info.port), "PGUSER": "postgres"}


def ensure_environment(embedded_database: str | None = None, data_dir: Path | None = None) -> dict[str, str]:
    """Make os.environ point at a server; return the PG* variables now in force.

    Without PGHOST the embedded server is used, and ``embedded_database`` (created if missing)
    is selected on it. With PGHOST set, nothing is changed: your own server, your PGDATABASE.
    """
    if not os.environ.get("PGHOST"):
        os.environ.update(embedded_env(data_dir or Path.cwd() / ".pgdata"))
        if embedded_database:
            os.environ["PGDATABASE"] = embedded_database
            _create_database_if_missing(embedded_database)
    return {name: os.environ[name] for name in PG_VARS if os.environ.get(name)}


def _create_database_if_missing(name: str) -> None:
    with connect(dbname="postgres", autocommit=True) as conn:
        if conn.execute("select 1 from pg_database where datname = %s", (name,)).fetchone() is None:
            conn.execute(sql.SQL("create database {}").format(sql.Identifier(name)))


def connect(autocommit: bool = False, data_dir: Path | None = None, **overrides) -> psycopg.Connection:
    """Connect with the PG* variables (libpq reads them); a clear UserError if it fails."""
    ensure_environment(data_dir=data_dir)
    try:
        return psycopg.connect(autocommit=autocommit, connect_timeout=10, **overrides)
    except psycopg.OperationalError as exc:
        where = ", ".join(f"{k}={os.environ[k]}" for k in ("PGHOST", "PGPORT", "PGDATABASE") if k in os.environ)
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"cannot connect to PostgreSQL ({where}): {first_line}") from exc


def relation_exists(conn: psycopg.Connection, schema: str, name: str) -> bool:
    row = conn.execute("select to_regclass(%s)", (sql.Identifier(schema, name).as_string(conn),)).fetchone()
    return row[0] is not None
