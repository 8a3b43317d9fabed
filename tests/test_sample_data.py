"""sender.sample_data against a real PostgreSQL (the embedded one unless PGHOST is set)."""

from __future__ import annotations

import os
import re
import subprocess
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import sql

from sender import sample_data
from sender.database import connect, ensure_environment
from sender.errors import UserError
from tests.conftest import BIN, PROJECT_DIR

AS_OF = datetime(2026, 11, 20, 17, 30, tzinfo=UTC)
DEMO_USERS = 20_000  # the size of the demo
SMALL_USERS = 1_000


@pytest.fixture(scope="module")
def conn():
    ensure_environment()
    name = f"pytest_sample_{os.getpid()}"
    with connect(dbname="postgres", autocommit=True) as admin:
        admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))
        admin.execute(sql.SQL("create database {}").format(sql.Identifier(name)))
    try:
        with connect(dbname=name, autocommit=True) as connection:
            connection.execute("set time zone 'UTC'")
            yield connection
    finally:
        with connect(dbname="postgres", autocommit=True) as admin:
            admin.execute(sql.SQL("drop database if exists {} with (force)").format(sql.Identifier(name)))


@pytest.fixture(scope="module")
def demo(conn) -> dict[str, int]:
    """The demo-sized data set, in schema `demo`; its row counts."""
    messages: list[str] = []
    counts = sample_data.generate(conn, users=DEMO_USERS, as_of=AS_OF, schema="demo", progress=messages.append)
    assert any(m.startswith("users:") for m in messages) and any(m.startswith("device_tokens:") for m in messages)
    conn.execute("set search_path to demo")
    return counts


def fingerprint(conn: psycopg.Connection, schema: str) -> dict[str, str]:
    """md5 of every table's rows in a fixed order."""
    return {
        table: conn.execute(
            sql.SQL("select md5(coalesce(string_agg(t::text, '|' order by t::text), '')) from {} t").format(
                sql.Identifier(schema, table)
            )
        ).fetchone()[0]
        for table in sample_data.contract_tables()
    }


def scalar(conn: psycopg.Connection, query: str):
    return conn.execute(query, {"as_of": AS_OF}).fetchone()[0]


# --- shape ------------------------------------------------------------------------------------------


def test_counts_and_contract_indexes(conn, demo):
    assert set(demo) == set(sample_data.contract_tables())
    for table, count in demo.items():
        assert scalar(conn, f"select count(*) from demo.{table}") == count > 0, table
    assert demo["users"] == DEMO_USERS

    indexes = conn.execute(
        """
        select c.relname, string_agg(a.attname, ',' order by k.ord), i.indisunique
        from pg_index i
        join pg_class c on c.oid = i.indrelid
        join pg_namespace n on n.oid = c.relnamespace
        cross join lateral unnest(i.indkey) with ordinality as k(attnum, ord)
        join pg_attribute a on a.attrelid = c.oid and a.attnum = k.attnum
        where n.nspname = 'demo'
        group by i.indexrelid, c.relname, i.indisunique
        """
    ).fetchall()
    _, statements = sample_data.contract_statements()
    wanted = {re.match(r"create index on (\w+) \((\w+)\)", s, re.IGNORECASE).groups() for s in statements}
    assert {(table, cols) for table, cols, unique in indexes if not unique} == wanted
    unique = {(table, "user_id" if table == "user_activities" else "id") for table in demo}
    assert {(table, cols) for table, cols, is_unique in indexes if is_unique} == unique | {("device_tokens", "token")}
    not_analyzed = """
        select count(*) from pg_tables t where schemaname = 'demo'
        and not exists (select from pg_stats s where s.schemaname = 'demo' and s.tablename = t.tablename)
    """
    assert scalar(conn, not_analyzed) == 0


def test_deterministic_and_seeded(conn):
    for schema, seed in (("same_a", 42), ("same_b", 42), ("other_seed", 7)):
        sample_data.generate(conn, users=SMALL_USERS, as_of=AS_OF, seed=seed, schema=schema)
    a, b, other = (fingerprint(conn, s) for s in ("same_a", "same_b", "other_seed"))
    assert a == b
    assert all(a[table] != other[table] for table in a)  # even the ids of fixed rows depend on the seed


