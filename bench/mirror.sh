#!/usr/bin/env bash
# Mirror benchmark: mx-server's HF mirror endpoint (HTTP/1.1, epoll event loop,
# sendfile) vs nginx (sendfile on) serving the same file on loopback.
#
# What it measures
#   1. Prepares a synthetic repo `org/bench` without the network: one
#      model.safetensors of BENCH_SIZE_MIB MiB plus config.json, written with
#      tests/integration/harness.py (make_repo) and served by the hub stand-in
#      (HubStub, HF_ENDPOINT). Starts build/src/server/mx-server on 127.0.0.1
#      (MODEL_EXPRESS_CACHE_DIRECTORY=CACHE, HF_ENDPOINT=stub, and free ports
#      for MODEL_EXPRESS_SERVER_PORT, MX_MIRROR_PORT and
#      MODEL_EXPRESS_SERVER_METRICS_PORT). One GET of
#      /org/bench/resolve/main/model.safetensors (and of config.json) through
#      the mirror fills the cache; the blob is then read once (cat > /dev/null)
#      so the page cache holds it and the disk is not part of the measurement.
#   2. Peer: nginx (the harness's Nginx class: sendfile on, tcp_nopush on,
#      2 worker processes) on 127.0.0.3 serving the very same blob file from
#      the cache's blobs/ directory.
#   3. For 1 client and 4 concurrent clients, each client one
#      `curl -s -o /dev/null -w '%{speed_download}...' URL` process (own TCP
#      connection), downloads the whole file from the mirror and from nginx.
#      BENCH_RUNS runs, interleaved (mirror, nginx, mirror, nginx, ...); the
#      best run is kept. Every download must answer 200 with the full size.
#      MB/s = bytes / s / 1e6; with 4 clients it is the aggregate: 4 x size /
#      the slowest client's curl time_total. Server CPU seconds (mx-server, or
#      nginx master + workers, from /proc/PID/stat) and curl CPU seconds
#      (rusage) are recorded per run.
#   4. Small-GET latency under load: while 4 curl clients download the big
#      file from the mirror, BENCH_SMALL_GETS (20) sequential GETs of
#      /org/bench/resolve/main/config.json (already cached), each on a fresh
#      connection from Python (http.client), timed from connect to the last
#      body byte; median and max are reported, plus how many of them ran
#      while all 4 downloads were still in flight.
#   5. Prints a markdown report (machine info, table, ratios mirror/nginx,
#      targets) and appends it to bench/RESULTS.md. Targets:
#        (1) mirror >= 0.8 x nginx MB/s, 1 client
#        (2) mirror >= 0.8 x nginx MB/s, 4 clients (aggregate)
#        (3) small-GET max latency under 4 big downloads < 100 ms
#      Exit status 1 if any target fails (the results are appended anyway).
#
# How to run
#   bash bench/mirror.sh                       # full 1 GiB run (~1-3 min)
#   BENCH_SIZE_MIB=128 bash bench/mirror.sh    # quick try
# Env:
#   BENCH_SIZE_MIB       size of model.safetensors in MiB (default 1024)
#   BENCH_RUNS           runs per (clients, server), best kept (default 3)
#   BENCH_SMALL_GETS     small GETs in the latency test (default 20)
#   BENCH_NO_APPEND=1    print the report only, do not touch bench/RESULTS.md
#   BENCH_SERVER_ENV     extra KEY=VALUE words for mx-server's environment
#   MX_SERVER_BIN        mx-server (default build/src/server/mx-server)
# Needs /usr/bin/python3 (stdlib), curl and /usr/sbin/nginx. Nothing is built
# here. Work data goes to bench/work/mirror-* (gitignored) and is removed at
# the end; every server is bound to 127.0.0.x and stopped by PID.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export BENCH_SIZE_MIB="${BENCH_SIZE_MIB:-1024}"
export BENCH_RUNS="${BENCH_RUNS:-3}"
export BENCH_SMALL_GETS="${BENCH_SMALL_GETS:-20}"
export MX_SERVER_BIN="${MX_SERVER_BIN:-$root/build/src/server/mx-server}"
[[ -x "$MX_SERVER_BIN" ]] || { echo "mirror.sh: $MX_SERVER_BIN not found or not executable (build first)" >&2; exit 2; }
command -v curl >/dev/null || { echo "mirror.sh: curl not installed" >&2; exit 2; }
[[ -x /usr/sbin/nginx ]] || { echo "mirror.sh: /usr/sbin/nginx not installed" >&2; exit 2; }
exec /usr/bin/python3 "$here/mirror_bench.py" "$@"
