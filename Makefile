# kenner — set-up, demo and tests. Everything installs into .venv.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
FMNIST := /usr/share/datasets/fashion-mnist
STAMPS := /usr/share/tuxpaint/stamps

.PHONY: setup demo test test-slow lint bench clean

$(BIN)/kenner: pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch is pinned on the install path CI uses
	$(BIN)/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(BIN)/kenner

setup: $(BIN)/kenner

# Fashion-MNIST for the demo comes from Debian's dataset-fashion-mnist package.
$(FMNIST):
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null \
	    || echo "could not install dataset-fashion-mnist; the demo test will be skipped"; \
	else echo "install Debian's dataset-fashion-mnist (or run 'kenner demo' online to download it)"; fi

# Tux Paint stamps (real images) for tests/test_audit.py and the benchmarks: Debian's tuxpaint-stamps-default.
$(STAMPS):
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq tuxpaint-stamps-default) >/dev/null \
	    || echo "could not install tuxpaint-stamps-default; the audit tests on real images will be skipped"; \
	else echo "install Debian's tuxpaint-stamps-default for the audit tests on real images"; fi

# The web UI's browser tests drive Debian's chromium with Playwright (no browser download).
CHROMIUM := /usr/bin/chromium
$(CHROMIUM):
	@if command -v apt-get >/dev/null 2>&1 && [ "$$(id -u)" = 0 ]; then \
	  (apt-get update -qq && apt-get install -y -qq chromium) >/dev/null \
	    || echo "could not install chromium; the web UI's browser tests will be skipped"; \
	else echo "install Debian's chromium for the web UI's browser tests (they are skipped without it)"; fi

demo: setup $(FMNIST)
	$(BIN)/kenner demo

test: setup $(FMNIST) $(STAMPS) $(CHROMIUM)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -q

test-slow: setup
	$(BIN)/python -m pytest -q -m slow

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

# The benchmarks' real images come from Debian packages (Tux Paint stamps, Fashion-MNIST).
bench: setup $(FMNIST) $(STAMPS)
	$(BIN)/python bench/run_all.py

clean:
	rm -rf $(VENV) build *.egg-info src/*.egg-info
