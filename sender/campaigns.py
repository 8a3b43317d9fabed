"""Campaigns as declared in the dbt project: exposures whose meta has a `campaign` key.

The one place that reads dbt's manifest.json and the campaigns' YAML. The manifest is used only
when it is newer than every project file dbt parses and every folder holding them (so an added or
removed file counts too); otherwise the project is parsed again first, in process, with dbt's
programmatic API. Each campaign's meta is then validated strictly into the typed
objects below; each problem is one line naming the campaign, its file, the field and the problem.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import re
import string
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml

from sender.config import Config
from sender.errors import UserError

RAW_TAGS = re.compile(r"{%-?\s*(?:end)?raw\s*-?%}")
SEND_TIME = re.compile(r"(?:[01]\d|2[0-3]):[0-5]\d")
# Folders dbt reads, from dbt_project.yml (with dbt's defaults), and the files around them.
PATH_SETTINGS = {
    "model-paths": ["models"],
    "macro-paths": ["macros"],
    "seed-paths": ["seeds"],
    "test-paths": ["tests"],
    "snapshot-paths": ["snapshots"],
    "analysis-paths": ["analyses"],
    "docs-paths": [],
    "packages-install-path": ["dbt_packages"],
}
PROJECT_FILES = ("dbt_project.yml", "profiles.yml", "packages.yml", "dependencies.yml", "selectors.yml")
CAMPAIGN_FIELDS = {
    "campaign", "aliases", "layer", "active", "priority", "send_time", "timezone", "lead_minutes",
    "allowed_lateness_minutes", "cancel_window_minutes", "test_file_retention_days", "file_name", "test_file_name",
    "write_empty_files", "test_placeholders", "steps",
}  # fmt: skip
STEP_FIELDS = {"name", "model", "file_prefix", "title", "body", "data", "delay_minutes", "test_placeholders"}


@dataclass(frozen=True)
class Step:
    name: str
    model: str
    schema: str
    table: str
    file_prefix: str
    title: str = ""
    body: str = ""
    data: dict[str, str] = field(default_factory=dict)
    delay_minutes: float = 0
    test_placeholders: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Campaign:
    name: str
    exposure: str
    aliases: tuple[str, ...]
    layer: int
    active: bool
    send_time: str  # HH:MM in `timezone`
    timezone: str  # an IANA zone, known to zoneinfo
    lead_minutes: int
    file_name: str
    test_file_name: str
    write_empty_files: bool
    steps: tuple[Step, ...]
    test_users: tuple[str, str]  # (schema, table) of the test_users seed
    device_tokens: tuple[str, str]  # (schema, view) of stg_tradeblock__device_tokens
    priority: int = 0  # higher wins when campaigns compete for a user within a cadence rule
    allowed_lateness_minutes: int = 30  # a live phase may start at most this long after the send time
    cancel_window_minutes: int = 25  # test pushes at send time - this; the run can be cancelled until send time
    test_file_retention_days: int = 7  # a run's cleanup removes test files older than this
    path: str = ""  # the YAML file declaring it, relative to the project
    cadence_rules: tuple[str, str] | None = None  # (schema, table) of the cadence_rules seed; None: no caps
    decisions: tuple[str, str] | None = None  # (schema, table) of its *_decisions model (sender explain), if any

    @property
    def build_command(self) -> str:
        return f"dbt build --select +exposure:{self.exposure}"

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)


# --- a manifest no older than the project ---------------------------------------------------------------------


def _watched(config: Config) -> Iterator[Path]:
    """The files dbt parses, and the folders holding them (a folder changes when a file is added or removed)."""
    project_dir = config.project_dir
    yield from (project_dir / name for name in PROJECT_FILES)
    yield (config.profiles_dir or Path.home() / ".dbt") / "profiles.yml"  # the schemas depend on the profile
    try:
        settings = yaml.safe_load((project_dir / "dbt_project.yml").read_text())
    except (OSError, yaml.YAMLError):
        settings = None  # dbt_project.yml is newer than the manifest anyway, or dbt parse says what is wrong
    settings = settings if isinstance(settings, dict) else {}
    for key, default in PATH_SETTINGS.items():
        folders = settings.get(key, default)
        for folder in [folders] if isinstance(folders, str) else folders if isinstance(folders, list) else default:
            for root, _, files in os.walk(project_dir / str(folder)):
                yield Path(root)
                yield from (Path(root) / name for name in files)


def _newest(config: Config) -> tuple[int, Path | None]:
    """The latest mtime (ns) of the files and folders dbt parses, and whose it is."""
    newest: tuple[int, Path | None] = (0, None)
    for path in _watched(config):
        try:
            newest = max(newest, (path.stat().st_mtime_ns, path), key=lambda pair: pair[0])
        except FileNotFoundError:
            continue
    return newest


def _stale(config: Config, newest: tuple[int, Path | None]) -> str | None:
    """Why the manifest cannot be used as it is, or None when it is newer than the project."""
    try:
        built = config.manifest_path.stat().st_mtime_ns
    except FileNotFoundError:
        return f"no manifest at {config.manifest_path}"
    mtime, path = newest
    if path and mtime >= built:  # equal: the same clock tick, cannot tell which came first
        shown = path.relative_to(config.project_dir) if path.is_relative_to(config.project_dir) else path
        return f"{shown} changed after the manifest was written"
    return None


@contextmanager
def _parse_lock(config: Config) -> Iterator[Path | None]:
    """One sender at a time checks, parses and reads a target folder's manifest."""
    path = config.target_path / ".sender-parse.lock"
    try:
        config.target_path.mkdir(parents=True, exist_ok=True)
        handle = open(path, "a")  # noqa: SIM115
    except OSError:  # a read-only target folder: a fresh manifest is still usable
        yield None
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield path


