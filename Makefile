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

run: $(STAMP) ## Main job: real data (or download, or synthetic) -> train efficientnet_lite0 -> evaluate
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

webapp: $(STAMP) ## Serve the Flask web app with gunicorn on 127.0.0.1:$(PORT) (workers warmed up before traffic)
	$(VENV)/bin/gunicorn -c gunicorn.conf.py --bind 127.0.0.1:$(PORT)

dashboard: $(STAMP) ## Start the Voila dashboard
	$(VENV)/bin/voila dashboards/lesion_uploader.ipynb --Voila.config_file_paths=dashboards --port=8866 --no-browser

notebooks: $(STAMP) ## Re-execute every notebook on the full data and rewrite the outputs
	$(PY) tools/notebooks.py run-all

benchmark: $(STAMP) ## Print speed figures (feature pipeline, Keras vs TFLite features, Grad-CAM latency, web app under load, TTA cost, image-type gate cost, Keras vs TFLite, fine-tuning input)
	$(PY) benchmarks/feature_pipeline.py
	$(PY) benchmarks/feature_backends.py
	$(PY) benchmarks/explain_latency.py
	$(PY) benchmarks/webapp_load.py
	$(PY) benchmarks/tta_cost.py
	$(PY) benchmarks/gate_cost.py
	$(PY) benchmarks/export_backends.py
	$(PY) benchmarks/augment_pipeline.py

audit: $(STAMP) ## Leakage audit of test vs train (writes reports/audit)
	$(VENV)/bin/skinlesion data audit

clean: ## Remove caches and scratch outputs (keeps models/ and data/)
	rm -rf .pytest_cache test-artifacts
	find . -name __pycache__ -prune -exec rm -rf {} +
