#!/usr/bin/env bash
# Serve benchmark: mx-server's StreamModelFiles (gRPC) vs iperf3 on loopback.
#
# What it measures
#   1. Prepares a synthetic ~2 GiB model `org/bench` (4 x 512 MiB
#      model-0000N-of-00004.safetensors + config.json + tokenizer.json) in an
#      HF-layout cache without the network: the repo is generated with
#      tests/integration/harness.py (make_repo), served by the hub stand-in
#      (HubStub) and fetched with `mx download org/bench --cache-dir CACHE`
#      (HF_ENDPOINT=stub). The blobs are then read once (page cache warm), so
#      the disk is not part of the measurement.
#   2. Physical reference: iperf3 on 127.0.0.1 (`iperf3 -s -B 127.0.0.1 -1`,
#      client `-t 5 -J`), one stream and 4 streams (-P 4);
#      MB/s = end.sum_received.bits_per_second / 8 / 1e6.
#   3. Starts build/src/server/mx-server on 127.0.0.1:<free port>
#      (MODEL_EXPRESS_CACHE_DIRECTORY=CACHE, MX_MIRROR_PORT=0,
#      MODEL_EXPRESS_SERVER_METRICS_PORT=0) and runs
#      CLIENTS processes of `build/bench/mx_stream_bench 127.0.0.1:PORT org/bench 1 CHUNK`
#      at once, for CLIENTS in {1, 4} x CHUNK in {32768 (ModelExpress's server
#      default), 1048576, 4194304}. Each client is its own process and TCP
#      connection (as worker pods are) and streams the whole model; for 4
#      clients bytes = 4 x model size and MB/s is the aggregate over the
#      slowest client's time. Every combination runs BENCH_RUNS times
#      (interleaved); the best is kept. Server CPU seconds (from
#      /proc/PID/stat) and client CPU seconds are recorded per run. The
#      server's peak RSS is /proc/PID/status VmHWM, read before it is stopped.
#   4. Prints a markdown report (machine info, table with ratios to iperf3
#      single stream, server peak RSS, targets) and appends it to
#      bench/RESULTS.md. Targets:
#        (1) 1 client, best chunk size >= 50% of iperf3 single-stream MB/s
#        (2) 4 clients aggregate >= 1 client at 1 MiB chunks
#        (3) server peak RSS (VmHWM) <= 256 MiB
#      Exit status 1 if any target fails (the results are appended anyway).
#
# How to run
#   bash bench/serve.sh                        # full 2 GiB run (~3-6 min)
#   BENCH_SIZE_MIB=256 bash bench/serve.sh     # quick try
# Env:
#   BENCH_SIZE_MIB       model size in MiB (default 2048; 4 equal shards)
#   BENCH_RUNS           runs per combination, best kept (default 2)
#   BENCH_IPERF_SECONDS  iperf3 -t (default 5)
#   BENCH_NO_APPEND=1    print the report only, do not touch bench/RESULTS.md
#   BENCH_SERVER_ENV     extra KEY=VALUE words for mx-server's environment, e.g.
#                        "GLIBC_TUNABLES=glibc.malloc.mmap_threshold=33554432"
#   BENCH_CLIENT_ENV     the same for mx_stream_bench
#   MX_BIN               mx CLI      (default build/src/cli/mx)
#   MX_SERVER_BIN        mx-server   (default build/src/server/mx-server)
#   MX_STREAM_BENCH_BIN  client      (default build/bench/mx_stream_bench)
# Needs /usr/bin/python3 (stdlib) and iperf3. Nothing is built here. Work data
# goes to bench/work/serve-* (gitignored) and is removed at the end; every
# server is bound to 127.0.0.x and stopped by PID.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export BENCH_SIZE_MIB="${BENCH_SIZE_MIB:-2048}"
export BENCH_RUNS="${BENCH_RUNS:-2}"
export BENCH_IPERF_SECONDS="${BENCH_IPERF_SECONDS:-5}"
export MX_BIN="${MX_BIN:-$root/build/src/cli/mx}"
export MX_SERVER_BIN="${MX_SERVER_BIN:-$root/build/src/server/mx-server}"
export MX_STREAM_BENCH_BIN="${MX_STREAM_BENCH_BIN:-$root/build/bench/mx_stream_bench}"
for b in "$MX_BIN" "$MX_SERVER_BIN" "$MX_STREAM_BENCH_BIN"; do
  [[ -x "$b" ]] || { echo "serve.sh: $b not found or not executable (build first)" >&2; exit 2; }
done
command -v iperf3 >/dev/null || { echo "serve.sh: iperf3 not installed" >&2; exit 2; }
exec /usr/bin/python3 "$here/serve_bench.py" "$@"
