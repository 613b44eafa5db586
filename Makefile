# The front door: `make run` starts the service, `make test` runs the tests.
VENV := .venv
PY := $(VENV)/bin/python
BIN := $(VENV)/bin

.PHONY: install browser prometheus gettext hosts-tools messages run migrate test test-fast screenshots fuzz faults faults-hosts bench bench-quick lint format lock clean \
	observability-check

$(VENV)/.installed: requirements.lock requirements-dev.lock
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -r requirements-dev.lock
	touch $@

install: $(VENV)/.installed  ## create .venv from the lock file

# DEBUG is off unless set; the quickstart turns it on, which also supplies a development key.
QUICKSTART_ENV := DEBUG=true

migrate: install
	$(QUICKSTART_ENV) $(PY) manage.py migrate --noinput

# Quickstart: web on 127.0.0.1:8000, worker, beat and Flower (127.0.0.1:5555), emails on the console.
# Unless FLOWER_BASIC_AUTH is set, Flower gets a fresh password, printed here, on every run.
# The processes add up their metrics in var/metrics (signup.metrics), emptied on every run.
run: migrate
	@rm -rf var/metrics
	@auth="$${FLOWER_BASIC_AUTH:-admin:$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(12))')}"; \
	[ -n "$$FLOWER_BASIC_AUTH" ] || echo "Flower: http://127.0.0.1:$${FLOWER_PORT:-5555} as $$auth"; \
	$(QUICKSTART_ENV) FLOWER_BASIC_AUTH="$$auth" PROMETHEUS_MULTIPROC_DIR=$(CURDIR)/var/metrics PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/honcho start

