"""Frequency caps from the command line (DELIVERY.md, "Cadence"): import past notifications, check a user.

The rules are the dbt seed cadence_rules; what they count is the ledger's `notifications` view: live sends
and reservations, plus the imported `history`. A notification counts for a rule while `at > now - window`
(the rule used at send time, Ledger._apply_caps): one exactly `window_hours` old no longer counts. So a
user a rule blocks may be sent to again at the moment the oldest notification that keeps the count at the
maximum (the k-th oldest, k = count - max + 1) turns `window_hours` old.
"""

from __future__ import annotations

import csv
import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import IO

import psycopg

from sender.campaigns import Campaign
from sender.errors import UserError
from sender.ledger import Ledger

MAX_SHOWN = 10  # problems listed when a file is refused
COLUMNS = ("user_id", "sent_at", "layer")


@dataclass(frozen=True)
class Imported:
    read: int  # data rows in the file
    imported: int  # new in the history

    @property
    def already(self) -> int:
        """Rows the history held already (or that the file repeats)."""
        return self.read - self.imported


def parse_user_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise UserError(f"{value!r} is not a user id (a UUID such as 0b9d6c2e-1f4a-4c1e-9a57-6d0f2a8e3b01)") from None


def _layers(declared: list[Campaign]) -> list[int]:
    return sorted({c.layer for c in declared})


def _check_layer(layer: int | None, declared: list[Campaign]) -> None:
    known = _layers(declared)
    if layer is not None and layer not in known:
        raise UserError(f"--layer {layer} is not the layer of any campaign (layers: {', '.join(map(str, known))})")


# --- import -------------------------------------------------------------------------------------------------


def import_history(
    conn: psycopg.Connection,
    schema: str,
    declared: list[Campaign],
    path: Path,
    layer: int | None = None,
    campaign: str | None = None,
    now: datetime | None = None,
) -> Imported:
    """Import a CSV of past notifications into the ledger's history: all its rows, or none if any is bad."""
    _check_layer(layer, declared)
    chosen = None
    if campaign is not None:
        chosen = next((c for c in declared if campaign in (c.name, *c.aliases)), None)
        if chosen is None:
            known = ", ".join(sorted(c.name for c in declared)) or "none"
            raise UserError(f"--campaign: unknown campaign {campaign!r} (known: {known})")
        if layer is not None and layer != chosen.layer:
            raise UserError(f"--layer {layer} is not the layer of campaign {chosen.name} ({chosen.layer})")
    ledger = Ledger(conn, schema)
    ledger.migrate()
    try:
        with path.open(newline="", encoding="utf-8-sig") as file:
            rows = _Rows(file, str(path), _layers(declared), chosen, layer, now or datetime.now(UTC))
            imported = ledger.import_history(rows)
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise UserError(f"{path} is not UTF-8 text (byte {exc.start + 1}): nothing imported") from None
    except csv.Error as exc:
        raise UserError(f"{path}: not a readable CSV file ({exc}): nothing imported") from None
    return Imported(rows.read, imported)


