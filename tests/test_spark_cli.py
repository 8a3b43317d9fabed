"""`sender spark load` and `compare` when what they depend on is missing: a one-line error, exit 2, nothing written.

The Spark runs themselves are `make test-spark` (tests/spark/run.py); here only the failures that need no Spark:
pyspark not installed (`make test`'s venv) or, where it is, no Java; and a profile without the target.
"""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from tests.conftest import BIN, PROJECT_DIR, SOURCE_SCHEMA, run_cli

COMMANDS = {
    "load": ["--source-schema", SOURCE_SCHEMA, "--database", "spark_source"],
    "compare": ["--pg-schema", "pytest_audiences", "--database", "spark_audiences"],
}


@pytest.fixture
def profiles(tmp_path):
    shutil.copy(PROJECT_DIR / "profiles.example.yml", tmp_path / "profiles.yml")
    return tmp_path


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_without_pyspark_or_java_a_one_line_error_and_nothing_written(built, profiles, tmp_path, command):
    spark_dir = tmp_path / "spark"
    env = {**built, "DBT_PROFILES_DIR": str(profiles), "SPARK_DIR": str(spark_dir), "PATH": str(BIN)}
    env.pop("JAVA_HOME", None)  # and no java on PATH: only the venv's programs
    result = run_cli(env, "sender", "spark", command, *COMMANDS[command])
    assert result.returncode == 2, result.stderr
    if importlib.util.find_spec("pyspark") is None:
        expected = "error: pyspark is not installed: run `make install-spark`"
    else:
        expected = "error: Spark needs Java 17 or newer: no `java` on PATH and JAVA_HOME is not set"
    assert result.stderr.strip() == expected
    assert not spark_dir.exists()


def test_a_profile_without_the_target_says_where_to_copy_it_from(built, profiles):
    env = {**built, "DBT_PROFILES_DIR": str(profiles)}
    result = run_cli(env, "sender", "spark", "load", *COMMANDS["load"], "--target", "cluster")
    assert result.returncode == 2
    assert f"no target 'cluster' in {profiles / 'profiles.yml'}" in result.stderr
    assert "copy it from profiles.example.yml" in result.stderr
