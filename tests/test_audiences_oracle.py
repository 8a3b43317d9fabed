"""The exported production files equal, to the row, an independent Python reading of AUDIENCES.md.

For several as_of values the models are rebuilt (`dbt run`), every campaign is exported with the real
CLI (`sender export --all`), and each production CSV is compared with tests/oracle.py, which computes
the files from the raw source rows. The schema is left built with the sample as_of for other tests.
"""

from __future__ import annotations

import csv
import io
import re
import time
from datetime import datetime
from pathlib import Path

import psycopg
import pytest

from tests import oracle
from tests.conftest import AS_OF, SOURCE_SCHEMA, run_cli

# In build order; the sample as_of comes last so the schema ends as the other tests expect. Besides the
# sample's: 5 hours earlier, a day later, and a day earlier (whose data has ties in Layer 3's row order
# and in the trending ranks, so those tie-breaks are checked too).
AS_OFS = ["2026-11-20 13:00:00+00", "2026-11-21 18:00:00+00", "2026-11-19 18:00:00+00", AS_OF]
TS = r"\d{8}T\d{6}"
SHOWN_DIFFERENCES = 5


def build(env: dict[str, str], as_of: str) -> None:
    run_cli(env, "dbt", "run", "--quiet", "--vars", f'{{source_schema: {SOURCE_SCHEMA}, as_of: "{as_of}"}}',
            check=True)  # fmt: skip


def production_files(out: Path) -> dict[str, list[list[str]]]:
    """prefix -> parsed rows (header first) of each production file (test twins left out)."""
    files = {}
    for prefix in oracle.ALL_PREFIXES:
        sep = "-" if prefix in oracle.LAYER5_PREFIXES else "_"
        matches = [p for p in out.iterdir() if re.fullmatch(re.escape(prefix + sep) + TS + r"\.csv", p.name)]
        assert len(matches) <= 1, f"several {prefix} files: {sorted(p.name for p in matches)}"
        if matches:
            files[prefix] = list(csv.reader(io.StringIO(matches[0].read_bytes().decode("utf-8"), newline="")))
    return files


@pytest.fixture(scope="module")
def runs(built, tmp_path_factory):
    """as_of -> (expected files, exported files), the models rebuilt for each as_of in turn."""
    assert AS_OFS[-1] == AS_OF
    with psycopg.connect() as conn:
        collation = conn.execute("select datcollate from pg_database where datname = current_database()")
        collation = collation.fetchone()[0]
        tables = oracle.load_source(conn, SOURCE_SCHEMA)
    if collation not in ("C", "POSIX", "C.UTF-8", "C.utf8"):
        pytest.skip(f"the oracle orders names in code-point order (C collation), not {collation}")
    results = {}
    started = time.monotonic()
    current = AS_OF  # the session fixture built the sample as_of
    try:
        for as_of in AS_OFS:
            if as_of != current:
                current = None  # unknown if the build fails
                build(built, as_of)
                current = as_of
            out = tmp_path_factory.mktemp("oracle-export")
            run_cli(built, "sender", "export", "--all", "--out", str(out), check=True)
            expected = oracle.expected_files(tables, datetime.fromisoformat(as_of))
            results[as_of] = (expected, production_files(out))
        print(f"built and exported {len(AS_OFS)} as_of values in {time.monotonic() - started:.1f}s")
        yield results
    finally:
        if current != AS_OF:
            build(built, AS_OF)


def describe(prefix: str, expected: list[list[str]] | None, got: list[list[str]] | None) -> str:
    """A readable account of how one production file differs from the oracle."""
    if expected is None or got is None:
        state = lambda rows: "no file" if rows is None else f"{len(rows) - 1} rows"  # noqa: E731
        return f"{prefix}: expected {state(expected)}, got {state(got)}"
    lines = [f"{prefix}: expected {len(expected) - 1} rows, got {len(got) - 1}"]
    if expected[0] != got[0]:
        lines.append(f"  header expected {expected[0]}\n  header got      {got[0]}")
    shown = 0
    for i in range(1, max(len(expected), len(got))):
        want = expected[i] if i < len(expected) else None
        have = got[i] if i < len(got) else None
        if want != have and shown < SHOWN_DIFFERENCES:
            lines.append(f"  row {i}:\n    expected {want}\n    got      {have}")
            shown += 1
    want_users = {r[0] for r in expected[1:]}
    have_users = {r[0] for r in got[1:]}
    if want_users - have_users:
        lines.append(f"  users missing from the file: {sorted(want_users - have_users)[:10]}")
    if have_users - want_users:
        lines.append(f"  users not expected in the file: {sorted(have_users - want_users)[:10]}")
    return "\n".join(lines)


@pytest.mark.parametrize("as_of", AS_OFS)
def test_production_files_equal_the_oracle(runs, as_of):
    expected, got = runs[as_of]
    differences = [
        describe(prefix, expected.get(prefix), got.get(prefix))
        for prefix in oracle.ALL_PREFIXES
        if expected.get(prefix) != got.get(prefix)
    ]
    counts = ", ".join(f"{p}={len(expected[p]) - 1}" for p in oracle.ALL_PREFIXES if p in expected)
    print(f"as_of {as_of}: rows compared: {counts}")
    assert not differences, f"as_of {as_of}: files differ from AUDIENCES.md\n" + "\n".join(differences)


def test_every_layer3_and_layer2_file_is_written(runs):
    """Layer 3 and Layer 2 files are always written, even header-only; Layer 5 only non-empty levels."""
    for as_of, (expected, got) in runs.items():
        for prefix in oracle.ALL_PREFIXES:
            if prefix not in oracle.LAYER5_PREFIXES:
                assert prefix in expected and prefix in got, f"as_of {as_of}: {prefix} file missing"


def test_sample_makes_every_file_non_empty(runs):
    """At the sample as_of every file has rows, so the comparison above is not vacuous."""
    expected, got = runs[AS_OF]
    for prefix in oracle.ALL_PREFIXES:
        assert len(expected.get(prefix, [])) > 1, f"oracle: {prefix} is empty at the sample as_of"
        assert len(got.get(prefix, [])) > 1, f"export: {prefix} is empty at the sample as_of"
