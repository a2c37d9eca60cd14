#!/usr/bin/env bash
# Install vlmrl into ./.venv on a fresh Debian/Ubuntu machine (Python 3.11, CPU or NVIDIA GPU).
#   - system libraries for headless rendering (OSMesa for MuJoCo on CPU, EGL on GPU) and Debian's
#     `chromium` (the tests open `vlmrl report` pages in it, headless), via apt when it is
#     available and we are root;
#   - the package with its exact pins and the test/offline/transformers/ray extras.
# Usage: bash install.sh            (then: . .venv/bin/activate)
set -euo pipefail
cd "$(dirname "$0")"

if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = "0" ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    libosmesa6 libegl1 libegl-mesa0 libgl1-mesa-dri libgl1 libopengl0 >/dev/null
  # Separate and not fatal: Debian ships `chromium`; elsewhere (Ubuntu: a snap) it may be missing.
  apt-get install -y -qq --no-install-recommends chromium >/dev/null 2>&1 \
    || echo "note: apt could not install chromium; the browser test of tests/test_report.py will be skipped" >&2
else
  if ! ldconfig -p 2>/dev/null | grep -q libOSMesa; then
    echo "note: libOSMesa not found; install libosmesa6 (or set MUJOCO_GL=egl on a GPU machine) for MuJoCo rendering" >&2
  fi
  if ! command -v chromium >/dev/null 2>&1; then
    echo "note: chromium not found; the browser test of tests/test_report.py will be skipped" >&2
  fi
fi

PYTHON=${PYTHON:-python3.11}
command -v "$PYTHON" >/dev/null 2>&1 || PYTHON=python3
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --upgrade "pip>=24"
# mujoco 4.0.0 split itself into mujoco, mujoco-core and mujoco-studio: installing the pinned 3.3.0
# over a venv that had 4.0.0 leaves its files behind and `import mujoco` fails.
if .venv/bin/python -m pip show -q mujoco-core >/dev/null 2>&1; then
  .venv/bin/python -m pip uninstall --quiet -y mujoco mujoco-core mujoco-studio
fi
.venv/bin/python -m pip install --quiet -e ".[dev]"
.venv/bin/python -m pip check
echo "vlmrl installed in .venv: activate it with  . .venv/bin/activate"
