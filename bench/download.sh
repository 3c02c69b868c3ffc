#!/usr/bin/env bash
# Download benchmark: `mx download` vs aria2c vs curl, all on 127.0.0.x.
#
# What it measures
#   A synthetic ~2 GiB Hugging Face-style repo (4 x ~512 MiB
#   model-0000N-of-00004.safetensors shards + config.json, a 2 MiB
#   tokenizer.json, generation_config.json, model.safetensors.index.json,
#   README.md) is served by tests/integration/hub_stub.py (the hub API; it
#   302-redirects LFS files) and a private nginx (the LFS "CDN"). Two
#   scenarios: (a) nginx `limit_rate 25m` per connection, (b) unlimited.
#   Per scenario each tool runs twice (interleaved), into a fresh directory
#   that is deleted and `sync`ed afterwards:
#     mx      mx download org/bench --cache-dir DIR --json --max-workers 16
#             (HF_ENDPOINT=stub; mx verifies sha256 / git-sha1 of every file;
#             the script additionally checks exit 0 + the shards' sha256)
#     aria2c  aria2c -x16 -s16 -j4 -k1M --file-allocation=none -i LIST
#             (shards straight from nginx, other files via the stub's
#             /resolve/ URLs; no hash verification, sizes checked)
#     curl    curl -sSfL -o FILE URL, one file after the other (same URLs)
#   /usr/bin/time gives wall seconds, peak RSS and user+sys CPU. Reported:
#   MB/s (decimal: bytes / s / 1e6), peak RSS MiB, CPU s per GB, the nginx
#   requests/connections each run made, and mx/aria2c and mx/curl speed
#   ratios from each tool's best run, checked against the targets
#   (mx >= 1.0x aria2c in both scenarios, mx >= 10x curl in (a),
#   mx peak RSS <= 256 MiB). The markdown report is printed and appended to
#   bench/RESULTS.md. Exit status 1 if a target fails.
#
# How to run
#   bash bench/download.sh                      # full 2 GiB run (~5-10 min)
#   BENCH_SIZE_MIB=256 bash bench/download.sh   # quick try
# Env:
#   MX_BIN          mx binary (default build/src/cli/mx)
#   BENCH_SIZE_MIB  repo size in MiB (default 2048)
#   BENCH_ARGS      extra args for bench/download_bench.py
#                   (e.g. "--no-append", "--runs 1", "--tools mx,aria2c")
# Needs python3 (stdlib), nginx, aria2c, curl, /usr/bin/time. Work data goes
# to bench/work/ (gitignored) and is removed at the end.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export BENCH_SIZE_MIB="${BENCH_SIZE_MIB:-2048}"
export MX_BIN="${MX_BIN:-$here/../build/src/cli/mx}"
# shellcheck disable=SC2086
exec python3 "$here/download_bench.py" ${BENCH_ARGS:-} "$@"
