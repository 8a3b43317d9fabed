"""Shared fixtures: a real PostgreSQL (embedded unless PGHOST is set), real dbt, the real CLI.

The session builds the models once on sample data, into schemas of its own
(pytest_source, pytest_audiences) of its own database (PYTEST_DATABASE, default pytest_push) and its
own dbt target folder (target-<database>), so several test sessions can run side by side.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest

from sender.database import ensure_environment

pytest_plugins = ["tests.sending"]

AS_OF = "2026-11-20 18:00:00+00"
# On the embedded server, one database per pytest-xdist worker (`pytest -n N`): each builds its own sample
# data and models, and the campaigns' advisory locks (per database) never collide between workers.
DATABASE = os.environ.get("PYTEST_DATABASE", "pytest_push") + os.environ.get("PYTEST_XDIST_WORKER", "")
PROJECT_DIR = Path(__file__).resolve().parent.parent
TARGET_PATH = PROJECT_DIR / f"target-{DATABASE}"
SOURCE_SCHEMA = "pytest_source"
AUDIENCE_SCHEMA = "pytest_audiences"
SAMPLE_USERS = 3000
BIN = Path(sys.executable).parent


@pytest.fixture(scope="session")
def env() -> dict[str, str]:
    """Environment for subprocesses: the test database, schemas and dbt target folder."""
    ensure_environment(embedded_database=DATABASE, data_dir=PROJECT_DIR / ".pgdata")
    # also for in-process calls: a campaign manifest re-parsed here must name the same schemas
    os.environ.update(DBT_SCHEMA=AUDIENCE_SCHEMA, DBT_TARGET_PATH=str(TARGET_PATH), DBT_PROFILES_DIR=str(PROJECT_DIR))
    return dict(os.environ)


def run_cli(env: dict[str, str], *args: str, check: bool = False) -> subprocess.CompletedProcess:
    """Run a project command (sender, dbt) from the venv, as a user would."""
    result = subprocess.run([str(BIN / args[0]), *args[1:]], env=env, cwd=PROJECT_DIR, capture_output=True, text=True)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture(scope="session")
def built(env: dict[str, str]) -> dict[str, str]:
    """Sample data loaded and every model built (dbt seed + run; `make test` runs dbt build itself)."""
    run_cli(env, "sender", "sample-data", "--users", str(SAMPLE_USERS), "--as-of", AS_OF,
            "--schema", SOURCE_SCHEMA, "--replace", "--cascade", check=True)  # fmt: skip
    dbt_vars = f'{{source_schema: {SOURCE_SCHEMA}, as_of: "{AS_OF}"}}'
    run_cli(env, "dbt", "seed", "--quiet", check=True)
    run_cli(env, "dbt", "run", "--quiet", "--vars", dbt_vars, check=True)
    return env


@pytest.fixture
def db(env: dict[str, str]):
    with psycopg.connect(autocommit=True) as conn:
        yield conn
