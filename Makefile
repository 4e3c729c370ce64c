# make test: create both virtual environments, install, run the suite on CPython
# and the PyPy-relevant tests (marker "pypy") on PyPy.
PYTHON ?= python3.11
PYPY ?= pypy3
VENV := .venv
PYPY_VENV := .venv-pypy
PYTEST_ARGS ?=

.PHONY: test test-cpython test-pypy venv venv-pypy run bench clean

$(VENV)/.installed: pyproject.toml setup.py ringbuf/_build.py ringbuf/records.py ringbuf/_c/ringbuf.c ringbuf/_c/ringbuf.h
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q -e '.[test,perf]'
	touch $@

$(PYPY_VENV)/.installed: pyproject.toml setup.py ringbuf/_build.py ringbuf/records.py ringbuf/_c/ringbuf.c ringbuf/_c/ringbuf.h
	$(PYPY) -m venv $(PYPY_VENV)
	$(PYPY_VENV)/bin/pip install -q --upgrade pip
	$(PYPY_VENV)/bin/pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed
venv-pypy: $(PYPY_VENV)/.installed

test: test-cpython test-pypy

test-cpython: venv venv-pypy
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

test-pypy: venv-pypy
	$(PYPY_VENV)/bin/python -m pytest -q -m 'pypy and not slow' $(PYTEST_ARGS)

# the matcher runs on PyPy when a PyPy venv exists: build it too when pypy3 is installed
run: venv $(if $(shell command -v $(PYPY) 2>/dev/null),venv-pypy)
	$(VENV)/bin/ringmatch run

bench: venv
	$(VENV)/bin/ringmatch bench all --save

clean:
	rm -rf $(VENV) $(PYPY_VENV) build *.egg-info ringbuf/_ringbuf_cffi*.so ringbuf/_ringbuf_cffi.c
