# make demo: set up, then run the main job on the embedded database with sample data.
# make test: set up, then every check (lint, dbt build with all data and unit tests, pytest).
# With PGHOST set, both use your server instead (sample data goes to its own schemas).

SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
AS_OF ?= 2026-11-20 18:00:00+00
DEMO_USERS ?= 20000
TEST_USERS ?= 5000
PYTEST_WORKERS ?= 3
EMULATOR_PORT ?= 18085
CAMPAIGNS := layer5-waterfall layer3-behavior layer2-trending

# eval this first in a recipe line: points PG* at the database (embedded unless PGHOST is set)
db_env = eval "$$($(BIN)/sender db-env --embedded-database $(1))"

# waits (up to 10 s) until something listens on 127.0.0.1:$(1)
wait_for_port = for _ in $$(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/$(1)) 2>/dev/null && break; sleep 0.2; done

.PHONY: install demo test lint clean diff bench install-spark test-spark

install: $(VENV)/.installed profiles.yml

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

profiles.yml:
	cp profiles.example.yml $@

# The demo sends to a local FCM emulator (recording to demo-output/fcm-messages.jsonl), on a fresh
# ledger (schema demo_sender, dropped first), so it can be repeated. The sample data is as of AS_OF:
# the scheduled runs accept it as fresh (source_max_age_hours); a real run keeps the 24 h default.
DEMO_FRESH := {source_schema: demo_source, source_max_age_hours: 1000000}
demo: install
	@$(call db_env,push_demo) && export DBT_SCHEMA=demo_audiences SENDER_SCHEMA=demo_sender && \
	$(BIN)/sender sample-data --users $(DEMO_USERS) --as-of "$(AS_OF)" --schema demo_source --replace --cascade \
	  --test-users seeds/test_users.csv && \
	$(BIN)/dbt build --quiet --full-refresh --vars '{source_schema: demo_source, as_of: "$(AS_OF)"}' && \
	$(BIN)/python -c 'import psycopg; psycopg.connect(autocommit=True).execute("drop schema if exists demo_sender cascade")' && \
	rm -rf demo-output && mkdir demo-output && \
	{ $(BIN)/sender fcm-emulator --port $(EMULATOR_PORT) --record demo-output/fcm-messages.jsonl & } && \
	emulator=$$! && trap 'kill $$emulator' EXIT && $(call wait_for_port,$(EMULATOR_PORT)) && \
	export FCM_EMULATOR_HOST=127.0.0.1:$(EMULATOR_PORT) && \
	echo "== sender schedule: what a scheduler would fire (start = send time - lead time)" && $(BIN)/sender schedule && \
	echo "== a rehearsal of layer3-behavior: the whole timeline, test users in both phases, waits compressed" && \
	$(BIN)/sender run layer3-behavior --rehearse --no-build --dbt-vars '$(DEMO_FRESH)' --out demo-output && \
	send_at=$$($(BIN)/python -c 'import datetime as d; t = d.datetime.now(d.UTC) + d.timedelta(seconds=75); \
	  print(t.replace(second=0, microsecond=0).isoformat())') && \
	for campaign in $(CAMPAIGNS); do \
	  echo "== the scheduled run of $$campaign for $$send_at: export, test send, cancellation window, live send" && \
	  $(BIN)/sender run $$campaign --send-at $$send_at --no-build --dbt-vars '$(DEMO_FRESH)' --out demo-output \
	    || exit 1; \
	done && \
	echo "== layer3-behavior once more (a second run): every user had a Layer 3 push in the last 72 h (frequency caps)" && \
	$(BIN)/sender send layer3-behavior --mode live --run-key demo-second-run && \
	user=$$(tail -n +2 "$$(ls demo-output/recent-closet-adders_2*.csv | head -1)" | head -1 | cut -d, -f1) && \
	echo "== why did $$user get (or not get) each push?" && $(BIN)/sender explain $$user && \
	echo "== sender runs" && $(BIN)/sender runs && \
	echo "Demo done: CSV files in demo-output/, pushes received by the emulator in demo-output/fcm-messages.jsonl"
	@echo "What would min_inventory_count: 5 change? The same project built into demo_audiences_changed:" && \
	$(call db_env,push_demo) && export DBT_SCHEMA=demo_audiences_changed DBT_TARGET_PATH=target-demo-changed && \
	$(BIN)/dbt build --quiet --full-refresh \
	  --vars '{source_schema: demo_source, as_of: "$(AS_OF)", min_inventory_count: 5}' && \
	$(BIN)/sender diff --base-schema demo_audiences --schema demo_audiences_changed

lint: install
	$(BIN)/ruff check sender tests bench
	$(BIN)/ruff format --check sender tests bench
	@$(call db_env,push_test) && $(BIN)/sqlfluff lint models

test: lint
	@$(call db_env,push_test) && export DBT_SCHEMA=test_audiences && \
	$(BIN)/sender sample-data --users $(TEST_USERS) --as-of "$(AS_OF)" --schema test_source --replace --cascade \
	  --test-users seeds/test_users.csv && \
	$(BIN)/dbt build --full-refresh --vars '{source_schema: test_source, as_of: "$(AS_OF)"}'
	@# pytest: on the embedded server, PYTEST_WORKERS processes, each with a database of its own; on your
	@# server (PGHOST set), one process in your database (its own schemas).
	$(if $(PGHOST),$(BIN)/pytest,$(BIN)/pytest -n $(PYTEST_WORKERS) --dist loadfile)

