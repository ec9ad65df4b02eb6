# Two entry points (see README): `make run` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
CORES  ?= all

.PHONY: run test lint dag bench clean

$(BIN)/snakemake: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test]"
	touch $@

run: $(BIN)/snakemake
	$(BIN)/snakemake --cores $(CORES)

test: $(BIN)/snakemake
	$(BIN)/python -m pytest -q

# Influence-stage benchmark at the seeds' scale, with the naive and Captum comparisons (prints figures).
bench: $(BIN)/snakemake
	$(BIN)/pip install -q -e ".[bench]"
	$(BIN)/python benchmarks/influence_bench.py --compare

lint: $(BIN)/snakemake
	$(BIN)/snakemake --lint

dag: $(BIN)/snakemake
	$(BIN)/snakemake --rulegraph | dot -Tpng > rulegraph.png

clean:
	rm -rf results logs benchmarks/out .snakemake report.html
