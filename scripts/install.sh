#!/usr/bin/env bash
# The one install recipe of TrackGo. `make setup` and `make setup-paper` run it on a laptop and in
# CI, and the GPU worker image (infra/docker/Dockerfile.gpu-worker) runs `make setup-paper`, so
# every environment is made by these steps.
#
# Usage: scripts/install.sh [--dry-run] base|paper
#
#   base   a venv with ffmpeg (apt-get, when missing), the pinned torch, and this package with
#          EXTRAS (default: test), installed editable
#   paper  base + the pinned torchvision, the `paper` extra (SAM, DEVA's dependencies) and DEVA
#          itself from a copy of DEVA_SRC, installed without its dependencies
#
# Environment:
#   VENV          the virtual environment (created when missing; default .venv)
#   PY            the Python that creates it (default python3; must satisfy requires-python)
#   TORCH_INDEX   which build of the pinned torch/torchvision: empty = the default index's (PyPI:
#                 a CUDA 12 build on Linux x86_64), or a PyTorch wheel index, e.g.
#                 https://download.pytorch.org/whl/cpu or https://download.pytorch.org/whl/cu128
#   DEVA_SRC      a clone of Tracking-Anything-with-DEVA (paper; without it DEVA is skipped)
#   EXTRAS        extras of this package (default: test for base, test,paper for paper)
#
# --dry-run prints the commands instead of running them.
set -euo pipefail

# The torch/torchvision pair every environment runs (pyproject.toml's ranges contain it; a test
# checks that they agree).
TORCH_VERSION=2.14.1
TORCHVISION_VERSION=0.29.1

DRY=0
usage() { awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"; }
while [ $# -gt 0 ]; do
  case "$1" in
    --dry-run) DRY=1; shift ;;
    -h|--help) usage; exit 0 ;;
    base|paper) break ;;
    *) echo "install.sh: unknown argument $1" >&2; usage >&2; exit 2 ;;
  esac
done
PROFILE="${1:-}"
case "$PROFILE" in
  base|paper) ;;
  *) echo "install.sh: say base or paper" >&2; usage >&2; exit 2 ;;
esac

cd "$(dirname "$0")/.."
VENV="${VENV:-.venv}"
PY="${PY:-python3}"
TORCH_INDEX="${TORCH_INDEX:-}"
DEVA_SRC="${DEVA_SRC:-}"
if [ "$PROFILE" = paper ]; then EXTRAS="${EXTRAS:-test,paper}"; else EXTRAS="${EXTRAS:-test}"; fi
BIN="$VENV/bin"

run() {
  if [ "$DRY" = 1 ]; then printf '+'; printf ' %q' "$@"; printf '\n'; else "$@"; fi
}

# --- system packages: ffmpeg (video IO)
if ! command -v ffmpeg >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing ffmpeg (apt-get)"
    run apt-get update -qq
    DEBIAN_FRONTEND=noninteractive run apt-get install -y -qq --no-install-recommends ffmpeg
  else
    echo "ffmpeg is required: install it with your package manager" >&2
    [ "$DRY" = 1 ] || exit 1
  fi
fi

# --- the virtual environment
if [ ! -x "$BIN/python" ]; then
  run "$PY" -m venv "$VENV"
  run "$BIN/python" -m pip install -q --upgrade pip
fi

# --- torch (and torchvision for paper): the pinned pair, from TORCH_INDEX when set
torch_reqs=("torch==$TORCH_VERSION")
[ "$PROFILE" = paper ] && torch_reqs+=("torchvision==$TORCHVISION_VERSION")
index_args=()
[ -n "$TORCH_INDEX" ] && index_args=(--index-url "$TORCH_INDEX")
run "$BIN/python" -m pip install -q "${index_args[@]}" "${torch_reqs[@]}"

# --- this package; the torch pins ride along so that no dependency can swap torch
run "$BIN/python" -m pip install -q -e ".[$EXTRAS]" "${torch_reqs[@]}"

# --- DEVA (paper): from a copy of DEVA_SRC (the clone stays untouched), without its dependencies
# (its setup.py pins versions that clash with ours; what automatic mode imports is in the `paper`
# extra). Reinstalled only when the clone's content changed (hash in build/deva-src.sha256).
if [ "$PROFILE" = paper ]; then
  if [ -z "$DEVA_SRC" ]; then
    echo "DEVA_SRC not set: clone https://github.com/hkchengrex/Tracking-Anything-with-DEVA and run" \
         "make setup-paper DEVA_SRC=/path/to/clone"
  else
    sum=$(cd "$DEVA_SRC" && find . -type f -not -path './.git/*' -print0 | LC_ALL=C sort -z \
          | xargs -0 sha256sum | sha256sum | cut -d' ' -f1)
    if [ "$sum" = "$(cat build/deva-src.sha256 2>/dev/null)" ] \
       && "$BIN/python" -c "import deva.ext.automatic_processor" 2>/dev/null; then
      echo "DEVA from $DEVA_SRC is installed"
    else
      run rm -rf build/deva-src build/deva-src.sha256
      run mkdir -p build
      run cp -r "$DEVA_SRC" build/deva-src
      run chmod -R u+w build/deva-src
      run "$BIN/python" -m pip install -q --no-deps ./build/deva-src
      if [ "$DRY" = 1 ]; then echo "+ echo $sum > build/deva-src.sha256"; else echo "$sum" > build/deva-src.sha256; fi
      echo "DEVA installed from $DEVA_SRC"
    fi
  fi
fi
echo "install.sh $PROFILE done: activate with 'source $BIN/activate'"
