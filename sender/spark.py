"""The audience models on Apache Spark (make test-spark): copy the source tables from PostgreSQL into Spark,
and compare the audience marts built on Spark with the same marts built on PostgreSQL, row for row.

Spark runs in-process (pyspark, imported here only, lazily), configured by the `server_side_parameters` of a
dbt profile target (profiles.yml, target `spark`), so the copies land in the warehouse and metastore that
`dbt build --target spark` reads. No JDBC driver is needed: rows are read with psycopg and handed to Spark
with an explicit schema (SPARK_TYPES).
"""

from __future__ import annotations

import os
import shutil
import sys
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import jinja2
import psycopg
import yaml
from psycopg import sql

from sender.errors import ExitCode, UserError
from sender.sample_data import contract_tables

# PostgreSQL type (information_schema.columns.data_type) -> (Spark type, SQL reading the column as that type).
# uuids become plain strings (lowercase, with hyphens), jsonb its text (Spark reads it with get_json_object),
# timestamptz a Spark timestamp (an instant; Spark shows it in the session time zone, UTC in the profile).
SPARK_TYPES = {
    "uuid": ("string", "cast({} as text)"),
    "text": ("string", "{}"),
    "character varying": ("string", "{}"),
    "jsonb": ("string", "cast({} as text)"),
    "json": ("string", "cast({} as text)"),
    "boolean": ("boolean", "{}"),
    "smallint": ("integer", "{}"),
    "integer": ("integer", "{}"),
    "bigint": ("long", "{}"),
    "timestamp with time zone": ("timestamp", "{}"),
}
# How the comparison reads every column: as text, timestamps in UTC with microseconds.
PG_TIMESTAMP_TEXT = "to_char({} at time zone 'UTC', 'YYYY-MM-DD HH24:MI:SS.US')"
SPARK_TIMESTAMP_TEXT = "date_format({}, 'yyyy-MM-dd HH:mm:ss.SSSSSS')"
SHOWN_DIFFERENCES = 3
COMPARE_EXIT_CODE = ExitCode.VALIDATION


def spark_parameters(project_dir: Path, profiles_dir: Path | None, target: str) -> dict[str, str]:
    """The Spark settings of a dbt profile target (server_side_parameters), its env_var() calls rendered."""
    folder = profiles_dir or (project_dir if (project_dir / "profiles.yml").exists() else Path.home() / ".dbt")
    path = folder / "profiles.yml"
    try:
        profiles = yaml.safe_load(path.read_text())
        profile = yaml.safe_load((project_dir / "dbt_project.yml").read_text())["profile"]
        output = profiles[profile]["outputs"][target]
    except (OSError, yaml.YAMLError, KeyError, TypeError) as exc:
        raise UserError(
            f"no target {target!r} in {path} ({type(exc).__name__}: {exc}); copy it from profiles.example.yml"
        ) from None
    if output.get("method") != "session":
        raise UserError(f"target {target!r} in {path} is not a Spark session target (method: session)")

    def env_var(name: str, default: str | None = None) -> str:
        if name in os.environ:
            return os.environ[name]
        if default is None:
            raise UserError(f"{path}: environment variable {name} is not set")
        return default

    environment = jinja2.Environment(undefined=jinja2.StrictUndefined)
    return {
        str(key): environment.from_string(str(value)).render(env_var=env_var)
        for key, value in (output.get("server_side_parameters") or {}).items()
    }


def session(parameters: dict[str, str]):
    """A local Spark session with the profile's settings and a Hive metastore, as dbt-spark's session method."""
    try:
        from pyspark.sql import SparkSession
    except ImportError:
        raise UserError("pyspark is not installed: run `make install-spark`") from None
    if not (os.environ.get("JAVA_HOME") or shutil.which("java")):
        raise UserError("Spark needs Java 17 or newer: no `java` on PATH and JAVA_HOME is not set")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # Spark's Python workers: this venv's Python
    builder = SparkSession.builder.enableHiveSupport()
    for key, value in parameters.items():
        builder = builder.config(key, value)
    try:
        spark = builder.getOrCreate()
    except Exception as exc:  # pyspark raises its own error types when the JVM does not start
        raise UserError(f"Spark did not start (Java 17 or newer needed; is JAVA_HOME right?): {exc}") from None
    spark.sparkContext.setLogLevel("ERROR")
    return spark


def source_tables(project_dir: Path) -> list[str]:
    """The contract's tables, device tokens under the name the var device_tokens gives them (dbt_project.yml)."""
    tokens = yaml.safe_load((project_dir / "dbt_project.yml").read_text())["vars"]["device_tokens"]["table"]
    return [tokens if table == "device_tokens" else table for table in contract_tables()]


def spark_name(*parts: str) -> str:
    return ".".join("`" + part.replace("`", "``") + "`" for part in parts)


