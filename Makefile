# genops: the two commands of the README, and the set-up they share.
#   make demo   create .venv, install the locked dependencies, run the whole asset graph (demo profile)
#   make test   create .venv, install, run the test suite (what CI runs, via .ci/run)

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo test lock ui clean-stores

$(VENV)/.installed: pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# The lock lists every package at its resolved version: install exactly that, no resolution.
	# (--no-deps also keeps rapidocr-onnxruntime from pulling the CPU onnxruntime beside onnxruntime-gpu.)
	$(BIN)/pip install --no-deps -r requirements.lock
	$(BIN)/pip install --no-deps -e .
	touch $@

install: $(VENV)/.installed

demo: install
	$(BIN)/genops demo

test: install
	$(BIN)/pytest; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: that is a failure, not a pass" >&2; fi; \
	exit $$rc

# Re-resolve the dependencies from pyproject.toml and write the lock (maintainers only).
lock:
	rm -rf .lock-venv && $(PYTHON) -m venv .lock-venv
	.lock-venv/bin/pip install -e '.[dev]'
	.lock-venv/bin/pip install --no-deps rapidocr-onnxruntime==1.4.4
	.lock-venv/bin/pip freeze --exclude-editable | grep -v '^genops' > requirements.lock
	rm -rf .lock-venv

ui: install
	$(BIN)/genops ui

clean-stores:
	rm -rf data .dvc/cache .dvc-remote mlflow/store .dagster_home ray_results exports outputs
