# Set-up and everyday tasks. `make run` and `make test` work on a fresh machine.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install blas run test lint bench bench-full clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e '.[dev]'
	@$(MAKE) -s blas
	@touch $@

# Linux: an optimized BLAS under MLX's CPU backend (see benchmarks/README.md, "Linux: an optimized BLAS").
blas:
	@$(BIN)/python -m mlx_slm.cpu.blas_setup

run: install
	$(BIN)/mlx-slm generate

test: install
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache .ruff_cache

# The README's performance figures (benchmarks/results/bench-*.{json,md,png}).
# `bench` runs in about 21 minutes on a 2-core, 24 GB machine (CPU backend); `bench-full` is
# every size and precision (for Apple Silicon). Both compare with mlx-lm (see benchmarks/README.md).
bench: install
	$(BIN)/python benchmarks/bench_sweep.py --preset standard

bench-full: install
	$(BIN)/python benchmarks/bench_sweep.py --preset full
