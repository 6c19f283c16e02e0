# Caretrail: `make run` serves the portal, `make test` runs every check.
# Both create .venv/ from requirements/ when it is missing or out of date.

SHELL := /bin/bash
PYTHON ?= $(shell for p in python3.12 python3.11 python3; do \
	if command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(not ((3, 11) <= sys.version_info[:2] <= (3, 12)))' 2>/dev/null; then echo $$p; break; fi; done)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_PATIENTS ?= 300
HOST ?= 127.0.0.1
PORT ?= 8000

.PHONY: install run test lint typecheck migrations-check pytest bench clean

$(STAMP): requirements/base.txt requirements/dev.txt
	@if [ -z "$(PYTHON)" ]; then echo "Caretrail needs Python 3.11 or 3.12 on the PATH." >&2; exit 1; fi
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements/dev.txt
	@touch $(STAMP)

install: $(STAMP)

run: install
	$(PY) manage.py migrate --noinput
	$(PY) manage.py sync_roles
	$(PY) manage.py load_reference_data
	$(PY) manage.py seed_demo --patients $(DEMO_PATIENTS) --seed 1 --once
	$(PY) manage.py runserver $(HOST):$(PORT) --noreload

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

typecheck: install
	$(VENV)/bin/mypy

migrations-check: install
	DJANGO_SETTINGS_MODULE=config.settings.test $(PY) manage.py makemigrations --check --dry-run

pytest: install
	$(VENV)/bin/pytest

test: lint typecheck migrations-check pytest

BENCH ?= seed
bench: install
	$(PY) -m bench $(BENCH)

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
