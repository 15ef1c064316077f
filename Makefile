# cxrdet: self-installing, idempotent targets. Quick start: `make demo`, `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(abspath $(VENV))/bin
STAMP := $(VENV)/.installed-stamp
# Stages call `python`: put the venv first on PATH. Telemetry off for every tool.
RUN := PATH="$(BIN):$$PATH" MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true NO_ALBUMENTATIONS_UPDATE=1

.PHONY: setup demo lint test test-fast ui bench clean-venv

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --progress-bar off -e '.[test]'
	touch $(STAMP)

demo: setup
	@start=$$(date +%s); $(RUN) dvc repro && echo && echo "Stage times (from their MLflow runs):" \
		&& $(RUN) cxrdet stage-times --since $$start && echo "wall time of dvc repro: $$(( $$(date +%s) - start )) s"
	@echo
	@echo "Demo pipeline done."
	@echo "  prepared data and cache: data/prepared/   folds: data/split/"
	@echo "  metrics: results/ (also: $(VENV)/bin/dvc metrics show)"
	@echo "  MLflow runs: mlruns/mlflow.db -> open the UI with 'make ui', then http://127.0.0.1:5000"

# Style first (ruff lint + format, configured in pyproject.toml), then the tests.
lint: setup
	$(RUN) ruff check .
	$(RUN) ruff format --check .

test: lint
	$(RUN) python -m pytest -m "not slow"
	$(RUN) python -m pytest -m slow

test-fast: lint
	$(RUN) python -m pytest -m "not slow"

ui: setup
	mkdir -p mlruns/artifacts
	$(RUN) mlflow ui --backend-store-uri "sqlite:///$(CURDIR)/mlruns/mlflow.db" \
		--default-artifact-root "$(CURDIR)/mlruns/artifacts" --host 127.0.0.1 --port 5000

# Every bench/*.py in its own process, one table (ours, baseline, ratio, target, peak RSS).
# `make bench QUICK=1`: each script's --quick mode (seconds, smoke figures).
bench: setup
	$(RUN) python bench/run_all.py $(if $(QUICK),--quick)

clean-venv:
	rm -rf $(VENV)
