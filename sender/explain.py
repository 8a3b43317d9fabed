"""`sender explain USER_ID`: where a user stands in each campaign, and why, in plain words.

Audience side: the campaign's decisions model (`layer*_decisions`, in its exposure's depends_on),
built with the audiences and tested to agree with them: every user is `included` in a step's model
or `excluded`, with the reason and its numbers. Delivery side: the ledger (schema SENDER_SCHEMA):
the user's messages in the campaign's latest live run (or the run given): sent (when, FCM message
id), failed and why, no token, invalid token, or skipped by a cadence rule (which, until when, and
the campaign that took the slot). Several users are explained with one query per campaign and side.
"""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime, timedelta

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from sender.campaigns import Campaign
from sender.config import Config
from sender.database import relation_exists
from sender.errors import UserError
from sender.ledger import Ledger

STATUS_TEXT = {
    "queued": "planned, not sent yet",
    "pending": "handed to FCM, outcome unknown (the sender stopped before FCM answered; --resend-unknown sends again)",
    "validated": "validated by FCM (dry run), not delivered",
    "dry_run": "would be sent (live dry run: nothing sent)",
}


def parse_user_id(value: str) -> str:
    try:
        return str(uuid.UUID(value))
    except ValueError:
        raise UserError(f"USER_ID {value!r} is not a UUID") from None


def explain(
    conn: psycopg.Connection,
    config: Config,
    campaigns: list[Campaign],
    user_ids: list[str],
    run_id: int | None = None,
) -> dict[str, dict]:
    """user_id -> its explanation (a JSON-ready dict: the user, and per campaign its audience and delivery).

    With `run_id`, only that run's campaign is explained, for that run; otherwise each campaign's
    latest live run. The ledger is only read."""
    ledger = Ledger(conn, config.sender_schema)
    has_ledger = ledger.exists()
    run = None
    if run_id is not None:
        run = ledger.find_run(run_id) if has_ledger else None
        if run is None:
            raise UserError(f"no run {run_id} in the ledger {config.sender_schema}")
        campaigns = [c for c in campaigns if c.name == run["campaign"]]
        if not campaigns:
            raise UserError(f"run {run_id} belongs to campaign {run['campaign']}, not the one given")
    result = {user: {"user_id": user, "campaigns": []} for user in user_ids}
    for campaign in campaigns:
        audiences = _audience_side(conn, campaign, user_ids)
        if run_id is None:
            run = ledger.find_run(campaign=campaign.name) if has_ledger else None
        deliveries = _delivery_side(conn, ledger, campaign, run, user_ids, audiences)
        for user in user_ids:
            result[user]["campaigns"].append(
                {"campaign": campaign.name, "layer": campaign.layer, "audience": audiences[user],
                 "delivery": deliveries[user]}
            )  # fmt: skip
    return result


# --- audience side ------------------------------------------------------------------------------------------


def _audience_side(conn: psycopg.Connection, campaign: Campaign, user_ids: list[str]) -> dict:
    problem = None
    if campaign.decisions is None:
        problem = (f"the campaign declares no decisions model (add a model named <...>_decisions to its "
                   f"exposure's depends_on, {campaign.path})")  # fmt: skip
    elif not relation_exists(conn, *campaign.decisions):
        problem = f"the decisions model {'.'.join(campaign.decisions)} does not exist: run `{campaign.build_command}`"
    if problem:
        unknown = dict.fromkeys(("step", "file_prefix", "model", "reason_code"), None)
        return {user: {**unknown, "outcome": "not explained", "reason": problem, "details": {}} for user in user_ids}
    schema, table = campaign.decisions
    query = sql.SQL("select * from {} where user_id = any(%s::uuid[])").format(sql.Identifier(schema, table))
    with conn.cursor(row_factory=dict_row) as cur:
        rows = {str(row["user_id"]): row for row in cur.execute(query, (user_ids,))}
    steps = {step.model: step for step in campaign.steps}
    sides = {}
    for user in user_ids:
        row = rows.get(user)
        if row is None:
            reason = "no such user in the source data of this build"
            sides[user] = dict.fromkeys(("step", "file_prefix", "model", "reason_code"), None)
            sides[user].update(outcome="not a candidate", reason=reason, details={})
            continue
        step = steps.get(row["audience"]) if row["audience"] else None
        sides[user] = {
            "outcome": row["outcome"],
            "step": step.name if step else None,
            "file_prefix": step.file_prefix if step else None,
            "model": row["audience"],
            "reason_code": row["reason_code"],
            "reason": row["reason"],
            "details": {
                k: _jsonable(v)
                for k, v in row.items()
                if k not in ("user_id", "outcome", "audience", "reason_code", "reason")
            },
        }
    return sides