def _dbt_error(exception: BaseException | None) -> str:
    """dbt's error, its heading and first lines on one line (not its excerpt of the file)."""
    lines = []
    for line in str(exception or "unknown error").splitlines():
        if line.strip().startswith(("---", "Raw Error")) or re.match(r"\s*\d+\|", line):
            break
        if line.strip():
            lines.append(line.strip())
    return ": ".join(lines[:3])


def _parse(config: Config, lock: Path | None, newest: int) -> None:
    from dbt.cli.main import dbtRunner  # a second to import: only when the manifest is stale

    # The manifest is dated from the parse's start, on the file system's own clock (the lock file's
    # mtime), a tick after the newest project file: a file written while dbt parses leaves it stale.
    # (A file dated in the future keeps it stale: parsed again each time, and the log says which file.)
    started = time.time_ns()
    for _ in range(100 if lock else 0):
        os.utime(lock)
        started = lock.stat().st_mtime_ns
        if started > newest:
            break
        time.sleep(0.001)
    args = ["parse", "--project-dir", str(config.project_dir), "--target-path", str(config.target_path)]
    args += ["--quiet", "--log-level", "none", "--no-send-anonymous-usage-stats", "--write-json"]
    profiles_dir = config.profiles_dir
    if profiles_dir:
        args += ["--profiles-dir", str(profiles_dir)]
    result = dbtRunner().invoke(args)
    if not result.success:
        raise UserError(f"dbt could not parse {config.project_dir}: {_dbt_error(result.exception)}; run `dbt parse`")
    try:
        os.utime(config.manifest_path, ns=(started, started))
    except FileNotFoundError:
        raise UserError(f"dbt parse wrote no manifest at {config.manifest_path}; run `dbt parse`") from None


def _read_manifest(config: Config, log: Callable[[str], None] | None) -> tuple[dict, int]:
    """The manifest (re-parsed first when stale) and its mtime."""
    if not (config.project_dir / "dbt_project.yml").is_file():
        raise UserError(
            f"no dbt project in {config.project_dir} (no dbt_project.yml): use --project-dir or DBT_PROJECT_DIR"
        )
    with _parse_lock(config) as lock:
        newest = _newest(config)
        reason = _stale(config, newest)
        if reason:
            started = time.perf_counter()
            _parse(config, lock, newest[0])
            if log:
                log(f"dbt project parsed again ({reason}) in {time.perf_counter() - started:.1f} s")
        path = config.manifest_path
        try:
            built = path.stat().st_mtime_ns
            manifest = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise UserError(f"cannot read the dbt manifest {path}: {exc}; run `dbt parse`") from None
    if not isinstance(manifest, dict):
        raise UserError(f"the dbt manifest {path} is not a JSON object; run `dbt parse`")
    if not isinstance(manifest.get("nodes"), dict) or not isinstance(manifest.get("exposures"), dict):
        raise UserError(f"the dbt manifest {path} has no `nodes` or no `exposures`; run `dbt parse`")
    return manifest, built


# --- strict validation ------------------------------------------------------------------------------------------


def _integer(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: Any) -> bool:
    return (_integer(value) or isinstance(value, float)) and math.isfinite(value)


def _text(value: Any) -> bool:
    return isinstance(value, str) and value.strip() != ""


def _zone(value: Any) -> bool:
    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        return False
    return True


def _file_pattern(value: Any) -> bool:
    try:
        fields = {name for _, name, _, _ in string.Formatter().parse(value) if name is not None}
    except (ValueError, TypeError):
        return False
    return fields == {"prefix", "ts"} and "/" not in value


