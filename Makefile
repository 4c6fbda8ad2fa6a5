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

$(STAMP): pyproject.toml Makefile
	@command -v espeak-ng >/dev/null && command -v sox >/dev/null && command -v flite >/dev/null \
	  && command -v festival >/dev/null && test -d /usr/share/festival/voices/us/cmu_us_slt_arctic_hts || { \
	  echo "installing system packages espeak-ng flite festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox libsndfile1"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq espeak-ng flite festival \
	    festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts sox libsndfile1 >/dev/null; }
	# Prometheus (promtool + a server the metrics test starts on 127.0.0.1). Without recommends:
	# no node exporter. Where services may start, stop the packaged one: it listens on 0.0.0.0.
	@command -v prometheus >/dev/null && command -v promtool >/dev/null || { \
	  echo "installing system package prometheus"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	    --no-install-recommends prometheus >/dev/null; \
	  { systemctl disable --now prometheus || service prometheus stop; } >/dev/null 2>&1 || true; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	# The CPU wheel of torch lies on local disk; installing it first keeps pip from
	# resolving a multi-GB CUDA build for the range in pyproject.toml.
	$(BIN)/pip install -q torch==2.13.0
	# The cosyvoice extra (CosyVoice2 S3Tokenizer) imports torchaudio. PyPI serves torchaudio only
	# as a CUDA build; 2.11.1 is the newest and the only one that accepts torch 2.13. Its C++
	# extension cannot load beside CPU torch, and torchaudio imports as pure Python without it
	# (s3tokenizer uses only torchaudio's pure-Python parts), so its lib/*.so are removed.
	$(BIN)/pip install -q -e ".[dev,cosyvoice]" "torchaudio==2.11.1"
	$(BIN)/python -c "import importlib.util, pathlib; [p.unlink() for d in importlib.util.find_spec('torchaudio').submodule_search_locations for p in pathlib.Path(d, 'lib').glob('*.so')]"
	# The diarizer's speaker encoder weights (resemblyzer's pretrained.pt, sha256-checked at load):
	# the wheel alone, without its audio dependencies (librosa, webrtcvad), which are never imported.
	$(BIN)/pip install -q --no-deps resemblyzer==0.1.4
	@touch $(STAMP)

demo: $(STAMP)
	bash infra/demo.sh $(DEMO_DIR)

# lint first: CI (.ci/run) runs `make test`, so ruff and mypy gate every change.
test: lint
	$(BIN)/python -m pytest tests -q -p no:cacheprovider --timeout=900

unit: $(STAMP)
	$(BIN)/python -m pytest tests/unit -q

lint: $(STAMP)
	$(BIN)/ruff check dpm_worker pipelines tests
	$(BIN)/ruff format --check dpm_worker pipelines tests
	$(BIN)/mypy dpm_worker pipelines

clean:
	rm -rf $(VENV) $(DEMO_DIR)
