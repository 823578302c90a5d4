#!/usr/bin/env bash
# The tests marked llama_server, end to end: build llama-cpp-python[server] from its sdist (PyPI
# has no CPU wheels) into the venv, run those tests against the real server (failing, not
# skipping, if it cannot start), and time SmolLM2's judge calls through it
# (benchmarks/llama_server_judge.py). Prints the build time and a summary JSON line, also written
# to benchmarks/results/llama_server_check-cpu.json.
# Usage: benchmarks/llama_server_check.sh [--rebuild] [ESCONV_JSON]
#   --rebuild  compile again even when the pinned version is installed (to time the build)
# Environment: ESC_DIST_VENV: use this venv as it is (default: the one launch/setup.sh makes);
#   SDIST: a local llama_cpp_python sdist to build instead of fetching the pinned one;
#   JOBS: parallel compile jobs (default: all cores).
# Needs cmake (>= 3.21) and a C/C++ compiler (Debian: apt-get install cmake g++).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
rebuild=0
if [[ ${1:-} == --rebuild ]]; then rebuild=1; shift; fi
esconv="${1:-$root/../shared/data/esconv/esconv.json}"
venv="${ESC_DIST_VENV:-$(bash "$root/launch/setup.sh")}"
py="$venv/bin/python"
cd "$root"
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"  # this checkout's esc_dist and tests
for tool in cmake c++; do
  command -v "$tool" >/dev/null || { echo "error: $tool not found (Debian: apt-get install cmake g++)" >&2; exit 2; }
done
pins=(-c constraints/cpu.txt -c constraints/llama-server.txt)
want="$(sed -n 's/^llama_cpp_python==//p' constraints/llama-server.txt)"
have="$("$py" -c 'import importlib.metadata as m; print(m.version("llama_cpp_python"))' 2>/dev/null || true)"
build_s=null build_cpu_s=null
if [[ $rebuild == 1 || $have != "$want" ]]; then
  # GGML_NATIVE=OFF: no -march=native, so the library runs on other CPUs than the build's (on
  # x86 it still assumes AVX2, FMA and F16C: x86-64-v3). LLAVA_BUILD=OFF: no multimodal library;
  # LLAMA_OPENSSL=OFF: no libssl. --no-cache-dir: compiled here, not taken from pip's cache.
  # The build's CPU seconds too: the machine may be shared, so its wall time alone says little.
  start=$(date +%s)
  build_cpu_s="$(CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAVA_BUILD=OFF -DLLAMA_OPENSSL=OFF" \
    CMAKE_BUILD_PARALLEL_LEVEL="${JOBS:-$(nproc)}" nice -n 10 "$py" - "${pins[@]}" \
    "${SDIST:-llama-cpp-python==$want}" <<'PY'
import resource, subprocess, sys
rc = subprocess.call([sys.executable, "-m", "pip", "install", "-q", "--no-cache-dir",
                      "--force-reinstall", "--no-deps", *sys.argv[1:]], stdout=sys.stderr)
used = resource.getrusage(resource.RUSAGE_CHILDREN)
print(round(used.ru_utime + used.ru_stime))
sys.exit(rc)
PY
)"
  build_s=$(( $(date +%s) - start ))
  echo "built llama-cpp-python $want in ${build_s}s (${build_cpu_s} CPU s) on $(nproc) cores" >&2
fi
"$py" -m pip install -q "${pins[@]}" "llama-cpp-python[server]==$want" >&2  # the server's deps

start=$(date +%s)
set +e
ESC_DIST_REQUIRE_LLAMA_SERVER=1 "$py" -m pytest -q -p no:cacheprovider -m llama_server \
  tests/unit/test_real_llm_server.py 2>&1 | tee /tmp/llama_server_check.$$.log >&2
tests_rc=${PIPESTATUS[0]}
set -e
tests_s=$(( $(date +%s) - start ))
outcome="$(grep -E '(passed|failed|error|skipped)' /tmp/llama_server_check.$$.log | tail -1 | sed 's/=//g; s/^ *//; s/ *$//')"
rm -f /tmp/llama_server_check.$$.log

bench="$("$py" -m benchmarks.llama_server_judge --esconv "$esconv" --pairs 16)"
mkdir -p benchmarks/results
"$py" - "$build_s" "$build_cpu_s" "$tests_rc" "$tests_s" "$outcome" "$bench" <<'PY' | tee benchmarks/results/llama_server_check-cpu.json
import json, os, platform, sys, time
build_s, build_cpu_s, rc, tests_s, outcome, bench = sys.argv[1:]
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")),
           platform.machine())
print(json.dumps({"date": time.strftime("%Y-%m-%d", time.gmtime()), "cpu": cpu,
                  "cores": os.cpu_count(), "load_avg_1m_at_end": os.getloadavg()[0],
                  "build_s": json.loads(build_s),
                  "build_cpu_s": json.loads(build_cpu_s), "tests_rc": int(rc), "tests_s": int(tests_s),
                  "tests": outcome, "judge": json.loads(bench)}))
PY
exit "$tests_rc"
