"""Compare two builds of the audience models: what a change does to the audiences, before it ships.

Both builds live in the same database, in two schemas (e.g. production's `push_audiences` and a
branch built with DBT_SCHEMA=dev_<name>). Every comparison runs in PostgreSQL, in one read-only
snapshot: only aggregated counts and a few sampled user ids come back to Python.

Per step (file): rows before and after, users added, removed and changed (same user_id, a
different value in a column both builds have, compared as the CSV shows it: text, '' = missing),
and per column how many users changed. Per campaign: the transition matrix between its steps,
keyed by user_id (a user's state is the set of the campaign's steps holding them, or none).
A table or column present in one build only is reported as a difference, never an error.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field

import psycopg
from psycopg import sql

from sender.audiences import ORDER_COLUMN
from sender.campaigns import Campaign, Step
from sender.errors import ExitCode, UserError

KEY = "user_id"
# `--fail-if-changed` / `--max-change-pct` exceeded: the audiences fail a check, like `sender validate`.
GATE_EXIT_CODE = ExitCode.VALIDATION
KINDS = ("added", "removed", "changed")


@dataclass
class StepDiff:
    step: str
    table: str
    base: str  # schema.table
    new: str
    missing: str | None = None  # "base", "new" or "both": where the table does not exist
    rows_before: int | None = None
    rows_after: int | None = None
    added: int = 0
    removed: int = 0
    changed: int = 0
    unchanged: int = 0
    columns_changed: dict[str, int] = field(default_factory=dict)
    columns_only_in_base: list[str] = field(default_factory=list)
    columns_only_in_new: list[str] = field(default_factory=list)
    types_changed: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    samples: dict[str, list[str]] = field(default_factory=dict)
    change_pct: float = 0.0  # added + removed + changed, in % of the users in either build

    @property
    def structure_changed(self) -> bool:
        return bool(self.missing or self.columns_only_in_base or self.columns_only_in_new or self.types_changed)

    @property
    def is_changed(self) -> bool:
        return bool(self.added or self.removed or self.changed or self.structure_changed)


@dataclass
class Transition:
    source: str | None  # the user's steps in the base build ("a+b" if several), None: in none of them
    target: str | None
    users: int
    samples: list[str] = field(default_factory=list)


@dataclass
class CampaignDiff:
    campaign: str
    layer: int
    steps: list[StepDiff]
    transitions: list[Transition]

    @property
    def is_changed(self) -> bool:
        return any(step.is_changed for step in self.steps)


@dataclass
class Diff:
    base_schema: str
    schema: str  # the compared build's schema(s), comma-separated if the steps differ
    sample: int
    campaigns: list[CampaignDiff]

    @property
    def is_changed(self) -> bool:
        return any(c.is_changed for c in self.campaigns)

    @property
    def max_change_pct(self) -> float:
        return max((s.change_pct for c in self.campaigns for s in c.steps), default=0.0)

    def to_dict(self) -> dict:
        return {
            "base_schema": self.base_schema,
            "schema": self.schema,
            "sample": self.sample,
            "differs": self.is_changed,
            "max_change_pct": round(self.max_change_pct, 2),
            "campaigns": [
                {
                    "campaign": c.campaign,
                    "layer": c.layer,
                    "differs": c.is_changed,
                    "steps": [
                        {**asdict(s), "change_pct": round(s.change_pct, 2), "differs": s.is_changed} for s in c.steps
                    ],  # fmt: skip
                    "transitions": [
                        {"from": t.source, "to": t.target, "users": t.users, "samples": t.samples}
                        for t in c.transitions
                    ],
                }
                for c in self.campaigns
            ],
        }


def compare(
    conn: psycopg.Connection, campaigns: list[Campaign], base_schema: str, schema: str | None, sample: int
) -> Diff:
    """Compare every step of `campaigns` in base_schema with the same table in `schema` (default: the step's)."""
    schemas = sorted({schema} if schema else {step.schema for c in campaigns for step in c.steps})
    with conn.transaction():
        conn.execute("set transaction isolation level repeatable read, read only")
        for name in [base_schema, *schemas]:
            if conn.execute("select from pg_namespace where nspname = %s", (name,)).fetchone() is None:
                raise UserError(f"schema {name!r} does not exist in database {conn.info.dbname!r}")
        result = []
        for campaign in campaigns:
            sides = [(_side(conn, base_schema, s.table), _side(conn, schema or s.schema, s.table))
                     for s in campaign.steps]  # fmt: skip
            steps = [_compare_step(conn, s, *pair, sample) for s, pair in zip(campaign.steps, sides, strict=True)]
            transitions = _transitions(conn, campaign.steps, sides, sample) if len(campaign.steps) > 1 else []
            result.append(CampaignDiff(campaign.name, campaign.layer, steps, transitions))
    return Diff(base_schema, ", ".join(schemas), sample, result)


@dataclass
class _Side:
    """One build's table of a step: its relation and its columns (name -> type)."""

    schema: str
    table: str
    relation: sql.Composable
    types: dict[str, str]
    exists: bool

    @property
    def name(self) -> str:
        return f"{self.schema}.{self.table}"

    @property
    def keyed(self) -> bool:
        return self.exists and KEY in self.types


def _side(conn: psycopg.Connection, schema: str, table: str) -> _Side:
    relation = sql.Identifier(schema, table)
    regclass = conn.execute("select to_regclass(%s)::oid", (relation.as_string(conn),)).fetchone()[0]
    types = {}
    if regclass is not None:
        rows = conn.execute(
            "select attname, format_type(atttypid, atttypmod) from pg_attribute"
            " where attrelid = %s and attnum > 0 and not attisdropped order by attnum",
            (regclass,),
        )
        types = dict(rows.fetchall())
    return _Side(schema, table, relation, types, regclass is not None)


def _empty_like(present: _Side, missing: _Side) -> _Side:
    """A missing table as an empty one with the other build's columns: its users count as added/removed."""
    relation = sql.SQL("(select * from {} where false)").format(present.relation)
    return _Side(missing.schema, missing.table, relation, present.types, True)


def _compare_step(conn: psycopg.Connection, step: Step, base: _Side, new: _Side, sample: int) -> StepDiff:
    diff = StepDiff(step.name, step.table, base.name, new.name)
    if not base.exists and not new.exists:
        diff.missing = "both"
        diff.notes.append("table missing in both builds")
        return diff
    if base.exists and new.exists:
        diff.columns_only_in_base = [c for c in base.types if c not in new.types]
        diff.columns_only_in_new = [c for c in new.types if c not in base.types]
        diff.types_changed = {c: [t, new.types[c]] for c, t in base.types.items() if new.types.get(c, t) != t}
    else:
        diff.missing = "base" if not base.exists else "new"
        kind = "added" if diff.missing == "base" else "removed"
        diff.notes.append(f"table missing in the {diff.missing} build: its users count as {kind}")
    for side, attr in ((base, "rows_before"), (new, "rows_after")):
        if side.exists:
            setattr(diff, attr, conn.execute(sql.SQL("select count(*) from {}").format(side.relation)).fetchone()[0])
    base = base if base.exists else _empty_like(new, base)
    new = new if new.exists else _empty_like(base, new)
    if not (base.keyed and new.keyed):
        diff.notes.append(f"no {KEY} column in the {'base' if not base.keyed else 'new'} build: users not compared")
        return diff
    for side, label in ((base, "base"), (new, "new")):
        if duplicates := _duplicates(conn, side):
            diff.notes.append(f"{duplicates} extra rows of a user in the {label} build: a user's first row counts")
    columns = [c for c in new.types if c in base.types and c not in (KEY, ORDER_COLUMN)]
    row = conn.execute(_step_query(base, new, columns, base.types[KEY] != new.types[KEY], sample)).fetchone()
    diff.added, diff.removed, diff.changed, diff.unchanged = row[:4]
    diff.columns_changed = {c: n for c, n in zip(columns, row[4 : 4 + len(columns)], strict=True) if n}
    if sample:
        diff.samples = {kind: ids or [] for kind, ids in zip(KINDS, row[4 + len(columns) :], strict=True)}
    users = diff.added + diff.removed + diff.changed + diff.unchanged
    diff.change_pct = 100.0 * (diff.added + diff.removed + diff.changed) / users if users else 0.0
    return diff


def _duplicates(conn: psycopg.Connection, side: _Side) -> int:
    query = sql.SQL("select count(*) - count(distinct {}) from {} as side").format(sql.Identifier(KEY), side.relation)
    return conn.execute(query).fetchone()[0]


def _one_row_per_user(side: _Side, columns: list[str], text_key: bool) -> sql.Composable:
    """The side's rows by user, as the file shows them (text, '' is missing); a user's first row only."""
    key = sql.SQL("cast(side.{} as text)" if text_key else "side.{}").format(sql.Identifier(KEY))
    order = [key] + ([sql.Identifier("side", ORDER_COLUMN)] if ORDER_COLUMN in side.types else [])
    values = [
        sql.SQL(", nullif(cast(side.{} as text), '') as {}").format(sql.Identifier(c), sql.Identifier(f"c{i}"))
        for i, c in enumerate(columns)
    ]
    return sql.SQL("select distinct on ({key}) {key} as k{values} from {relation} as side order by {order}").format(
        key=key, values=sql.Composed(values), relation=side.relation, order=sql.SQL(", ").join(order)
    )


def _sample(sample: int, ids: str, condition: str) -> sql.Composable:
    """The first `sample` ids (in order) of the rows meeting `condition`, as an array."""
    return sql.SQL(', (array_agg({ids} order by {ids} collate "C") filter (where {condition}))[1:{n}]').format(
        ids=sql.SQL(ids), condition=sql.SQL(condition), n=sql.Literal(sample)
    )


def _step_query(base: _Side, new: _Side, columns: list[str], text_key: bool, sample: int) -> sql.Composable:
    differs = [sql.SQL(", base.{c} is distinct from new.{c} as {c}").format(c=sql.Identifier(f"c{i}"))
               for i in range(len(columns))]  # fmt: skip
    any_differs = (
        sql.SQL(" or ").join(sql.Identifier(f"c{i}") for i in range(len(columns))) if columns else sql.SQL("false")
    )
    per_column = [
        sql.SQL(", count(*) filter (where kind = 'changed' and {})").format(sql.Identifier(f"c{i}"))
        for i in range(len(columns))
    ]
    samples = [_sample(sample, "user_id", f"kind = '{kind}'") for kind in KINDS] if sample else []
    return sql.SQL(
        "with base as ({base}), new as ({new}),"
        " compared as (select cast(coalesce(base.k, new.k) as text) as user_id,"
        " base.k is null as is_added, new.k is null as is_removed{differs}"
        " from base full join new on base.k = new.k),"
        " kinds as (select *, case when is_added then 'added' when is_removed then 'removed'"
        " when {any_differs} then 'changed' else 'unchanged' end as kind from compared)"
        " select count(*) filter (where kind = 'added'), count(*) filter (where kind = 'removed'),"
        " count(*) filter (where kind = 'changed'), count(*) filter (where kind = 'unchanged')"
        "{per_column}{samples} from kinds"
    ).format(
        base=_one_row_per_user(base, columns, text_key),
        new=_one_row_per_user(new, columns, text_key),
        differs=sql.Composed(differs),
        any_differs=any_differs,
        per_column=sql.Composed(per_column),
        samples=sql.Composed(samples),
    )


def _transitions(
    conn: psycopg.Connection, steps: tuple[Step, ...], sides: list[tuple[_Side, _Side]], sample: int
) -> list[Transition]:
    """Users by (steps holding them in the base build, in the new build): the campaign's transition matrix."""
    members: dict[str, list[sql.Composable]] = {"base": [], "new": []}
    for position, pair in enumerate(sides):
        for label, side in zip(members, pair, strict=True):
            if side.keyed:
                members[label].append(
                    sql.SQL("select cast({} as text) as k, {} as pos from {}").format(
                        sql.Identifier(KEY), sql.Literal(position), side.relation
                    )
                )
    nobody = sql.SQL("select cast(null as text) as k, 0 as pos where false")
    query = sql.SQL(
        "with base_members as ({base}), new_members as ({new}),"
        " base_state as (select k, string_agg(cast(pos as text), ',' order by pos) as state"
        " from base_members group by k),"
        " new_state as (select k, string_agg(cast(pos as text), ',' order by pos) as state"
        " from new_members group by k),"
        " moves as (select coalesce(b.k, n.k) as user_id, b.state as source, n.state as target"
        " from base_state as b full join new_state as n on b.k = n.k)"
        " select source, target, count(*){samples} from moves group by source, target"
    ).format(
        base=sql.SQL(" union ").join(members["base"]) if members["base"] else nobody,
        new=sql.SQL(" union ").join(members["new"]) if members["new"] else nobody,
        samples=_sample(sample, "user_id", "source is distinct from target") if sample else sql.SQL(""),
    )

    def label(state: str | None) -> str | None:
        return None if state is None else "+".join(steps[int(p)].name for p in state.split(","))

    def order(state: str | None) -> tuple:
        return (1, ()) if state is None else (0, tuple(int(p) for p in state.split(",")))

    rows = sorted(conn.execute(query).fetchall(), key=lambda r: (order(r[0]), order(r[1])))
    return [Transition(label(r[0]), label(r[1]), r[2], (r[3] or []) if sample else []) for r in rows]


def gate(diff: Diff, fail_if_changed: bool, max_change_pct: float | None) -> str | None:
    """Why a CI gate fails (exit GATE_EXIT_CODE), or None."""
    if fail_if_changed and diff.is_changed:
        return "the audiences changed (--fail-if-changed)"
    if max_change_pct is not None and diff.max_change_pct > max_change_pct:
        worst = max((s for c in diff.campaigns for s in c.steps), key=lambda s: s.change_pct)
        return f"{worst.step}: {worst.change_pct:.1f}% of its users changed (over --max-change-pct {max_change_pct:g})"
    return None


def render(diff: Diff, fmt: str) -> str:
    """The diff as `text` (a terminal), `markdown` (a pull-request comment) or `json`."""
    if fmt == "json":
        return json.dumps(diff.to_dict(), indent=2)
    return "\n".join(_render(diff, markdown=fmt == "markdown"))


NONE_LABEL = "(none)"
COUNT_HEADER = ["rows before", "rows after", "added", "removed", "changed", "unchanged", "change %"]


def _render(diff: Diff, markdown: bool) -> list[str]:
    steps = [s for c in diff.campaigns for s in c.steps]
    changed = sum(s.is_changed for s in steps)
    code = (lambda text: f"`{text}`") if markdown else (lambda text: text)
    summary = (
        f"{changed} of {len(steps)} steps changed, largest change {diff.max_change_pct:.1f}% of a step's users"
        if changed
        else f"no change in {len(steps)} steps"
    )
    arrow = "→" if markdown else "->"
    title = f"Audience diff: {code(diff.base_schema)} (base) {arrow} {code(diff.schema)}"
    lines = [f"## {title}" if markdown else title, "", f"**{summary}**" if markdown else summary]
    for campaign in diff.campaigns:
        lines.append("")
        name = f"{campaign.campaign} (layer {campaign.layer})"
        if not campaign.is_changed:
            users = sum(s.unchanged for s in campaign.steps)
            text = f"{name}: no change ({len(campaign.steps)} steps, {users:,} users)"
            lines.append(f"### {text}" if markdown else text)
            continue
        lines += [f"### {name}: changed", ""] if markdown else [f"{name}: changed"]
        lines += _table(["step", *COUNT_HEADER, "changed columns"], [_counts(s) for s in campaign.steps], markdown)
        notes = [f"{s.step}: {note}" for s in campaign.steps for note in _notes(s)]
        if notes:
            lines += ["", *(f"- {n}" for n in notes)] if markdown else ["  notes:", *(f"    {n}" for n in notes)]
        if campaign.transitions and any(t.source != t.target for t in campaign.transitions):
            heading = "moves between steps (users; rows: base build, columns: new build; (none): in no step)"
            lines += ["", f"{heading[0].upper()}{heading[1:]}:", ""] if markdown else [f"  {heading}:"]
            lines += _table(*_matrix(campaign), markdown)
        examples = _examples(campaign, code, arrow)
        if examples and markdown:
            lines += ["", f"<details><summary>Example user ids (up to {diff.sample} per kind)</summary>", ""]
            lines += [f"- {e}" for e in examples] + ["", "</details>"]
        elif examples:
            lines += ["  examples:", *(f"    {e}" for e in examples)]
    return lines


def _counts(s: StepDiff) -> list[str]:
    def rows(n: int | None) -> str:
        return "missing" if n is None else f"{n:,}"

    columns = ", ".join(f"{c} {n:,}" for c, n in s.columns_changed.items())
    numbers = [f"{n:,}" for n in (s.added, s.removed, s.changed, s.unchanged)]
    return [s.step, rows(s.rows_before), rows(s.rows_after), *numbers, f"{s.change_pct:.1f}%", columns]


def _notes(s: StepDiff) -> list[str]:
    notes = list(s.notes)
    if s.columns_only_in_base:
        notes.append(f"columns only in the base build: {', '.join(s.columns_only_in_base)}")
    if s.columns_only_in_new:
        notes.append(f"columns only in the new build: {', '.join(s.columns_only_in_new)}")
    for column, (before, after) in s.types_changed.items():
        notes.append(f"column {column} changed type: {before} -> {after}")
    return notes


def _matrix(campaign: CampaignDiff) -> tuple[list[str], list[list[str]]]:
    states = [step.step for step in campaign.steps]
    for t in campaign.transitions:
        states += [s for s in (t.source, t.target) if s is not None and s not in states]
    states.append(None)
    users = {(t.source, t.target): t.users for t in campaign.transitions}
    header = ["base \\ new", *(s or NONE_LABEL for s in states)]
    rows = [
        [source or NONE_LABEL]
        + ["-" if source is None and target is None else f"{users.get((source, target), 0):,}" for target in states]
        for source in states
    ]
    return header, rows


def _examples(campaign: CampaignDiff, code, arrow: str) -> list[str]:
    examples = [
        f"{s.step}, {kind}: {', '.join(code(i) for i in s.samples[kind])}"
        for s in campaign.steps
        for kind in KINDS
        if s.samples.get(kind)
    ]
    examples += [
        f"{t.source or NONE_LABEL} {arrow} {t.target or NONE_LABEL}: {', '.join(code(i) for i in t.samples)}"
        for t in campaign.transitions
        if t.samples
    ]
    return examples


def _table(header: list[str], rows: list[list[str]], markdown: bool) -> list[str]:
    """Left-aligned first and last text columns, right-aligned numbers."""
    right = [0 < i and (i < len(header) - 1 or header[0] == "base \\ new") for i in range(len(header))]
    if markdown:
        escape = lambda cell: cell.replace("|", "\\|").replace("\\ new", "→ new")  # noqa: E731
        lines = ["| " + " | ".join(escape(h) for h in header) + " |"]
        lines.append("|" + "|".join("---:" if r else "---" for r in right) + "|")
        return lines + ["| " + " | ".join(escape(c) for c in row) + " |" for row in rows]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return [
        "    " + "  ".join(c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)).rstrip()
        for row in [header, *rows]
    ]
