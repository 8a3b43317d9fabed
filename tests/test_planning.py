"""Planning a step fast without changing what it writes: renderings shared by rows that agree on the
columns the templates read, and the ledger insert in key order (real PostgreSQL, no mocks)."""

from __future__ import annotations

import uuid

import pytest
from psycopg import sql

from sender import send
from sender.campaigns import Step
from sender.ledger import Ledger
from sender.render import compile_copy

COLUMNS = ["user_id", "first_name", "product_name", "size"]


def step(title: str, body: str, data: dict[str, str] | None = None) -> Step:
    return Step(name="s", model="m", schema="x", table="t", file_prefix="f", title=title, body=body, data=data or {})


def test_template_inputs_are_the_columns_the_templates_read():
    plain = step("Your {{ product_name }}", "in size {{ size | default('any') }}", {"link": "app://{{ user_id }}"})
    assert send.template_inputs(plain) == ("product_name", "size", "user_id")
    assert send.template_inputs(step("Hi", "there")) == ()
    # a template that draws at random renders differently for rows that agree on every column: no sharing
    assert send.template_inputs(step("{{ ['a', 'b'] | random }}", "x")) is None


@pytest.fixture
def scratch(db):
    schema = f"pytest_planning_{uuid.uuid4().hex[:8]}"
    db.execute(sql.SQL("create schema {}").format(sql.Identifier(schema)))
    yield schema
    db.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(schema)))


def audience_query(rows: list[tuple]) -> sql.Composable:
    values = sql.SQL(", ").join(sql.SQL("({})").format(sql.SQL(", ").join(map(sql.Literal, row))) for row in rows)
    columns = sql.SQL(", ").join(map(sql.Identifier, COLUMNS))
    return sql.SQL("select * from (values {}) as audience ({})").format(values, columns)


def test_shared_renderings_are_the_renderings(db):
    template = step("{{ product_name }} for {{ first_name | default('you') }}", "size {{ size }}", {"p": "{{ size }}"})
    copy = compile_copy("test", template.title, template.body, template.data, COLUMNS)
    rows = [
        (str(uuid.uuid4()), name, product, size)
        for name in ("Alex", None, "Sam")
        for product in ("Dunk", "Jordan 1")
        for size in ("9", "10.5", "")
    ] * 3 + [("not-a-uuid", "X", "Dunk", "9"), (str(uuid.uuid4()), "Y", "Dunk", "9" * 5000)]  # one too big
    with db.transaction():
        each = [(u, r) for chunk in send.render_chunks(db, audience_query(rows), copy, size=7) for u, _, r in chunk]
    with db.transaction():
        inputs = send.template_inputs(template)
        shared = [
            (u, r)
            for chunk in send.render_chunks(db, audience_query(rows), copy, size=7, inputs=inputs)
            for u, _, r in chunk
        ]
    assert shared == each and len(each) == len(rows)
    assert each[-2][0] is None and "over FCM" in each[-1][1].error
    assert len({id(r) for _, r in shared}) < len({id(r) for _, r in each}), "renderings were shared"


def plan(db, schema: str, rendered: list[tuple], tokens: dict[str, list[str]], before: list[tuple] = ()) -> dict:
    """Plan step 's' of a new run from `rendered` rows with these device tokens; the step's rows by (user, token)."""
    table = sql.Identifier(schema, "tokens")
    db.execute(sql.SQL("create table if not exists {} (user_id uuid, token text)").format(table))
    db.execute(sql.SQL("truncate {}").format(table))
    for user, user_tokens in tokens.items():
        for token in user_tokens:
            db.execute(sql.SQL("insert into {} values (%s, %s)").format(table), (user, token))
    ledger = Ledger(db, f"{schema}_ledger")
    ledger.migrate()
    run = ledger.start_run("c", 2, "live", str(uuid.uuid4()))
    deliveries = sql.Identifier(f"{schema}_ledger", "deliveries")
    for user, token, title in before:  # rows the step already had (cannot happen: a step is planned once)
        db.execute(
            sql.SQL(
                "insert into {} (run_id, step, user_id, token, status, title) values (%s, 's', %s, %s, 'sent', %s)"
            ).format(deliveries),
            (run.run_id, user, token, title),
        )
    ledger.plan_step(run.run_id, "s", [rendered[:2], rendered[2:]], (schema, "tokens"))
    rows = db.execute(
        sql.SQL("select user_id::text, token, status, title from {} where run_id = %s").format(deliveries),
        (run.run_id,),
    ).fetchall()
    db.execute(sql.SQL("drop schema {} cascade").format(sql.Identifier(f"{schema}_ledger")))
    return {(user, token): (status, title) for user, token, status, title in rows}


def test_a_user_twice_in_the_audience_gets_the_first_rows_copy_once_per_token(db, scratch):
    alex, sam, jo = (str(uuid.uuid4()) for _ in range(3))
    rendered = [
        (alex, "first", "b", "{}", None),
        (sam, "sam", "b", "{}", None),
        (alex, "second", "b", "{}", None),
        (jo, "jo", "b", "{}", None),
        (jo, "jo again", "b", "{}", None),
    ]
    rows = plan(db, scratch, rendered, {alex: ["a1", "a2"], sam: ["s1"]})
    assert rows == {
        (alex, "a1"): ("queued", "first"),
        (alex, "a2"): ("queued", "first"),
        (sam, "s1"): ("queued", "sam"),
        (jo, ""): ("no_token", "jo"),
    }
    # a step that somehow had rows keeps them (they are skipped, as before), and gets the others
    rows = plan(db, scratch, rendered, {alex: ["a1", "a2"], sam: ["s1"]}, before=[(alex, "a2", "earlier")])
    assert rows[(alex, "a2")] == ("sent", "earlier") and rows[(alex, "a1")] == ("queued", "first") and len(rows) == 4
