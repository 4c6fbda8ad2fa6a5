# The two commands the README opens with. Each creates .venv/ when missing and installs
# everything it needs (system packages included) before it runs.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo_output

.PHONY: demo test unit lint setup clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null && command -v flite >/dev/null \
	  && command -v festival >/dev/null && test -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts || { \
	  echo "installing system packages espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox libsndfile1"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng flite festival \
	    festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox libsndfile1 >/dev/null; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch lies on local disk; installing it first keeps pip from
	# resolving a multi-GB CUDA build for the range in pyproject.toml.
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	@touch $(STAMP)

demo: $(STAMP)
	bash infra/demo.sh $(DEMO_DIR)

test: $(STAMP)
	$(BIN)/python -m pytest tests -q -p no:cacheprovider --timeout=900

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

lint: $(STAMP)
	$(BIN)/ruff check dpm_worker pipelines tests
	$(BIN)/ruff format --check dpm_worker pipelines tests

clean:
	rm -rf $(VENV) $(DEMO_DIR)
