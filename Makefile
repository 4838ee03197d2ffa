# Everything a fresh machine needs: `make demo` and `make test` set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: install demo test clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q -e '.[train,cpu,openvino,serve,dev]'
	touch $@

demo: install
	$(BIN)/tl demo --out runs/demo

test: install
	$(BIN)/python -m pytest -q -ra

clean:
	rm -rf $(VENV) runs build *.egg-info
