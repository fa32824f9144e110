# The two set-up commands: `make run` and `make test` (see README.md).
# The distribution's Python 3.11+ when it can make a venv: Debian builds it with PGO and
# LTO, and the gateway's hot path runs 10% fewer instructions on it than on a plain
# --enable-shared build (pyenv's default); else the first python3 on PATH.
# `make PYTHON=...` picks another (an existing .venv is kept: remove it to switch).
PYTHON ?= $(shell for p in /usr/bin/python3 /usr/bin/python3.11; do \
	$$p -c 'import sys, ensurepip, venv; sys.exit(sys.version_info < (3, 11))' \
	2>/dev/null && echo $$p && exit; done; echo python3)
VENV   := .venv
BIN    := $(VENV)/bin

.PHONY: run test bench lint tools bench-tools clean

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q -e .
	touch $@

$(VENV)/.installed-test: pyproject.toml $(VENV)/.installed
	$(BIN)/python -m pip install -q -e '.[test]'
	touch $@

## run: install and start the gateway with embedded defaults on loopback
run: $(VENV)/.installed
	$(BIN)/sipgw serve

## tools: make sure SIPp and baresip are installed (apt-get as root; otherwise print how)
tools:
	scripts/ensure-tools.sh sipp:sip-tester baresip:baresip socat:socat

bench-tools:
	scripts/ensure-tools.sh sipp:sip-tester kamailio:kamailio

## test: the whole suite except benchmarks
test: $(VENV)/.installed-test tools
	$(BIN)/python -m pytest -q

## bench: benchmarks side by side with Kamailio on this machine
bench: $(VENV)/.installed-test bench-tools
	$(BIN)/python tests/bench/run_all.py

lint: $(VENV)/.installed-test
	$(BIN)/ruff check gateway provisioning firmware_catalog tests
	$(BIN)/mypy --strict gateway/sip

clean:
	rm -rf $(VENV) .data build *.egg-info