class _Rows:
    """The file's valid rows as (user_id, layer, campaign, sent_at), streamed; raises at the end if any was bad."""

    def __init__(
        self, file: IO[str], name: str, layers: list[int], campaign: Campaign | None, layer: int | None, now: datetime
    ) -> None:
        self.file, self.name, self.layers, self.campaign, self.now = file, name, layers, campaign, now
        self.default_layer = layer if layer is not None else campaign.layer if campaign else None
        self.read = 0
        self.bad = 0
        self.problems: list[str] = []  # the first MAX_SHOWN

    def __iter__(self) -> Iterator[tuple[str, int, str, datetime]]:
        reader = csv.reader(self.file)
        header = next(reader, None)
        while header is not None and not any(cell.strip() for cell in header):
            header = next(reader, None)  # blank lines before the header
        if header is None:
            raise UserError(f"{self.name} is empty: expected a header line user_id,sent_at[,layer] and rows")
        columns = [cell.strip().lower() for cell in header]
        missing = [column for column in COLUMNS[:2] if column not in columns]
        if "layer" not in columns and self.default_layer is None:
            missing.append("layer (or give --layer)")
        if missing:
            found = ", ".join(repr(cell) for cell in header)
            raise UserError(f"{self.name}: missing column {', '.join(missing)} in the header (found {found})")
        twice = sorted({column for column in columns if column in COLUMNS and columns.count(column) > 1})
        if twice:
            raise UserError(f"{self.name}: column {', '.join(twice)} appears more than once in the header")
        where = {column: columns.index(column) for column in COLUMNS if column in columns}
        name = self.campaign.name if self.campaign else ""
        for fields in reader:
            if not any(cell.strip() for cell in fields):
                continue  # a blank line
            self.read += 1
            row, problems = self._row(fields, len(columns), where)
            if problems:
                self.bad += 1
                if len(self.problems) < MAX_SHOWN:
                    self.problems.append(f"line {reader.line_num}: {'; '.join(problems)}")
            elif not self.bad:  # once a row is bad nothing is imported: stop sending rows
                yield row[0], row[1], name, row[2]
        if self.bad:
            more = [f"and {self.bad - len(self.problems):,} more"] if self.bad > len(self.problems) else []
            listed = "\n".join(f"  {line}" for line in [*self.problems, *more])
            raise UserError(f"{self.name}: {self.bad:,} of {self.read:,} rows are bad, nothing imported:\n{listed}")
        if not self.read:
            raise UserError(f"{self.name} has a header but no rows: nothing imported")

    def _row(
        self, fields: list[str], width: int, where: dict[str, int]
    ) -> tuple[tuple[str, int, datetime] | None, list[str]]:
        if len(fields) != width:
            return None, [f"{len(fields)} fields, the header has {width}"]
        problems = []
        user_id = fields[where["user_id"]].strip()
        try:
            user_id = str(uuid.UUID(user_id))
        except ValueError:
            problems.append(f"user_id {user_id!r} is not a UUID" if user_id else "user_id is empty")
        sent_at, problem = self._time(fields[where["sent_at"]].strip())
        if problem:
            problems.append(problem)
        layer, problem = self._layer(fields[where["layer"]].strip() if "layer" in where else "")
        if problem:
            problems.append(problem)
        return (user_id, layer, sent_at), problems

    def _time(self, text: str) -> tuple[datetime | None, str | None]:
        if not text:
            return None, "sent_at is empty"
        try:
            value = datetime.fromisoformat(text)
        except ValueError:
            return None, f"sent_at {text!r} is not an ISO 8601 time (e.g. 2026-11-20T18:00:00Z)"
        if value.tzinfo is None or value.utcoffset() is None:
            return None, f"sent_at {text!r} has no time zone (write it as e.g. 2026-11-20T18:00:00Z or +00:00)"
        try:
            if value > self.now:
                return None, f"sent_at {text!r} is in the future"
        except OverflowError:
            return None, f"sent_at {text!r} is out of range"
        return value, None

    def _layer(self, text: str) -> tuple[int | None, str | None]:
        if not text:
            if self.default_layer is None:
                return None, "layer is empty (give --layer for rows without one)"
            return self.default_layer, None
        try:
            layer = int(text)
        except ValueError:
            return None, f"layer {text!r} is not a number"
        if layer not in self.layers:
            return None, f"layer {layer} is not the layer of any campaign (layers: {', '.join(map(str, self.layers))})"
        if self.campaign and layer != self.campaign.layer:
            return None, f"layer {layer} is not the layer of campaign {self.campaign.name} ({self.campaign.layer})"
        return layer, None


# --- check --------------------------------------------------------------------------------------------------


