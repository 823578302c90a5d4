#!/usr/bin/env bash
# Install everything the tests need and run them: the README's test command and what CI runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# with llama-cpp-python[server], the real OpenAI-compatible server of the llama_server tests
# (compiled once, about 10 minutes on 2 cores); ESC_DIST_LLAMA_SERVER=0 leaves it out
venv="$(ESC_DIST_LLAMA_SERVER="${ESC_DIST_LLAMA_SERVER:-1}" bash "$root/launch/setup.sh")"
cd "$root"
exec "$venv/bin/python" -m pytest -q "$@"