def test_existing_tables_need_replace(conn):
    sample_data.generate(conn, users=100, as_of=AS_OF, schema="replace_me")
    before = fingerprint(conn, "replace_me")
    with pytest.raises(UserError, match=r"'replace_me'.*--replace") as raised:
        sample_data.generate(conn, users=200, as_of=AS_OF, schema="replace_me")
    assert "\n" not in str(raised.value)
    assert fingerprint(conn, "replace_me") == before

    # --replace drops and rebuilds, even under a view (as dbt's staging views are)
    conn.execute("create view replace_me.live_users as select * from replace_me.users where deleted_at = 0")
    counts = sample_data.generate(conn, users=200, as_of=AS_OF, schema="replace_me", replace=True)
    assert counts["users"] == scalar(conn, "select count(*) from replace_me.users") == 200


def test_too_few_users():
    with pytest.raises(UserError, match="at least"):
        sample_data.generate(None, users=3, as_of=AS_OF)  # type: ignore[arg-type]


# --- edge cases -------------------------------------------------------------------------------------

USER_WINDOW = "created_at between %(as_of)s - interval '14 days' and %(as_of)s - interval '12 hours'"
LIVE_VARIANT = "exists (select 1 from product_variants v join products p on p.id = v.product_id where v.id = {})"
PREFERENCES = """
    select up.user_id, ap.preferred from user_preferences up
    join attribute_preferences ap on ap.user_preference_id = up.id
    join attributes a on a.id = ap.attribute_id and a.name = '{}'
"""
OFFER_ITEMS = "select creator_user_id from offers o join offer_items i on i.offer_id = o.id"
MISSING_VARIANT = "not exists (select from product_variants v where v.id = i.product_variant_id)"
NO_ROW_IN = "select id from users u where not exists (select from {} t where t.user_id = u.id)"

# Each query lists the ids of the users a case applies to. Who has it: "placed" (edge users only),
# "both" (edge users, and bulk users by chance), "bulk" (bulk users only).
EDGE_CASES = {
    "created exactly at the window start": (
        "placed",
        "select id from users where created_at = %(as_of)s - interval '14 days'",
    ),
    "created exactly at the window end": (
        "placed",
        "select id from users where created_at = %(as_of)s - interval '12 hours'",
    ),
    "created 1 us before the window": (
        "placed",
        "select id from users where created_at = %(as_of)s - interval '14 days 0.000001 seconds'",
    ),
    "created 1 us after the window": (
        "placed",
        "select id from users where created_at = %(as_of)s - interval '11:59:59.999999'",
    ),
    "in the window": ("both", f"select id from users where {USER_WINDOW}"),
    "several preferred mens sizes": (
        "both",
        f"select user_id from ({PREFERENCES.format('mens_size')}) p where preferred "
        "group by user_id having count(*) > 1",
    ),
    "a mens size not preferred": (
        "both",
        f"select user_id from ({PREFERENCES.format('mens_size')}) p where not preferred",
    ),
    "a womens size": ("both", f"select user_id from ({PREFERENCES.format('womens_size')}) p"),
    "bio NULL": ("both", "select id from users where bio is null"),
    "bio empty": ("both", "select id from users where bio = ''"),
    "bio whitespace": ("both", "select id from users where bio <> '' and trim(bio) = ''"),
    "first_name NULL": ("both", "select id from users where first_name is null"),
    "username NULL": ("bulk", "select id from users where username is null"),
    "soft-deleted user": ("both", "select id from users where deleted_at <> 0"),
    "soft-deleted wishlist item": ("both", "select user_id from wishlist_items where deleted_at <> 0"),
    "soft-deleted desired item": ("both", "select user_id from desired_items where deleted_at <> 0"),
    "inventory item of a missing variant": (
        "both",
        f"select user_id from inventory_items i where {MISSING_VARIANT}",
    ),
    "wishlist item of a missing variant": ("both", f"select user_id from wishlist_items i where {MISSING_VARIANT}"),
    "desired item of a missing variant": ("both", f"select user_id from desired_items i where {MISSING_VARIANT}"),
    "offer item of a missing variant": (
        "both",
        f"{OFFER_ITEMS} where i.product_variant_id is not null and {MISSING_VARIANT}",
    ),
    "offer item of a variant whose product is missing": (
        "both",
        f"{OFFER_ITEMS} join product_variants v on v.id = i.product_variant_id "
        "where not exists (select from products p where p.id = v.product_id)",
    ),
    "offer item without a variant": ("both", f"{OFFER_ITEMS} where i.product_variant_id is null"),
    "multi-item offer": ("both", f"{OFFER_ITEMS} group by o.id having count(*) > 1"),
    "offer without items": (
        "both",
        "select creator_user_id from offers o where not exists (select from offer_items i where i.offer_id = o.id)",
    ),
    "no user_activities row": ("both", NO_ROW_IN.format("user_activities")),
    "NULL last_active": ("both", "select user_id from user_activities where last_active is null"),
    "no device token": ("both", NO_ROW_IN.format("device_tokens")),
    "three device tokens": ("bulk", "select user_id from device_tokens group by user_id having count(*) = 3"),
    "item NOT_FOR_TRADE": ("both", "select user_id from inventory_items where status = 'NOT_FOR_TRADE'"),
    "item SOLD": ("both", "select user_id from inventory_items where status = 'SOLD'"),
    "live desired items tied on offers_count": (
        "both",
        "select user_id from desired_items where deleted_at = 0 group by user_id, offers_count having count(*) > 1",
    ),
    "wishlist item exactly at the Layer 3 window start": (
        "placed",
        "select user_id from wishlist_items where created_at = %(as_of)s - interval '36 hours'",
    ),
    "wishlist item exactly at the Layer 3 window end": (
        "placed",
        "select user_id from wishlist_items where created_at = %(as_of)s - interval '12 hours'",
    ),
    "offer exactly at the start of the trending window": (
        "placed",
        "select creator_user_id from offers where created_at = %(as_of)s - interval '7 days'",
    ),
    "offer exactly at as_of": ("placed", "select creator_user_id from offers where created_at = %(as_of)s"),
}


