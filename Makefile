# arca: the two set-up commands are `make serve` and `make test` (README).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

VIEWER_DIST := viewer/node_modules/@ohif/app/dist/index.html

.PHONY: serve test lint typecheck lock clean viewer

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -r requirements.lock
	$(BIN)/python -m pip install -q --no-deps -e .
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/arca serve $(ARGS)

# The whole suite; the OHIF viewer is installed first when npm is there (its test needs it).
test: $(STAMP)
	@if command -v npm >/dev/null 2>&1; then $(MAKE) --no-print-directory viewer; \
	else echo "make test: npm not found, the OHIF viewer test will be skipped"; fi
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# OHIF's prebuilt static viewer for `arca serve --viewer` (viewer/README.md).
viewer: $(VIEWER_DIST)

$(VIEWER_DIST): viewer/package.json viewer/package-lock.json
	cd viewer && npm ci --ignore-scripts --no-audit --no-fund
	touch $@

typecheck: $(STAMP)
	$(BIN)/mypy

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
