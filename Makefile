# TrackGo — every target works on a fresh machine after `make setup`.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# CPU build on the reference machine; GPU hosts may set TORCH_SPEC to the CUDA build they want.
TORCH_SPEC ?= torch==2.13.0
# The paper profile needs torchvision (DEVA, SAM): a torch/torchvision pair that imports together.
TORCHVISION_SPEC ?= torch==2.14.1 torchvision==0.29.1
# A clone of Tracking-Anything-with-DEVA; installed (from a copy) by `make setup-paper`.
DEVA_SRC ?= $(wildcard ../shared/third_party/deva)
CONFIG ?= tiny-cpu
SOURCE ?=
OUT ?= data/sample
PROFILE ?= local
# the Prefect server's database: sqlite (embedded, default) | postgres (a private cluster)
DB ?= sqlite
VIPSEG ?=
CHECKPOINT ?=
SVD ?=
EVAL_OUT ?=
SAM ?=
STUDIO_HOST ?= 127.0.0.1
STUDIO_PORT ?= 7860

.PHONY: setup setup-paper dataset dataset-direct server down test test-fast train eval-vipseg bench clean-data studio toy

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

setup: $(BIN)/python
	@command -v ffmpeg >/dev/null 2>&1 || { echo "installing ffmpeg (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg) >/dev/null \
	  || { echo "ffmpeg is required: install it with your package manager"; exit 1; }; }
	@$(BIN)/python -c "import torch" 2>/dev/null || $(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[test]"
	@echo "setup done: activate with 'source $(BIN)/activate'"

# What the `paper` profile needs on top of `setup`: torch + torchvision, SAM and DEVA's real
# dependencies, and DEVA itself, built from a copy of DEVA_SRC (the clone stays untouched). DEVA is
# reinstalled only when the clone's content changed (its hash is kept in build/deva-src.sha256).
setup-paper: $(BIN)/python
	@$(BIN)/python -c "import torch, torchvision" 2>/dev/null || $(BIN)/pip install -q $(TORCHVISION_SPEC)
	@$(MAKE) --no-print-directory setup
	$(BIN)/pip install -q -e ".[test,paper]"
	@if [ -z "$(DEVA_SRC)" ]; then \
	  echo "DEVA_SRC not set: clone https://github.com/hkchengrex/Tracking-Anything-with-DEVA and run make setup-paper DEVA_SRC=/path/to/clone"; \
	else \
	  sum=$$(cd "$(DEVA_SRC)" && find . -type f -not -path './.git/*' -print0 | LC_ALL=C sort -z \
	         | xargs -0 sha256sum | sha256sum | cut -d' ' -f1) || exit 1; \
	  if [ "$$sum" = "$$(cat build/deva-src.sha256 2>/dev/null)" ] \
	     && $(BIN)/python -c "import deva.ext.automatic_processor" 2>/dev/null; then \
	    echo "DEVA from $(DEVA_SRC) is installed"; \
	  else \
	    rm -rf build/deva-src build/deva-src.sha256 && mkdir -p build && cp -r "$(DEVA_SRC)" build/deva-src \
	    && chmod -R u+w build/deva-src && $(BIN)/pip install -q --no-deps ./build/deva-src \
	    && echo "$$sum" > build/deva-src.sha256 && echo "DEVA installed from $(DEVA_SRC)" || exit 1; \
	  fi; \
	fi

# The main job: build-dataset as a Prefect deployment on the local server (bundled sample videos).
# DB=postgres runs the server on a private PostgreSQL cluster (scripts/postgres.sh) instead of SQLite.
dataset: setup
	TRACKGO_PREFECT_DB=$(DB) bash scripts/dataset.sh "$(SOURCE)" "$(OUT)" "$(PROFILE)"

# The same stages in-process, without Prefect.
dataset-direct: setup
	$(BIN)/trackgo data build --source "$(or $(SOURCE),samples)" --out "$(OUT)" --profile $(PROFILE)

server: setup
	TRACKGO_PREFECT_DB=$(DB) bash scripts/server.sh up

# stops the server, the worker and, when `make server DB=postgres` started it, PostgreSQL
down:
	bash scripts/server.sh down

test: setup-paper
	$(BIN)/python -m pytest -q

train: setup
	$(BIN)/trackgo train --config $(CONFIG)

# The toy reproduction on 2 CPU cores: synthetic videos → shards → VAE → base model → TrackGo +
# ablations → held-out evaluation (runs/toy/results.md). A rerun resumes where it stopped.
# TOY_ARGS="--set out=runs/toy2" passes config overrides.
toy: setup
	$(BIN)/trackgo toy all $(TOY_ARGS)

# TrackGo Studio in the browser; without CHECKPOINT/SVD it serves the tiny random-weight model.
studio: setup
	$(BIN)/trackgo studio $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)") $(if $(SVD),--svd "$(SVD)") \
	  $(if $(SAM),--sam "$(SAM)") --host $(STUDIO_HOST) --port $(STUDIO_PORT)

eval-vipseg: setup
	@test -n "$(VIPSEG)" -a -n "$(CHECKPOINT)" || { echo "usage: make eval-vipseg VIPSEG=/path/to/VIPSeg_720P CHECKPOINT=/path/to/trackgo-checkpoint [SVD=/path/to/svd] [EVAL_OUT=dir] [COTRACKER=/path/to/co-tracker-clone] [COTRACKER_CKPT=scaled_offline.pth] [OBJMC_PROTOCOL=ours|draganything] [COTRACKER2_CKPT=cotracker2.pth]"; exit 2; }
	$(BIN)/trackgo eval-vipseg --vipseg "$(VIPSEG)" --checkpoint "$(CHECKPOINT)" $(if $(SVD),--svd "$(SVD)") $(if $(EVAL_OUT),--out "$(EVAL_OUT)") $(if $(COTRACKER),--cotracker-repo "$(COTRACKER)") $(if $(OBJMC_PROTOCOL),--objmc-protocol $(OBJMC_PROTOCOL)) $(if $(COTRACKER_CKPT),--set "tracker_options.checkpoint=$(COTRACKER_CKPT)") $(if $(COTRACKER2_CKPT),--set "objmc_tracker_options.checkpoint=$(COTRACKER2_CKPT)")

bench: setup
	$(BIN)/python benchmarks/clip_cost.py
	$(BIN)/python benchmarks/adapter_overhead.py
	$(BIN)/python benchmarks/orchestration.py
	$(BIN)/python benchmarks/train_step.py
