"""Export a campaign's audiences to CSV files (AUDIENCES.md, "Files in general").

PostgreSQL writes every file with COPY. All files of one export are read in one snapshot,
written under temporary names in the output folder and renamed only when every one of them
succeeded; on any failure none of the export's files is left behind.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from sender import audiences
from sender.campaigns import Campaign, Step
from sender.errors import UserError


@dataclass(frozen=True)
class ExportedFile:
    campaign: str
    step: str
    test: bool
    path: Path
    rows: int


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%S")


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
                test_user_columns = audiences.test_user_columns(conn, campaign)
                for step in campaign.steps:
                    columns = audiences.columns(conn, campaign, step)
                    if not campaign.write_empty_files and _is_empty(conn, step):
                        continue
                    for test in (False, True):
                        pattern = campaign.test_file_name if test else campaign.file_name
                        path = out_dir / pattern.format(prefix=step.file_prefix, ts=ts)
                        temporary.append(path.with_name(f".{path.name}.partial"))
                        query = (
                            audiences.test_query(campaign, step, columns, test_user_columns)
                            if test
                            else audiences.production_query(step, columns)
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


def _is_empty(conn: psycopg.Connection, step: Step) -> bool:
    query = sql.SQL("select not exists (select from {})").format(sql.Identifier(step.schema, step.table))
    return conn.execute(query).fetchone()[0]


def _copy_to_file(conn: psycopg.Connection, query: sql.Composable, path: Path) -> int:
    copy = sql.SQL("copy ({}) to stdout with (format csv, header true, encoding 'UTF8')").format(query)
    with conn.cursor() as cur, path.open("wb") as out:
        with cur.copy(copy) as stream:
            for block in stream:
                out.write(block)
        return cur.rowcount
