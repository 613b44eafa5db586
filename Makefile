# The front door: `make run` starts the service, `make test` runs the tests.
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: install run migrate test test-fast lint format lock clean

$(VENV)/.installed: requirements.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements.lock
	touch $@

install: $(VENV)/.installed  ## create .venv from the lock file

migrate: install
	$(PY) manage.py migrate --noinput

# Quickstart: web on 127.0.0.1:8000, worker, beat and Flower (127.0.0.1:5555), emails on the console.
run: migrate
	FLOWER_BASIC_AUTH=$${FLOWER_BASIC_AUTH:-admin:admin} PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/honcho start

test: install  ## needs PostgreSQL and Redis (see README); headless Chromium for the browser tests
	$(BIN)/pytest

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

lock:  ## re-pin requirements.lock from pyproject.toml (needs uv)
	uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf var/broker var/celerybeat-schedule*
