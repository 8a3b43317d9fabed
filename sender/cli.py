"""The `sender` command line: parses arguments and calls plain functions.

Exit codes (for schedulers): 0 success; 1 unexpected error; 2 bad input or unreachable
database/FCM; 3 validation failed; 4 safeguard tripped; 5 another sender holds the campaign;
6 partial failure (messages failed, of unknown outcome, or not rendered).
"""

from __future__ import annotations

import shlex
from contextlib import contextmanager
from datetime import UTC, datetime
from enum import Enum
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress
from rich.table import Table

from sender import campaigns, database, export, fcm_emulator, sample_data, send
from sender.errors import UserError

app = typer.Typer(
    help="Push audiences: export audience CSVs from the dbt models and send them through FCM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
if not console.is_terminal:  # logs and pipes: wide tables, no wrapping of summary lines
    console.width = 160


@app.callback()
def main() -> None:
    """Push audiences: export audience CSVs from the dbt models and send them through FCM.

    Database: the PG* variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE); with no PGHOST,
    the project's embedded PostgreSQL. Campaigns: read from the dbt project's target/manifest.json.
    """


def run(action, *args, **kwargs):
    """Call action; a UserError or a lost database becomes a one-line message and an exit code."""
    try:
        return action(*args, **kwargs)
    except UserError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None
    except psycopg.OperationalError as exc:
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        console.print(f"[red]error:[/red] database connection lost: {message}", highlight=False, soft_wrap=True)
        raise typer.Exit(UserError.exit_code) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: what was sent is recorded; run the same command to resume")
        raise typer.Exit(130) from None


def parse_time(value: str | None) -> datetime:
    if value is None:
        return datetime.now(UTC)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"--as-of {value!r} is not an ISO timestamp such as 2026-11-20T18:00:00+00:00") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


@app.command("db-env")
def db_env(
    embedded_database: Annotated[
        str | None,
        typer.Option(
            "--embedded-database",
            help="On the embedded server, use this database (created if missing). Ignored with PGHOST.",
        ),
    ] = None,
) -> None:
    """Print `export PG...=...` lines for the database in use.

    With no PGHOST, starts (or reuses) the embedded PostgreSQL under .pgdata/ and prints how to
    reach it; with PGHOST set, prints your own settings. Use it as: eval "$(sender db-env)"
    """
    for name, value in run(database.ensure_environment, embedded_database).items():
        typer.echo(f"export {name}={shlex.quote(value)}")


@app.command("sample-data")
def sample_data_command(
    users: Annotated[int, typer.Option("--users", min=1, help="How many users to create.")] = 20_000,
    as_of: Annotated[str | None, typer.Option("--as-of", help="Reference time of the data (ISO, default now).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same data.")] = 42,
    schema: Annotated[str, typer.Option("--schema", help="Schema to create the tables in.")] = "public",
    replace: Annotated[bool, typer.Option("--replace", help="Drop existing contract tables first.")] = False,
    test_users: Annotated[
        Path | None,
        typer.Option(
            "--test-users", help="Also add these test users (a test_users seed CSV), with a device token each."
        ),
    ] = None,
) -> None:
    """Create the Tradeblock source tables (with their indexes) and fill them with sample data.

    Deterministic: the same --users, --as-of and --seed give the same data. Includes the edge cases
    of AUDIENCES.md (window boundaries, several sizes, blank bios, deleted rows, dangling variants...).
    """
    reference = run(parse_time, as_of)
    with run(database.connect) as conn:
        counts = run(
            sample_data.generate,
            conn,
            users=users,
            as_of=reference,
            seed=seed,
            schema=schema,
            replace=replace,
            progress=lambda message: console.print(f"  {message}", highlight=False),
        )
        if test_users:
            added = run(sample_data.add_test_users, conn, path=test_users, schema=schema, as_of=reference)
            counts["test users added"] = added
    table = Table(title=f"sample data in schema {schema} (as of {reference.isoformat()})")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, count in counts.items():
        table.add_row(name, f"{count:,}")
    console.print(table)


