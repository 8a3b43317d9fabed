"""The `sender` command line: parses arguments and calls plain functions.

Exit codes: 0 success, 1 unexpected error, 2 bad input or unreachable dependency.
"""

from __future__ import annotations

import shlex
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from sender import campaigns, database, export, sample_data
from sender.errors import UserError

app = typer.Typer(
    help="Push audiences: export audience CSVs from the dbt models and send them through FCM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)


@app.callback()
def main() -> None:
    """Push audiences: export audience CSVs from the dbt models and send them through FCM.

    Database: the PG* variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE); with no PGHOST,
    the project's embedded PostgreSQL. Campaigns: read from the dbt project's target/manifest.json.
    """


def run(action, *args, **kwargs):
    """Call action; a UserError becomes a one-line message on stderr and its exit code."""
    try:
        return action(*args, **kwargs)
    except UserError as exc:
        console.print(f"[red]error:[/red] {exc}", highlight=False, soft_wrap=True)
        raise typer.Exit(exc.exit_code) from None


def parse_time(value: str | None) -> datetime:
    if value is None:
        return datetime.now(timezone.utc)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise UserError(f"--as-of {value!r} is not an ISO timestamp such as 2026-11-20T18:00:00+00:00") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@app.command("db-env")
def db_env(
    embedded_database: Annotated[
        Optional[str],
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
    as_of: Annotated[
        Optional[str], typer.Option("--as-of", help="Reference time of the data (ISO, default now).")
    ] = None,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same data.")] = 42,
    schema: Annotated[str, typer.Option("--schema", help="Schema to create the tables in.")] = "public",
    replace: Annotated[bool, typer.Option("--replace", help="Drop existing contract tables first.")] = False,
) -> None:
    """Create the Tradeblock source tables (with their indexes) and fill them with sample data."""
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
    table = Table(title=f"sample data in schema {schema} (as of {reference.isoformat()})")
    table.add_column("table")
    table.add_column("rows", justify="right")
    for name, count in counts.items():
        table.add_row(name, f"{count:,}")
    console.print(table)


@app.command("export")
def export_command(
    campaign: Annotated[
        Optional[str], typer.Argument(help="Campaign name (e.g. layer5-waterfall) or old script id.")
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
        files = run(export.export_campaigns, conn, chosen, out, datetime.now(timezone.utc))
    table = Table(title=f"exported to {out}")
    for column in ("campaign", "step", "file", "rows"):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for file in files:
        table.add_row(file.campaign, file.step, str(file.path), f"{file.rows:,}")
        typer.echo(f"{file.path}\t{file.rows}")
    console.print(table)
    skipped = [
        f"{c.name}/{s.name}" for c in chosen for s in c.steps if not any((f.campaign, f.step) == (c.name, s.name) for f in files)
    ]
    if skipped:
        console.print(f"empty, no file written: {', '.join(skipped)}", highlight=False)


def _raise(message: str) -> None:
    raise UserError(message)


if __name__ == "__main__":
    app()
