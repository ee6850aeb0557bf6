# Set-up is two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin

.PHONY: demo test bench interop clean

# The core install (what `make demo` needs); the tests add the test tools and the optional
# `local` extra (torch + transformers) for the end-to-end collection tests. torch is pinned
# first so pip takes the CPU build this machine ships rather than a CUDA build.
$(VENV)/.core: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.test: $(VENV)/.core
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test,local]"
	touch $@

demo: $(VENV)/.core
	$(BIN)/approxft demo

test: $(VENV)/.test
	$(BIN)/python -m pytest -q

bench: $(VENV)/.test
	$(BIN)/python -m bench.table
	$(BIN)/python -m bench.tuning
	$(BIN)/python -m bench.estimators
	$(BIN)/python -m bench.correction
	$(BIN)/python -m bench.ray_overhead
	$(BIN)/python -m bench.scale

# lm-evaluation-harness from its own venv (never approxft's) against approxft serve: README,
# "Interoperability: lm-evaluation-harness against approxft serve".
LMEVAL_VENV ?= /tmp/lmeval-venv
$(LMEVAL_VENV)/bin/lm_eval:
	$(PYTHON) -m venv $(LMEVAL_VENV)
	$(LMEVAL_VENV)/bin/pip install --quiet "lm-eval[api]"

interop: $(VENV)/.test $(LMEVAL_VENV)/bin/lm_eval
	$(BIN)/python -m bench.interop.lm_eval_check --lm-eval $(LMEVAL_VENV)/bin/lm_eval

clean:
	rm -rf $(VENV) .approxft-cache .pytest_cache .benchmarks