# The tests run against PostgreSQL and Redis on their usual local ports (see README), with a
# key of their own made afresh (a key written here would be a published one).
# PYTHONDONTWRITEBYTECODE is emptied: without the cached bytecode of pytest's rewritten asserts
# every run and every started process compiles them again (seconds each run).
TEST_ENV := DATABASE_URL=$${TEST_DATABASE_URL:-postgres://postgres@127.0.0.1:5432/signup} \
	CELERY_BROKER_URL=$${TEST_BROKER_URL:-redis://127.0.0.1:6379/15} DEBUG=false \
	SECRET_KEY=$$(python3 -c 'import secrets; print(secrets.token_urlsafe(50))') \
	ALLOWED_HOSTS=testserver,localhost,127.0.0.1 CONN_MAX_AGE=0 \
	PYTHONDONTWRITEBYTECODE=

# Installs a Debian package (as root, or through sudo) or says what to do instead.
APT_INSTALL = if [ "$$(id -u)" = 0 ]; then SUDO=; elif command -v sudo >/dev/null; then SUDO=sudo; \
	else echo "make: $(1) is needed: install it as root (apt-get install $(1))"; exit 1; fi; \
	command -v apt-get >/dev/null || { echo "make: $(1) is needed and this is not Debian: install it"; exit 1; }; \
	$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $(1) >/dev/null

browser:  ## Debian's chromium and axe-core (npm, pinned by tests/axe/package-lock.json), for the browser tests
	@command -v chromium >/dev/null || { echo "installing chromium for the browser tests"; $(call APT_INSTALL,chromium); }
	@command -v npm >/dev/null || { echo "installing npm for axe-core"; $(call APT_INSTALL,npm); }
	@test -f tests/axe/node_modules/axe-core/axe.min.js || npm ci --prefix tests/axe --no-audit --no-fund --silent

# Debian's prometheus (with promtool), for the observability tests. Where systemd runs, the
# package also starts a Prometheus service of its own on :9090; the tests start theirs.
prometheus:
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { echo "installing prometheus for the observability tests"; $(call APT_INSTALL,prometheus); }

gettext:  ## GNU gettext, for the message-file tests and `make messages`
	@command -v msgfmt >/dev/null || { echo "installing gettext for the message files"; $(call APT_INSTALL,gettext); }

# The pages' and emails' message files: extract every marked string into locale/*/django.po
# (new ones arrive untranslated: translate them) and compile the .mo files, which are
# committed, so that running the service needs no gettext.
messages: install gettext
	DEBUG=true $(PY) manage.py makemessages --no-location --ignore=.venv --ignore=var \
		--ignore=bench --ignore=tests --ignore=harness --ignore=deploy -l de -l fr -l es
	DEBUG=true $(PY) manage.py compilemessages --ignore=.venv

# Every test, on the real services, TEST_PROCESSES at a time (pytest-xdist; about 9 minutes on
# two cores, where the suite is bound by CPU: the processes the tests start cost most of it).
TEST_PROCESSES ?= 4
test: install browser prometheus gettext hosts-tools
	$(TEST_ENV) $(BIN)/pytest -n $(TEST_PROCESSES) --dist loadgroup $(PYTEST_ARGS)

# The tests that need no service (no PostgreSQL, Redis, RabbitMQ, browser, Prometheus or gettext),
# in under 30 s, two at a time: the `processes` tests are left out for their time even where
# they need none.
test-fast: install
	$(TEST_ENV) $(BIN)/pytest -n 2 -m "not (postgres or redis or rabbitmq or chromium or prometheus or gettext or processes or hosts)" $(PYTEST_ARGS)

# The README's pictures (the admin's funnel and timeline, the pages at 375, 900 and 1280 px),
# taken again by headless Chromium.
screenshots: install browser
	SCREENSHOT_DIR=$(CURDIR)/docs/screenshots $(TEST_ENV) $(BIN)/pytest tests/test_screenshots.py tests/test_accessibility.py -k "screenshot or pictures" $(PYTEST_ARGS)

# Schemathesis against the live API for longer than `make test` does, with a random seed (printed;
# FUZZ_SEED=<it> replays a run), FUZZ_EXAMPLES examples per operation.
fuzz: install
	@seed=$${FUZZ_SEED:-$$(python3 -c 'import random; print(random.randrange(2**31))')}; \
	echo "fuzz seed: $$seed"; \
	FUZZ_SEED=$$seed FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-500} FUZZ_TIMEOUT=$${FUZZ_TIMEOUT:-3000} $(TEST_ENV) \
		$(BIN)/pytest -s tests/test_api_contract.py -k schemathesis $(PYTEST_ARGS)

# The fault suite's long variants (FAULT_ROUNDS rounds each); prints the outcome table.
faults: install
	rm -f var/faults.jsonl
	FAULT_ROUNDS=$${FAULT_ROUNDS:-20} FAULT_REPORT=$(CURDIR)/var/faults.jsonl $(TEST_ENV) \
		$(BIN)/pytest -m "faults and not hosts" $(PYTEST_ARGS)
	$(PY) -m tests.faults.report var/faults.jsonl

# Debian's nftables (to cut hosts apart) and faketime (to set a host's clock wrong), for the
# faults of several hosts; the hosts themselves are network namespaces, which need root.
hosts-tools:
	@command -v nft >/dev/null && command -v faketime >/dev/null || { echo "installing nftables and faketime for the faults of several hosts"; $(call APT_INSTALL,nftables faketime); }

# The faults of several hosts in full (a 60 s cut, two beats for 10 minutes, HOSTS_ROUNDS
# rounds of a host's death: about 40 minutes); prints docs/RELIABILITY.md's table of them.
faults-hosts: install hosts-tools
	rm -f var/faults-hosts.jsonl
	HOSTS_FULL=1 FAULT_REPORT=$(CURDIR)/var/faults-hosts.jsonl $(TEST_ENV) \
		$(BIN)/pytest -m hosts $(PYTEST_ARGS)
	$(PY) -m tests.faults.report var/faults-hosts.jsonl --hosts

# The benchmarks start their own stack (a fresh PostgreSQL database, a private Redis); wrk from apt.
bench: install
	@command -v wrk >/dev/null || $(call APT_INSTALL,wrk)
	$(PY) -m bench.run

bench-quick: install  ## the same with reduced sizes, about 6 minutes
	@command -v wrk >/dev/null || $(call APT_INSTALL,wrk)
	$(PY) -m bench.run --quick

# Prometheus's own checks of deploy/observability: its configuration, the alert rules and
# their unit tests (alerts.test.yml).
observability-check: prometheus
	promtool check config --syntax-only deploy/observability/prometheus.yml
	promtool check rules deploy/observability/alerts.yml
	promtool test rules deploy/observability/alerts.test.yml

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

format: install
	$(BIN)/ruff check --fix . && $(BIN)/ruff format .

# requirements.lock: what the service runs on (the production image); requirements-dev.lock:
# that plus the tests' and benchmarks' tools, at the same versions.
lock:  ## re-pin both lock files from pyproject.toml (needs uv)
	uv pip compile pyproject.toml --python-version 3.11 -o requirements.lock
	uv pip compile pyproject.toml --extra dev --python-version 3.11 -c requirements.lock -o requirements-dev.lock

clean:
	rm -rf var/broker var/celerybeat-schedule*
