"""Where the project lives and where dbt writes its artifacts."""

from __future__ import annotations

import os
from pathlib import Path

PROJECT_DIR = Path(os.environ.get("PUSH_PROJECT_DIR") or Path(__file__).resolve().parent.parent)
EMBEDDED_DB_DIR = PROJECT_DIR / ".pgdata"


def manifest_path() -> Path:
    """dbt's manifest.json, honouring DBT_TARGET_PATH as dbt itself does."""
    target = Path(os.environ.get("DBT_TARGET_PATH") or "target")
    return (target if target.is_absolute() else PROJECT_DIR / target) / "manifest.json"
