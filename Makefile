# TrackGo — every target works on a fresh machine after `make setup`.
SHELL := /bin/bash
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# Which build of the pinned torch/torchvision pair scripts/install.sh installs: empty = the default
# index's, or a PyTorch wheel index (https://download.pytorch.org/whl/cpu, …/cu128). The versions
# themselves are pinned once, in scripts/install.sh.
TORCH_INDEX ?=
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

# One install recipe for laptops, CI and the GPU worker image: scripts/install.sh.
setup:
	VENV="$(VENV)" PY="$(PY)" TORCH_INDEX="$(TORCH_INDEX)" bash scripts/install.sh base

# What the `paper` profile needs on top of `setup`: the torch/torchvision pair, SAM and DEVA's real
# dependencies (extra `paper`), and DEVA itself, built from a copy of DEVA_SRC (the clone stays
# untouched; reinstalled only when its content changed).
setup-paper:
	VENV="$(VENV)" PY="$(PY)" TORCH_INDEX="$(TORCH_INDEX)" DEVA_SRC="$(DEVA_SRC)" bash scripts/install.sh paper

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
# TOY_ARGS="--set out=runs/toy2" passes config overrides; BASE=wan runs the Wan-layout toy (runs/toy-wan).
toy: setup
	$(BIN)/trackgo toy all $(if $(filter wan,$(BASE)),--config toy-wan) $(TOY_ARGS)

# TrackGo Studio in the browser; without CHECKPOINT/SVD it serves the TrackGo that `make toy` trained
# (runs/toy) when there is one, else the tiny random-weight model.
studio: setup
	$(BIN)/trackgo studio $(if $(CHECKPOINT),--checkpoint "$(CHECKPOINT)") $(if $(SVD),--svd "$(SVD)") \
	  $(if $(CHECKPOINT)$(SVD),,$(if $(wildcard runs/toy/trackgo/trackgo/checkpoints/checkpoint-*/state.json),--toy runs/toy)) \
	  $(if $(SAM),--sam "$(SAM)") --host $(STUDIO_HOST) --port $(STUDIO_PORT)

eval-vipseg: setup
	@test -n "$(VIPSEG)" -a -n "$(CHECKPOINT)" || { echo "usage: make eval-vipseg VIPSEG=/path/to/VIPSeg_720P CHECKPOINT=/path/to/trackgo-checkpoint [SVD=/path/to/svd] [EVAL_OUT=dir] [COTRACKER=/path/to/co-tracker-clone] [COTRACKER_CKPT=scaled_offline.pth] [OBJMC_PROTOCOL=ours|draganything] [COTRACKER2_CKPT=cotracker2.pth]"; exit 2; }
	$(BIN)/trackgo eval-vipseg --vipseg "$(VIPSEG)" --checkpoint "$(CHECKPOINT)" $(if $(SVD),--svd "$(SVD)") $(if $(EVAL_OUT),--out "$(EVAL_OUT)") $(if $(COTRACKER),--cotracker-repo "$(COTRACKER)") $(if $(OBJMC_PROTOCOL),--objmc-protocol $(OBJMC_PROTOCOL)) $(if $(COTRACKER_CKPT),--set "tracker_options.checkpoint=$(COTRACKER_CKPT)") $(if $(COTRACKER2_CKPT),--set "objmc_tracker_options.checkpoint=$(COTRACKER2_CKPT)")

bench: setup
	$(BIN)/python benchmarks/clip_cost.py
	$(BIN)/python benchmarks/adapter_overhead.py
	$(BIN)/python benchmarks/orchestration.py
	$(BIN)/python benchmarks/train_step.py
