# make demo: create .venv, install hbm, fit the seed spec on its embedded simulated data.
# make test: create .venv if needed, run the whole test suite.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test install clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test,validation]'
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/hbm fit specs/price_elasticity.yaml

test: $(STAMP)
	$(BIN)/python -m pytest -q -n 2 --dist loadfile tests   # one worker per core; a file stays on one worker

clean:
	rm -rf $(VENV) runs
