# Two commands a new user needs:  `make demo`  and  `make test`.
# Inside an activated virtualenv/conda env that env is used (and its torch kept);
# otherwise a local .venv is created. torch is installed only when none is importable.
VENV ?= .venv
TORCH_SPEC ?= torch==2.13.0
PROMPT ?= a red circle moving right

ifdef VIRTUAL_ENV
PY := python
else ifdef CONDA_PREFIX
PY := python
else
PY := $(VENV)/bin/python
endif

.PHONY: setup demo test lint clean

setup: .setup-stamp

.setup-stamp: pyproject.toml Makefile
	@if [ "$(PY)" = "$(VENV)/bin/python" ] && [ ! -x "$(PY)" ]; then python3 -m venv $(VENV); fi
	@$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q "$(TORCH_SPEC)"
	@# pin whatever torch is present so no dependency can swap it for another build
	@$(PY) -c "import torch; print('torch==' + torch.__version__.split('+')[0])" > .torch-constraint.txt
	$(PY) -m pip install -q -c .torch-constraint.txt -e ".[dev]"
	@touch .setup-stamp

demo: setup
	$(PY) -m videox_fun.cli generate --prompt "$(PROMPT)"

test: setup
	$(PY) -m ruff check .
	$(PY) -m pytest -q

clean:
	rm -rf $(VENV) .setup-stamp .torch-constraint.txt
