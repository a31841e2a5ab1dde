#!/usr/bin/env bash
# Build the optional [mm] environment (mmdetection / mmpose integration) in its own venv.
#
#   scripts/install_mm.sh            # creates .venv-mm (or $KDBENCH_MM_VENV)
#
# Pinned: torch 2.14.1 + torchvision 0.29.1, mmcv 2.1.0 (full, with ops, built here from the PyPI
# sdist with -std=c++20 because torch 2.14's headers need C++20), mmdet 3.3.0, mmpose 1.3.2,
# mmengine, numpy<2 (xtcocotools), opencv-python<4.12 (OpenCV 5 needs numpy>=2),
# setuptools>=77.0.3,<81 (mmcv and mmengine import pkg_resources).
# The built mmcv wheel is cached under ${XDG_CACHE_HOME:-~/.cache}/kdbench/wheels, so only the first
# run compiles (about 15+ minutes on 2 cores); later runs install in seconds.
# mmdet and mmpose are installed with --no-deps: mmpose's chumpy does not install and is never
# imported; their runtime dependencies come from kdbench's `mm` extra (pyproject.toml).
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON="${PYTHON:-python3}"
VENV="${KDBENCH_MM_VENV:-.venv-mm}"
JOBS="${MAX_JOBS:-2}"
MMCV_VERSION=2.1.0
MMDET_VERSION=3.3.0
MMPOSE_VERSION=1.3.2
TORCH_PINS=(torch==2.14.1 torchvision==0.29.1)
BUILD_PINS=("setuptools>=77.0.3,<81" "numpy<2" "opencv-python<4.12" wheel ninja)
WHEEL_ROOT="${KDBENCH_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/kdbench/wheels}"

t0=$(date +%s)
say() { echo "[install_mm $(($(date +%s) - t0))s] $*"; }

if [ ! -x "$VENV/bin/python" ]; then
  say "creating $VENV"
  "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip)
say "torch + build tools"
"${PIP[@]}" install -q "${TORCH_PINS[@]}" "${BUILD_PINS[@]}"

# The cache key names everything the compiled extension depends on: mmcv, torch and Python.
key=$("$VENV/bin/python" -c 'import sys, torch; print(f"torch{torch.__version__}-cp{sys.version_info[0]}{sys.version_info[1]}")')
cache="$WHEEL_ROOT/mmcv-$MMCV_VERSION-$key"
shopt -s nullglob
wheels=("$cache"/mmcv-"$MMCV_VERSION"-*.whl)
if [ "${#wheels[@]}" -eq 0 ]; then
  say "building mmcv $MMCV_VERSION from the sdist (MAX_JOBS=$JOBS; cache: $cache)"
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  "${PIP[@]}" download -q --no-deps --no-binary :all: "mmcv==$MMCV_VERSION" -d "$work"
  tar -xzf "$work"/mmcv-"$MMCV_VERSION".tar.gz -C "$work"
  src="$work/mmcv-$MMCV_VERSION"
  if ! grep -q -- '-std=c++17' "$src/setup.py"; then
    echo "install_mm: mmcv $MMCV_VERSION setup.py has no -std=c++17 flag to raise to c++20" >&2
    exit 1
  fi
  sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
  tb=$(date +%s)
  MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="$JOBS" nice -n "${KDBENCH_MM_NICE:-19}" \
    "${PIP[@]}" wheel -q --no-build-isolation --no-deps "$src" -w "$work/dist"
  say "mmcv wheel built in $(($(date +%s) - tb))s"
  mkdir -p "$cache"
  cp "$work"/dist/mmcv-"$MMCV_VERSION"-*.whl "$cache"/
  wheels=("$cache"/mmcv-"$MMCV_VERSION"-*.whl)
else
  say "reusing cached ${wheels[0]}"
fi

say "kdbench[mm,test] + mmcv + mmdet + mmpose"
"${PIP[@]}" install -q -e '.[mm,test]'
"${PIP[@]}" install -q --no-deps "${wheels[0]}" "mmdet==$MMDET_VERSION" "mmpose==$MMPOSE_VERSION"
"$VENV/bin/python" -c 'import mmcv._ext, mmdet.models, mmpose.models; import mmcv, mmdet, mmpose, mmengine; print("mmcv", mmcv.__version__, "mmdet", mmdet.__version__, "mmpose", mmpose.__version__, "mmengine", mmengine.__version__)'
say "done: $VENV"