@app.command("export")
def export_command(
    campaign: Annotated[
        str | None, typer.Argument(help="Campaign name (e.g. layer5-waterfall) or old script id.")
    ] = None,
    all_campaigns: Annotated[bool, typer.Option("--all", help="Export every campaign.")] = False,
    out: Annotated[Path, typer.Option("--out", help="Folder for the CSV files.")] = Path("exports"),
) -> None:
    """Write a campaign's audience CSVs (production and test twins) from the built dbt models.

    Files appear atomically: if any file fails, none of this export's files is left behind.
    Prints each file with its row count.
    """
    if all_campaigns == (campaign is not None):
        run(_raise, "give either a CAMPAIGN or --all")
    chosen = list(run(campaigns.load_campaigns).values()) if all_campaigns else [run(campaigns.find_campaign, campaign)]
    with run(database.connect) as conn:
        files = run(export.export_campaigns, conn, chosen, out, datetime.now(UTC))
    table = Table(title=f"exported to {out}")
    for column in ("campaign", "step", "file", "rows"):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for file in files:
        table.add_row(file.campaign, file.step, str(file.path), f"{file.rows:,}")
        typer.echo(f"{file.path}\t{file.rows}")
    console.print(table)
    skipped = [
        f"{c.name}/{s.name}"
        for c in chosen
        for s in c.steps
        if not any((f.campaign, f.step) == (c.name, s.name) for f in files)
    ]
    if skipped:
        console.print(f"empty, no file written: {', '.join(skipped)}", highlight=False)


Mode = Enum("Mode", {m: m for m in send.MODES}, type=str)


@app.command("validate")
def validate_command(
    campaign: Annotated[str | None, typer.Argument(help="Campaign to check (default: every campaign).")] = None,
) -> None:
    """Render every row of every step, live and test audiences, without sending anything.

    Reports template errors, undefined variables, empty or over-long titles and bodies, and rows
    whose user_id is not a UUID. Exit code 3 when anything is wrong.
    """
    chosen = [run(campaigns.find_campaign, campaign)] if campaign else list(run(campaigns.load_campaigns).values())
    with run(database.connect, autocommit=True) as conn:
        checks = [check for c in chosen for check in run(send.validate_campaign, conn, c)]
    table = Table(title="validation")
    for column in ("campaign", "step", "audience", "rows", "problems"):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for check in checks:
        table.add_row(check.campaign, check.step, check.audience, f"{check.rows:,}", "\n".join(check.problems) or "ok")
    console.print(table)
    if any(check.problems for check in checks):
        raise typer.Exit(send.ValidationFailed.exit_code)


@app.command("send")
def send_command(
    campaign: Annotated[str, typer.Argument(help="Campaign name (e.g. layer3-behavior) or old script id.")],
    mode: Annotated[
        Mode,
        typer.Option(
            "--mode",
            help="test-dry-run: FCM validates pushes to the test users; test-live: really sends them; "
            "live-dry-run: counts and renders the real audience, sends nothing; live: sends to the real audience.",
        ),
    ],
    step: Annotated[str | None, typer.Option("--step", help="Send only this step.")] = None,
    run_key: Annotated[
        str | None,
        typer.Option(
            "--run-key",
            help="Identifies the run: the same key resumes it instead of sending again. "
            "Default: the day in the campaign's time zone for real sends, a fresh key for dry runs.",
        ),
    ] = None,
    max_audience: Annotated[int, typer.Option("--max-audience", help="Largest live step allowed.")] = 10_000,
    allow_large: Annotated[bool, typer.Option("--allow-large", help="Send live steps over --max-audience.")] = False,
    resend_unknown: Annotated[
        bool, typer.Option("--resend-unknown", help="Send again messages whose outcome a crash left unknown.")
    ] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, max=32, help="Sending processes.")] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=500, help="Messages per FCM batch.")] = 250,
    skip_delays: Annotated[bool, typer.Option("--skip-delays", help="Ignore the delays between steps.")] = False,
) -> None:
    """Send a campaign's pushes through FCM, exactly once per (run, step, user, token).

    FCM: FCM_EMULATOR_HOST=host:port sends to a local emulator (project FIREBASE_PROJECT_ID, default
    demo-project); otherwise GOOGLE_APPLICATION_CREDENTIALS is used, as firebase-admin expects.
    Every message is recorded in the ledger (schema SENDER_SCHEMA, default push_sender).
    """
    chosen = run(campaigns.find_campaign, campaign)
    options = send.Options(mode.value, step, run_key, max_audience, allow_large, resend_unknown, workers, batch_size,
                           skip_delays)  # fmt: skip
    with run(database.connect, autocommit=True) as conn, run(database.connect, autocommit=True) as lock_conn:
        with progress_bars() as progress:
            result = run(
                send.send_campaign, conn, lock_conn, chosen, options, datetime.now(UTC), progress,
                lambda message: console.print(message, highlight=False, soft_wrap=True),
            )  # fmt: skip
    print_result(result)
    raise typer.Exit(result.exit_code)


