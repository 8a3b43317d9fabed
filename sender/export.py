"""Export a campaign's audiences to CSV files (AUDIENCES.md, "Files in general").

PostgreSQL writes every file with COPY. All files of one export are read in one snapshot,
written under temporary names in the output folder and renamed only when every one of them
succeeded; on any failure (SIGINT and SIGTERM included) none of the export's files is left behind.

Exports into one folder take turns: each holds an exclusive lock (flock) on the folder itself while
it runs, so nothing is added to the folder. Under the lock an export removes the temporary files
that killed exports left behind, and picks a timestamp no existing file name of its own uses (it
waits for the next second if needed). Temporary files are created exclusively (O_EXCL, under an
unpredictable name: a planted symlink is never followed) and get their final name with a hard link,
which never replaces an existing file.
"""

from __future__ import annotations

import errno
import fcntl
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import psycopg
from psycopg import sql

from sender import audiences
from sender.campaigns import Campaign, Step
from sender.errors import ExitCode, UserError

TEMPORARY = re.compile(r"\..+\.[0-9a-f]{16}\.partial")  # .<file name>.<random>.partial


@dataclass(frozen=True)
class ExportedFile:
    campaign: str
    step: str
    test: bool
    path: Path
    rows: int


class Stopped(UserError):
    """SIGINT or SIGTERM (raised as a KeyboardInterrupt by the CLI) during an export."""

    def __init__(self, interrupt: KeyboardInterrupt) -> None:
        super().__init__(f"stopped by {interrupt or 'SIGINT'}: no file written (its temporary files were removed)")
        self.exit_code = getattr(interrupt, "exit_code", ExitCode.INTERRUPTED)


def timestamp(now: datetime) -> str:
    return now.astimezone(UTC).strftime("%Y%m%dT%H%M%S")


def export_campaigns(conn: psycopg.Connection, campaigns: list[Campaign], out_dir: Path) -> list[ExportedFile]:
    """Write the production and test files of `campaigns` into out_dir; all or nothing."""
    _prepare_folder(out_dir)
    try:
        with _folder_lock(out_dir):
            _remove_leftovers(out_dir)
            return _export(conn, campaigns, out_dir, _free_timestamp(campaigns, out_dir))
    except KeyboardInterrupt as interrupt:  # after _export's cleanup
        raise Stopped(interrupt) from None


def _export(conn: psycopg.Connection, campaigns: list[Campaign], out_dir: Path, ts: str) -> list[ExportedFile]:
    temporary: list[Path] = []
    published: list[Path] = []
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
                        temp = path.with_name(f".{path.name}.{secrets.token_hex(8)}.partial")
                        query = (
                            audiences.test_query(campaign, step, columns, test_user_columns)
                            if test
                            else audiences.production_query(step, columns)
                        )
                        fd = _create(temp, path)
                        temporary.append(temp)
                        rows = _copy_to_file(conn, query, fd, path)
                        exported.append(ExportedFile(campaign.name, step.name, test, path, rows))
        for temp, file in zip(temporary, exported, strict=True):
            _publish(temp, file.path)
            published.append(file.path)
    except BaseException:
        for path in temporary + published:
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


@contextmanager
def _folder_lock(out_dir: Path) -> Iterator[None]:
    """Hold an exclusive lock on the folder (waiting for other exports); released even by kill -9."""
    try:
        fd = os.open(out_dir, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as exc:
        raise UserError(f"cannot open the output folder {out_dir}: {exc.strerror}") from exc
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:
            raise UserError(f"cannot lock the output folder {out_dir}: {exc.strerror}") from exc
        yield
    finally:
        os.close(fd)


def _remove_leftovers(out_dir: Path) -> None:
    """Remove temporary files of exports that were killed (any live export would hold the lock)."""
    for entry in os.scandir(out_dir):
        if TEMPORARY.fullmatch(entry.name) and not entry.is_dir(follow_symlinks=False):
            Path(entry.path).unlink(missing_ok=True)


def _free_timestamp(campaigns: list[Campaign], out_dir: Path) -> str:
    """The current timestamp, or a later one if a file of this export with it exists already."""
    while True:
        ts = timestamp(datetime.now(UTC))
        names = [
            pattern.format(prefix=step.file_prefix, ts=ts)
            for campaign in campaigns
            for step in campaign.steps
            for pattern in (campaign.file_name, campaign.test_file_name)
        ]
        if not any(os.path.lexists(out_dir / name) for name in names):
            return ts
        time.sleep(1.001 - time.time() % 1)


def _create(temp: Path, path: Path) -> int:
    try:
        return os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o666)
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from exc


def _publish(temp: Path, path: Path) -> None:
    """Give a finished temporary file its final name, never replacing an existing file."""
    try:
        try:
            os.link(temp, path)
            temp.unlink()
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.EOPNOTSUPP) or os.path.lexists(path):
                raise
            os.rename(temp, path)  # a file system without hard links; no file of that name (checked just now)
    except FileExistsError:
        raise UserError(f"{path} appeared during the export and was not replaced") from None
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from exc


def _is_empty(conn: psycopg.Connection, step: Step) -> bool:
    query = sql.SQL("select not exists (select from {})").format(sql.Identifier(step.schema, step.table))
    return conn.execute(query).fetchone()[0]


def _copy_to_file(conn: psycopg.Connection, query: sql.Composable, fd: int, path: Path) -> int:
    """COPY the query's rows into the open file `fd` (closed here); a write error is a UserError naming `path`."""
    copy = sql.SQL("copy ({}) to stdout with (format csv, header true, encoding 'UTF8')").format(query)
    try:
        with open(fd, "wb") as out, conn.cursor() as cur:
            with cur.copy(copy) as stream:
                for block in stream:
                    out.write(block)
            return cur.rowcount
    except OSError as exc:
        raise UserError(f"cannot write {path}: {exc.strerror}") from exc
