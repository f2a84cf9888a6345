# wavelm: `make generate` (set up + 5 s from the bundled model), `make test` (set up + tests).
# Everything lives in .venv; constraints.txt pins the tested versions (torch 2.13.0 CPU build
# here, so set-up never pulls CUDA wheels) without narrowing pyproject.toml for other users.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
PIP    := $(BIN)/pip install -q -c constraints.txt

.PHONY: setup setup-test generate test bench demo clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.setup: $(BIN)/python pyproject.toml constraints.txt
	$(PIP) -e .
	touch $@

$(VENV)/.setup-test: $(VENV)/.setup
	$(PIP) -e ".[test]"
	touch $@

setup: $(VENV)/.setup
setup-test: $(VENV)/.setup-test

generate: setup
	$(BIN)/wavelm generate --seconds 5 -o generated.wav

test: setup-test
	$(BIN)/python -m pytest

bench: setup
	$(BIN)/wavelm bench generate --batch 1,16
	$(BIN)/wavelm bench score
	$(BIN)/wavelm bench train

demo: setup-test
	$(BIN)/wavelm demo

clean:
	rm -rf $(VENV) build *.egg-info