def print_result(result: send.RunResult) -> None:
    title = f"run {result.run_id}: {result.campaign} {result.mode} (key {result.run_key}): {result.status}"
    if result.already_done:
        title += ", already completed earlier: nothing sent now"
    table = Table(title=title)
    done = {"test-dry-run": "validated", "live-dry-run": "would send"}.get(result.mode, "sent")
    columns = ("step", "audience", "no token", done, "failed", "invalid tokens", "not rendered", "unknown")
    for column in columns:
        table.add_column(column, justify="left" if column == "step" else "right")
    for s in result.steps:
        sent = f"{s.sent:,} ({s.queued:,} queued)" if s.queued else f"{s.sent:,}"
        table.add_row(s.step, f"{s.audience:,}", f"{s.no_token:,}", sent, f"{s.failed:,}", f"{s.invalid_tokens:,}",
                      f"{s.render_errors:,}", f"{s.unknown:,}")  # fmt: skip
    console.print(table)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    for s in result.steps:
        for example in s.examples:
            detail = example["error"] or f"{example['title']!r} / {example['body']!r}"
            console.print(f"  {s.step} {example['status']} e.g. user {example['user_id']}: {detail}",
                          highlight=False, soft_wrap=True)  # fmt: skip
        if s.unknown_messages:
            console.print(
                f"[yellow]{s.step}: {len(s.unknown_messages)} messages of unknown outcome[/yellow] "
                "(FCM may or may not have them; --resend-unknown sends them again):",
                soft_wrap=True,
            )
            for user_id, token in s.unknown_messages:
                typer.echo(f"unknown\t{result.run_id}\t{s.step}\t{user_id}\t{token}")


@contextmanager
def progress_bars():
    """A progress bar per step on a terminal; silent otherwise."""
    if not console.is_terminal:
        yield lambda step, total: lambda n: None
        return
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=console) as progress:

        def start(step: str, total: int):
            task = progress.add_task(step, total=total)
            return lambda n: progress.advance(task, n)

        yield start


@app.command("fcm-emulator")
def fcm_emulator_command(
    host: Annotated[str, typer.Option("--host", help="Address to listen on (loopback only).")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0: pick a free one).")] = 8085,
    record: Annotated[
        Path | None, typer.Option("--record", help="Append every received message to this JSON-lines file.")
    ] = None,
) -> None:
    """Run a local FCM HTTP v1 endpoint for tests and demos (until Ctrl-C).

    Point the sender at it with FCM_EMULATOR_HOST=host:port. It records messages (GET
    /emulator/messages) and answers with FCM's real errors when told to (POST /emulator/config).
    """
    try:
        fcm_emulator.run_forever(host, port, str(record) if record else None)
    except (OSError, ValueError) as exc:
        run(_raise, f"cannot start the FCM emulator on {host}:{port}: {exc}")


def _raise(message: str) -> None:
    raise UserError(message)


if __name__ == "__main__":
    app()
