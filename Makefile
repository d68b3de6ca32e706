# The two commands of the README. Both set up .venv/ first (a no-op when already set up).
SHELL := /bin/bash
VENV := .venv
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
CORES ?= $(shell nproc)
TARGET ?= all
PYTEST_ARGS ?=

.PHONY: setup pipeline physics lint test test-fast report clean

setup:
	@scripts/setup_env.sh

pipeline: setup
	$(VENV)/bin/snakemake --profile profiles/local --cores $(CORES) $(TARGET)
	@if [ "$(TARGET)" = "all" ]; then $(VENV)/bin/snakemake --profile profiles/local --report results/report.html; fi

# The physics-grade run (config/physics.yaml over config.yaml, ~1 h on 2 CPU cores) in its own
# directory, runs/physics/results/, beside the default results/.
PHYSICS_DIR ?= runs/physics
physics: setup
	mkdir -p $(PHYSICS_DIR)
	$(VENV)/bin/snakemake $(TARGET) --profile $(CURDIR)/profiles/local --cores $(CORES) -s $(CURDIR)/workflow/Snakefile \
		--directory $(PHYSICS_DIR) --configfile $(CURDIR)/config/physics.yaml
	@if [ "$(TARGET)" = "all" ]; then $(VENV)/bin/snakemake --profile $(CURDIR)/profiles/local -s $(CURDIR)/workflow/Snakefile \
		--directory $(PHYSICS_DIR) --configfile $(CURDIR)/config/physics.yaml --report results/report.html; fi

# ruff (lint + format) on the Python, snakefmt on the Snakemake files; `ruff format . &&
# snakefmt workflow` fixes what the format checks report.
lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/snakefmt --check workflow

test: setup lint
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

test-fast: setup
	$(VENV)/bin/python -m pytest -m "not slow" $(PYTEST_ARGS)

clean:
	rm -rf results .snakemake
