"""The rows of an audience, as its CSV file shows them: one definition for export and sending.

Every value is text; a missing value (NULL or '') is NULL, which COPY writes as an empty field.
`production_query` gives the audience table in file order; `test_query` gives one row per test
user (the test_users seed), with the other fields copied from the first production row.
"""

from __future__ import annotations

import psycopg
from psycopg import sql

from sender.campaigns import Campaign, Step
from sender.database import relation_exists
from sender.errors import UserError

ORDER_COLUMN = "export_order"  # fixes the row order of a file; every audience model has it


def columns(conn: psycopg.Connection, campaign: Campaign, step: Step) -> list[str]:
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


def test_user_columns(conn: psycopg.Connection, campaign: Campaign) -> list[str]:
    schema, table = campaign.test_users
    if not relation_exists(conn, schema, table):
        raise UserError(f"the test users table {schema}.{table} does not exist: run `dbt seed`")
    rows = conn.execute(
        "select column_name from information_schema.columns where table_schema = %s and table_name = %s",
        (schema, table),
    )
    return [row[0] for row in rows]


def _as_text(column: str, source: str) -> sql.Composable:
    """A column as CSV text: missing values (NULL or '') are written as empty fields."""
    return sql.SQL("nullif(cast({} as text), '') as {}").format(sql.Identifier(source, column), sql.Identifier(column))


def production_query(step: Step, columns: list[str]) -> sql.Composable:
    return sql.SQL("select {} from {} as audience order by audience.{}").format(
        sql.SQL(", ").join(_as_text(c, "audience") for c in columns),
        sql.Identifier(step.schema, step.table),
        sql.Identifier(ORDER_COLUMN),
    )


def test_query(campaign: Campaign, step: Step, columns: list[str], test_user_columns: list[str]) -> sql.Composable:
    """One row per test user: their own fields, the rest from the first production row.

    A column of the file that the test_users seed also has comes from the seed; every other
    column is copied from the first production row, or, when the audience is empty, is the
    step's placeholder (empty when it has none).
    """
    copied = [c for c in columns if c not in test_user_columns]
    first_row = sql.SQL("select {} from {} as audience order by audience.{} limit 1").format(
        sql.SQL(", ").join(
            sql.SQL("cast({} as text) as {}").format(sql.Identifier("audience", c), sql.Identifier(c)) for c in copied
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
