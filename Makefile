# The two commands of the README: `make run` and `make test`. Both build .venv on first use.
VENV := .venv
STAMP := $(VENV)/.installed-stamp

.PHONY: run test bench lint

$(STAMP): pyproject.toml constraints.txt
	@test -x $(VENV)/bin/python || { PY=$$(scripts/find-python) && "$$PY" -m venv $(VENV); }
	$(VENV)/bin/python -m pip install -q --disable-pip-version-check -c constraints.txt -e '.[test]'
	@touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/relay serve

test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/pytest

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: $(STAMP)
	$(VENV)/bin/python -m bench.run
