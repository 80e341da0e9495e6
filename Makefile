# Two commands set everything up on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# pip's wheel cache and cargo's target/ make repeated builds incremental.
RUST_SOURCES := Cargo.toml Cargo.lock $(shell find rust_ufuncs -name '*.rs')

.PHONY: demo test build venv rust-test lint-imports pytest bench docs clean

demo: build
	$(PY) -m dask_vecops demo

test: build rust-test lint-imports pytest

# The virtual environment with the runtime, test and build dependencies (not the project itself).
$(VENV)/.deps: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install "maturin>=1.9.4,<2"
	$(PY) -c "import tomllib;d=tomllib.load(open('pyproject.toml','rb'))['project'];print('\n'.join(d['dependencies']+d['optional-dependencies']['test']))" > $(VENV)/requirements.txt
	$(PIP) install -r $(VENV)/requirements.txt
	touch $@

venv: $(VENV)/.deps

# Editable install: Python edits apply at once; the Rust extension is rebuilt (release profile) when its sources change.
$(VENV)/.built: $(VENV)/.deps $(RUST_SOURCES)
	$(PIP) install --no-deps --no-build-isolation -e .
	touch $@

build: $(VENV)/.built

rust-test:
	cargo test --locked --release --no-default-features

lint-imports: build
	$(VENV)/bin/lint-imports

pytest: build
	$(PY) -m pytest

bench: build
	$(PIP) install -q faiss-cpu scikit-learn simsimd threadpoolctl
	env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE $(PY) benchmarks/bench_topk.py

# The documentation site (docs/, Sphinx + MyST), warnings as errors; open docs/_build/html/index.html.
docs: build
	$(PY) -m sphinx -W --keep-going -b html docs docs/_build/html

clean:
	rm -rf $(VENV) target dask_vecops/*.so