@pytest.mark.parametrize("case", list(EDGE_CASES))
def test_edge_case_exists(conn, demo, case):
    where, query = EDGE_CASES[case]
    rows = conn.execute(f"select u.username from users u where u.id in ({query})", {"as_of": AS_OF}).fetchall()
    placed = [name for (name,) in rows if name and name.startswith("edge_")]
    bulk = len(rows) - len(placed)
    assert (bool(placed), bulk > 0) == {"placed": (True, False), "both": (True, True), "bulk": (False, True)}[where], (
        placed,
        bulk,
    )


def test_edge_users(conn, demo):
    """Each placed user is what its tag says (the dbt models' tests can rely on them)."""
    levels = dict(
        conn.execute(
            f"""
            select username,
                   case when not exists (select from inventory_items i where i.user_id = u.id) then 1
                        when bio is null or trim(bio) = '' then 2
                        when not exists (select from offers o where o.creator_user_id = u.id) then 3
                        when not exists (select from wishlist_items w where w.user_id = u.id and w.deleted_at = 0)
                        then 4 else 5 end
            from users u
            where deleted_at = 0 and first_name is not null and {USER_WINDOW} and username like 'edge\\_%%'
            """,
            {"as_of": AS_OF},
        ).fetchall()
    )
    assert {name: level for name, level in levels.items() if name.startswith("edge_level")} == {
        "edge_level1_no_shoes": 1,
        "edge_level2_bio_null": 2,
        "edge_level2_bio_empty": 2,
        "edge_level2_bio_spaces": 2,
        "edge_level3_no_offers": 3,
        "edge_level4_no_wishlist": 4,
        "edge_level5_new_star": 5,
        "edge_level5_ghost_target": 5,
        "edge_level5_orphan_target": 5,
    }
    assert levels["edge_window_start"] == levels["edge_window_end"] == 1
    assert not {"edge_before_window", "edge_after_window", "edge_no_first_name", "edge_deleted"} & set(levels)
    # the first item (lowest id) of a placed offer is the one listed first: here a missing variant
    first_item_exists = scalar(
        conn,
        """
        select exists (select from product_variants v where v.id = i.product_variant_id)
        from offers o join users u on u.id = o.creator_user_id
        join lateral (select product_variant_id from offer_items where offer_id = o.id order by id limit 1) i on true
        where u.username = 'edge_l3_first_item_ghost'
        """,
    )
    assert first_item_exists is False