# --- delivery side ------------------------------------------------------------------------------------------


def _delivery_side(
    conn: psycopg.Connection, ledger: Ledger, campaign: Campaign, run: dict | None, user_ids: list[str], audiences: dict
) -> dict:
    if run is None:
        summary = "no live run of this campaign yet" if ledger.exists() else f"no ledger in schema {ledger.schema} yet"
        return {user: {"run": None, "messages": [], "summary": summary} for user in user_ids}
    messages: dict[str, list[dict]] = {user: [] for user in user_ids}
    for row in ledger.user_messages(run["run_id"], user_ids):
        messages[row["user_id"]].append(row)
    planned = ledger.planned_steps(run["run_id"])
    no_token = [user for user, rows in messages.items() if any(r["status"] == "no_token" for r in rows)]
    invalid = {user: [] for user in no_token}
    for row in ledger.invalid_tokens_of(no_token, campaign.device_tokens) if no_token else []:
        invalid[row["user_id"]].append(row)
    skipped = [r for rows in messages.values() for r in rows if r["status"] == "cadence_skipped"]
    caps = _caps(conn, ledger, campaign, skipped) if skipped else {}
    run_info = {key: _jsonable(run[key]) for key in ("run_id", "mode", "run_key", "status", "started_at")}
    sides = {}
    for user in user_ids:
        shown = [_message(row, invalid.get(user, []), caps) for row in messages[user]]
        sides[user] = {"run": run_info, "messages": shown, "summary": _summary(shown, audiences[user], planned)}
    return sides


def _message(row: dict, invalid_tokens: list[dict], caps: dict) -> dict:
    status, at = row["status"], _when(row["updated_at"])
    message = {
        "step": row["step"],
        "status": status,
        "at": _jsonable(row["updated_at"]),
        "token": row["token"] or None,
        "fcm_message_id": row["fcm_message_id"],
        "error": row["error"],
    }
    token = f"token {_short(row['token'])}"
    if status == "sent":
        text = f"sent at {at}, FCM message id {row['fcm_message_id']} ({token})"
    elif status == "failed":
        text = f"not sent: FCM refused it at {at}: {row['error']} ({token}; --retry-failed sends again)"
    elif status == "invalid_token":
        since = f", marked invalid at {_when(row['invalid_since'])}" if row["invalid_since"] else ""
        text = f"not sent: {token} is invalid ({row['error'] or row['invalid_reason']}{since})"
    elif status == "no_token":
        text = "not sent: no device token"
        if invalid_tokens:
            message["invalid_tokens"] = [
                {k: _jsonable(v) for k, v in t.items() if k != "user_id"} for t in invalid_tokens
            ]
            text += ": " + "; ".join(
                f"token {_short(t['token'])} marked invalid at {_when(t['marked_at'])} ({t['reason']})"
                for t in invalid_tokens
            )
    elif status == "render_error":
        text = f"not sent: the push copy did not render: {row['error']}"
    elif status == "cadence_skipped":
        message["cadence"] = [caps.get((row["user_id"], rule), {"rule": rule}) for rule in row["cadence_rules"] or []]
        message["cadence_winner"] = row["cadence_winner"]
        text = "not sent: capped by " + "; ".join(_cap_text(c) for c in message["cadence"])
        if row["cadence_winner"]:
            text += f"; gave its slot up to the higher-priority campaign {row['cadence_winner']}"
    else:
        text = f"{STATUS_TEXT.get(status, status)} (at {at})"
    message["text"] = text
    return message


def _summary(messages: list[dict], audience: dict, planned: set[str]) -> str:
    """One line on the run as a whole for this user."""
    if messages:
        sent = sum(m["status"] == "sent" for m in messages)
        return f"{sent} of {len(messages)} message(s) sent" if sent else "nothing sent"
    step = audience.get("step")
    if step is None:
        return "no message: not in the audience"
    if step not in planned:
        return f"no message: step {step} not planned in this run yet"
    return f"no message: not in step {step}'s audience when the run planned it (the models were rebuilt since)"


