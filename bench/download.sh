#!/usr/bin/env bash
# Download benchmark: `mx download` vs aria2c vs curl, per link shape, on 127.0.0.x.
#
# What it measures
#   A synthetic Hugging Face-style repo (4 equal model-0000N-of-00004.safetensors
#   shards + config.json, a 2 MiB tokenizer.json, generation_config.json,
#   model.safetensors.index.json, README.md; BENCH_SIZE_MIB in all) and a small
#   one (120 LFS files of 96 KiB) are served by tests/integration/hub_stub.py (the
#   hub API; it 302-redirects LFS files) and a CDN stand-in, in six shapes:
#     a) nginx `limit_rate 8m` per connection      b) nginx `limit_rate 25m`
#     c) nginx uncapped                            f) nginx `listen ... backlog=8`
#                                                     + `limit_rate 8m`
#     d) tests/integration/slow_cdn.py: 25 MB/s per connection + 50 ms before
#        each response (tc netem is not available on these kernels)
#     e) the small repo from slow_cdn.py with 30 ms before each response
#     g) slow_cdn.py: 8 MB/s per connection, continuously (nginx's limit_rate
#        lets each request send `rate` bytes in its first second, so requests
#        of a few MiB are barely capped in a, b and f)
#   Per shape each tool runs twice (curl once), interleaved, into a fresh
#   directory that is deleted and `sync`ed afterwards:
#     mx      mx download org/bench --cache-dir DIR --json   (defaults: adaptive
#             connections; HF_ENDPOINT=stub, so it goes through the hub API and
#             its redirects; mx verifies sha256 / git-sha1 of every file; the
#             script additionally checks exit 0 + the LFS files' sha256)
#     mx-16   the same with --max-workers 16 (the old fixed default)
#     aria2c  aria2c -x16 -s16 -j4 -k1M --file-allocation=none -i LIST
#             (LFS files straight from the CDN, a head start mx does not get;
#             other files via the stub's /resolve/ URLs; sizes checked)
#     curl    curl -sSfL -o FILE URL, one file after the other (same URLs)
#   /usr/bin/time gives wall seconds, peak RSS and user+sys CPU. Reported: MB/s
#   (decimal), peak RSS MiB, CPU s per GB, the CDN requests/connections of each
#   run, the tail (exit minus the CDN's last byte sent), and per shape the time
#   ratios mx/aria2c, mx/mx-16 and mx/curl from each tool's best run, checked
#   against the targets (mx <= 1.1x aria2c's time and <= 1.05x mx-16's on every
#   shape, mx tail < 5 %, mx peak RSS <= 256 MiB). The markdown report is
#   printed and appended to bench/RESULTS.md. Exit status 1 if a target fails.
#
# How to run (pick a moment of low load: `uptime`)
#   BENCH_SIZE_MIB=512 bash bench/download.sh     # ~5 min, curl at 8 MB/s dominates
#   BENCH_ARGS="--scenarios ce --no-append" bash bench/download.sh   # quick try
# Env:
#   MX_BIN          mx binary (default build/src/cli/mx)
#   BENCH_SIZE_MIB  big repo size in MiB (default 512)
#   BENCH_ARGS      extra args for bench/download_bench.py
#                   (e.g. "--no-append", "--runs 1", "--tools mx,aria2c")
# Needs python3 (stdlib), nginx, aria2c, curl, /usr/bin/time. Work data goes
# to bench/work/ (gitignored) and is removed at the end.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
export BENCH_SIZE_MIB="${BENCH_SIZE_MIB:-512}"
export MX_BIN="${MX_BIN:-$here/../build/src/cli/mx}"
# shellcheck disable=SC2086
exec python3 "$here/download_bench.py" ${BENCH_ARGS:-} "$@"
