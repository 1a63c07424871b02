# Two commands do all the set-up on a fresh machine: `make book` and `make test`.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
AWSCLI := $(VENV)/awscli
SDKV2 := $(VENV)/sdkv2
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)
export MPLBACKEND ?= Agg
export PIP_DISABLE_PIP_VERSION_CHECK := 1

.PHONY: book test venv lock clean strip

# The venv is (re)installed when it is missing or when the dependency files change.
$(STAMP): pyproject.toml constraints.txt constraints-awscli.txt constraints-sdkv2.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet -c constraints.txt pip setuptools wheel
	$(PY) -m pip install --quiet -c constraints.txt --no-build-isolation -e ".[test]"
	@# The AWS CLI (v1) in its own folder: its docutils pin conflicts with Sphinx. Run it as
	@# PYTHONPATH=$(AWSCLI) $(PY) -m awscli ...
	rm -rf $(AWSCLI) && $(PY) -m pip install --quiet --no-deps --target $(AWSCLI) -r constraints-awscli.txt
	@# SageMaker SDK v2 apart too: v2 and v3 both install the package `sagemaker` (PYTHONPATH=$(SDKV2) picks v2)
	rm -rf $(SDKV2) && $(PY) -m pip install --quiet --no-deps --target $(SDKV2) -r constraints-sdkv2.txt
	@touch $(STAMP)

venv: $(STAMP)

## Execute the chapters with papermill on the embedded default and build the HTML book.
book: $(STAMP)
	$(PY) -m helpers.book $(ARGS)

## Run the whole test suite (unit, integration, notebooks).
test: $(STAMP)
	$(PY) -m pytest $(ARGS)

## Re-resolve the newest allowed versions into constraints.txt (then commit it).
lock:
	rm -rf /tmp/sagebook-lock && $(PYTHON) -m venv /tmp/sagebook-lock
	/tmp/sagebook-lock/bin/pip install --quiet --upgrade pip setuptools wheel
	/tmp/sagebook-lock/bin/pip install --quiet --no-build-isolation -e ".[test]"
	{ echo "# Exact versions of everything the project installs (pip freeze --all of a fresh .venv)."; \
	  echo "# Regenerate with: make lock"; \
	  /tmp/sagebook-lock/bin/pip freeze --all --exclude-editable | grep -v '^-e' | sort -f; } > constraints.txt
	rm -rf /tmp/sagebook-awscli && /tmp/sagebook-lock/bin/pip install --quiet --target /tmp/sagebook-awscli awscli
	{ head -2 constraints-awscli.txt; /tmp/sagebook-lock/bin/pip freeze --path /tmp/sagebook-awscli | sort -f; } \
	  > constraints-awscli.txt.new && mv constraints-awscli.txt.new constraints-awscli.txt

## Remove notebook outputs (they are never committed).
strip: $(STAMP)
	$(PY) -m helpers.nbstrip notebooks/*.ipynb

clean:
	rm -rf _build book/*.ipynb .pytest_cache
