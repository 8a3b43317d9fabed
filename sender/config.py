"""Configuration, resolved once when a command starts and passed down (no other module reads it).

Every setting is a command-line option of `sender` with an environment variable behind it
(`sender --help` lists them). The dbt project is found as dbt finds it: `--project-dir` /
DBT_PROJECT_DIR, else the working directory; dbt's artifacts are under its target path
(DBT_TARGET_PATH, relative to the project, default `target`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from sender.errors import UserError

DEFAULT_SENDER_SCHEMA = "push_sender"
DEFAULT_EMULATOR_PROJECT = "demo-project"


@dataclass(frozen=True)
class Config:
    project_dir: Path  # the dbt project (holds dbt_project.yml)
    target_path: Path  # dbt's target folder, absolute
    profiles_dir: Path | None = None  # where dbt finds profiles.yml (None: dbt's default, ~/.dbt)
    sender_schema: str = DEFAULT_SENDER_SCHEMA  # the ledger's schema
    fcm_emulator_host: str | None = None  # host:port of a local FCM endpoint instead of Google
    firebase_project_id: str | None = None  # default: the emulator's demo project, or the credentials' project
    credentials_file: str | None = None  # a service-account JSON file (GOOGLE_APPLICATION_CREDENTIALS)

    @property
    def manifest_path(self) -> Path:
        return self.target_path / "manifest.json"

    @property
    def embedded_db_dir(self) -> Path:
        return self.project_dir / ".pgdata"

    @property
    def fcm_project_id(self) -> str | None:
        return self.firebase_project_id or (DEFAULT_EMULATOR_PROJECT if self.fcm_emulator_host else None)


def resolve(
    project_dir: Path | None = None,
    target_path: Path | None = None,
    sender_schema: str | None = None,
    fcm_emulator_host: str | None = None,
    firebase_project_id: str | None = None,
    credentials_file: str | None = None,
    profiles_dir: Path | None = None,
) -> Config:
    """A Config from the options (None or '' means: not given); UserError names a bad one."""
    project = (project_dir or Path.cwd()).resolve()
    if fcm_emulator_host:
        host, _, port = fcm_emulator_host.rpartition(":")
        if not host or not port.isdigit() or not 0 < int(port) < 65536 or "/" in host:
            raise UserError(f"FCM_EMULATOR_HOST {fcm_emulator_host!r} is not host:port (e.g. 127.0.0.1:8085)")
    schema = sender_schema or DEFAULT_SENDER_SCHEMA
    if schema.startswith("pg_") or len(schema.encode()) > 63 or not schema.isprintable():
        raise UserError(f"sender schema {schema!r} is not usable (pg_ names are reserved; 63 bytes at most)")
    target = target_path or Path("target")
    return Config(
        project_dir=project,
        target_path=target if target.is_absolute() else project / target,
        profiles_dir=profiles_dir or (project if (project / "profiles.yml").is_file() else None),
        sender_schema=schema,
        fcm_emulator_host=fcm_emulator_host or None,
        firebase_project_id=firebase_project_id or None,
        credentials_file=credentials_file or None,
    )
