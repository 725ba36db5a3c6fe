#!/usr/bin/env bash
# Set up .venv and run the test suite. `--slow` runs only the slow tests (bundled model, minutes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
# DeepSpeed (the ZeRO-3 test only, so not in setup.sh) ships only an sdist whose setup.py imports torch: built
# without isolation it uses the pinned CPU torch; in an isolated build it would have no torch. So it is not in
# the `test` extra either.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation "deepspeed==0.19.8"
# The report tests open the HTML report in headless Chromium (Debian's package; installed if missing).
bash scripts/install_chromium.sh
if [ "${1:-}" = "--slow" ]; then
  shift
  exec .venv/bin/python -m pytest -m slow "$@"
fi
# The tests run their tiny models on one torch thread (tests/conftest.py), so two worker processes use both
# cores of a small machine; TRAITWATCH_TEST_WORKERS overrides the count (1 runs the suite in this process).
WORKERS=${TRAITWATCH_TEST_WORKERS:-2}
if [ "$WORKERS" -gt 1 ]; then
  exec .venv/bin/python -m pytest -n "$WORKERS" "$@"
fi
exec .venv/bin/python -m pytest "$@"
