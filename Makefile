# Developer entry points. `make test` is what CI runs (.ci/run).
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 2>/dev/null || command -v python3)
VENV := .venv
VPY := $(VENV)/bin/python
DEV_STAMP := $(VENV)/dev.stamp
ML_STAMP := $(VENV)/ml.stamp

.PHONY: venv venv-ml deps codegen test run bench clean distclean

venv: $(DEV_STAMP)

# Re-install only when pyproject.toml changes; the stamp lives inside the venv so
# deleting the venv also forgets it.
$(DEV_STAMP): pyproject.toml
	@test -x $(VPY) || $(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install -q -e '.[dev]'
	@touch $@

# torch must be resolved in the same pip command as diffusers/peft/accelerate,
# otherwise they pull a newer CUDA torch.
venv-ml: $(ML_STAMP)

$(ML_STAMP): pyproject.toml $(DEV_STAMP)
	$(VPY) -m pip install -q 'torch==2.13.0' -e '.[dev,ml]'
	@touch $@

# System binaries from Debian packages, installed only when missing: redis-server,
# prometheus + promtool (package prometheus) for the rule checks and the scrape test, and
# chromium for the web UI's browser tests (Playwright drives it; no browser download),
# fluidsynth + the General MIDI SoundFont (arrange_music renders with them) and espeak-ng
# (the phonemes of the Piper voice).
deps:
	@missing=""; \
	command -v redis-server >/dev/null 2>&1 || missing="$$missing redis-server"; \
	{ command -v promtool >/dev/null 2>&1 && command -v prometheus >/dev/null 2>&1; } || missing="$$missing prometheus"; \
	command -v chromium >/dev/null 2>&1 || missing="$$missing chromium"; \
	command -v fluidsynth >/dev/null 2>&1 || missing="$$missing fluidsynth"; \
	test -e /usr/share/sounds/sf2/FluidR3_GM.sf2 || missing="$$missing fluid-soundfont-gm"; \
	command -v espeak-ng >/dev/null 2>&1 || missing="$$missing espeak-ng"; \
	if [ -n "$$missing" ]; then \
	  SUDO=$$([ "$$(id -u)" = 0 ] || echo sudo); \
	  $$SUDO apt-get update && \
	  $$SUDO env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $$missing; \
	fi

codegen: venv
	$(VPY) -m codegen

test: deps venv-ml
	$(VPY) -m codegen --check
	$(VPY) -m ruff check dualplane tests bench codegen
	$(VPY) -m mypy
	$(VPY) -m pytest -q

run: deps venv-ml
	$(VENV)/bin/dualplane up

bench: venv
	$(VPY) bench/dispatch.py

clean:
	rm -rf build/ test-output/ .pytest_cache/ .mypy_cache/ *.egg-info/ .dualplane/
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV)
