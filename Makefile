# Entry points (see README): `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= all

.PHONY: run test test-fast lint format dag bench clean

$(BIN)/snakemake: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	# `snakemake --profile slurm` from the repository root: Snakemake looks up profile names in ~/.config/snakemake
	mkdir -p $(HOME)/.config/snakemake && ln -sfn $(CURDIR)/profiles/slurm $(HOME)/.config/snakemake/slurm
	touch $@

run: $(BIN)/snakemake
	$(BIN)/snakemake --cores $(CORES)

# What CI runs: `make lint`, then the full suite (unit tests, end-to-end runs of the tiny config,
# the local SLURM cluster where one is installed).
test: lint
	$(BIN)/python -m pytest -q

# Unit tests only: no Snakemake run, no training of the tiny config.
test-fast: $(BIN)/snakemake
	$(BIN)/python -m pytest -q -m "not e2e and not slurm"

lint: $(BIN)/snakemake
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/snakefmt --check .
	$(BIN)/snakemake --lint

# Rewrites Python and Snakemake files in place (what `make lint` checks).
format: $(BIN)/snakemake
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .
	$(BIN)/snakefmt .

# Influence-stage benchmark at the seeds' scale, with the naive and Captum comparisons (prints figures).
bench: $(BIN)/snakemake
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/influence_bench.py --compare

dag: $(BIN)/snakemake
	$(BIN)/snakemake --rulegraph | dot -Tpng > rulegraph.png

# Everything runs write: results, logs (with the rules' benchmark files), Snakemake's state, reports.
clean:
	rm -rf results logs .snakemake report.html rulegraph.png .pytest_cache .ruff_cache
