# Fleet dashboard.  `make run` starts everything on http://127.0.0.1:8000, `make test` runs the suite.
#
#   make run  [PORT=8000] [ARGS="--devices 10 --no-simulator"]
#   make test [ARGS="-k actions -x"]
#   make bench | bench-scale | lint | fmt | migrate | venv | clean
#
# The virtualenv is (re)built only when pyproject.toml changes ($(STAMP)), so repeated runs are fast.

SHELL := /bin/bash
.DEFAULT_GOAL := run
.PHONY: run test bench bench-scale lint fmt migrate venv clean

VENV  := .venv
PY    := $(VENV)/bin/python
STAMP := $(VENV)/.installed-from-pyproject
ARGS  ?=

# Runtime dependencies plus the dev extra, read from pyproject.toml: installed directly, so the
# project itself is not built (no egg-info or build/ at the top level).
REQUIREMENTS := import tomllib; p = tomllib.load(open("pyproject.toml", "rb"))["project"]; \
	print("\n".join(p["dependencies"] + p["optional-dependencies"]["dev"]))

run: $(STAMP)  ## the dashboard with Redis, a Celery worker, simulated devices and the web server
	$(PY) manage.py run_dashboard $(if $(PORT),--port $(PORT)) $(ARGS)

test: $(STAMP)  ## the whole test suite (pytest); extra pytest arguments via ARGS=...
	$(PY) -m pytest $(ARGS)

bench: $(STAMP)  ## the benchmark
	$(PY) manage.py bench $(ARGS)

bench-scale: $(STAMP)  ## the whole system at 100,000 simulated devices (gunicorn, workers, simulators)
	$(PY) manage.py bench_scale $(ARGS)

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

fmt: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

migrate: $(STAMP)
	$(PY) manage.py migrate

venv: $(STAMP)

# Python >= 3.12 (Django 6.1): pyenv honouring .python-version, else a pyenv-installed 3.12+,
# else python3.13 / python3.12 / python3 on PATH. Each candidate is checked by running it.
$(STAMP): pyproject.toml
	@set -euo pipefail; \
	good() { [ -n "$$1" ] && "$$1" -c 'import sys; sys.exit(sys.version_info < (3, 12))' >/dev/null 2>&1; }; \
	if ! good $(PY); then \
		want=$$(head -n1 .python-version 2>/dev/null || true); \
		python=; \
		for candidate in \
			"$$(command -v pyenv >/dev/null && pyenv which python 2>/dev/null || true)" \
			$${want:+$$HOME/.pyenv/versions/$$want*/bin/python} \
			$$HOME/.pyenv/versions/3.1[2-9]*/bin/python \
			"$$(command -v python3.13 || true)" "$$(command -v python3.12 || true)" "$$(command -v python3 || true)"; do \
			if good "$$candidate"; then python=$$candidate; break; fi; \
		done; \
		if [ -z "$$python" ]; then \
			echo "error: Python 3.12 or newer is needed (Django 6.1) and none was found." >&2; \
			echo "       Install one (e.g. 'pyenv install 3.12') or put python3.12 on PATH." >&2; \
			exit 1; \
		fi; \
		echo "Creating $(VENV) with $$python ($$("$$python" --version))"; \
		rm -rf $(VENV); \
		"$$python" -m venv $(VENV); \
	fi; \
	echo "Installing dependencies from pyproject.toml into $(VENV)"; \
	$(PY) -c '$(REQUIREMENTS)' > $(VENV)/requirements.txt; \
	$(PY) -m pip install --quiet --disable-pip-version-check -r $(VENV)/requirements.txt; \
	touch $@

clean:  ## removes the virtualenv, runtime data (.run: database, logs) and caches
	rm -rf $(VENV) .run .pytest_cache .ruff_cache build *.egg-info
	find . -name __pycache__ -type d -not -path './.git/*' -prune -exec rm -rf {} +
