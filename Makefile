# Compress & Explain: `make lab` to learn, `make test` to check everything.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: lab test venv release checkpoints clean

# The environment is rebuilt when the pinned requirements change.
$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed, found " + sys.version.split()[0] + "; run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

venv: $(STAMP)

lab: $(STAMP)
	$(VENV)/bin/jupyter lab --notebook-dir=chapters

test: $(STAMP)
	$(PY) -m pytest

release: $(STAMP)
	$(PY) -m course_lib.release

checkpoints: $(STAMP)
	$(PY) -m course_lib.checkpoints --regenerate

clean:
	rm -rf $(VENV) build *.egg-info
