#!/usr/bin/env bash
# Set up everything clmer needs on a fresh machine, idempotently:
# Debian's ffmpeg and espeak-ng, a virtual environment in .venv, torch 2.13.0
# (first: any other torch spec pulls gigabytes of CUDA packages), then the project.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v ffmpeg >/dev/null 2>&1 || need_apt+=(ffmpeg)
command -v espeak-ng >/dev/null 2>&1 || need_apt+=(espeak-ng)
if ((${#need_apt[@]})); then
  echo "bootstrap: installing ${need_apt[*]} from Debian" >&2
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if ! .venv/bin/python -c 'import torch, sys; sys.exit(torch.__version__.split("+")[0] != "2.13.0")' 2>/dev/null; then
  echo "bootstrap: installing torch==2.13.0 (CPU)" >&2
  "${PIP[@]}" torch==2.13.0
fi
stamp=.venv/.clmer-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "bootstrap: installing clmer and its dependencies into .venv" >&2
  "${PIP[@]}" -e ".[all]"
  .venv/bin/python -c 'import torch, clmer_features, clmer_fusion; assert torch.__version__.startswith("2.13.0"), torch.__version__' 
  touch "$stamp"
fi