def _map(value: Any, numbers: bool) -> bool:
    return isinstance(value, dict) and all(
        isinstance(k, str) and (isinstance(v, str) or (numbers and _number(v))) for k, v in value.items()
    )


# (what the field must be, the test)
NAME = ("a non-empty string without '/'", lambda v: _text(v) and "/" not in v)
TEXT = ("a string", lambda v: isinstance(v, str))
BOOLEAN = ("true or false", lambda v: isinstance(v, bool))
INTEGER = ("an integer", _integer)
MINUTES = ("a whole number of minutes >= 0", lambda v: _integer(v) and v >= 0)
DAYS = ("a whole number of days >= 0", lambda v: _integer(v) and v >= 0)
MAX_LEAD_AND_LATENESS = 720  # minutes: a run started at send time - lead must find its own send time
DELAY = ("a number of minutes >= 0", lambda v: _number(v) and v >= 0)
CLOCK = (
    'a time "HH:MM" in quotes (unquoted, YAML reads 13:05 as a number)',
    lambda v: _text(v) and SEND_TIME.fullmatch(v),
)
ZONE = ("an IANA time zone such as America/Chicago", _zone)
FILE_PATTERN = ("a file name with {prefix} and {ts}, no other {field} and no '/'", _file_pattern)
DATA = ("a map of strings to strings (quote the values)", lambda v: _map(v, numbers=False))
PLACEHOLDERS = ("a map of strings to strings or numbers", lambda v: _map(v, numbers=True))
NAMES = ("a list of non-empty strings", lambda v: isinstance(v, list) and all(_text(x) for x in v))
STEPS = ("a non-empty list of steps", lambda v: isinstance(v, list) and v != [])
REQUIRED = object()


def _shown(value: Any) -> str:
    if isinstance(value, str):
        return f"the string {value!r}"
    return "null" if value is None else repr(value)[:60]


class _Declaration:
    """One campaign's meta read field by field; each problem is one line naming campaign, file and field."""

    def __init__(self, where: str, problems: list[str]) -> None:
        self.where = where
        self.problems = problems
        self.count = len(problems)

    @property
    def valid(self) -> bool:
        return len(self.problems) == self.count

    def problem(self, name: str, text: str) -> None:
        self.problems.append(f"{self.where}: {name}: {text}")

    def get(self, data: dict, key: str, rule: tuple, default: Any = REQUIRED, at: str = "") -> Any:
        expected, ok = rule
        if key not in data:
            if default is REQUIRED:
                self.problem(at + key, f"missing (must be {expected})")
                return None
            return default
        if not ok(data[key]):
            self.problem(at + key, f"must be {expected}, not {_shown(data[key])}")
            return None
        return data[key]

    def only(self, data: dict, known: set[str], at: str = "") -> None:
        for key in sorted(map(str, data.keys() - known)):
            self.problem(at + key, f"unknown field (known: {', '.join(sorted(known))})")


@dataclass
class _Project:
    """What every campaign is read against: the manifest and the YAML files as written."""

    config: Config
    manifest: dict
    built: int  # the manifest's mtime
    yaml_files: dict[str, Any] = field(default_factory=dict)

    def node(self, resource: str, name: Any) -> dict | None:
        for node in self.manifest["nodes"].values():
            if isinstance(node, dict) and node.get("resource_type") == resource and node.get("name") == name:
                return node
        return None

    def decisions(self, exposure: dict) -> tuple[str, str] | None:
        """The exposure's decisions model (a model in its depends_on named *_decisions), if it has one."""
        for unique_id in (exposure.get("depends_on") or {}).get("nodes") or []:
            node = self.manifest["nodes"].get(unique_id) or {}
            if node.get("resource_type") == "model" and str(node.get("name")).endswith("_decisions"):
                return str(node.get("schema")), str(node.get("alias") or node.get("name"))
        return None

    def relation(self, resource: str, name: str, purpose: str) -> tuple[str, str]:
        node = self.node(resource, name)
        if node is None:
            raise UserError(f"the dbt project has no {resource} named {name!r} ({purpose})")
        return str(node.get("schema")), str(node.get("alias") or name)

    def raw_steps(self, path: str, exposure: str) -> list:
        """An exposure's steps as written in its YAML file, before dbt rendered them."""
        if path not in self.yaml_files:
            try:
                self.yaml_files[path] = yaml.safe_load((self.config.project_dir / path).read_text())
            except (OSError, yaml.YAMLError):
                self.yaml_files[path] = None
        document = self.yaml_files[path]
        for item in (document.get("exposures") or []) if isinstance(document, dict) else []:
            if isinstance(item, dict) and item.get("name") == exposure:
                meta = (item.get("config") or {}).get("meta") or item.get("meta") or {}
                steps = meta.get("steps") if isinstance(meta, dict) else None
                return steps if isinstance(steps, list) else []
        return []

    def changed_since_parse(self, path: str) -> bool:
        try:
            return (self.config.project_dir / path).stat().st_mtime_ns >= self.built
        except OSError:
            return True


