# dse: every target creates/updates the virtual environment first (idempotent: a stamp file tracks pyproject.toml).
PY ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
ARGS ?=
# The offline CIFAR-10 copy beside the repository, when there is one (otherwise data/ and torchvision's download).
SHARED_DATA := $(abspath ../shared/data/cifar10-jpg)
ifneq ($(wildcard $(SHARED_DATA)/train),)
export DSE_DATA_DIR ?= $(SHARED_DATA)
endif

.DEFAULT_GOAL := help
.PHONY: help venv test test-fast test-e2e sweep tables bench bench-gpu bench-pack bench-settings bench-target gpu-kit gpu-check lint dashboard dry-run deploy clean clean-studies
# The GPU machine has no .venv and no network: gpu-check runs with its python3 (after `source .gpu-kit/setup.sh`)
GPU_PY ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	@touch $(STAMP)

venv: $(STAMP)  ## create/update the virtual environment in .venv

# test processes for `make test` (pytest-xdist): one per core; each test file stays in one process (its module
# fixtures are built once, and the SLURM tests, which share one cluster, run one after the other)
TEST_JOBS ?= auto
test: $(STAMP)  ## run every test (unit + end-to-end on ../shared/data/cifar10-jpg + PostgreSQL and SLURM when available)
	$(BIN)/python -m pytest -n $(TEST_JOBS) --dist loadfile $(ARGS)

test-fast: $(STAMP)  ## unit tests only
	$(BIN)/python -m pytest -m "not e2e and not postgres and not slurm and not install" $(ARGS)

test-e2e: $(STAMP)  ## end-to-end tests only
	$(BIN)/python -m pytest -m e2e $(ARGS)

sweep: $(STAMP)  ## the main job: the default CPU study (cpu-quick) into results/dse.db; pass more overrides with ARGS="..."
	$(BIN)/python -m dse.sweep $(ARGS)

dry-run: $(STAMP)  ## list the planned trials of a study without training (ARGS="experiment=table3")
	$(BIN)/python -m dse.sweep dry_run=true $(ARGS)

tables: $(STAMP)  ## regenerate the paper's tables and figures from the store into results/ (ARGS="--epochs-csv results/epochs.csv")
	$(BIN)/python -m dse.tables $(ARGS)

bench: $(STAMP)  ## benchmarks: training core vs reference pipeline, tables on a 10,000-trial store, scheduling overhead
	$(BIN)/python bench/bench_train.py $(ARGS)
	$(BIN)/python bench/bench_step.py
	$(BIN)/python bench/bench_tables.py
	$(BIN)/python bench/bench_sched.py

bench-gpu: $(STAMP)  ## one CUDA GPU: authors' pipeline vs fit eager vs fit fast, 1-16 processes, paper-study hours
	$(BIN)/python bench/bench_gpu.py $(ARGS)

bench-target: $(STAMP)  ## the target facts: MACs vs latency and params vs peak RAM (Spearman), their cost cold and warm
	$(BIN)/python bench/bench_target.py

bench-settings: $(STAMP)  ## every candidate speed setting of the default study's rows side by side, and what auto picks
	$(BIN)/python bench/bench_settings.py $(ARGS)

gpu-kit: $(STAMP)  ## stage ../shared/gpu-kit into .gpu-kit (+ pytest wheels for the GPU machine's Python 3.12)
	bash ../shared/gpu-kit/stage
	$(BIN)/pip download -q -d .gpu-kit/wheels --only-binary=:all: --python-version 3.12 --implementation cp \
	  --platform manylinux2014_x86_64 pytest==9.2.0 pytest-timeout==2.4.0

gpu-check:  ## on a GPU machine (source .gpu-kit/setup.sh first): the CUDA checks, one summary file, < 8 min
	$(GPU_PY) bench/gpu_check.py $(ARGS)

bench-pack: $(STAMP)  ## several sweep workers on this machine vs the reference pipeline, trials one by one (< 3 min)
	$(BIN)/python bench/bench_pack.py $(ARGS)

lint: $(STAMP)  ## ruff
	$(BIN)/ruff check dse tests bench

dashboard: $(STAMP)  ## optuna-dashboard on http://127.0.0.1:8080 (store: STORAGE=URL, else DSE_STORAGE_URL, else results/dse.db)
	$(BIN)/python -c 'import sys, optuna_dashboard; from dse.store import resolve_url; \
	  optuna_dashboard.run_server(resolve_url(sys.argv[1] or None), host="127.0.0.1", port=8080)' "$${STORAGE:-}"

deploy: $(STAMP)  ## export/quantize/measure the best trials (ARGS="--study cpu-quick --pareto")
	$(BIN)/python -m dse.deploy $(ARGS)

clean:  ## remove the environment and what `make tables` regenerates; keeps every study (stores, checkpoints, runs)
	rm -rf $(VENV) results/tables results/figures results/report.md

# Deleting studies cannot be undone: the target names what it would delete and asks, unless CONFIRM=delete.
STUDY_FILES = $(wildcard results/*.db results/*.db-wal results/*.db-shm results/*.db.lock) $(wildcard results/checkpoints)
clean-studies:  ## DELETE the default store's studies and checkpoints under results/ (asks; CONFIRM=delete to skip)
	@if [ -z "$(strip $(STUDY_FILES))" ]; then echo "no stores or checkpoints under results/"; exit 0; fi; \
	du -sh $(STUDY_FILES); \
	answer="$(CONFIRM)"; \
	if [ "$$answer" != delete ]; then printf 'delete these studies and checkpoints for good? type delete: '; read answer; fi; \
	if [ "$$answer" = delete ]; then rm -rf $(STUDY_FILES) && echo deleted; else echo "kept (nothing deleted)"; exit 1; fi
