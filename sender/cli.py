"""The `sender` command line: parses arguments and calls plain functions.

Exit codes (for schedulers): one enum, sender.errors.ExitCode, the same for every command.
"""

from __future__ import annotations

import json
import shlex
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from enum import Enum
from pathlib import Path
from typing import Annotated

import psycopg
import typer
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress
from rich.table import Table

from sender import campaigns, config, database, export, sample_data, send
from sender.errors import ExitCode, UserError
from sender.interrupts import Interrupted, Stop

app = typer.Typer(
    help="Push audiences: export audience CSVs from the dbt models and send them through FCM.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
console = Console(stderr=True)
STOP = Stop()  # SIGINT and SIGTERM, for every command
if not console.is_terminal:  # logs and pipes: wide tables, no wrapping of summary lines
    console.width = 160


@app.callback()
def main(
    ctx: typer.Context,
    project_dir: Annotated[
        Path | None,
        typer.Option(
            "--project-dir", envvar="DBT_PROJECT_DIR", help="The dbt project (default: the working directory)."
        ),
    ] = None,
    target_path: Annotated[
        Path | None,
        typer.Option("--target-path", envvar="DBT_TARGET_PATH", help="dbt's target folder (default: target)."),
    ] = None,
    sender_schema: Annotated[
        str,
        typer.Option("--sender-schema", envvar="SENDER_SCHEMA", help="Schema of the sender's ledger."),
    ] = config.DEFAULT_SENDER_SCHEMA,
    fcm_emulator_host: Annotated[
        str | None,
        typer.Option("--fcm-emulator-host", envvar="FCM_EMULATOR_HOST", help="host:port of a local FCM emulator."),
    ] = None,
    firebase_project: Annotated[
        str | None,
        typer.Option(
            "--firebase-project",
            envvar="FIREBASE_PROJECT_ID",
            help="Firebase project (default: the credentials' project; demo-project with an emulator).",
        ),
    ] = None,
    credentials: Annotated[
        str | None,
        typer.Option(
            "--credentials",
            envvar="GOOGLE_APPLICATION_CREDENTIALS",
            help="Service-account JSON file (default: Application Default Credentials).",
        ),
    ] = None,
    profiles_dir: Annotated[
        Path | None,
        typer.Option(
            "--profiles-dir",
            envvar="DBT_PROFILES_DIR",
            help="Where dbt finds profiles.yml (default: the project's, else ~/.dbt).",
        ),
    ] = None,
) -> None:
    """Push audiences: export audience CSVs from the dbt models and send them through FCM.

    Database: the PG* variables (PGHOST, PGPORT, PGUSER, PGPASSWORD, PGDATABASE); with no PGHOST,
    the project's embedded PostgreSQL. Campaigns: declared in the dbt project (re-parsed when the
    manifest is older than the project files). SIGINT and SIGTERM stop a command cleanly.
    """
    STOP.install()
    ctx.obj = run(
        config.resolve, project_dir, target_path, sender_schema, fcm_emulator_host, firebase_project, credentials,
        profiles_dir,
    )  # fmt: skip


def run(action, *args, **kwargs):
    """Call action; a UserError, a database error or a signal becomes a one-line message and an exit code."""
    try:
        return action(*args, **kwargs)
    except UserError as exc:
        fail(str(exc), exc.exit_code)
    except psycopg.OperationalError as exc:
        first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        if exc.sqlstate is None or exc.sqlstate.startswith(("08", "57P")):  # connection lost, server shut down
            fail(f"database connection lost: {first_line}", ExitCode.BAD_INPUT)
        fail(f"database error ({exc.sqlstate}): {first_line}", ExitCode.BAD_INPUT)
    except psycopg.errors.UndefinedTable as exc:
        first_line = str(exc).strip().splitlines()[0]
        fail(f"{first_line}: the source tables or models are missing; run `dbt build`", ExitCode.BAD_INPUT)
    except Interrupted as exc:
        console.print(f"[yellow]stopped by {exc}[/yellow]: what was sent is recorded; run the same command to resume")
        raise typer.Exit(exc.exit_code) from None
    except KeyboardInterrupt:
        console.print("[yellow]interrupted[/yellow]: what was sent is recorded; run the same command to resume")
        raise typer.Exit(ExitCode.INTERRUPTED) from None


def fail(message: str, code: int) -> None:
    console.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code) from None


