# Two commands for a fresh machine: `make demo` (the offline demo) and `make test` (the test suite).
# Both install what they need first (torch's CPU wheel, then lamp-fid with its extras).
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_SPEC ?= torch==2.13.0

.PHONY: install demo demo-3seeds test test-slow bench clean-demo

install:
	$(PIP) install -q $(TORCH_SPEC)
	$(PIP) install -q -e ".[test]"

demo: install
	$(PYTHON) -m lamp_fid.cli demo --overwrite true

# the README's table: the whole demo once per seed, mean and min-max over the seeds (about 3x the time)
demo-3seeds: install
	$(PYTHON) -m lamp_fid.cli demo --seeds '[0, 1, 2]' --overwrite true

test: install
	$(PYTHON) -m pytest -q

test-slow: install
	$(PYTHON) -m pytest -q -m slow
