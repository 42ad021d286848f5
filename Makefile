# The two commands of the README: `make run` and `make test`. Both build .venv on first use.
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: run test test-fast test-slow bench lint

$(STAMP): pyproject.toml constraints.txt
	@test -x $(VENV)/bin/python || { PY=$$(scripts/find-python) && "$$PY" -m venv $(VENV); }
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $(STAMP)

# Real clients the end-to-end tests drive (tests/clients: Claude Code and Gemini CLI, pinned by package.json +
# package-lock.json).
CLIENTS := tests/clients
CLIENTS_STAMP := $(CLIENTS)/node_modules/.installed-stamp

.PHONY: clients
clients: $(CLIENTS_STAMP)

$(CLIENTS_STAMP): $(CLIENTS)/package.json $(CLIENTS)/package-lock.json
	@command -v npm >/dev/null 2>&1 || { echo "error: npm not found. The real-client tests install Claude Code and Gemini CLI from $(CLIENTS)/package-lock.json with npm; install Node.js and npm (https://nodejs.org) and run make again." >&2; exit 1; }
	cd $(CLIENTS) && npm ci --no-audit --no-fund --loglevel=error
	@touch $@

# The page's browser tests drive Debian's chromium (Playwright uses that binary; it never downloads a browser).
CHROMIUM := /usr/bin/chromium

.PHONY: chromium test-browser
chromium: $(CHROMIUM)

$(CHROMIUM):
	@command -v apt-get >/dev/null 2>&1 || { echo "error: $(CHROMIUM) not found and no apt-get to install it. The page's browser tests need Debian's chromium package." >&2; exit 1; }
	apt-get update
	DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium

run: $(STAMP)
	$(VENV)/bin/relay serve

# Lint and types, every test but the slow ones, then the slow ones (soak, benchmark smoke) as their own step.
test: lint $(CLIENTS_STAMP) $(CHROMIUM)
	$(VENV)/bin/pytest -m "not slow"
	$(MAKE) test-slow

test-slow: $(STAMP)
	$(VENV)/bin/pytest -m slow

# Only the page's tests in a real browser (screenshots in test-artifacts/).
test-browser: $(STAMP) $(CHROMIUM)
	$(VENV)/bin/pytest -m browser

# The edit loop: no relay processes, no slow tests (seconds, not minutes).
test-fast: $(STAMP)
	$(VENV)/bin/pytest -q -m "not slow and not e2e"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

bench: $(STAMP)
	$(VENV)/bin/python -m bench.run