def check_user(
    conn: psycopg.Connection,
    schema: str,
    declared: list[Campaign],
    user_id: str,
    layer: int | None = None,
    rules: tuple[str, str] | None = None,
) -> dict:
    """Where `user_id` stands against every active rule (those applying to `layer` when given), as a JSON-able
    dict: the notifications each rule counts now, and per layer whether a push may go now, else from when.
    `rules` is the (schema, table) of the rules; by default the project's cadence_rules seed."""
    user_id = parse_user_id(user_id)
    _check_layer(layer, declared)
    rules = rules or next((c.cadence_rules for c in declared if c.cadence_rules), None)
    report: dict = {"user_id": user_id, "layer": layer, "caps": False, "reason": None}
    ledger = Ledger(conn, schema)
    count = ledger.cadence_rule_count(rules) if rules else None
    if not count:
        report["reason"] = (
            "the dbt project has no cadence_rules seed"
            if rules is None
            else f"{'.'.join(rules)} does not exist (run `dbt seed`)"
            if count is None
            else f"{'.'.join(rules)} has no active rule"
        )
        return report
    ledger.migrate()
    found: dict[str, dict] = {}
    now = None
    for row in ledger.cadence_window(rules, user_id, layer):
        now = row["now"]
        rule = found.setdefault(
            row["name"],
            {
                "name": row["name"],
                "applies_to_layers": row["applies"],
                "counted_layers": row["counted"],
                "window_hours": row["window_hours"],
                "max_count": row["max_count"],
                "count": 0,
                "blocks": False,
                "allowed_from": None,
                "notifications": [],
            },
        )
        if row["at"] is not None:
            rule["notifications"].append(
                {
                    "at": _iso(row["at"]),
                    "layer": row["layer"],
                    "campaign": row["campaign"],
                    "step": row["step"],
                    "run_id": row["run_id"],
                    "status": "delivered" if row["delivered"] else "reserved",
                    "fcm_message_id": row["fcm_message_id"],
                    "counted_until": _iso(row["at"] + timedelta(hours=row["window_hours"])),
                }
            )
    for rule in found.values():
        notes = rule["notifications"]  # oldest first
        rule["count"] = len(notes)
        if len(notes) >= rule["max_count"]:
            rule["blocks"] = True
            rule["allowed_from"] = notes[len(notes) - rule["max_count"]]["counted_until"]
    report.update(caps=True, now=_iso(now or datetime.now(UTC)), rules=list(found.values()), layers=[])
    for each in [layer] if layer is not None else _layers(declared):
        applying = [rule for rule in found.values() if each in rule["applies_to_layers"]]
        blocking = [rule for rule in applying if rule["blocks"]]
        report["layers"].append(
            {
                "layer": each,
                "may_send": not blocking,
                "allowed_from": max((rule["allowed_from"] for rule in blocking), default=None),
                "blocked_by": [rule["name"] for rule in blocking],
                "rules": [rule["name"] for rule in applying],
            }
        )
    return report


def _iso(value: datetime) -> str:
    return value.astimezone(UTC).isoformat()


def _shown(iso: str, up: bool = False) -> str:
    """A time for people, to the second: rounded up when it is the earliest a push may go."""
    value = datetime.fromisoformat(iso)
    if up and value.microsecond:
        value += timedelta(microseconds=1_000_000 - value.microsecond)
    return value.strftime("%Y-%m-%d %H:%M:%S UTC")


def _listed(layers: list[int]) -> str:
    return f"layer{'s' if len(layers) > 1 else ''} {', '.join(map(str, layers))}"


def render(report: dict, as_json: bool = False) -> str:
    """The report as one JSON document, or as text for people."""
    if as_json:
        return json.dumps(report, indent=2)
    if not report["caps"]:
        return f"user {report['user_id']}: no frequency caps apply: {report['reason']}; pushes are sent without limits"
    lines = [f"user {report['user_id']}, now {_shown(report['now'])}:"]
    for each in report["layers"]:
        if each["may_send"]:
            why = "no active rule limits it" if not each["rules"] else f"within {', '.join(each['rules'])}"
            lines.append(f"  layer {each['layer']}: may be sent now ({why})")
        else:
            lines.append(
                f"  layer {each['layer']}: blocked by {', '.join(each['blocked_by'])} until "
                f"{_shown(each['allowed_from'], up=True)}"
            )
    for rule in report["rules"]:
        state = f"blocks until {_shown(rule['allowed_from'], up=True)}" if rule["blocks"] else "not reached"
        lines += [
            "",
            f"rule {rule['name']}: {_listed(rule['applies_to_layers'])} pushes, at most {rule['max_count']} of "
            f"{_listed(rule['counted_layers'])} in {rule['window_hours']} h: {rule['count']} of {rule['max_count']}, "
            f"{state}",
        ]
        for note in rule["notifications"]:
            source = note["campaign"] or "imported history"
            if note["step"]:
                source += f"/{note['step']} (run {note['run_id']})"
            lines.append(
                f"  {_shown(note['at'])}  layer {note['layer']}  {source}  {note['status']}, "
                f"counts until {_shown(note['counted_until'], up=True)}"
            )
        if not rule["notifications"]:
            lines.append("  no notification in the window")
    return "\n".join(lines)