def test_variants_and_catalog(conn, demo):
    assert 200 <= demo["products"] <= 500
    assert scalar(conn, "select count(*) from product_variants where index_cache is null") > 0
    assert scalar(conn, "select count(*) from product_variants where index_cache is not null "
                        "and not index_cache ? 'mens_size'") > 0  # fmt: skip
    assert scalar(conn, "select count(*) from product_variants where index_cache->>'mens_size' = '10.5'") > 0
    assert scalar(conn, "select count(distinct name) = count(*) from products")
    assert scalar(conn, "select count(distinct platform) from device_tokens") == 3


# --- populations the audiences need at demo size ----------------------------------------------------
# Counted over bulk users only: the data, not the placed edge users, must make the audiences realistic.

BULK = "username is distinct from null and username not like 'edge\\_%%'"


def test_layer5_levels_populated(conn, demo):
    levels = dict(
        conn.execute(
            f"""
            select case when not exists (select from inventory_items i where i.user_id = u.id) then 1
                        when bio is null or trim(bio) = '' then 2
                        when not exists (select from offers o where o.creator_user_id = u.id) then 3
                        when not exists (select from wishlist_items w where w.user_id = u.id and w.deleted_at = 0)
                        then 4 else 5 end as level, count(*)
            from users u
            where deleted_at = 0 and first_name is not null and {USER_WINDOW} and {BULK}
            group by 1
            """,
            {"as_of": AS_OF},
        ).fetchall()
    )
    assert set(levels) == {1, 2, 3, 4, 5} and min(levels.values()) >= 20, levels
    assert 0.01 * DEMO_USERS < sum(levels.values()) < 0.1 * DEMO_USERS


def test_layer3_activities_pass_demand(conn, demo):
    kept = dict(
        conn.execute(
            f"""
            with window_ as (select %(as_of)s - interval '36 hours' as lo, %(as_of)s - interval '12 hours' as hi),
            live as (select id from users where deleted_at = 0),
            activity as (
                select o.creator_user_id as user_id, 3 as priority, 'offer_created' as kind, o.created_at,
                       (select product_variant_id from offer_items i where i.offer_id = o.id order by i.id limit 1)
                       as variant_id
                from offers o, window_ where o.created_at >= lo and o.created_at < hi
                union all
                select user_id, 2, 'closet_add', created_at, product_variant_id
                from inventory_items, window_
                where status = 'OPEN_FOR_TRADE' and created_at >= lo and created_at < hi
                union all
                select user_id, 1, 'wishlist_add', created_at, product_variant_id
                from wishlist_items, window_ where deleted_at = 0 and created_at >= lo and created_at < hi
            ),
            kept as (
                select distinct on (user_id) a.*
                from activity a join live on live.id = a.user_id
                where {LIVE_VARIANT.format("a.variant_id")}
                order by user_id, priority desc, created_at desc, variant_id
            ),
            inventory as (
                select product_variant_id, count(*) as n from inventory_items join live on live.id = user_id
                where status = 'OPEN_FOR_TRADE' group by 1
            ),
            wishes as (
                select product_variant_id, count(*) as n from wishlist_items join live on live.id = user_id
                where deleted_at = 0 group by 1
            )
            select kind, count(*) from kept k
            join users u on u.id = k.user_id and {BULK}
            left join inventory i on i.product_variant_id = k.variant_id
            left join wishes w on w.product_variant_id = k.variant_id
            where case when kind = 'closet_add' then w.n >= 2 else i.n >= 3 end
            group by kind
            """,
            {"as_of": AS_OF},
        ).fetchall()
    )
    assert set(kept) == {"offer_created", "closet_add", "wishlist_add"} and min(kept.values()) >= 20, kept


