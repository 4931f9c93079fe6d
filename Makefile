# arca: the two set-up commands are `make serve` and `make test` (README).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test lint typecheck lock clean

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/arca serve $(ARGS)

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

lock:
	$(BIN)/python -m pip install -q uv
	$(BIN)/uv pip compile --python-version 3.11 --extra test -o requirements.lock pyproject.toml

clean:
	rm -rf $(VENV) build *.egg-info

# Benchmark against Orthanc: `make bench BENCH_ARGS="--quick"` (README, "Benchmark").
.PHONY: bench
bench: $(STAMP)
	$(BIN)/python -m pip install -q -e '.[bench]'
	$(BIN)/python -m bench.run $(BENCH_ARGS)
