# The README's two commands: `make demo` and `make test`. Both create/reuse .venv and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
# torch first, pinned to the CPU build that ships for this platform, so the rest does not pull a CUDA build.
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=

.PHONY: venv demo test test-quick bench clean

$(VENV)/.installed: setup.py
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip wheel setuptools
	$(PIP) install -q "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[dev,serve,ray,mlflow,pacs]"
	touch $@

venv: $(VENV)/.installed

demo: venv
	$(PY) -m cadpipe demo --output demo_out

# Full suite, integration tests with real servers included.
test: venv
	bash scripts/browser_deps.sh
	bash scripts/pacs_deps.sh
	bash scripts/dicom_tools.sh
	$(PY) -m pytest -n 2 --timeout 1800 $(PYTEST_ARGS)

# Quick subset for development: no training runs, no servers.
test-quick: venv
	$(PY) -m pytest -n 2 -m "not slow and not integration" $(PYTEST_ARGS)

bench: venv
	$(PY) benchmarks/clahe.py
	$(PY) benchmarks/ljpeg.py
	$(PY) benchmarks/score.py
	$(PY) benchmarks/gradcam.py
	$(PY) benchmarks/brain_segmentation.py
	$(PY) benchmarks/mammo_detection.py
	$(PY) benchmarks/histology.py
	$(PY) benchmarks/two_stage_cxr.py
	$(PY) benchmarks/precision.py
	$(PY) benchmarks/report_pdf.py
	$(PY) benchmarks/portal.py
	$(PY) benchmarks/pacs.py
	$(PY) benchmarks/dicomweb_stream.py
	$(PY) benchmarks/ray_scale.py

clean:
	rm -rf $(VENV) .build demo_out
