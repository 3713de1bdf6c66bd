# mimic-runner — common tasks. `make install` creates .venv (unless a virtualenv is active)
# and installs the package with its dev extras; every other target uses that environment.
PYTHON ?= python3
VENV ?= .venv
ifdef VIRTUAL_ENV
BIN := $(VIRTUAL_ENV)/bin
else
BIN := $(VENV)/bin
endif
ARGS ?=

.PHONY: install browser slurm-deps test test-fast test-all test-slurm lint format smoke run table1 table2 report \
	bench gpu-check fuzz clean

install:
	@if [ -z "$$VIRTUAL_ENV" ] && [ ! -x $(VENV)/bin/python ]; then $(PYTHON) -m venv $(VENV); fi
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -e ".[dev]"

# Debian's Chromium for the browser test of the feedback page (needs root; never downloads a browser).
browser:
	@command -v chromium >/dev/null || (apt-get update -qq && apt-get install -y -qq chromium)

# Debian's SLURM, munge and MariaDB for scripts/slurm_local.sh, the one-node cluster that the
# launcher=slurm tests start (needs root; installs only what is missing).
SLURM_PKGS := slurm-wlm munge slurmdbd mariadb-server
slurm-deps:
	@if [ -x /usr/sbin/slurmctld ] && [ -x /usr/sbin/slurmdbd ] && [ -x /usr/sbin/munged ] && \
	    [ -x /usr/sbin/mariadbd ]; then echo "SLURM packages present"; else \
	  export DEBIAN_FRONTEND=noninteractive; \
	  apt-get install -y -qq -o DPkg::Lock::Timeout=300 $(SLURM_PKGS) >/dev/null || \
	  (apt-get update -qq && apt-get install -y -qq -o DPkg::Lock::Timeout=300 $(SLURM_PKGS) \
	    >/dev/null); fi

# The whole suite: slow tests included, GPU tests skip without a GPU, browser tests skip without Chromium.
test:
	$(BIN)/python -m pytest -q $(ARGS)

test-fast:
	$(BIN)/python -m pytest -q -m "not slow" $(ARGS)

# launcher=slurm against a real one-node cluster (root and `make slurm-deps`; skips otherwise).
test-slurm:
	$(BIN)/python -m pytest -q tests/test_slurm_launcher.py $(ARGS)

# Long fuzzing (issue 23): mutated dataset files through the reader and generated requests
# through the feedback API, FUZZ_CASES each (CI runs a few dozen); prints how many cases were
# tried, refused, accepted and failed (also test-artifacts/fuzz_*.json).
FUZZ_CASES ?= 10000
fuzz:
	MIMIC_FUZZ_CASES=$(FUZZ_CASES) $(BIN)/python -m pytest -q -s -p no:cacheprovider --timeout=0 \
	  tests/test_fuzz_dataset.py tests/test_fuzz_api.py $(ARGS)

lint:
	$(BIN)/ruff check mimic_runner tests scripts

format:
	$(BIN)/ruff format mimic_runner tests scripts

# A tiny end-to-end run (about a minute on 2 CPU cores, data generation included).
smoke:
	$(BIN)/mimic-run trainer=smoke $(ARGS)

run:
	$(BIN)/mimic-run $(ARGS)

table1:
	$(BIN)/mimic-run -m sweep=table1 $(ARGS)

table2:
	$(BIN)/mimic-run -m sweep=table2 $(ARGS)

report:
	$(BIN)/mimic-report runs --compare-paper $(ARGS)

bench:
	$(BIN)/mimic-bench $(ARGS)

# Everything that needs a CUDA device, in under 10 minutes: the CUDA-only tests, mimic-bench on the
# GPU and one timed Table 1 run, summed up in gpu-check/summary.{md,json} ($$OUT/gpu-check when OUT
# is set). Without CUDA it prints one line and exits 0.
gpu-check:
	@$(BIN)/python scripts/gpu_check.py $(ARGS)

clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache test-artifacts
