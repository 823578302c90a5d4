#!/usr/bin/env bash
# Install everything the tests need and run them: the README's test command and what CI runs.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$(bash "$root/launch/setup.sh")"
cd "$root"
exec "$venv/bin/python" -m pytest -q "$@"
