"""The sender's own tables (schema SENDER_SCHEMA, default push_sender): created, migrated and written
here only, one method per statement.

runs            one row per send run: campaign, mode, run key (unique together), status, summary, error
run_steps       a step of a run is planned once, even when its audience was empty
deliveries      one row per (run, step, user, token), the unit of "exactly one attempt":
                queued   planned, not handed to FCM yet
                pending  handed to FCM; outcome unknown until settled (a crash leaves it so)
                sent / validated (dry-run accepted by FCM) / dry_run (live-dry-run: no FCM call)
                failed / invalid_token / no_token / render_error
invalid_tokens  tokens FCM reported as unregistered or invalid, and malformed source tokens: never sent to again
scheduled_runs  one row per scheduled run of a campaign (campaign, send time, rehearsal or not): its phase
                (build, export, test, window, live, cleanup, done), status, reason, heartbeat, and the
                send runs of its test and live phases; a cancel request
pauses          campaigns switched off at once (the kill switch): no run starts, running ones stop
history         notifications sent before this ledger existed, imported from CSV (user, layer, campaign, time)
notifications   (view) what cadence rules count: one row per user and live step (however many tokens), from
                the ledger (sent, pending, or queued: a reservation) and the imported history

Cadence (DELIVERY.md, "Cadence"): a live step's users are checked against the rules while the step is
planned, under an exclusive advisory lock that claims take shared, so a check and its record are
atomic: two senders never both pass a cap for one user, and a reservation cannot be claimed while a
higher-priority campaign is taking its slot.
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

LOCK_CLASS = 0x50555348  # 'PUSH': first key of the per-campaign advisory lock
MAX_TOKEN_LENGTH = 4096  # FCM registration tokens are about 160 characters

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
    """
    alter table {schema}.runs drop constraint runs_status_check;
    alter table {schema}.runs add constraint runs_status_check check (status in (
        'running', 'succeeded', 'failed', 'interrupted', 'cancelled', 'blocked'));
    alter table {schema}.runs add column error text, add column host text, add column pid integer,
        add column heartbeat_at timestamptz;
    create table {schema}.run_steps (
        run_id     bigint not null references {schema}.runs,
        step       text not null,
        planned_at timestamptz not null default now(),
        primary key (run_id, step)
    );
    insert into {schema}.run_steps (run_id, step) select distinct run_id, step from {schema}.deliveries;
    """,
    """
    alter table {schema}.runs add column priority integer not null default 0, add column warnings text[];
    alter table {schema}.deliveries drop constraint deliveries_status_check;
    alter table {schema}.deliveries add constraint deliveries_status_check check (status in (
        'queued', 'pending', 'sent', 'validated', 'dry_run', 'failed', 'invalid_token', 'no_token',
        'render_error', 'cadence_skipped'));
    alter table {schema}.deliveries add column cadence_rules text[], add column cadence_winner text;
    create index on {schema}.deliveries (user_id, updated_at);
    create table {schema}.history (
        user_id     uuid not null,
        layer       integer not null,
        campaign    text not null default '',
        sent_at     timestamptz not null,
        imported_at timestamptz not null default now(),
        primary key (user_id, layer, campaign, sent_at)
    );
    create view {schema}.notifications as
    select d.user_id, r.layer, r.campaign, d.step, d.run_id, r.priority,
        max(d.updated_at) as at,
        bool_or(d.status in ('sent', 'pending')) as delivered,
        max(d.fcm_message_id) as fcm_message_id
    from {schema}.deliveries as d
    inner join {schema}.runs as r using (run_id)
    where r.mode = 'live' and d.status in ('queued', 'pending', 'sent')
    group by d.user_id, r.layer, r.campaign, d.step, d.run_id, r.priority
    union all
    select user_id, layer, nullif(campaign, ''), null, null, null, sent_at, true, null
    from {schema}.history;
    """,
    """
    create table {schema}.scheduled_runs (
        id           bigint generated always as identity primary key,
        campaign     text not null,
        send_at      timestamptz not null,
        rehearsal    boolean not null default false,
        phase        text not null default 'starting'
                     check (phase in (
                         'starting', 'build', 'freshness', 'export', 'test', 'window', 'live', 'cleanup', 'done')),
        status       text not null default 'running' check (status in (
                         'running', 'succeeded', 'failed', 'interrupted', 'cancelled', 'blocked')),
        reason       text,
        phases       jsonb not null default '[]',
        cancel_requested_at timestamptz,
        test_run_id  bigint references {schema}.runs,
        live_run_id  bigint references {schema}.runs,
        host         text,
        pid          integer,
        heartbeat_at timestamptz,
        started_at   timestamptz not null default now(),
        finished_at  timestamptz,
        unique (campaign, send_at, rehearsal)
    );
    create table {schema}.pauses (
        campaign  text primary key,
        paused_at timestamptz not null default now(),
        reason    text
    );
    """,
]
CADENCE_LOCK = 0x43415053  # 'CAPS': second key of the advisory lock that serialises cadence checks


@dataclass(frozen=True)
class Caps:
    """How a live step is checked against the cadence rules while it is planned."""

    rules: tuple[str, str]  # (schema, table) of the cadence_rules seed
    layer: int
    priority: int
    campaign: str
    reserve: bool  # live: take slots from lower-priority reservations; live-dry-run: only look


@dataclass(frozen=True)
class Run:
    run_id: int
    status: str  # as found: 'new' when created now


@dataclass(frozen=True)
class Claimed:
    user_id: str
    token: str
    title: str
    body: str
    data: dict[str, str]


@dataclass(frozen=True)
class Counts:
    audience: int = 0
    no_token: int = 0
    sent: int = 0
    failed: int = 0
    invalid_tokens: int = 0
    render_errors: int = 0
    unknown: int = 0
    queued: int = 0
    cadence_skipped: int = 0


def try_lock_campaign(conn: psycopg.Connection, campaign: str) -> bool:
    """Session advisory lock: one sender per campaign, whatever its ledger schema; freed when the session ends."""
    return conn.execute("select pg_try_advisory_lock(%s, hashtext(%s))", (LOCK_CLASS, campaign)).fetchone()[0]


def unlock_campaign(conn: psycopg.Connection, campaign: str) -> None:
    conn.execute("select pg_advisory_unlock(%s, hashtext(%s))", (LOCK_CLASS, campaign))


class Ledger:
    """The ledger in `schema`, through an autocommit connection."""

    def __init__(self, conn: psycopg.Connection, schema: str) -> None:
        self.conn = conn
        self.schema = schema

    def _t(self, name: str) -> sql.Identifier:
        return sql.Identifier(self.schema, name)

    def _q(self, query: str, **tables: str) -> sql.Composed:
        return sql.SQL(query).format(**{key: self._t(name) for key, name in tables.items()})

    def migrate(self) -> None:
        """Create or upgrade the schema; safe to run at every start, and concurrently."""
        schema = sql.Identifier(self.schema)
        with self.conn.transaction():
            self.conn.execute("select pg_advisory_xact_lock(%s, 0)", (LOCK_CLASS,))
            self.conn.execute(sql.SQL("create schema if not exists {}").format(schema))
            self.conn.execute(
                sql.SQL("create table if not exists {}.schema_version (version integer not null)").format(schema)
            )
            row = self.conn.execute(sql.SQL("select max(version) from {}.schema_version").format(schema)).fetchone()
            for version, ddl in enumerate(MIGRATIONS[row[0] or 0 :], start=(row[0] or 0) + 1):
                self.conn.execute(sql.SQL(ddl).format(schema=schema))
                self.conn.execute(sql.SQL("insert into {}.schema_version values (%s)").format(schema), (version,))

    # --- runs ---------------------------------------------------------------------------------------

    def start_run(self, campaign: str, layer: int, mode: str, run_key: str, priority: int = 0) -> Run:
        """The run with this key (its status as found), now marked running by this process; or a new one."""
        me = (socket.gethostname(), os.getpid())
        found = self.conn.execute(
            self._q("select run_id, status from {r} where campaign = %s and mode = %s and run_key = %s", r="runs"),
            (campaign, mode, run_key),
        ).fetchone()
        if found:
            self.conn.execute(
                self._q(
                    "update {runs} set host = %s, pid = %s, heartbeat_at = now(), error = null, priority = %s,"
                    " status = case when status = 'succeeded' then status else 'running' end where run_id = %s",
                    runs="runs",
                ),
                (*me, priority, found[0]),
            )
            return Run(*found)
        row = self.conn.execute(
            self._q(
                "insert into {runs} (campaign, layer, mode, run_key, host, pid, heartbeat_at, priority)"
                " values (%s, %s, %s, %s, %s, %s, now(), %s) returning run_id",
                runs="runs",
            ),
            (campaign, layer, mode, run_key, *me, priority),
        ).fetchone()
        return Run(row[0], "new")

    def finish_run(
        self, run_id: int, status: str, summary: list[dict] | None, error: str | None = None, warnings=None
    ) -> None:
        self.conn.execute(
            self._q(
                "update {runs} set status = %s, finished_at = now(), summary = coalesce(%s, summary), error = %s,"
                " warnings = coalesce(%s, warnings) where run_id = %s",
                runs="runs",
            ),
            (status, json.dumps(summary) if summary is not None else None, error, warnings or None, run_id),
        )

    # --- planning -----------------------------------------------------------------------------------

    def planned_steps(self, run_id: int) -> set[str]:
        rows = self.conn.execute(self._q("select step from {s} where run_id = %s", s="run_steps"), (run_id,))
        return {row[0] for row in rows}

    def plan_step(
        self,
        run_id: int,
        step: str,
        rendered: Iterable[Iterable[tuple[str, str, str, str, str | None]]],
        device_tokens: tuple[str, str],
        caps: Caps | None = None,
    ) -> None:
        """Write a step's rows, in one transaction: one per (user, token) of the rendered audience.

        `rendered` yields chunks of (user_id, title, body, data as JSON, render error or None); it may
        read from this same connection (a server-side cursor inside this transaction). Tokens come
        from `device_tokens` (schema, view) now, minus those known invalid; a malformed token (empty,
        whitespace, control characters, over MAX_TOKEN_LENGTH) is settled invalid_token and recorded.
        With `caps`, users whom a cadence rule blocks get one row `cadence_skipped` naming the rules.
        """
        with self.conn.transaction():
            # Sorts and hashes of this transaction (the audience in file order, the caps) stay in memory.
            self.conn.execute("set local work_mem = '64MB'")
            self.conn.execute(
                "create temporary table rendered (user_id uuid, title text, body text, data jsonb, error text)"
                " on commit drop"
            )
            for chunk in rendered:
                with self.conn.cursor() as cur, cur.copy("copy rendered from stdin") as copy_in:
                    for row in chunk:
                        copy_in.write_row(row)
            self.conn.execute(
                sql.SQL(
                    """
                    create temporary table planned on commit drop as
                    select rendered.user_id, coalesce(tokens.token, '') as token,
                        case
                            when rendered.error is not null then 'render_error'
                            when tokens.token is null then 'no_token'
                            when tokens.malformed is not null then 'invalid_token'
                            else 'queued'
                        end as status,
                        rendered.title, rendered.body, rendered.data,
                        coalesce(rendered.error, tokens.malformed) as error,
                        null::text[] as cadence_rules
                    from rendered
                    left join lateral (
                        select distinct
                            device_tokens.token,
                            case
                                when device_tokens.token ~ '^\\s*$' then 'malformed token: empty or whitespace'
                                when length(device_tokens.token) > %(max_length)s
                                    then 'malformed token: longer than ' || %(max_length)s || ' characters'
                                when device_tokens.token ~ '[\\s[:cntrl:]]'
                                    then 'malformed token: holds whitespace or control characters'
                            end as malformed
                        from {device_tokens} as device_tokens
                        where device_tokens.user_id = rendered.user_id
                            and device_tokens.token is not null
                            and rendered.error is null
                            and not exists (
                                select from {invalid_tokens} as invalid
                                where invalid.token = device_tokens.token
                            )
                    ) as tokens on true
                    """
                ).format(device_tokens=sql.Identifier(*device_tokens), invalid_tokens=self._t("invalid_tokens")),
                {"max_length": MAX_TOKEN_LENGTH},
            )
            if caps:
                self._apply_caps(caps)
            # In key order, so the indexes fill page after page; of rows with the same (user, token) (a user
            # twice in the audience) the first in `planned` wins, as `on conflict do nothing` over a scan of it
            # keeps it. The step has no rows yet (it is planned once, under the campaign's lock), so there is
            # no conflict to check for; if it had, the statement would skip them as before.
            fresh = not self.conn.execute(
                self._q("select exists (select from {d} where run_id = %s and step = %s)", d="deliveries"),
                (run_id, step),
            ).fetchone()[0]
            self.conn.execute(
                self._q(
                    "insert into {deliveries} (run_id, step, user_id, token, status, title, body, data, error,"
                    " cadence_rules) select distinct on (user_id, token) %(run_id)s, %(step)s, user_id, token,"
                    " status, title, body, data, error, cadence_rules from planned order by user_id, token, ctid"
                    + ("" if fresh else " on conflict do nothing"),
                    deliveries="deliveries",
                ),
                {"run_id": run_id, "step": step},
            )
            self.conn.execute(
                self._q(
                    "insert into {invalid_tokens} (token, reason, run_id)"
                    " select distinct on (token) token, error, %s from planned where status = 'invalid_token'"
                    " on conflict do nothing",
                    invalid_tokens="invalid_tokens",
                ),
                (run_id,),
            )
            self.conn.execute(self._q("insert into {s} (run_id, step) values (%s, %s)", s="run_steps"), (run_id, step))

    def _apply_caps(self, caps: Caps) -> None:
        """Check the `planned` users against the rules, inside the planning transaction (DELIVERY.md, "Cadence").

        Per user and rule, the notifications inside the rule's rolling window (`at` > now - window) are
        firm (sent, of unknown outcome, imported, or reserved by a campaign of equal or higher priority)
        or soft (reserved by a lower-priority campaign, not sent yet). A user whose firm count reaches a
        rule's maximum is skipped, naming every such rule. Otherwise, where firm + soft reaches it, the
        lowest-priority reservations give their slot up (their rows become cadence_skipped, naming the
        rule and this campaign) when `caps.reserve`.
        """
        execute = self.conn.execute
        execute("select pg_advisory_xact_lock(%s, %s)", (LOCK_CLASS, CADENCE_LOCK))
        execute(
            sql.SQL(
                """
                create temporary table rules on commit drop as
                select name, regexp_split_to_array(btrim(counted_layers::text), '[^0-9]+')::int[] as counted,
                    window_hours, max_count
                from {rules}
                where active and %s = any(regexp_split_to_array(btrim(applies_to_layers::text), '[^0-9]+')::int[])
                """
            ).format(rules=sql.Identifier(*caps.rules)),
            (caps.layer,),
        )
        execute(
            self._q(
                """
                create temporary table cadence_events on commit drop as
                select n.user_id, n.layer, n.run_id, n.step, n.at, n.priority,
                    n.delivered or n.priority is null or n.priority >= %(priority)s as firm
                from {notifications} as n
                where n.user_id in (select user_id from planned where status = 'queued')
                    and n.at > now() - make_interval(hours => (select max(window_hours) from rules))
                """,
                notifications="notifications",
            ),
            {"priority": caps.priority},
        )
        execute(
            """
            create temporary table cadence_checks on commit drop as
            select users.user_id, rules.name, rules.max_count, rules.counted, rules.window_hours,
                count(e.user_id) filter (where e.firm) as firm,
                count(e.user_id) filter (where not e.firm) as soft
            from (select distinct user_id from planned where status = 'queued') as users
            cross join rules
            left join cadence_events as e
                on e.user_id = users.user_id and e.layer = any(rules.counted)
                and e.at > now() - make_interval(hours => rules.window_hours)
            group by users.user_id, rules.name, rules.max_count, rules.counted, rules.window_hours
            """
        )
        execute(
            """
            create temporary table cadence_blocked on commit drop as
            select user_id, array_agg(name order by name) as rules
            from cadence_checks where firm >= max_count group by user_id
            """
        )
        if caps.reserve:
            execute(
                self._q(
                    """
                    with needs as (
                        select c.user_id, c.name, c.counted, c.window_hours, c.firm + c.soft - c.max_count + 1 as need
                        from cadence_checks as c
                        where c.firm + c.soft >= c.max_count
                            and not exists (select from cadence_blocked as b where b.user_id = c.user_id)
                    ),
                    ranked as (
                        select n.name, e.run_id, e.step, e.user_id, n.need,
                            row_number() over (
                                partition by n.user_id, n.name order by e.priority, e.at desc, e.run_id
                            ) as k
                        from needs as n
                        inner join cadence_events as e
                            on e.user_id = n.user_id and not e.firm and e.layer = any(n.counted)
                            and e.at > now() - make_interval(hours => n.window_hours)
                    ),
                    given_up as (
                        select run_id, step, user_id, array_agg(distinct name) as rules
                        from ranked where k <= need group by run_id, step, user_id
                    )
                    update {deliveries} as d
                    set status = 'cadence_skipped', cadence_rules = g.rules, cadence_winner = %s, updated_at = now()
                    from given_up as g
                    where d.run_id = g.run_id and d.step = g.step and d.user_id = g.user_id and d.status = 'queued'
                    """,
                    deliveries="deliveries",
                ),
                (caps.campaign,),
            )
        execute(
            """
            with skipped as (
                delete from planned using cadence_blocked as b
                where planned.user_id = b.user_id and planned.status = 'queued'
                returning planned.user_id, planned.title, planned.body, planned.data, b.rules
            )
            insert into planned (user_id, token, status, title, body, data, cadence_rules)
            select distinct on (user_id) user_id, '', 'cadence_skipped', title, body, data, rules from skipped
            """
        )

    def cadence_rule_count(self, rules: tuple[str, str]) -> int | None:
        """How many active rules the seed table holds; None when it does not exist (fail open, loudly)."""
        if self.conn.execute("select to_regclass(%s)", (sql.Identifier(*rules).as_string(self.conn),)).fetchone()[0]:
            query = sql.SQL("select count(*) from {} where active").format(sql.Identifier(*rules))
            return self.conn.execute(query).fetchone()[0]
        return None

    # --- delivering ---------------------------------------------------------------------------------

    def count_queued(self, run_id: int, step: str) -> int:
        query = self._q(
            "select count(*) from {d} where run_id = %s and step = %s and status = 'queued'", d="deliveries"
        )
        return self.conn.execute(query, (run_id, step)).fetchone()[0]

    def claim(self, run_id: int, step: str, size: int) -> list[Claimed]:
        """Mark the next batch pending (durably, before it is handed to FCM) and return it.

        Shares the cadence lock, so no reservation is claimed while a planner may be taking its slot."""
        with self.conn.transaction():
            self.conn.execute("select pg_advisory_xact_lock_shared(%s, %s)", (LOCK_CLASS, CADENCE_LOCK))
            rows = self._claim(run_id, step, size)
        return [Claimed(str(r[0]), r[1], r[2], r[3], r[4] or {}) for r in rows]

    def _claim(self, run_id: int, step: str, size: int) -> list[tuple]:
        return self.conn.execute(
            self._q(
                """
                update {d} set status = 'pending', updated_at = now()
                where (run_id, step, user_id, token) in (
                    select run_id, step, user_id, token from {d}
                    where run_id = %s and step = %s and status = 'queued'
                    limit %s  -- any order: no sort, the (run_id, step, status) index serves it
                    for update skip locked
                )
                returning user_id, token, title, body, data
                """,
                d="deliveries",
            ),
            (run_id, step, size),
            prepare=False,  # a prepared (generic) plan scans the step's whole ledger: 70 ms instead of 11 ms
        ).fetchall()

    def settle(self, run_id: int, step: str, outcomes: list[tuple[str, str, str, str | None, str | None]]) -> None:
        """Record (user_id, token, status, message id, error) of pending rows, and the tokens FCM
        rejected (status invalid_token), in one transaction. A status 'queued' returns the row to the queue."""
        columns = [list(column) for column in zip(*outcomes, strict=True)] if outcomes else [[]] * 5
        with self.conn.transaction():
            # No need to wait for the disk: if a database crash lost this commit, the rows would still be
            # 'pending' (outcome unknown, never re-sent). The claim that marks them pending is durable.
            self.conn.execute("set local synchronous_commit = off")
            self.conn.execute(
                self._q(
                    """
                    update {d} as d
                    set status = v.status, fcm_message_id = v.message_id, error = v.error, updated_at = now()
                    from unnest(%s::uuid[], %s::text[], %s::text[], %s::text[], %s::text[])
                        as v(user_id, token, status, message_id, error)
                    where d.run_id = %s and d.step = %s and d.user_id = v.user_id and d.token = v.token
                        and d.status = 'pending'
                    """,
                    d="deliveries",
                ),
                (*columns, run_id, step),
                prepare=False,  # as in claim: keep the per-batch custom plan
            )
            invalid = [(token, error) for _, token, status, _, error in outcomes if status == "invalid_token"]
            if invalid:
                self.conn.execute(
                    self._q(
                        "insert into {t} (token, reason, run_id) select t, r, %s"
                        " from unnest(%s::text[], %s::text[]) as v(t, r) on conflict do nothing",
                        t="invalid_tokens",
                    ),
                    (run_id, [t for t, _ in invalid], [r or "invalid" for _, r in invalid]),
                )

    def requeue(self, run_id: int, steps: list[str], status: str) -> int:
        """Queue again the run's rows in `status` ('pending': --resend-unknown, 'failed': --retry-failed)."""
        assert status in ("pending", "failed")
        query = self._q(
            "update {d} set status = 'queued', error = null, updated_at = now()"
            " where run_id = %s and step = any(%s) and status = %s",
            d="deliveries",
        )
        return self.conn.execute(query, (run_id, steps, status)).rowcount

    # --- reading ------------------------------------------------------------------------------------

    def counts(self, run_id: int, step: str) -> Counts:
        row = self.conn.execute(
            self._q(
                """
                select
                    count(distinct user_id),
                    count(distinct user_id) filter (where status = 'no_token'),
                    count(*) filter (where status in ('sent', 'validated', 'dry_run')),
                    count(*) filter (where status = 'failed'),
                    count(*) filter (where status = 'invalid_token'),
                    count(distinct user_id) filter (where status = 'render_error'),
                    count(*) filter (where status = 'pending'),
                    count(*) filter (where status = 'queued'),
                    count(distinct user_id) filter (where status = 'cadence_skipped')
                from {d} where run_id = %s and step = %s
                """,
                d="deliveries",
            ),
            (run_id, step),
        ).fetchone()
        return Counts(*row)

    def unknown_messages(self, run_id: int, step: str) -> list[tuple[str, str]]:
        query = self._q(
            "select user_id::text, token from {d} where run_id = %s and step = %s and status = 'pending'"
            " order by user_id, token",
            d="deliveries",
        )
        return [tuple(row) for row in self.conn.execute(query, (run_id, step))]

    def examples(self, run_id: int, step: str) -> Iterator[dict]:
        """One message per outcome: a sample of what was rendered, sent or refused."""
        query = self._q(
            """
            select distinct on (status) user_id::text as user_id, status, title, body, data,
                coalesce(error, 'cadence: ' || array_to_string(cadence_rules, ', ')
                    || coalesce(' (slot taken by ' || cadence_winner || ')', '')) as error
            from {d}
            where run_id = %s and step = %s
                and status in (
                    'sent', 'validated', 'dry_run', 'failed', 'render_error', 'invalid_token', 'cadence_skipped'
                )
            order by status, user_id
            """,
            d="deliveries",
        )
        with self.conn.cursor(row_factory=dict_row) as cur:
            yield from cur.execute(query, (run_id, step))

    # --- scheduled runs and the kill switch -----------------------------------------------------------

    def scheduled_run(self, campaign: str, send_at: datetime, rehearsal: bool) -> dict | None:
        query = self._q("select * from {t} where campaign = %s and send_at = %s and rehearsal = %s", t="scheduled_runs")
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, (campaign, send_at, rehearsal)).fetchone()

    def unfinished_scheduled_run(self, campaign: str) -> dict | None:
        """The campaign's latest scheduled run (not a rehearsal) that is still running or was interrupted."""
        query = self._q(
            "select * from {t} where campaign = %s and not rehearsal and status in ('running', 'interrupted')"
            " order by send_at desc limit 1",
            t="scheduled_runs",
        )
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, (campaign,)).fetchone()

    def start_scheduled_run(self, campaign: str, send_at: datetime, rehearsal: bool) -> dict:
        """The run for (campaign, send time, rehearsal), created or taken over by this process."""
        query = self._q(
            """
            insert into {t} (campaign, send_at, rehearsal, host, pid, heartbeat_at) values (%s, %s, %s, %s, %s, now())
            on conflict (campaign, send_at, rehearsal) do update
                set host = excluded.host, pid = excluded.pid, heartbeat_at = now(),
                    status = case when {t}.status in ('running', 'interrupted') then 'running' else {t}.status end
            returning *
            """,
            t="scheduled_runs",
        )
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, (campaign, send_at, rehearsal, socket.gethostname(), os.getpid())).fetchone()

    def record_phase(self, run_id: int, phase: str, outcome: str, detail: dict | None = None) -> None:
        """Enter `phase` (outcome 'started') or record how it ended; every step lands in `phases`."""
        entry = {"phase": phase, "outcome": outcome, "at": datetime.now(UTC).isoformat(), **(detail or {})}
        self.conn.execute(
            self._q(
                "update {t} set phase = %s, phases = phases || %s::jsonb, heartbeat_at = now() where id = %s",
                t="scheduled_runs",
            ),
            (phase, json.dumps([entry]), run_id),
        )

    def link_send_run(self, run_id: int, column: str, send_run_id: int) -> None:
        assert column in ("test_run_id", "live_run_id")
        self.conn.execute(
            sql.SQL("update {} set {} = %s where id = %s").format(self._t("scheduled_runs"), sql.Identifier(column)),
            (send_run_id, run_id),
        )

    def finish_scheduled_run(self, run_id: int, status: str, reason: str | None = None) -> None:
        self.conn.execute(
            self._q(
                "update {t} set status = %s, reason = %s, finished_at = now(), heartbeat_at = now() where id = %s",
                t="scheduled_runs",
            ),
            (status, reason, run_id),
        )

    def heartbeat(self, run_id: int) -> dict:
        """Beat, and return what others asked of this run: its cancel request and its campaign's pause."""
        query = self._q(
            """
            update {t} set heartbeat_at = now() where id = %s
            returning cancel_requested_at,
                (select reason from {p} where {p}.campaign = {t}.campaign) as paused_reason,
                exists (select from {p} where {p}.campaign = {t}.campaign) as paused
            """,
            t="scheduled_runs",
            p="pauses",
        )
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, (run_id,)).fetchone()

    def request_cancel(self, run_id: int) -> dict | None:
        """Ask a scheduled run to stop (its process notices at its next check); returns the run."""
        query = self._q(
            "update {t} set cancel_requested_at = coalesce(cancel_requested_at, now()) where id = %s returning *",
            t="scheduled_runs",
        )
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, (run_id,)).fetchone()

    def pause(self, campaign: str, reason: str | None) -> None:
        self.conn.execute(
            self._q(
                "insert into {p} (campaign, reason) values (%s, %s)"
                " on conflict (campaign) do update set reason = excluded.reason, paused_at = now()",
                p="pauses",
            ),
            (campaign, reason),
        )

    def resume(self, campaign: str) -> bool:
        return bool(self.conn.execute(self._q("delete from {p} where campaign = %s", p="pauses"), (campaign,)).rowcount)

    def paused(self, campaign: str) -> dict | None:
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(self._q("select * from {p} where campaign = %s", p="pauses"), (campaign,)).fetchone()

    def scheduled_runs(self, campaign: str | None, last: int) -> list[dict]:
        """The latest scheduled runs, newest first; a 'running' run whose process is gone (nobody holds its
        campaign's lock) is shown 'interrupted'."""
        query = self._q(
            """
            select s.*,
                case when s.status = 'running' and not exists (
                    select from pg_locks as l
                    where l.locktype = 'advisory' and l.granted and l.classid = %s::oid
                        and l.database = (select oid from pg_database where datname = current_database())
                        and l.objid = hashtext(s.campaign)::oid
                ) then 'interrupted' else s.status end as shown_status
            from {t} as s
            where %s::text is null or s.campaign = %s
            order by s.send_at desc, s.id desc limit %s
            """,
            t="scheduled_runs",
        )
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, (LOCK_CLASS, campaign, campaign, last)).fetchall()

    def find_scheduled_run(self, run_id: int | None = None, campaign: str | None = None) -> dict | None:
        """Scheduled run `run_id`; without it, `campaign`'s latest one still running or interrupted (rehearsals
        too). None when there is none."""
        query = self._q(
            "select * from {t} where id = %(id)s or (%(id)s::bigint is null and campaign = %(campaign)s"
            " and status in ('running', 'interrupted')) order by send_at desc, id desc limit 1",
            t="scheduled_runs",
        )
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, {"id": run_id, "campaign": campaign}).fetchone()

    # --- cadence history and checks ---

    def import_history(self, rows: Iterable[tuple]) -> int:
        """Add past notifications, (user_id, layer, campaign or '', sent_at), in one transaction; returns how many
        were new (the others were imported before). `rows` is streamed; if it raises, nothing is imported."""
        with self.conn.transaction():
            self.conn.execute(
                "create temporary table history_import"
                " (user_id uuid, layer integer, campaign text, sent_at timestamptz) on commit drop"
            )
            with self.conn.cursor() as cur, cur.copy("copy history_import from stdin") as copy_in:
                for row in rows:
                    copy_in.write_row(row)
            return self.conn.execute(
                self._q(
                    "insert into {history} (user_id, layer, campaign, sent_at)"
                    " select user_id, layer, campaign, sent_at from history_import on conflict do nothing",
                    history="history",
                )
            ).rowcount

    def cadence_window(self, rules: tuple[str, str], user_id: str, layer: int | None) -> list[dict]:
        """The active rules (those applying to `layer` when given), each with the user's notifications it counts
        now (`at` > now - window, as in _apply_caps): one row per rule and notification, oldest first; a rule
        counting none has one row with `at` null. Layer lists come as int arrays; `now` is the database's."""
        query = sql.SQL(
            """
            with rules as (
                select name, window_hours, max_count,
                    regexp_split_to_array(btrim(applies_to_layers::text), '[^0-9]+')::int[] as applies,
                    regexp_split_to_array(btrim(counted_layers::text), '[^0-9]+')::int[] as counted
                from {rules}
                where active
            )
            select rules.*, now() as now, n.at, n.layer, n.campaign, n.step, n.run_id, n.delivered, n.fcm_message_id
            from rules
            left join {notifications} as n
                on n.user_id = %(user_id)s::uuid and n.layer = any(rules.counted)
                and n.at > now() - make_interval(hours => rules.window_hours)
            where %(layer)s::int is null or %(layer)s::int = any(rules.applies)
            order by rules.name, n.at, n.run_id
            """
        ).format(rules=sql.Identifier(*rules), notifications=self._t("notifications"))
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, {"user_id": user_id, "layer": layer}).fetchall()

    # --- explanations ---

    def _rows(self, query: sql.Composable, params) -> list[dict]:
        with self.conn.cursor(row_factory=dict_row) as cur:
            return cur.execute(query, params).fetchall()

    def exists(self) -> bool:
        """Whether the ledger was created (a sender ran against this schema)."""
        return self.conn.execute("select to_regclass(%s)", (self._t("runs").as_string(self.conn),)).fetchone()[0]

    def find_run(self, run_id: int | None = None, campaign: str | None = None) -> dict | None:
        """Run `run_id`; without it, the latest live run of `campaign`. None when there is none."""
        query = self._q(
            "select * from {runs} where run_id = %(run_id)s"
            " or (%(run_id)s::bigint is null and campaign = %(campaign)s and mode = 'live')"
            " order by started_at desc, run_id desc limit 1",
            runs="runs",
        )
        rows = self._rows(query, {"run_id": run_id, "campaign": campaign})
        return rows[0] if rows else None

    def user_messages(self, run_id: int, user_ids: list[str]) -> list[dict]:
        """The run's rows of these users, with when and why the sender marked their token invalid, if it did."""
        query = self._q(
            """
            select d.user_id::text as user_id, d.step, d.token, d.status, d.error, d.fcm_message_id, d.updated_at,
                d.cadence_rules, d.cadence_winner, i.reason as invalid_reason, i.marked_at as invalid_since
            from {d} as d
            left join {i} as i on d.token <> '' and i.token = d.token
            where d.run_id = %s and d.user_id = any(%s::uuid[])
            order by d.user_id, d.step, d.token
            """,
            d="deliveries",
            i="invalid_tokens",
        )
        return self._rows(query, (run_id, user_ids))

    def invalid_tokens_of(self, user_ids: list[str], device_tokens: tuple[str, str]) -> list[dict]:
        """These users' tokens in the app's table (`device_tokens`) that the sender marked invalid."""
        query = sql.SQL(
            "select t.user_id::text as user_id, i.token, i.reason, i.marked_at, i.run_id"
            " from {tokens} as t inner join {i} as i on i.token = t.token"
            " where t.user_id = any(%s::uuid[]) order by t.user_id, i.marked_at"
        ).format(tokens=sql.Identifier(*device_tokens), i=self._t("invalid_tokens"))
        return self._rows(query, (user_ids,))

    def notifications_since(self, user_ids: list[str], since) -> list[dict]:
        """These users' notifications (what the cadence rules count) after `since`, newest first."""
        query = self._q(
            "select user_id::text as user_id, layer, campaign, step, run_id, at, delivered from {n}"
            " where user_id = any(%s::uuid[]) and at > %s order by user_id, at desc, run_id",
            n="notifications",
        )
        return self._rows(query, (user_ids, since))
