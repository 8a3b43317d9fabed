# make demo: set up, then run the main job on the embedded database with sample data.
# make test: set up, then every check (lint, dbt build with all data and unit tests, pytest).
# With PGHOST set, both use your server instead (sample data goes to its own schemas).

PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
AS_OF ?= 2026-11-20 18:00:00+00
DEMO_USERS ?= 20000
TEST_USERS ?= 5000

# eval this first in a recipe line: points PG* at the database (embedded unless PGHOST is set)
db_env = eval "$$($(BIN)/sender db-env --embedded-database $(1))"

.PHONY: install demo test lint clean

install: $(VENV)/.installed profiles.yml

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

profiles.yml:
	cp profiles.example.yml $@

demo: install
	@$(call db_env,push_demo) && export DBT_SCHEMA=demo_audiences && \
	$(BIN)/sender sample-data --users $(DEMO_USERS) --as-of "$(AS_OF)" --schema demo_source --replace && \
	$(BIN)/dbt build --quiet --full-refresh --vars '{source_schema: demo_source, as_of: "$(AS_OF)"}' && \
	$(BIN)/sender export --all --out demo-output

lint: install
	$(BIN)/ruff check sender tests bench
	$(BIN)/ruff format --check sender tests bench
	@$(call db_env,push_test) && $(BIN)/sqlfluff lint models

test: lint
	@$(call db_env,push_test) && export DBT_SCHEMA=test_audiences && \
	$(BIN)/sender sample-data --users $(TEST_USERS) --as-of "$(AS_OF)" --schema test_source --replace && \
	$(BIN)/dbt build --full-refresh --vars '{source_schema: test_source, as_of: "$(AS_OF)"}' && \
	$(BIN)/pytest

clean:
	rm -rf target target-* logs demo-output exports
