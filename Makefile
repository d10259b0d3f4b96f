# lift3d: `make demo` and `make test` are the two set-up commands (both install everything first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.lift3d-installed
export HF_HUB_OFFLINE ?= 1
export WANDB_MODE ?= offline

.PHONY: setup demo lint test test-fast bench clean-demo

# Idempotent: reinstalls only when pyproject.toml changed (the stamp records its hash).
setup: $(STAMP) slurm-packages

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@h=$$(sha256sum pyproject.toml | cut -c1-16); \
	if [ "$$(cat $(STAMP) 2>/dev/null)" != "$$h" ]; then \
	  $(PY) -m pip install -q --upgrade pip setuptools wheel && \
	  $(PY) -m pip install -q -e '.[dev]' && echo $$h > $(STAMP); \
	else touch $(STAMP); fi

# Debian's Slurm + munge, for the tests that bring up a real one-node cluster (tests/slurm). Root only; skipped
# (and those tests skip with a message) where apt is unavailable.
slurm-packages:
	@command -v slurmctld >/dev/null 2>&1 || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  { printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	      slurmctld slurmd slurm-client munge >/dev/null); rc=$$?; rm -f /usr/sbin/policy-rc.d; exit $$rc; } \
	  || echo "slurm-packages: could not install Slurm; tests/slurm will be skipped"; }

demo: setup
	$(PY) -m lightning_modules.launch.demo --out data/demo

# ruff (pycodestyle, pyflakes, import order) and mypy, configured in pyproject.toml; `make test` runs them first.
lint: setup
	@rc=0; $(PY) -m ruff check . || rc=1; $(PY) -m mypy || rc=1; exit $$rc

test: setup lint
	$(PY) -m pytest -q

test-fast: setup
	$(PY) -m pytest -q -m "not slow and not slurm"

bench: setup
	$(PY) -m benchmarks.render_throughput
	$(PY) -m benchmarks.loader_throughput
	$(PY) -m benchmarks.lrm_throughput --config tiny --batch 2 --views 4 --crop 32
	$(PY) -m benchmarks.lrm_inference --config tiny --resolution 128 --surface sphere
	$(PY) -m benchmarks.one2345_reconstruction --config tiny --resolution 64
	$(PY) -m benchmarks.zero123_throughput
	@test -f data/demo/lrm/checkpoints/last.ckpt || $(MAKE) demo
	$(PY) -m benchmarks.evaluate_throughput
