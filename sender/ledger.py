"""The sender's own tables (schema SENDER_SCHEMA, default push_sender), created and migrated here.

runs            one row per send run: campaign, mode, run key (unique together), status, summary
deliveries      one row per (run, step, user, token), the unit of "exactly one attempt":
                queued   planned, not attempted yet
                pending  handed to FCM; outcome unknown until settled (a crash leaves it so)
                sent / validated (dry-run accepted by FCM) / dry_run (live-dry-run: no FCM call)
                failed / invalid_token / no_token / render_error
invalid_tokens  tokens FCM reported as unregistered or invalid: never sent to again
"""

from __future__ import annotations

import os

import psycopg
from psycopg import sql

SCHEMA = os.environ.get("SENDER_SCHEMA", "push_sender")
LOCK_CLASS = 0x50555348  # 'PUSH': first key of the per-campaign advisory lock

MIGRATIONS = [
    """
    create table {schema}.runs (
        run_id      bigint generated always as identity primary key,
        campaign    text not null,
        layer       integer not null,
        mode        text not null
                    check (mode in ('test-dry-run', 'test-live', 'live-dry-run', 'live')),
        run_key     text not null,
        status      text not null default 'running'
                    check (status in ('running', 'succeeded', 'failed', 'cancelled')),
        started_at  timestamptz not null default now(),
        finished_at timestamptz,
        summary     jsonb,
        unique (campaign, mode, run_key)
    );
    create table {schema}.deliveries (
        run_id         bigint not null references {schema}.runs,
        step           text not null,
        user_id        uuid not null,
        token          text not null,  -- '' for a user with no token (status no_token)
        status         text not null check (status in (
                           'queued', 'pending', 'sent', 'validated', 'dry_run', 'failed',
                           'invalid_token', 'no_token', 'render_error')),
        title          text,
        body           text,
        data           jsonb,
        fcm_message_id text,
        error          text,
        updated_at     timestamptz not null default now(),
        primary key (run_id, step, user_id, token)
    );
    create index on {schema}.deliveries (run_id, step, status);
    create table {schema}.invalid_tokens (
        token     text primary key,
        reason    text not null,
        run_id    bigint,
        marked_at timestamptz not null default now()
    );
    """,
]


def migrate(conn: psycopg.Connection) -> None:
    """Create or upgrade the sender's schema; safe to run at every start, and concurrently."""
    schema = sql.Identifier(SCHEMA)
    with conn.transaction():
        conn.execute("select pg_advisory_xact_lock(%s, 0)", (LOCK_CLASS,))
        conn.execute(sql.SQL("create schema if not exists {}").format(schema))
        conn.execute(sql.SQL("create table if not exists {}.schema_version (version integer not null)").format(schema))
        row = conn.execute(sql.SQL("select max(version) from {}.schema_version").format(schema)).fetchone()
        for version, ddl in enumerate(MIGRATIONS[row[0] or 0 :], start=(row[0] or 0) + 1):
            conn.execute(sql.SQL(ddl).format(schema=schema))
            conn.execute(sql.SQL("insert into {}.schema_version values (%s)").format(schema), (version,))


def table(name: str) -> sql.Identifier:
    return sql.Identifier(SCHEMA, name)


def try_lock_campaign(conn: psycopg.Connection, campaign: str) -> bool:
    """Session advisory lock: one sender per campaign (and ledger), released when the process ends."""
    row = conn.execute("select pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, _lock_key(campaign))).fetchone()
    return row[0]


def unlock_campaign(conn: psycopg.Connection, campaign: str) -> None:
    conn.execute("select pg_advisory_unlock(%s, hashtext(%s))", (LOCK_CLASS, _lock_key(campaign)))


def _lock_key(campaign: str) -> str:
    return f"{SCHEMA}:{campaign}"