def _rendered_by_dbt(parsed: dict, raw: Any) -> list[str]:
    """Fields of a step whose text dbt changed when parsing: Jinja not wrapped in {% raw %}...{% endraw %}."""
    if not isinstance(raw, dict):
        return []
    pairs = {"title": (parsed.get("title"), raw.get("title")), "body": (parsed.get("body"), raw.get("body"))}
    raw_data, parsed_data = raw.get("data"), parsed.get("data")
    if isinstance(raw_data, dict) and isinstance(parsed_data, dict):
        pairs.update({f"data.{k}": (parsed_data.get(k), v) for k, v in raw_data.items()})
    return [k for k, (seen, written) in pairs.items() if isinstance(written, str) and RAW_TAGS.sub("", written) != seen]


def _step(project: _Project, d: _Declaration, exposure: dict, index: int, step: Any, raw: Any) -> Step | None:
    if not isinstance(step, dict):
        d.problem(f"steps[{index}]", f"must be a map with {', '.join(sorted(STEP_FIELDS))}, not {_shown(step)}")
        return None
    at = f"steps.{step['name'] if NAME[1](step.get('name')) else f'[{index}]'}."
    d.only(step, STEP_FIELDS, at)
    name = d.get(step, "name", NAME, at=at)
    model_name = d.get(step, "model", NAME, at=at)
    file_prefix = d.get(step, "file_prefix", NAME, at=at)
    title = d.get(step, "title", TEXT, at=at)
    body = d.get(step, "body", TEXT, at=at)
    data = d.get(step, "data", DATA, {}, at=at)
    delay = d.get(step, "delay_minutes", DELAY, 0, at=at)
    placeholders = d.get(step, "test_placeholders", PLACEHOLDERS, {}, at=at)
    model = project.node("model", model_name) if model_name else None
    if model_name and model is None:
        d.problem(at + "model", f"no dbt model named {model_name!r}")
    elif model and model.get("unique_id") not in ((exposure.get("depends_on") or {}).get("nodes") or []):
        d.problem(at + "model", f"not in the exposure's depends_on: add ref('{model_name}') there")
    for rendered in _rendered_by_dbt(step, raw):
        if project.changed_since_parse(str(exposure.get("original_file_path"))):  # never blame dbt for an edit
            raise UserError(f"{d.where}: changed while the sender was reading it; run the command again")
        d.problem(at + rendered, "dbt rendered its Jinja when parsing; wrap the template in {% raw %}...{% endraw %}")
    if None in (name, model, file_prefix, title, body, data, delay, placeholders):
        return None
    return Step(
        name=name,
        model=model_name,
        schema=str(model.get("schema")),
        table=str(model.get("alias") or model_name),
        file_prefix=file_prefix,
        title=title,
        body=body,
        data=dict(data),
        delay_minutes=float(delay),
        test_placeholders={k: str(v) for k, v in placeholders.items()},
    )