def load(
    conn: psycopg.Connection,
    spark,
    source_schema: str,
    spark_database: str,
    tables: list[str],
    progress: Callable[[str], None],
) -> dict[str, int]:
    """Copy `tables` of PostgreSQL schema `source_schema` into Spark database `spark_database` (parquet tables,
    replaced); return the rows copied per table. Column types are mapped by SPARK_TYPES; others are refused."""
    from pyspark.sql import types

    spark_types = {"string": types.StringType(), "boolean": types.BooleanType(), "integer": types.IntegerType(),
                   "long": types.LongType(), "timestamp": types.TimestampType()}  # fmt: skip

    spark.sql(f"create database if not exists {spark_name(spark_database)}")
    counts = {}
    for table in tables:
        columns = conn.execute(
            "select column_name, data_type from information_schema.columns"
            " where table_schema = %s and table_name = %s order by ordinal_position",
            (source_schema, table),
        ).fetchall()
        if not columns:
            raise UserError(f"no table {source_schema}.{table} in PostgreSQL: load the source data first")
        unknown = [f"{name} ({kind})" for name, kind in columns if kind not in SPARK_TYPES]
        if unknown:
            raise UserError(f"{source_schema}.{table}: no Spark type for column(s) {', '.join(unknown)}")
        reads = [sql.SQL(SPARK_TYPES[kind][1]).format(sql.Identifier(name)) for name, kind in columns]
        query = sql.SQL("select {} from {}").format(sql.SQL(", ").join(reads), sql.Identifier(source_schema, table))
        rows = conn.execute(query).fetchall()
        fields = [types.StructField(name, spark_types[SPARK_TYPES[kind][0]]) for name, kind in columns]
        schema = types.StructType(fields)
        frame = spark.createDataFrame(rows, schema=schema)
        frame.write.mode("overwrite").format("parquet").saveAsTable(spark_name(spark_database, table))
        counts[table] = len(rows)
        progress(f"{source_schema}.{table} -> {spark_database}.{table}: {len(rows):,} rows")
    return counts


def mart_models(project_dir: Path) -> list[str]:
    """Every audience mart and decisions model (models/marts/*/*.sql), by name."""
    return sorted(path.stem for path in (project_dir / "models" / "marts").glob("*/*.sql"))


def postgres_rows(conn: psycopg.Connection, schema: str, model: str) -> tuple[list[str], list[tuple]]:
    columns = conn.execute(
        "select column_name, data_type from information_schema.columns"
        " where table_schema = %s and table_name = %s order by ordinal_position",
        (schema, model),
    ).fetchall()
    if not columns:
        return [], []
    reads = [
        sql.SQL(PG_TIMESTAMP_TEXT if kind == "timestamp with time zone" else "cast({} as text)").format(
            sql.Identifier(name)
        )
        for name, kind in columns
    ]
    query = sql.SQL("select {} from {}").format(sql.SQL(", ").join(reads), sql.Identifier(schema, model))
    return [name for name, _ in columns], conn.execute(query).fetchall()


def spark_rows(spark, database: str, model: str) -> tuple[list[str], list[tuple]]:
    if not spark.catalog.tableExists(spark_name(database, model)):
        return [], []
    frame = spark.table(spark_name(database, model))
    reads = [
        (SPARK_TIMESTAMP_TEXT if field.dataType.typeName() == "timestamp" else "cast({} as string)").format(
            spark_name(field.name)
        )
        for field in frame.schema.fields
    ]
    return frame.columns, [tuple(row) for row in frame.selectExpr(*reads).collect()]


def sort_key(row: tuple) -> tuple:
    return tuple((value is None, value or "") for value in row)


def compare(
    conn: psycopg.Connection, spark, pg_schema: str, spark_database: str, models: list[str]
) -> tuple[list[str], bool]:
    """Lines of a report (per model: rows on each side, the first differing rows) and whether all agree.
    Every column is compared as text: uuids as PostgreSQL writes them, timestamps in UTC with microseconds."""
    lines, same = [], True
    for model in models:
        pg_columns, pg = postgres_rows(conn, pg_schema, model)
        spark_columns, sp = spark_rows(spark, spark_database, model)
        head = f"{model}: {len(pg):,} rows on PostgreSQL ({pg_schema}), {len(sp):,} on Spark ({spark_database})"
        if not pg_columns or not spark_columns:
            lines.append(f"{head}: DIFFERENT, missing on {'PostgreSQL' if not pg_columns else 'Spark'}")
            same = False
            continue
        if pg_columns != spark_columns:
            lines.append(f"{head}: DIFFERENT columns: PostgreSQL {pg_columns}, Spark {spark_columns}")
            same = False
            continue
        only_pg = sorted((Counter(pg) - Counter(sp)).elements(), key=sort_key)
        only_spark = sorted((Counter(sp) - Counter(pg)).elements(), key=sort_key)
        if not only_pg and not only_spark:
            lines.append(f"{head}: same rows")
            continue
        same = False
        lines.append(f"{head}: DIFFERENT, {len(only_pg):,} rows only on PostgreSQL, {len(only_spark):,} only on Spark")
        for side, rows in (("PostgreSQL", only_pg), ("Spark", only_spark)):
            for row in rows[:SHOWN_DIFFERENCES]:
                lines.append(
                    f"  only on {side}: " + ", ".join(f"{c}={v!r}" for c, v in zip(pg_columns, row, strict=True))
                )
    return lines, same
