# Two commands do all the set-up on a fresh machine:
#   make demo   - create .venv, install the pinned stack, build the LAMMPS plugin, run the demo
#   make test   - the same set-up, then the test suite
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.engine_plugins-installed

.PHONY: all venv plugin demo test bench clean

all: test

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	touch $(STAMP)

venv: $(STAMP)

plugin: $(STAMP)
	$(PY) -m engine_plugins.engines.lammps_build

demo: plugin
	$(VENV)/bin/engine-plugins demo --output out/demo

test: plugin
	$(VENV)/bin/python -m pytest -q -ra

bench: plugin
	$(VENV)/bin/engine-plugins bench engines

clean:
	rm -rf build engine_plugins/lib out
