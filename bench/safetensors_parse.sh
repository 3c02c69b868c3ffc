#!/usr/bin/env bash
# Safetensors header parse benchmark (issue 14, item 6): parse time of a header with
# 1k, 10k, 100k and 1M tensors, from bench/safetensors_parse.cc (target
# mx_safetensors_parse_bench). The ns/tensor column stays flat when parsing is linear;
# the callback parser it replaced was quadratic (50k tensors: 114 s).
# Prints a markdown table and appends it to bench/RESULTS.md (BENCH_NO_APPEND=1: print only).
# Env: BENCH_BIN (default build/bench/mx_safetensors_parse_bench; build it first),
#      BENCH_COUNTS (default "1000 10000 100000 1000000").
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
bin="${BENCH_BIN:-$root/build/bench/mx_safetensors_parse_bench}"
[[ -x "$bin" ]] || { echo "safetensors_parse.sh: $bin not found (build target mx_safetensors_parse_bench)" >&2; exit 2; }
report="$(printf '## safetensors header parse (bench/safetensors_parse.sh), %s, nproc %s\n\n' "$(date -u)" "$(nproc)"
          "$bin" ${BENCH_COUNTS:-1000 10000 100000 1000000})"
printf '%s\n' "$report"
if [[ "${BENCH_NO_APPEND:-0}" != 1 ]]; then
  printf '\n%s\n' "$report" >> "$here/RESULTS.md"
fi
