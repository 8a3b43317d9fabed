"""The `sender` command line: parses arguments and calls plain functions."""

from __future__ import annotations

import shlex
from typing import Annotated, Optional

import typer

from sender import database
from sender.errors import UserError

app = typer.Typer(
    help="Push audiences: export audience CSVs from the dbt models and send them through FCM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)


@app.callback()
def main() -> None:
    """Push audiences: export audience CSVs from the dbt models and send them through FCM."""


def fail(message: str, code: int = 2) -> None:
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


@app.command("db-env")
def db_env(
    database_name: Annotated[
        Optional[str], typer.Option("--database", help="Use (and create if missing) this database.")
    ] = None,
) -> None:
    """Print `export PG...=...` lines for the database in use (starting the embedded one if no PGHOST).

    Use it as: eval "$(sender db-env)"
    """
    try:
        env = database.ensure_environment(database_name)
    except UserError as exc:
        fail(str(exc), exc.exit_code)
    for name, value in env.items():
        typer.echo(f"export {name}={shlex.quote(value)}")


if __name__ == "__main__":
    app()
