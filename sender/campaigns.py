"""Campaigns as declared in the dbt project: exposures whose meta has a `campaign` key.

They are read from dbt's manifest.json, so the sender sees exactly what dbt built.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from functools import cache

import yaml

from sender.errors import UserError
from sender.settings import PROJECT_DIR, manifest_path

RAW_TAGS = re.compile(r"{%-?\s*(?:end)?raw\s*-?%}")


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
    send_time: str
    timezone: str
    lead_minutes: int
    file_name: str
    test_file_name: str
    write_empty_files: bool
    steps: tuple[Step, ...]
    test_users: tuple[str, str]  # (schema, table) of the test_users seed
    device_tokens: tuple[str, str]  # (schema, view) of stg_tradeblock__device_tokens

    @property
    def build_command(self) -> str:
        return f"dbt build --select +exposure:{self.exposure}"


def _load_manifest() -> dict:
    path = manifest_path()
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"no dbt manifest at {path}: run `dbt build` first") from None
    except (OSError, ValueError) as exc:
        raise UserError(f"cannot read the dbt manifest {path}: {exc}") from exc


def _node(manifest: dict, resource: str, name: str, where: str) -> dict:
    for node in manifest["nodes"].values():
        if node["resource_type"] == resource and node["name"] == name:
            return node
    raise UserError(f"{where}: no dbt {resource} named {name!r}")


@cache
def _raw_steps(path: str, exposure: str) -> list[dict]:
    """A campaign's steps as written in its YAML file, before dbt rendered it."""
    try:
        document = yaml.safe_load((PROJECT_DIR / path).read_text())
    except (OSError, yaml.YAMLError):
        return []
    for item in (document or {}).get("exposures", []):
        if item.get("name") == exposure:
            return ((item.get("config") or {}).get("meta") or {}).get("steps", [])
    return []


def _check_copy_not_rendered_by_dbt(where: str, path: str, exposure: str, steps: list[dict]) -> None:
    """dbt renders Jinja in YAML: push templates must be wrapped in {% raw %}...{% endraw %}."""
    for parsed, raw in zip(steps, _raw_steps(path, exposure), strict=False):
        fields = {"title": (parsed.get("title"), raw.get("title"))}
        for key, value in (raw.get("data") or {}).items():
            fields[f"data.{key}"] = ((parsed.get("data") or {}).get(key), value)
        fields["body"] = (parsed.get("body"), raw.get("body"))
        for name, (seen, written) in fields.items():
            if isinstance(written, str) and RAW_TAGS.sub("", written) != seen:
                raise UserError(
                    f"{where} step {parsed.get('name')} {name}: dbt rendered its Jinja when parsing the "
                    f"project; wrap the template in {{% raw %}}...{{% endraw %}}"
                )


def load_campaigns() -> dict[str, Campaign]:
    """Every campaign of the project, by name."""
    manifest = _load_manifest()
    seed = _node(manifest, "seed", "test_users", "test users")
    tokens = _node(manifest, "model", "stg_tradeblock__device_tokens", "device tokens")
    campaigns = {}
    for exposure in manifest.get("exposures", {}).values():
        meta = exposure.get("config", {}).get("meta") or exposure.get("meta") or {}
        if "campaign" not in meta:
            continue
        where = f"campaign {meta['campaign']} ({exposure['original_file_path']})"
        _check_copy_not_rendered_by_dbt(where, exposure["original_file_path"], exposure["name"], meta["steps"])
        try:
            placeholders = meta.get("test_placeholders", {})
            steps = []
            for step in meta["steps"]:
                model = _node(manifest, "model", step["model"], where)
                steps.append(
                    Step(
                        name=step["name"],
                        model=step["model"],
                        schema=model["schema"],
                        table=model["alias"],
                        file_prefix=step["file_prefix"],
                        title=step.get("title", ""),
                        body=step.get("body", ""),
                        data={str(k): str(v) for k, v in (step.get("data") or {}).items()},
                        delay_minutes=float(step.get("delay_minutes", 0)),
                        test_placeholders={
                            k: str(v) for k, v in {**placeholders, **step.get("test_placeholders", {})}.items()
                        },
                    )
                )
            campaign = Campaign(
                name=meta["campaign"],
                exposure=exposure["name"],
                aliases=tuple(meta.get("aliases", ())),
                layer=int(meta["layer"]),
                active=bool(meta.get("active", False)),
                send_time=str(meta["send_time"]),
                timezone=str(meta["timezone"]),
                lead_minutes=int(meta.get("lead_minutes", 30)),
                file_name=meta["file_name"],
                test_file_name=meta["test_file_name"],
                write_empty_files=bool(meta.get("write_empty_files", True)),
                steps=tuple(steps),
                test_users=(seed["schema"], seed["alias"]),
                device_tokens=(tokens["schema"], tokens["alias"]),
            )
        except KeyError as exc:
            raise UserError(f"{where}: missing key {exc.args[0]!r} in its meta") from None
        campaigns[campaign.name] = campaign
    return campaigns


def find_step(campaign: Campaign, name: str) -> Step:
    for step in campaign.steps:
        if step.name == name:
            return step
    known = ", ".join(step.name for step in campaign.steps)
    raise UserError(f"campaign {campaign.name} has no step {name!r} (steps: {known})")


def find_campaign(name: str) -> Campaign:
    """A campaign by name or old script id."""
    campaigns = load_campaigns()
    for campaign in campaigns.values():
        if name == campaign.name or name in campaign.aliases:
            return campaign
    known = ", ".join(sorted(campaigns)) or "none"
    raise UserError(f"unknown campaign {name!r} (known: {known})")