def campaigns_named(cfg: config.Config, name: str | None) -> list[campaigns.Campaign]:
    """The campaign called `name` (or by an old script id), or every campaign when None."""
    if name:
        return [run(campaigns.find_campaign, cfg, name, log)]
    return list(run(campaigns.load_campaigns, cfg, log).values())


def log(message: str) -> None:
    console.print(message, highlight=False, soft_wrap=True)


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
    ctx: typer.Context,
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
    for name, value in run(database.ensure_environment, embedded_database, ctx.obj.embedded_db_dir).items():
        typer.echo(f"export {name}={shlex.quote(value)}")


@app.command("sample-data")
def sample_data_command(
    users: Annotated[int, typer.Option("--users", min=1, help="How many users to create.")] = 20_000,
    as_of: Annotated[str | None, typer.Option("--as-of", help="Reference time of the data (ISO, default now).")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Same seed, same data.")] = 42,
    schema: Annotated[
        str, typer.Option("--schema", help="Schema to create the tables in (public only with --allow-public).")
    ] = sample_data.DEFAULT_SCHEMA,
    replace: Annotated[bool, typer.Option("--replace", help="Drop existing contract tables first.")] = False,
    cascade: Annotated[
        bool,
        typer.Option(
            "--cascade",
            help="With --replace, also drop what other schemas built on the tables (e.g. dbt's views; "
            "dbt build recreates them). Without it, --replace refuses and names them.",
        ),
    ] = False,
    allow_public: Annotated[
        bool, typer.Option("--allow-public", help="Allow --schema public (where the application's tables live).")
    ] = False,
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
            cascade=cascade,
            allow_public=allow_public,
            progress=lambda message: console.print(f"  {message}", highlight=False, soft_wrap=True),
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
    ctx: typer.Context,
    campaign: Annotated[
        str | None, typer.Argument(help="Campaign name (e.g. layer5-waterfall) or old script id.")
    ] = None,
    all_campaigns: Annotated[bool, typer.Option("--all", help="Export every campaign.")] = False,
    out: Annotated[Path, typer.Option("--out", help="Folder for the CSV files.")] = Path("exports"),
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout instead of lines.")] = False,
) -> None:
    """Write a campaign's audience CSVs (production and test twins) from the built dbt models.

    Files appear atomically: if any file fails, none of this export's files is left behind.
    Exports into one folder take turns and never replace an existing file (README, "Exporting").
    Prints each file with its row count.
    """
    if all_campaigns == (campaign is not None):
        run(_raise, "give either a CAMPAIGN or --all")
    chosen = campaigns_named(ctx.obj, campaign)
    with run(database.connect, False, ctx.obj.embedded_db_dir) as conn:
        files = run(export.export_campaigns, conn, chosen, out)
    skipped = [
        f"{c.name}/{s.name}"
        for c in chosen
        for s in c.steps
        if not any((f.campaign, f.step) == (c.name, s.name) for f in files)
    ]
    if as_json:
        import json

        found = [{"campaign": f.campaign, "step": f.step, "test": f.test, "path": str(f.path), "rows": f.rows}
                 for f in files]  # fmt: skip
        typer.echo(json.dumps({"out": str(out), "files": found, "empty_not_written": skipped}))
        return
    table = Table(title=f"exported to {out}")
    for column in ("campaign", "step", "file", "rows"):
        table.add_column(column, justify="right" if column == "rows" else "left")
    for file in files:
        table.add_row(file.campaign, file.step, str(file.path), f"{file.rows:,}")
        typer.echo(f"{file.path}\t{file.rows}")
    console.print(table)
    if skipped:
        console.print(f"empty, no file written: {', '.join(skipped)}", highlight=False)


Mode = Enum("Mode", {m: m for m in send.MODES}, type=str)


@app.command("validate")
def validate_command(
    ctx: typer.Context,
    campaign: Annotated[str | None, typer.Argument(help="Campaign to check (default: every campaign).")] = None,
) -> None:
    """Render every row of every step, live and test audiences, without sending anything.

    Reports template errors, undefined variables, empty or over-long titles and bodies, and rows
    whose user_id is not a UUID. Exit code 3 when anything is wrong.
    """
    cfg: config.Config = ctx.obj
    chosen = (
        [run(campaigns.find_campaign, cfg, campaign)] if campaign else list(run(campaigns.load_campaigns, cfg).values())
    )
    with run(database.connect, True, cfg.embedded_db_dir) as conn:
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
    ctx: typer.Context,
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
        bool,
        typer.Option(
            "--resend-unknown", help="Send again the run's messages whose outcome a crash left unknown (pending)."
        ),
    ] = False,
    retry_failed: Annotated[
        bool, typer.Option("--retry-failed", help="Send again, once, the run's messages that FCM refused (failed).")
    ] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, max=32, help="Sending processes.")] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=500, help="Messages per FCM batch.")] = 250,
    skip_delays: Annotated[bool, typer.Option("--skip-delays", help="Ignore the delays between steps.")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Send a campaign's pushes through FCM, exactly once per (run, step, user, token).

    FCM: --fcm-emulator-host (FCM_EMULATOR_HOST) sends to a local emulator; otherwise --credentials
    (GOOGLE_APPLICATION_CREDENTIALS) is used, as firebase-admin expects. Every message is recorded in
    the ledger (--sender-schema, SENDER_SCHEMA). Run the same command again to resume after any failure.
    """
    cfg: config.Config = ctx.obj
    chosen = campaigns_named(cfg, campaign)[0]
    options = send.Options(mode.value, step, run_key, max_audience, allow_large, resend_unknown, retry_failed,
                           workers, batch_size, skip_delays)  # fmt: skip
    with run(database.connect, True, cfg.embedded_db_dir) as conn, run(database.connect, True) as lock_conn:
        with progress_bars() as progress:
            result = run(
                send.send_campaign, conn, lock_conn, cfg, chosen, options, datetime.now(UTC), progress,
                log, STOP,
            )  # fmt: skip
    if as_json:
        typer.echo(json.dumps(result.as_json(), default=str))
    else:
        print_result(result)
    raise typer.Exit(result.exit_code)


def print_result(result: send.RunResult) -> None:
    title = f"run {result.run_id}: {result.campaign} {result.mode} (key {result.run_key}): {result.status}"
    if result.already_done:
        title += ", already completed earlier: nothing sent now"
    table = Table(title=title)
    done = {"test-dry-run": "validated", "live-dry-run": "would send"}.get(result.mode, "sent")
    columns = ("step", "audience", "cadence-skipped", "no token", done, "failed", "invalid tokens", "not rendered",
               "unknown")  # fmt: skip
    for column in columns:
        table.add_column(column, justify="left" if column == "step" else "right")
    for s in result.steps:
        sent = f"{s.sent:,} ({s.queued:,} queued)" if s.queued else f"{s.sent:,}"
        counts = (s.audience, s.cadence_skipped, s.no_token, sent, s.failed, s.invalid_tokens, s.render_errors,
                  s.unknown)  # fmt: skip
        table.add_row(s.step, *(f"{n:,}" if isinstance(n, int) else n for n in counts))
    console.print(table)
    for warning in result.warnings:
        console.print(f"[yellow]warning:[/yellow] {warning}", highlight=False, soft_wrap=True)
    for s in result.steps:
        for example in s.examples:
            detail = example["error"] or f"{example['title']!r} / {example['body']!r}"
            console.print(f"  {s.step} {example['status']} e.g. user {example['user_id']}: {detail}",
                          highlight=False, soft_wrap=True)  # fmt: skip
        if s.failed:
            console.print(
                f"[yellow]{s.step}: {s.failed:,} messages failed[/yellow] (FCM refused them; --retry-failed sends them "
                "once more in this run)",
                soft_wrap=True,
            )
        if s.unknown_messages:
            console.print(
                f"[yellow]{s.step}: {len(s.unknown_messages)} messages of unknown outcome[/yellow] "
                "(FCM may or may not have them; --resend-unknown sends them again):",
                soft_wrap=True,
            )
            for user_id, token in s.unknown_messages:
                typer.echo(f"unknown\t{result.run_id}\t{s.step}\t{user_id}\t{token}")


@app.command("run")
def run_command(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign name (e.g. layer3-behavior) or old script id.")],
    send_at: Annotated[
        str | None,
        typer.Option(
            "--send-at",
            help="The scheduled send time: HH:MM in the campaign's time zone, or ISO. Default: the campaign's "
            "next send time (or the run a dead process left unfinished).",
        ),
    ] = None,
    rehearse: Annotated[
        bool,
        typer.Option("--rehearse", help="The whole timeline with test users in both phases, waits compressed."),
    ] = False,
    build: Annotated[
        bool, typer.Option("--build/--no-build", help="Run `dbt build --select +exposure:<campaign>` first.")
    ] = True,
    dbt_vars: Annotated[
        str | None, typer.Option("--dbt-vars", help="dbt --vars for the build and the freshness check (YAML).")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the CSV files.")] = Path("exports"),
    max_audience: Annotated[int, typer.Option("--max-audience", help="Largest live step allowed.")] = 10_000,
    allow_large: Annotated[bool, typer.Option("--allow-large", help="Send live steps over --max-audience.")] = False,
    workers: Annotated[int, typer.Option("--workers", min=1, max=32, help="Sending processes.")] = 2,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, max=500, help="Messages per FCM batch.")] = 250,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
    now: Annotated[
        str | None, typer.Option("--now", hidden=True, help="Pretend the run starts at this ISO time.")
    ] = None,
) -> None:
    """Run a campaign's day: build, freshness gate, export, test send, cancellation window until the send
    time, live send, cleanup. Safe to fire twice: the same (campaign, send time) never sends twice; a run
    whose process died is resumed from its phase. `sender cancel`, `sender pause` stop it.

    Exit codes: 0 succeeded, cancelled, already finished or not started (paused/inactive campaign);
    4 blocked by a gate (stale data, test phase reached nobody, too late); 5 another sender runs the
    campaign; 6 messages failed; 7 FCM refuses the sender; 130/143 interrupted (run it again to resume).
    """
    from sender import runs  # here: the other commands do not need it

    cfg: config.Config = ctx.obj
    chosen = campaigns_named(cfg, campaign)[0]
    clock = runs.Clock(run(parse_time, now) - datetime.now(UTC) if now else timedelta(0))
    options = runs.RunOptions(send_at, rehearse, build, dbt_vars, out, max_audience, allow_large, workers, batch_size)
    with run(database.connect, True, cfg.embedded_db_dir) as conn, run(database.connect, True) as lock_conn:
        with progress_bars() as progress:
            outcome = run(runs.run_campaign, conn, lock_conn, cfg, chosen, options, clock, log, STOP, progress)
    if as_json:
        typer.echo(runs.as_json(outcome))
    else:
        for result in (outcome.test, outcome.live):
            if result is not None:
                print_result(result)
        what = "already finished" if outcome.already_finished else outcome.status
        why = f": {outcome.reason}" if outcome.reason else ""
        console.print(f"scheduled run {outcome.id}: {outcome.campaign}: {what}{why}", highlight=False, soft_wrap=True)
    raise typer.Exit(outcome.exit_code)


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
        from sender import fcm_emulator

        fcm_emulator.run_forever(host, port, str(record) if record else None)
    except (OSError, ValueError) as exc:
        run(_raise, f"cannot start the FCM emulator on {host}:{port}: {exc}")


@app.command("diff")
def diff_command(
    ctx: typer.Context,
    base_schema: Annotated[
        str, typer.Option("--base-schema", help="Schema of the build to compare with (e.g. push_audiences).")
    ],
    schema: Annotated[
        str | None,
        typer.Option("--schema", help="Schema of the new build (default: where the manifest's models are built)."),
    ] = None,
    campaign: Annotated[str | None, typer.Option("--campaign", help="Only this campaign (name or old id).")] = None,
    all_campaigns: Annotated[bool, typer.Option("--all", help="Every campaign (the default).")] = False,
    fmt: Annotated[str, typer.Option("--format", help="text, markdown (a pull-request comment) or json.")] = "text",
    sample: Annotated[int, typer.Option("--sample", min=0, help="Example user ids per kind of change.")] = 3,
    fail_if_changed: Annotated[
        bool, typer.Option("--fail-if-changed", help="Exit 3 if anything differs (rows, tables, columns).")
    ] = False,
    max_change_pct: Annotated[
        float | None,
        typer.Option("--max-change-pct", min=0, help="Exit 3 if a step has more than P% of its users changed."),
    ] = None,
) -> None:
    """Compare two builds of the audience models: users added, removed, changed and moved, per step.

    Everything is compared in PostgreSQL; the report goes to stdout. Exit 0 unless a gate
    (--fail-if-changed, --max-change-pct) trips: then 3. A missing schema is an error (2); a table or
    column present in one build only is reported as a difference.
    """
    from sender import diff  # here: the rest of this module does not need it

    if campaign and all_campaigns:
        run(_raise, "give either --campaign or --all")
    if fmt not in ("text", "markdown", "json"):
        run(_raise, f"--format {fmt!r}: use text, markdown or json")
    chosen = campaigns_named(ctx.obj, campaign)
    with run(database.connect, False, ctx.obj.embedded_db_dir) as conn:
        result = run(diff.compare, conn, chosen, base_schema, schema, sample)
    typer.echo(diff.render(result, fmt))
    if failed := diff.gate(result, fail_if_changed, max_change_pct):
        console.print(f"[red]diff gate:[/red] {failed}", highlight=False, soft_wrap=True)
        raise typer.Exit(diff.GATE_EXIT_CODE)


cadence_app = typer.Typer(
    help="Frequency caps (cadence): import past notifications, check a user.", no_args_is_help=True
)
app.add_typer(cadence_app, name="cadence")


@cadence_app.command("import")
def cadence_import_command(
    ctx: typer.Context,
    csv_file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE.csv", help="CSV with a header: user_id, sent_at (ISO 8601 with a zone), optionally layer."
        ),
    ],
    layer: Annotated[
        int | None, typer.Option("--layer", help="The layer of rows without one (required with no layer column).")
    ] = None,
    campaign: Annotated[
        str | None,
        typer.Option("--campaign", help="Record the rows as this campaign's (name or old id); its layer by default."),
    ] = None,
) -> None:
    """Import notifications sent before this ledger existed, for the frequency caps to count.

    Every row is checked first: if any is bad (not a UUID, a time without a zone or in the future, a layer
    of no campaign...) nothing is imported and the problems are listed with their line numbers (exit 2).
    Importing the same rows again adds nothing.
    """
    from sender import cadence

    cfg: config.Config = ctx.obj
    declared = campaigns_named(cfg, None)
    with run(database.connect, True, cfg.embedded_db_dir) as conn:
        result = run(cadence.import_history, conn, cfg.sender_schema, declared, csv_file, layer, campaign)
    typer.echo(
        f"{csv_file}: {result.read:,} rows read, {result.imported:,} imported, {result.already:,} already present"
    )


@cadence_app.command("check")
def cadence_check_command(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(help="The user's id (a UUID).")],
    layer: Annotated[int | None, typer.Option("--layer", help="Only the rules limiting pushes of this layer.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document instead of text.")] = False,
) -> None:
    """Whether a push of each layer may go to a user now, or from when; and why.

    Lists the user's notifications inside each active rule's window (delivered, or reserved by a live run
    not sent yet). A blocked layer is allowed again when the oldest notification keeping a rule at its
    maximum leaves the window (a notification exactly window_hours old no longer counts).
    """
    from sender import cadence

    run(cadence.parse_user_id, user_id)
    cfg: config.Config = ctx.obj
    declared = campaigns_named(cfg, None)
    with run(database.connect, True, cfg.embedded_db_dir) as conn:
        report = run(cadence.check_user, conn, cfg.sender_schema, declared, user_id, layer)
    typer.echo(cadence.render(report, as_json))


@app.command("explain")
def explain_command(
    ctx: typer.Context,
    user_id: Annotated[str, typer.Argument(help="The user (a UUID).")],
    campaign: Annotated[str | None, typer.Option("--campaign", help="Only this campaign (name or old id).")] = None,
    run_id: Annotated[
        int | None,
        typer.Option("--run", help="Explain this run's delivery (default: each campaign's latest live run)."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Where a user stands in each campaign, and why, in plain words.

    Audience: the campaign's decisions model (dbt), included in which step or excluded and why, with
    the numbers. Delivery: the ledger, the user's messages in the run: sent (time, FCM message id),
    failed and why, no token, invalid token, or capped by a cadence rule (which, until when).
    """
    from sender import explain  # here: the rest of this module does not need it

    cfg: config.Config = ctx.obj
    user = run(explain.parse_user_id, user_id)
    chosen = campaigns_named(cfg, campaign)
    with run(database.connect, True, cfg.embedded_db_dir) as conn:
        result = run(explain.explain, conn, cfg, chosen, [user], run_id)
    typer.echo(explain.render(result[user], as_json))


@app.command("pause")
def pause_command(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign name or old script id.")],
    reason: Annotated[str | None, typer.Option("--reason", help="Why (shown by resume and the runs).")] = None,
) -> None:
    """Switch a campaign off at once (the kill switch, in the database): no run starts, test phase included,
    and a running run stops before its next batch. Until `sender resume CAMPAIGN`."""
    from sender import operate

    cfg: config.Config = ctx.obj
    chosen = campaigns_named(cfg, campaign)[0]
    with run(database.connect, True, cfg.embedded_db_dir) as conn:
        typer.echo(run(operate.pause, conn, cfg.sender_schema, chosen, reason))


@app.command("resume")
def resume_command(
    ctx: typer.Context,
    campaign: Annotated[str, typer.Argument(help="Campaign name or old script id.")],
) -> None:
    """Switch a paused campaign back on: its scheduled runs start again."""
    from sender import operate

    cfg: config.Config = ctx.obj
    chosen = campaigns_named(cfg, campaign)[0]
    with run(database.connect, True, cfg.embedded_db_dir) as conn:
        typer.echo(run(operate.resume, conn, cfg.sender_schema, chosen))


@app.command("cancel")
def cancel_command(
    ctx: typer.Context,
    target: Annotated[
        str,
        typer.Argument(
            metavar="RUN_ID|CAMPAIGN", help="A scheduled run's id, or a campaign: its latest unfinished scheduled run."
        ),
    ],
) -> None:
    """Cancel a scheduled run. In the cancellation window nothing live is sent; during the live send it stops
    at the next batch boundary. A run whose process is gone is marked cancelled at once (never resumed).
    Exit 0 when cancelled or already finished, 2 when there is nothing to cancel."""
    from sender import operate

    cfg: config.Config = ctx.obj
    with run(database.connect, True, cfg.embedded_db_dir) as conn:
        message = run(
            operate.cancel, conn, cfg.sender_schema, target, lambda name: campaigns.find_campaign(cfg, name),
            operate.zones(lambda: campaigns.load_campaigns(cfg)),
        )  # fmt: skip
    typer.echo(message)


@app.command("runs")
def runs_command(
    ctx: typer.Context,
    campaign: Annotated[str | None, typer.Option("--campaign", help="Only this campaign (name or old id).")] = None,
    last: Annotated[int, typer.Option("--last", min=1, help="How many runs.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON document on stdout.")] = False,
) -> None:
    """Recent scheduled runs, newest first: send time (campaign's zone), phase, status (a run whose process is
    gone shows `interrupted`), reason, what the test and live phases sent, heartbeat of running ones."""
    from sender import operate

    cfg: config.Config = ctx.obj
    name = campaigns_named(cfg, campaign)[0].name if campaign else None
    zones = operate.zones(lambda: campaigns.load_campaigns(cfg))
    with run(database.connect, True, cfg.embedded_db_dir) as conn:
        document = run(operate.runs, conn, cfg.sender_schema, name, last, zones)
    if as_json:
        typer.echo(operate.to_json(document))
    elif document["runs"]:
        console.print(operate.runs_table(document, zones))
    else:
        console.print(f"no scheduled runs{f' of {name}' if name else ''} in the ledger {cfg.sender_schema}")


@app.command("schedule")
def schedule_command(
    ctx: typer.Context,
    fmt: Annotated[str, typer.Option("--format", help="crontab (with CRON_TZ) or systemd (.service and .timer).")] = (
        "crontab"
    ),
    campaign: Annotated[str | None, typer.Option("--campaign", help="Only this campaign (name or old id).")] = None,
) -> None:
    """Print the scheduler lines that start each active campaign's run at send time - lead time.

    One `sender run CAMPAIGN` per active campaign, in its time zone, with this sender's executable and
    settings, run in the project folder. Inactive campaigns get no line (a comment says so). Firing a run
    twice is safe (README, "Scheduling").
    """
    from sender import schedule  # here: the rest of this module does not need it

    cfg: config.Config = ctx.obj
    chosen = campaigns_named(cfg, campaign)
    typer.echo(run(schedule.render, chosen, fmt, cfg.project_dir, schedule.sender_command(cfg)), nl=False)


def _raise(message: str) -> None:
    raise UserError(message)


spark_app = typer.Typer(
    help="The models on Apache Spark (make test-spark): load the source tables, compare the marts.",
    no_args_is_help=True,
)
app.add_typer(spark_app, name="spark")
SparkTarget = Annotated[str, typer.Option("--target", help="The dbt profile target of the Spark session.")]


def spark_session(cfg: config.Config, target: str):
    """A Spark session with the settings of the profile's target (sender.spark)."""
    from sender import spark

    return run(spark.session, run(spark.spark_parameters, cfg.project_dir, cfg.profiles_dir, target))


@spark_app.command("load")
def spark_load_command(
    ctx: typer.Context,
    source_schema: Annotated[str, typer.Option("--source-schema", help="PostgreSQL schema of the source tables.")],
    spark_database: Annotated[str, typer.Option("--database", help="Spark database to copy them into (replaced).")],
    target: SparkTarget = "spark",
) -> None:
    """Copy the source tables (source_schema.sql; device tokens as var device_tokens names them) from PostgreSQL
    into Spark parquet tables, types mapped explicitly (uuid and jsonb as strings, timestamptz as timestamps)."""
    from sender import spark

    cfg: config.Config = ctx.obj
    tables = run(spark.source_tables, cfg.project_dir)
    with run(database.connect, True, cfg.embedded_db_dir) as conn:
        run(spark.load, conn, spark_session(cfg, target), source_schema, spark_database, tables, log)


@spark_app.command("compare")
def spark_compare_command(
    ctx: typer.Context,
    pg_schema: Annotated[str, typer.Option("--pg-schema", help="PostgreSQL schema of the models (DBT_SCHEMA).")],
    spark_database: Annotated[str, typer.Option("--database", help="Spark database of the same models.")],
    target: SparkTarget = "spark",
) -> None:
    """Every audience mart and decisions model on Spark vs PostgreSQL, row for row (all columns as text,
    timestamps in UTC). Exit 3 if any differs."""
    from sender import spark

    cfg: config.Config = ctx.obj
    with run(database.connect, True, cfg.embedded_db_dir) as conn:
        models = spark.mart_models(cfg.project_dir)
        lines, same = run(spark.compare, conn, spark_session(cfg, target), pg_schema, spark_database, models)
    typer.echo("\n".join(lines))
    if not same:
        fail("the models differ between Spark and PostgreSQL (above)", spark.COMPARE_EXIT_CODE)


if __name__ == "__main__":
    app()
