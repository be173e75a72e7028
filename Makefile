# One-command set-up: `make demo` runs the whole loop, `make test` runs the tests, each from a fresh clone.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed

.PHONY: demo test lint typecheck model venv system-deps bench clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet -e '.[dev,convert]'
	touch $(STAMP)

venv: $(STAMP)

# Debian packages the tests use: the mosquitto broker, headless chromium (preview test), shellcheck (installer),
# systemd-analyze (unit checks). Installed only when missing, and only when we are root.
SYSTEM_BINS := mosquitto:mosquitto chromium:chromium shellcheck:shellcheck systemd-analyze:systemd openssl:openssl
system-deps:
	@missing=""; for pair in $(SYSTEM_BINS); do bin=$${pair%%:*}; pkg=$${pair##*:}; \
	  command -v $$bin >/dev/null 2>&1 || test -x /usr/sbin/$$bin || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	    systemctl disable --now mosquitto >/dev/null 2>&1 || true; \
	  else echo "missing Debian packages:$$missing (sudo apt-get install$$missing)" >&2; exit 1; fi; \
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

# Rebuild the default model bundle from a fixed seed (minutes on 2 cores).
model: venv
	$(PY) -m convert.build_default

clean:
	rm -rf $(VENV) build .pytest_cache .mypy_cache .ruff_cache