def _campaign(project: _Project, exposure: dict, meta: dict, shared: dict, problems: list[str]) -> Campaign | None:
    """One campaign from its exposure, or None after recording its problems."""
    path = str(exposure.get("original_file_path") or "?")
    d = _Declaration(
        f"campaign {meta['campaign'] if _text(meta['campaign']) else exposure.get('name')} ({path})", problems
    )
    d.only(meta, CAMPAIGN_FIELDS)
    values = {
        "name": d.get(meta, "campaign", NAME),
        "aliases": d.get(meta, "aliases", NAMES, []),
        "layer": d.get(meta, "layer", INTEGER),
        "active": d.get(meta, "active", BOOLEAN),
        "priority": d.get(meta, "priority", INTEGER, 0),
        "send_time": d.get(meta, "send_time", CLOCK),
        "timezone": d.get(meta, "timezone", ZONE),
        "lead_minutes": d.get(meta, "lead_minutes", MINUTES, 30),
        "allowed_lateness_minutes": d.get(meta, "allowed_lateness_minutes", MINUTES, 30),
        "cancel_window_minutes": d.get(meta, "cancel_window_minutes", MINUTES, 25),
        "test_file_retention_days": d.get(meta, "test_file_retention_days", DAYS, 7),
        "file_name": d.get(meta, "file_name", FILE_PATTERN),
        "test_file_name": d.get(meta, "test_file_name", FILE_PATTERN),
        "write_empty_files": d.get(meta, "write_empty_files", BOOLEAN, True),
    }
    lead, window, lateness = (values[k] for k in ("lead_minutes", "cancel_window_minutes", "allowed_lateness_minutes"))
    if None not in (lead, window) and window > lead:
        d.problem(
            "cancel_window_minutes",
            f"must be at most lead_minutes ({lead}), not {window}: the test pushes (send time - window) "
            "cannot go out before the run starts (send time - lead)",
        )
    if None not in (lead, lateness) and lead + lateness > MAX_LEAD_AND_LATENESS:
        d.problem(
            "lead_minutes",
            f"lead_minutes + allowed_lateness_minutes must be at most {MAX_LEAD_AND_LATENESS} (12 hours), not "
            f"{lead + lateness}: a run started at send time - lead would take the previous day's send time",
        )
    if values["file_name"] and values["file_name"] == values["test_file_name"]:
        d.problem("test_file_name", "must differ from file_name (test files would replace production files)")
    placeholders = d.get(meta, "test_placeholders", PLACEHOLDERS, {}) or {}
    raw_steps = project.raw_steps(path, str(exposure.get("name")))
    steps = []
    for index, declared in enumerate(d.get(meta, "steps", STEPS) or []):
        raw = raw_steps[index] if index < len(raw_steps) else None
        if isinstance(declared, dict) and isinstance(declared.get("test_placeholders", {}), dict):
            declared = {**declared, "test_placeholders": {**placeholders, **declared.get("test_placeholders", {})}}
        steps.append(_step(project, d, exposure, index, declared, raw))
    for key in ("name", "file_prefix"):
        seen = [getattr(step, key) for step in steps if step]
        for value in sorted({v for v in seen if seen.count(v) > 1}):
            d.problem(f"steps.{key}", f"{value!r} is used by more than one step")
    if not d.valid:
        return None
    values["aliases"] = tuple(values["aliases"])
    return Campaign(exposure=str(exposure.get("name")), steps=tuple(steps), path=path,
                    decisions=project.decisions(exposure), **shared, **values)  # fmt: skip


def load_campaigns(config: Config, log: Callable[[str], None] | None = None) -> dict[str, Campaign]:
    """Every campaign of the project, by name, from a manifest no older than the project files.

    `log`, if given, is told when the project had to be parsed again, why, and how long it took.
    """
    manifest, built = _read_manifest(config, log)
    project = _Project(config, manifest, built)
    shared = {
        "test_users": project.relation("seed", "test_users", "the campaigns' test users"),
        "device_tokens": project.relation("model", "stg_tradeblock__device_tokens", "the campaigns' device tokens"),
        "cadence_rules": None
        if project.node("seed", "cadence_rules") is None
        else project.relation("seed", "cadence_rules", ""),
    }
    problems: list[str] = []
    campaigns: dict[str, Campaign] = {}
    for exposure in manifest["exposures"].values():
        meta = (
            ((exposure.get("config") or {}).get("meta") or exposure.get("meta")) if isinstance(exposure, dict) else None
        )
        if not isinstance(meta, dict) or "campaign" not in meta:
            continue  # an exposure that is not a campaign
        campaign = _campaign(project, exposure, meta, shared, problems)
        if campaign is None:
            continue
        for name in (campaign.name, *campaign.aliases):
            other = next((c for c in campaigns.values() if name in (c.name, *c.aliases)), None)
            if other:
                where = f"campaign {campaign.name} ({campaign.path})"
                key = "campaign" if name == campaign.name else "aliases"
                problems.append(f"{where}: {key}: {name!r} is also a name of campaign {other.name} ({other.path})")
        campaigns[campaign.name] = campaign
    if problems:
        raise UserError("\n".join(problems))
    return campaigns


def find_step(campaign: Campaign, name: str) -> Step:
    for step in campaign.steps:
        if step.name == name:
            return step
    known = ", ".join(step.name for step in campaign.steps)
    raise UserError(f"campaign {campaign.name} has no step {name!r} (steps: {known})")


def find_campaign(config: Config, name: str, log: Callable[[str], None] | None = None) -> Campaign:
    """A campaign by name or old script id."""
    campaigns = load_campaigns(config, log)
    for campaign in campaigns.values():
        if name == campaign.name or name in campaign.aliases:
            return campaign
    known = ", ".join(sorted(campaigns)) or "none"
    raise UserError(f"unknown campaign {name!r} (known: {known})")