def test_layer2_trending_holders(conn, demo):
    holders = dict(
        conn.execute(
            f"""
            with trending as (
                select p.id as product_id, row_number() over (order by count(distinct o.id) desc, p.name, p.id) as rank
                from offers o
                join offer_items i on i.offer_id = o.id
                join product_variants v on v.id = i.product_variant_id
                join products p on p.id = v.product_id
                where o.created_at >= %(as_of)s - interval '7 days' and o.created_at < %(as_of)s
                group by p.id order by rank limit 10
            ),
            demand as (
                select product_variant_id, count(*) as n from wishlist_items w join users u on u.id = w.user_id
                where w.deleted_at = 0 and u.deleted_at = 0 group by 1
            ),
            held as (
                select u.id as user_id, t.rank, coalesce(d.n, 0) as demand
                from users u
                join user_activities a on a.user_id = u.id and a.last_active >= %(as_of)s - interval '30 days'
                join inventory_items i on i.user_id = u.id and i.status = 'OPEN_FOR_TRADE'
                join product_variants v on v.id = i.product_variant_id
                join trending t on t.product_id = v.product_id
                left join demand d on d.product_variant_id = v.id
                where u.deleted_at = 0 and {BULK}
            ),
            matched as (  -- best-ranked product held, its most wished-for variant
                select distinct on (user_id) rank, demand from held order by user_id, rank, demand desc
            )
            select rank = 1, count(*) from matched where demand >= 2 group by 1
            """,
            {"as_of": AS_OF},
        ).fetchall()
    )
    assert holders.get(True, 0) >= 20 and holders.get(False, 0) >= 20, holders


# --- the command line: where the tables go, and what --replace may drop -------------------------------


def sample_cli(conn: psycopg.Connection, *args: str, users: int = 100) -> subprocess.CompletedProcess:
    """`sender sample-data` on the module's database, as a user runs it."""
    command = [str(BIN / "sender"), "sample-data", "--users", str(users), "--as-of", AS_OF.isoformat(), *args]
    env = {**os.environ, "PGDATABASE": conn.info.dbname}
    return subprocess.run(command, env=env, cwd=PROJECT_DIR, capture_output=True, text=True)


def tables_in(conn: psycopg.Connection, schema: str) -> list[str]:
    return [r[0] for r in conn.execute("select tablename from pg_tables where schemaname = %s order by 1", (schema,))]


def one_line_error(result: subprocess.CompletedProcess) -> str:
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    return result.stderr


def test_cli_default_schema_is_sample_source(conn):
    result = sample_cli(conn, "--replace")
    assert result.returncode == 0, result.stderr
    assert "users" in tables_in(conn, "sample_source")
    assert tables_in(conn, "public") == []


def test_cli_refuses_public_unless_allowed(conn):
    assert "--allow-public" in one_line_error(sample_cli(conn, "--schema", "public"))
    assert tables_in(conn, "public") == []
    try:
        result = sample_cli(conn, "--schema", "public", "--allow-public")
        assert result.returncode == 0, result.stderr
        assert "users" in tables_in(conn, "public")
    finally:
        for table in tables_in(conn, "public"):
            conn.execute(sql.SQL("drop table {} cascade").format(sql.Identifier("public", table)))


@pytest.mark.parametrize("schema", ["pg_x", "information_schema", "s" * 64], ids=["pg_x", "information_schema", "long"])
def test_cli_refuses_reserved_schema_names(conn, schema):
    assert "--schema" in one_line_error(sample_cli(conn, "--schema", schema))
    assert conn.execute("select count(*) from pg_namespace where nspname like 's%%s'").fetchone()[0] == 0
    assert "users" not in tables_in(conn, "information_schema")


def test_cli_replace_never_cascades_outside_the_schema_silently(conn):
    assert sample_cli(conn, "--schema", "cascade_source", "--replace").returncode == 0
    conn.execute("create schema cascade_views")
    conn.execute("create view cascade_views.stg_users as select id from cascade_source.users")
    conn.execute("create view cascade_views.int_users as select * from cascade_views.stg_users")
    conn.execute("create view cascade_source.live_users as select id from cascade_source.users")  # same schema: fine
    before = fingerprint(conn, "cascade_source")

    error = one_line_error(sample_cli(conn, "--schema", "cascade_source", "--replace", users=200))
    assert "cascade_views.stg_users" in error and "cascade_views.int_users" in error and "--cascade" in error
    assert fingerprint(conn, "cascade_source") == before
    views = "select count(*) from pg_views where schemaname = 'cascade_views'"
    assert scalar(conn, views) == 2

    result = sample_cli(conn, "--schema", "cascade_source", "--replace", "--cascade", users=200)
    assert result.returncode == 0, result.stderr
    assert "cascade_views.stg_users" in result.stderr and "cascade_views.int_users" in result.stderr
    assert scalar(conn, views) == 0
    assert scalar(conn, "select count(*) from cascade_source.users") == 200
