# One-command set-up: `make demo` runs the whole loop, `make test` runs the tests, each from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck model venv system-deps bench clean

# Debian packages, installed when we are root and apt-get is there, else named for the user to install.
APT_INSTALL = if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  echo "installing Debian packages: $(1)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $(1) >/dev/null; \
	else echo "missing Debian packages: $(1) (sudo apt-get install $(1))" >&2; exit 1; fi

# A venv whose pip runs is kept; a missing or broken one (a first run without python3-venv leaves one without pip)
# is made again, with Debian's python3-venv installed first if venv cannot make one.
$(STAMP): pyproject.toml
	@$(PY) -m pip --version >/dev/null 2>&1 || { rm -rf $(VENV); $(PYTHON) -m venv $(VENV) >/dev/null 2>&1 || \
	  { rm -rf $(VENV); $(call APT_INSTALL,python3-venv); $(PYTHON) -m venv $(VENV); }; }
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev,convert]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests use: the mosquitto broker, headless chromium (preview test), shellcheck (installer),
# systemd-analyze (unit checks), strace (the outbox's fsyncs, counted), faketime (a Pi's clock before NTP sets it),
# and for the installer test, which builds the package offline with the system
# Python as on a Pi, python3-venv, python3-wheel and python3-setuptools. Installed only when missing, and only when we are root.
SYSTEM_BINS := mosquitto:mosquitto chromium:chromium shellcheck:shellcheck systemd-analyze:systemd openssl:openssl \
               strace:strace faketime:faketime
system-deps:
	@missing=""; for pair in $(SYSTEM_BINS); do bin=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$bin >/dev/null 2>&1 || test -x /usr/sbin/$$bin || missing="$$missing $$pkg"; done; \
	if [ -x /usr/bin/python3 ]; then \
	  /usr/bin/python3 -c 'import wheel' >/dev/null 2>&1 || missing="$$missing python3-wheel"; \
	  /usr/bin/python3 -c 'import setuptools' >/dev/null 2>&1 || missing="$$missing python3-setuptools"; \
	  /usr/bin/python3 -m venv --help >/dev/null 2>&1 && /usr/bin/python3 -c 'import ensurepip' >/dev/null 2>&1 \
	    || missing="$$missing python3-venv"; \
	fi; \
	if [ -n "$$missing" ]; then \
	  $(call APT_INSTALL,$$missing); \
	  systemctl disable --now mosquitto >/dev/null 2>&1 || true; \
	fi

lint: venv
	$(VENV)/bin/ruff check edge convert tests bench
	$(VENV)/bin/mypy edge convert

test: venv system-deps lint
	$(VENV)/bin/pytest -q

demo: venv
	$(VENV)/bin/shelfscout demo

bench: venv
	$(VENV)/bin/shelfscout bench

# Rebuild the default model bundle from a fixed seed (about an hour on 2 cores).
model: venv
	$(PY) -m convert.build_default

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
