#!/usr/bin/env bash
# Sets up the environment and runs the whole test suite (what CI runs).
set -euo pipefail
cd "$(dirname "$0")/.."
bash launch/setup_env.sh
# The browser test drives Debian's Chromium through its chromedriver (nothing downloads a browser at run time).
if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null
  else
    echo "note: tests/test_serve.py's browser test is skipped without chromium and chromium-driver (as root:" \
         "apt-get install chromium chromium-driver)"
  fi
fi
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
exec "${MCQ_VENV:-.venv}/bin/python" -m pytest "$@"
