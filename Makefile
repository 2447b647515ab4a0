# Set-up is part of every target: a fresh machine needs only `make train` or `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: setup train test test-fast bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[test,envpool]'
	touch $(STAMP)

setup: $(STAMP)

# Main job: Ape-X on CartPole-v1, 2 actor processes, central prioritized replay, one learner.
train: $(STAMP)
	$(BIN)/distdqn train --env CartPole-v1 --actors 2 $(ARGS)

# The whole suite (< 15 min on 2 cores).
test: $(STAMP)
	$(BIN)/python -m pytest -q

# The fast subset (< 3 min): no end-to-end learning runs.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

bench: $(STAMP)
	$(BIN)/pip install --quiet -e '.[bench]'
	$(BIN)/distdqn bench $(ARGS)

clean:
	rm -rf $(VENV) runs
