#!/usr/bin/env bash
# Set up .venv and run the test suite. `--slow` runs only the slow tests (bundled model, minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# The report tests open the HTML report in headless Chromium (Debian's package; installed if missing).
bash scripts/install_chromium.sh
if [ "${1:-}" = "--slow" ]; then
  shift
  exec .venv/bin/python -m pytest -m slow "$@"
fi
exec .venv/bin/python -m pytest "$@"
