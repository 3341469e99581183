# make run   - set up (first time only) and serve the API on http://127.0.0.1:8000, embedded Weaviate
# make test  - set up (first time only) and run the whole test suite
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: run test test-slow lint setup lock clean

$(STAMP): pyproject.toml constraints.txt
	@test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --upgrade pip==26.3
	$(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

LLAMA_STAMP := $(VENV)/.llama-cpp

# llama-cpp-python for the offline LLM: built once from source into ~/.cache/ticket-rag/wheels/
# (3-5 min, needs a C++ compiler), then installed from there without dependencies.
$(LLAMA_STAMP): $(STAMP)
	wheel=$$($(VENV)/bin/python -m ticket_rag.runtime.local_llm_artifacts wheel) && \
	  $(VENV)/bin/python -m pip install --quiet --disable-pip-version-check --no-deps "$$wheel"
	@touch $@

# The provider the settings (environment, .env) choose: llama.cpp is built only for `local`.
PROVIDER = $(VENV)/bin/python -c 'from chains.llm import describe_llm; from ticket_rag.settings import load_settings; \
  info = describe_llm(load_settings()); print(info.provider if info else "none")'

setup: $(STAMP)
	@if [ "$$($(PROVIDER))" = local ]; then $(MAKE) --no-print-directory $(LLAMA_STAMP); fi
	$(VENV)/bin/ticket-rag setup

run: setup
	$(VENV)/bin/ticket-rag serve

# The tests cover every provider, the local model included, so they always need llama.cpp.
test: setup $(LLAMA_STAMP)
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

# ruff (lint and format), mypy strict on the package, and the import boundary (the domain never loads the web layer).
lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy
	$(VENV)/bin/python .ci/check_boundaries.py

test-slow: setup $(LLAMA_STAMP)
	$(VENV)/bin/python -m pytest -m slow $(PYTEST_ARGS)

# Re-resolve every pinned package after changing pyproject.toml's dependencies.
lock:
	rm -rf /tmp/ticket-rag-lock && $(PYTHON) -m venv /tmp/ticket-rag-lock
	/tmp/ticket-rag-lock/bin/pip install --quiet -e '.[dev]'
	{ echo "# Every package pinned, as resolved and tested together (pip freeze)."; echo "# Regenerate: make lock"; \
	  /tmp/ticket-rag-lock/bin/pip freeze --exclude-editable | grep -v '^ticket-rag'; } > constraints.txt

clean:
	rm -rf $(VENV) data
