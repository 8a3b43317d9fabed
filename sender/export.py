"""Export a campaign's audiences to CSV files (AUDIENCES.md, "Files in general").

PostgreSQL writes every file with COPY. All files of one export are read in one snapshot,
written under temporary names in the output folder and renamed only when every one of them
succeeded; on any failure none of the export's files is left behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import psycopg
from psycopg import sql

from sender.campaigns import Campaign, Step
from sender.database import relation_exists
from sender.errors import UserError

ORDER_COLUMN = "export_order"  # fixes the row order of a file; every audience model has it


@dataclass(frozen=True)
class ExportedFile:
    campaign: str
    step: str
    test: bool
    path: Path
    rows: int


def timestamp(now: datetime) -> str:
    return now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S")


def export_campaigns(
    conn: psycopg.Connection, campaigns: list[Campaign], out_dir: Path, now: datetime
) -> list[ExportedFile]:
    """Write the production and test files of `campaigns` into out_dir; all or nothing."""
    _prepare_folder(out_dir)
    ts = timestamp(now)
    temporary: list[Path] = []
    renamed: list[Path] = []
    exported: list[ExportedFile] = []
    try:
        with conn.transaction():
            conn.execute("set transaction isolation level repeatable read, read only")
            for campaign in campaigns:
                test_user_columns = _test_user_columns(conn, campaign)
                for step in campaign.steps:
                    columns = _audience_columns(conn, campaign, step)
                    if not campaign.write_empty_files and _is_empty(conn, step):
                        continue
                    for test in (False, True):
                        pattern = campaign.test_file_name if test else campaign.file_name
                        path = out_dir / pattern.format(prefix=step.file_prefix, ts=ts)
                        temporary.append(path.with_name(f".{path.name}.partial"))
                        query = (
                            _test_query(campaign, step, columns, test_user_columns)
                            if test
                            else _production_query(step, columns)
                        )
                        rows = _copy_to_file(conn, query, temporary[-1])
                        exported.append(ExportedFile(campaign.name, step.name, test, path, rows))
        for temp, file in zip(temporary, exported, strict=True):
            os.replace(temp, file.path)
            renamed.append(file.path)
    except BaseException:
        for path in temporary + renamed:
            path.unlink(missing_ok=True)
        raise
    return exported


def _prepare_folder(out_dir: Path) -> None:
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UserError(f"cannot create the output folder {out_dir}: {exc.strerror}") from exc
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise UserError(f"the output folder {out_dir} is not writable")


def _audience_columns(conn: psycopg.Connection, campaign: Campaign, step: Step) -> list[str]:
    """The file's columns: the audience table's columns in order, without export_order."""
    if not relation_exists(conn, step.schema, step.table):
        raise UserError(
            f"audience table {step.schema}.{step.table} (campaign {campaign.name}, step {step.name}) "
            f"does not exist: run `{campaign.build_command}`"
        )
    names = [
        row[0]
        for row in conn.execute(
            "select column_name from information_schema.columns"
            " where table_schema = %s and table_name = %s order by ordinal_position",
            (step.schema, step.table),
        )
    ]
    if ORDER_COLUMN not in names:
        raise UserError(f"audience table {step.schema}.{step.table} has no {ORDER_COLUMN} column")
    return [name for name in names if name != ORDER_COLUMN]


def _test_user_columns(conn: psycopg.Connection, campaign: Campaign) -> list[str]:
    schema, table = campaign.test_users
    if not relation_exists(conn, schema, table):
        raise UserError(f"the test users table {schema}.{table} does not exist: run `dbt seed`")
    rows = conn.execute(
        "select column_name from information_schema.columns where table_schema = %s and table_name = %s",
        (schema, table),
    )
    return [row[0] for row in rows]


def _is_empty(conn: psycopg.Connection, step: Step) -> bool:
    query = sql.SQL("select not exists (select from {})").format(sql.Identifier(step.schema, step.table))
    return conn.execute(query).fetchone()[0]


def _as_text(column: str, source: str) -> sql.Composable:
    """A column as CSV text: missing values (NULL or '') are written as empty fields."""
    return sql.SQL("nullif(cast({} as text), '') as {}").format(
        sql.Identifier(source, column), sql.Identifier(column)
    )


def _production_query(step: Step, columns: list[str]) -> sql.Composable:
    return sql.SQL("select {} from {} as audience order by audience.{}").format(
        sql.SQL(", ").join(_as_text(c, "audience") for c in columns),
        sql.Identifier(step.schema, step.table),
        sql.Identifier(ORDER_COLUMN),
    )


def _test_query(
    campaign: Campaign, step: Step, columns: list[str], test_user_columns: list[str]
) -> sql.Composable:
    """One row per test user: their own fields, the rest from the first production row.

    A column of the file that the test_users seed also has comes from the seed; every other
    column is copied from the first production row, or, when the audience is empty, is the
    step's placeholder (empty when it has none).
    """
    copied = [c for c in columns if c not in test_user_columns]
    first_row = sql.SQL("select {} from {} as audience order by audience.{} limit 1").format(
        sql.SQL(", ").join(
            sql.SQL("cast({} as text) as {}").format(sql.Identifier("audience", c), sql.Identifier(c))
            for c in copied
        ),
        sql.Identifier(step.schema, step.table),
        sql.Identifier(ORDER_COLUMN),
    )
    placeholders = sql.SQL("select {} where not exists (select from first_row)").format(
        sql.SQL(", ").join(sql.SQL("cast({} as text)").format(step.test_placeholders.get(c)) for c in copied)
    )
    return sql.SQL(
        "with first_row as ({first_row}), template as ({first_row_again} union all {placeholders}) "
        "select {columns} from {test_users} as test_users cross join template "
        "order by test_users.user_id"
    ).format(
        first_row=first_row,
        first_row_again=sql.SQL("select * from first_row"),
        placeholders=placeholders,
        columns=sql.SQL(", ").join(
            _as_text(c, "test_users" if c in test_user_columns else "template") for c in columns
        ),
        test_users=sql.Identifier(*campaign.test_users),
    )


def _copy_to_file(conn: psycopg.Connection, query: sql.Composable, path: Path) -> int:
    copy = sql.SQL("copy ({}) to stdout with (format csv, header true, encoding 'UTF8')").format(query)
    with conn.cursor() as cur, path.open("wb") as out:
        with cur.copy(copy) as stream:
            for block in stream:
                out.write(block)
        return cur.rowcount