def _caps(conn: psycopg.Connection, ledger: Ledger, campaign: Campaign, skipped: list[dict]) -> dict:
    """(user_id, rule) -> the rule, the notifications it counted in its window before the skip, until when."""
    names = sorted({rule for row in skipped for rule in row["cadence_rules"] or []})
    rules = {}
    if campaign.cadence_rules and relation_exists(conn, *campaign.cadence_rules):
        query = sql.SQL(
            "select name, counted_layers::text as counted, window_hours, max_count from {} where name = any(%s)"
        ).format(sql.Identifier(*campaign.cadence_rules))
        with conn.cursor(row_factory=dict_row) as cur:
            rules = {row["name"]: row for row in cur.execute(query, (names,))}
    longest = timedelta(hours=max((r["window_hours"] for r in rules.values()), default=0))
    since = min(row["updated_at"] for row in skipped) - longest
    history: dict[str, list[dict]] = {}
    for event in ledger.notifications_since(sorted({row["user_id"] for row in skipped}), since):
        history.setdefault(event["user_id"], []).append(event)
    caps = {}
    for row in skipped:
        for name in row["cadence_rules"] or []:
            rule = rules.get(name)
            if rule is None:
                caps[(row["user_id"], name)] = {"rule": name, "text": f"{name} (no longer in the rules)"}
                continue
            window = timedelta(hours=rule["window_hours"])
            layers = {int(layer) for layer in rule["counted"].split()}
            counted = [  # newest first; a slot taken after the skip (the winner's) counts as well
                e
                for e in history.get(row["user_id"], [])
                if e["layer"] in layers and e["at"] > row["updated_at"] - window
            ]
            until = counted[rule["max_count"] - 1]["at"] + window if len(counted) >= rule["max_count"] else None
            caps[(row["user_id"], name)] = {
                "rule": name,
                "max_count": rule["max_count"],
                "window_hours": rule["window_hours"],
                "counted_layers": sorted(layers),
                "until": _jsonable(until),
                "counted": [
                    {k: _jsonable(e[k]) for k in ("layer", "campaign", "step", "run_id", "at", "delivered")}
                    for e in counted
                ],
            }
    return caps


def _cap_text(cap: dict) -> str:
    if "text" in cap or "max_count" not in cap:
        return cap.get("text", cap["rule"])
    layers = " and ".join(str(layer) for layer in cap["counted_layers"])
    counted = ", ".join(
        (f"{e['campaign']} {e['step']} (run {e['run_id']})" if e["run_id"] else f"layer {e['layer']} (imported)")
        + f" at {_when(datetime.fromisoformat(e['at']))}"
        for e in cap["counted"]
    )
    until = (
        f"until {_when(datetime.fromisoformat(cap['until']))}" if cap["until"] else "no longer: the window has room now"
    )
    return (
        f"{cap['rule']} (at most {cap['max_count']} per {cap['window_hours']} h, layer {layers}; "
        f"counted: {counted or 'none'}), {until}"
    )


# --- output -------------------------------------------------------------------------------------------------


def render(explanation: dict, as_json: bool = False) -> str:
    """The explanation of one user: plain text, or one JSON document."""
    if as_json:
        return json.dumps(explanation, indent=2)
    lines = [f"user {explanation['user_id']}"]
    for item in explanation["campaigns"]:
        audience, delivery = item["audience"], item["delivery"]
        lines += ["", f"{item['campaign']} (layer {item['layer']})"]
        if audience["outcome"] == "included":
            where = f"included in step {audience['step']} (file {audience['file_prefix']})"
        else:
            where = audience["outcome"]
        lines.append(f"  audience  {where}: {audience['reason']}")
        run = delivery["run"]
        if run is None:
            lines.append(f"  delivery  {delivery['summary']}")
            continue
        started = _when(datetime.fromisoformat(run["started_at"]))
        lines.append(
            f"  delivery  run {run['run_id']} ({run['mode']}, key {run['run_key']}, {run['status']}, "
            f"started {started}): {delivery['summary']}"
        )
        lines += [f"            {m['step']}: {m['text']}" for m in delivery["messages"]]
    return "\n".join(lines)


def _jsonable(value):
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if value else "?"


def _short(token: str) -> str:
    return f"…{token[-6:]}" if len(token) > 8 else token