# make diff BASE=<schema>: build the working tree into DIFF_SCHEMA and compare it with the build in BASE
# (README, "For analysts"). With BASE_REF=<git ref>, BASE is first built from that ref (a temporary
# git worktree), so both builds share AS_OF and the source: BASE must then be a dev_ or ci_ schema.
# Without PGHOST, on the embedded server's DIFF_DATABASE (push_demo: where `make demo` builds).
DIFF_SCHEMA ?= dev_$(subst .,_,$(subst -,_,$(or $(USER),analyst)))
DIFF_DATABASE ?= push_demo
DIFF_SOURCE ?= $(if $(PGHOST),public,demo_source)
DIFF_ARGS ?=
diff: install
	@test -n "$(BASE)" && test "$(BASE)" != "$(DIFF_SCHEMA)" || { echo "usage: make diff BASE=<schema other than \
	$(DIFF_SCHEMA)> [BASE_REF=main] [AS_OF=...] [DIFF_SCHEMA=...] [DIFF_SOURCE=...] [DIFF_ARGS=...]" >&2; exit 2; }
	@case "$(BASE_REF):$(BASE)" in :*|*:dev_*|*:ci_*) ;; \
	  *) echo "BASE_REF rebuilds BASE: give a dev_ or ci_ schema, not $(BASE)" >&2; exit 2;; esac
	@$(call db_env,$(DIFF_DATABASE)) && dbt_vars='{source_schema: $(DIFF_SOURCE), as_of: "$(AS_OF)"}' && \
	if [ -n "$(BASE_REF)" ]; then \
	  base_tree=$$(mktemp -d) && trap 'git worktree remove --force "$$base_tree"' EXIT && \
	  git worktree add --quiet --detach "$$base_tree" "$(BASE_REF)" && echo "building $(BASE_REF) into $(BASE)" >&2 && \
	  DBT_SCHEMA=$(BASE) DBT_TARGET_PATH=$(CURDIR)/target-$(BASE) $(BIN)/dbt build --quiet --full-refresh \
	    --project-dir "$$base_tree" --profiles-dir $(CURDIR) --vars "$$dbt_vars" || exit 1; \
	fi && \
	echo "building the working tree into $(DIFF_SCHEMA)" >&2 && export DBT_TARGET_PATH=target-$(DIFF_SCHEMA) && \
	DBT_SCHEMA=$(DIFF_SCHEMA) $(BIN)/dbt build --quiet --full-refresh --vars "$$dbt_vars" && \
	$(BIN)/sender diff --base-schema $(BASE) --schema $(DIFF_SCHEMA) $(DIFF_ARGS)

# make test-spark: the models on Apache Spark in local mode (README, "Beyond one machine"): sample data in
# PostgreSQL, dbt build there, then tests/spark/run.py in one process (one Spark session): the source tables
# copied into Spark, dbt build --target spark (models, data and unit tests), every audience mart compared row
# for row; then both sides rebuilt (dbt run) at a second as_of and compared again. Spark's settings: target spark of
# profiles.example.yml, copied to .spark/profiles/ (an older profiles.yml may lack it); its tables in .spark/.
SPARK_USERS ?= 2000
SPARK_AS_OF_2 ?= 2026-11-19 06:00:00+00
SPARK_DATABASE ?= push_test
install-spark: $(VENV)/.installed-spark

$(VENV)/.installed-spark: $(VENV)/.installed
	$(BIN)/pip install --quiet -e '.[dev,spark]'
	touch $@

.spark/profiles/profiles.yml: profiles.example.yml
	mkdir -p $(@D) && cp profiles.example.yml $@

test-spark: install install-spark .spark/profiles/profiles.yml
	@command -v java > /dev/null || test -n "$$JAVA_HOME" || { echo "make test-spark needs Java 17 or newer (java on PATH or JAVA_HOME)" >&2; exit 2; }
	@$(call db_env,$(SPARK_DATABASE)) && export DBT_PROFILES_DIR=.spark/profiles SPARK_LOCAL_IP=127.0.0.1 && \
	echo "== sample data ($(SPARK_USERS) users) and dbt build on PostgreSQL" && \
	$(BIN)/sender sample-data --users $(SPARK_USERS) --as-of "$(AS_OF)" --schema spark_source --replace --cascade \
	  --test-users seeds/test_users.csv > /dev/null && \
	DBT_SCHEMA=spark_audiences DBT_TARGET_PATH=target-spark-pg $(BIN)/dbt build --quiet --full-refresh \
	  --vars '{source_schema: spark_source, as_of: "$(AS_OF)"}' && \
	rm -rf "$${SPARK_DIR:-.spark}/warehouse" "$${SPARK_DIR:-.spark}/metastore_db" && \
	$(BIN)/python tests/spark/run.py --source-schema spark_source --schema spark_audiences \
	  --as-of "$(AS_OF)" --second-as-of "$(SPARK_AS_OF_2)"

# make bench: every benchmark at 10k, 100k and 1M users, one table in bench/results/table.md (bench/README.md;
# about 6 minutes on 2 cores; not part of make test). On a shared machine: make bench BENCH_ARGS="--lock /path/to/lockfile".
BENCH_ARGS ?=
bench: install
	$(BIN)/python bench/bench_all.py $(BENCH_ARGS)

clean:
	rm -rf target target-* logs demo-output exports
