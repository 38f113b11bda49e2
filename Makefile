# Compress & Explain: `make lab` to learn, `make test` to check everything.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed
# The learner's own copies of the chapters: git-ignored, created by `make lab`, never overwritten by any tool.
WORK   := work
# JupyterLab refuses to run as root unless told to (containers, Binder-like images).
ROOT_FLAG := $(if $(filter 0,$(shell id -u)),--allow-root,)

.PHONY: lab work test html venv check-venv release check-release checkpoints progress clean

# The environment is rebuilt when the pinned requirements change.
$(STAMP): requirements.txt pyproject.toml
	@$(PYTHON) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Python 3.11+ is needed, found " + sys.version.split()[0] + "; run make PYTHON=python3.11 ...")'
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --disable-pip-version-check -r requirements.txt
	$(PY) -m pip install --disable-pip-version-check --no-deps -e .
	touch $(STAMP)

# A .venv whose Python no longer runs (moved or removed), or that another Python version built, is rebuilt.
check-venv:
	@if [ -e $(VENV) ]; then \
	  have=$$($(PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	  want=$$($(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); \
	  if [ -z "$$have" ]; then \
	    echo "make: $(VENV) was built by a Python that no longer runs here: rebuilding it with $(PYTHON) ($$want)."; \
	    rm -rf $(VENV); \
	  elif [ -n "$$want" ] && [ "$$have" != "$$want" ] && $(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then \
	    echo "make: $(VENV) was built by Python $$have, but $(PYTHON) is Python $$want: rebuilding $(VENV) with $(PYTHON)" \
	         "(run make PYTHON=python$$have ... to keep the old one)."; \
	    rm -rf $(VENV); \
	  fi; \
	fi

venv: check-venv
	@$(MAKE) --no-print-directory $(STAMP)

# Copy each chapter into work/ once; a chapter added later is copied in, an existing file is never touched.
work:
	@mkdir -p $(WORK)
	@for f in chapters/*.ipynb; do \
	  if [ ! -e "$(WORK)/$${f##*/}" ]; then cp "$$f" "$(WORK)/" && echo "make: copied $$f to $(WORK)/ (your copy)"; fi; \
	done

# Extra JupyterLab options, e.g. on a remote or headless machine: make lab LAB_ARGS="--no-browser --port 8899"
LAB_ARGS ?=

lab: venv work
	@echo "Your work lives in $(WORK)/ (git-ignored; make release and make test never touch it)."
	$(VENV)/bin/jupyter lab --notebook-dir=$(WORK) $(ROOT_FLAG) $(LAB_ARGS)

# Your gradebook: which exercises of each chapter in work/ pass (make progress CHAPTER=01 for one chapter).
CHAPTER ?=
progress: venv
	$(PY) -m course_lib.progress $(if $(CHAPTER),--chapter $(CHAPTER),)

# tests/test_browser.py (JupyterLab and the website in a real Chromium) needs a chromium binary; without one it
# is skipped, and make says so before and after the run. .ci/run installs Debian's chromium.
BROWSER_NOTE := command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
  [ -n "$$COURSE_CHROMIUM" ] || echo "make: NOTE: no chromium binary found, so the real-browser test \
(tests/test_browser.py) is SKIPPED; install it with: apt-get install chromium"

test: venv
	@$(BROWSER_NOTE)
	$(PY) -m pytest
	@$(BROWSER_NOTE)

# The course as a static website in _build/html/ (open _build/html/index.html): the learner notebooks executed
# (cached in _build/executed/ until a chapter, course_lib or data changes), rendered by Sphinx + myst-nb. Offline.
html: venv
	$(PY) -m course_lib.website

# Regenerate chapters/ from solutions/ (never touches work/; a replaced chapter is kept in build/replaced-chapters/).
release: venv
	$(PY) -m course_lib.release

# Exit 1 if chapters/ is stale; writes nothing. (`make release --check` would not work: make takes --check as its own flag.)
check-release: venv
	$(PY) -m course_lib.release --check

checkpoints: venv
	$(PY) -m course_lib.checkpoints --regenerate

clean:
	rm -rf $(VENV) build _build *.egg-info
