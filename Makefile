# skinlesion — `make help` lists the targets.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# Real data beside the checkout (development and CI) unless the caller chose another.
SHARED_DATA := $(abspath ../shared/data/melanoma_cancer_dataset)
export SKINLESION_DATA_DIR ?= $(if $(wildcard $(SHARED_DATA)/train),$(SHARED_DATA),)
PORT ?= 8000
DASHBOARD_PORT ?= 8866

.DEFAULT_GOAL := help
.PHONY: help venv run lint test test-fast webapp dashboard notebooks benchmark audit clean

help: ## Show this help
	@grep -hE '^[a-zA-Z_-]+:.*?## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-12s\033[0m %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e '.[test]'
	touch $(STAMP)

venv: $(STAMP) ## Create .venv and install the package with its test tools

run: $(STAMP) ## Main job: find data (or download, or synthesise) -> train the default ensemble (two EfficientNet-Lite0 members, image-type gate) -> evaluate
	$(VENV)/bin/skinlesion run

lint: $(STAMP) ## Static checks: ruff (style and bugs), mypy (types), import-linter (layering)
	$(VENV)/bin/ruff check src webapp tests tools benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

test: $(STAMP) lint ## Lint, then the whole test suite (unit, real-data integration, notebooks on a sample, browser)
	SKINLESION_NB_SAMPLE=$${SKINLESION_NB_SAMPLE:-40} $(PY) -m pytest tests notebooks dashboards \
		--nbval-lax --nbval-current-env --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider

test-fast: $(STAMP) ## Unit tests only: no training, real data, notebooks or browser (under 2 minutes)
	$(PY) -m pytest tests -m "not realdata and not browser and not slow"

webapp: $(STAMP) ## Serve the Flask web app with gunicorn on 127.0.0.1, port PORT (default 8000; workers warmed up before traffic)
	$(VENV)/bin/gunicorn -c gunicorn.conf.py --bind 127.0.0.1:$(PORT)

dashboard: $(STAMP) ## Start the Voila dashboard on port DASHBOARD_PORT (default 8866)
	$(VENV)/bin/voila dashboards/lesion_uploader.ipynb --Voila.config_file_paths=dashboards --port=$(DASHBOARD_PORT) --no-browser

notebooks: $(STAMP) ## Re-execute every notebook on the full data and rewrite the outputs (needs the default model: `make run` first)
	$(PY) tools/notebooks.py run-all

# Those that need no trained model run first; then, only if the default model exists (else one line
# saying so, and the target stops), those that time it.
benchmark: $(STAMP) ## Print speed figures: fine-tuning input, Grad-CAM latency, then on the Kaggle data the feature pipeline and Keras vs TFLite features; then, with a trained default model (`make run`), web app under load, TTA cost, image-type gate cost, Keras vs TFLite serving
	$(PY) benchmarks/augment_pipeline.py
	$(PY) benchmarks/explain_latency.py
	$(PY) benchmarks/feature_pipeline.py
	$(PY) benchmarks/feature_backends.py
	$(PY) benchmarks/_common.py
	$(PY) benchmarks/webapp_load.py
	$(PY) benchmarks/tta_cost.py
	$(PY) benchmarks/gate_cost.py
	$(PY) benchmarks/export_backends.py

audit: $(STAMP) ## Leakage audit of test vs train (writes reports/audit)
	$(VENV)/bin/skinlesion data audit

# find prunes .venv (its bytecode belongs to the installed packages) and .git, data/, models/ (none there).
clean: ## Remove tool caches (pytest, mypy, ruff, import-linter; __pycache__ outside .venv) and test-artifacts/ (keeps .venv, models/, data/, reports/)
	rm -rf .pytest_cache .mypy_cache .ruff_cache .import_linter_cache test-artifacts
	find . \( -path ./.venv -o -path ./.git -o -path ./data -o -path ./models \) -prune \
		-o -name __pycache__ -type d -prune -exec rm -rf {} +
