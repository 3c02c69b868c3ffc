#!/usr/bin/env bash
# Fetch benchmark: a worker installing a model from mx-server without shared storage
# (`mx model download --no-shared-storage`), against the physical limits and a peer.
#
# What it measures (one invocation, one report appended to bench/RESULTS.md)
#   1. A synthetic ~2 GiB model org/bench (4 shards + config + tokenizer), prepared as
#      bench/serve.sh does (hub stand-in -> mx download into the server's cache, warmed).
#   2. The disk's own limit: dd of 1 GiB with conv=fdatasync into the work dir.
#   3. mx-server on 127.0.0.1 with that cache; then, BENCH_RUNS times (best kept):
#      a. serve.sh's figure: 1 mx_stream_bench client streaming the model into memory
#         with 1 MiB chunks (no disk);
#      b. mx model download --no-shared-storage -s server-only into a fresh cache dir:
#         every file size- and hash-checked (sha256 / git blob sha1), fsynced, renamed
#         into blobs/, linked, refs written last: a complete HF cache;
#      c. bench/modelcache_client.py: a grpcio client working the way ModelExpress's
#         Python ModelCacheClient does at its defaults (one StreamModelFiles call, 1 MiB
#         chunks, files written from Python into a temp dir, renamed; no hash, no fsync);
#      d. BENCH_WORKERS (4) mx installs at once into 4 fresh dirs (aggregate MB/s);
#      e. (b) and (c) again into tmpfs (/dev/shm), where fsync is free: the software's own
#         cost, without the disk; and (b) into tmpfs at --transfer-chunk-size 256 KiB,
#         1 MiB and 4 MiB (the default is whichever is fastest). BENCH_TMPFS=0 skips (e).
#      Each install dir is removed and `sync`ed after its run.
#   Targets: (b) >= 0.8x (a); (b) >= 1.5x (c) by wall time; (d) all complete and verified.
#   Exit status 1 if a target fails (the report is appended anyway).
#
# How to run
#   bash bench/fetch.sh                        # 2 GiB (~3-6 min)
#   BENCH_SIZE_MIB=256 bash bench/fetch.sh     # quick try
# Env: BENCH_SIZE_MIB, BENCH_RUNS (2), BENCH_WORKERS (4), BENCH_NO_APPEND=1, MX_BIN,
#      MX_SERVER_BIN, MX_STREAM_BENCH_BIN (defaults under build/).
# Needs /usr/bin/python3 with python3-grpcio (and protoc + grpc_python_plugin for the
# client's stubs, generated into a temp dir). Work data goes to bench/work/fetch-*.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export BENCH_SIZE_MIB="${BENCH_SIZE_MIB:-2048}"
export BENCH_RUNS="${BENCH_RUNS:-2}"
export MX_BIN="${MX_BIN:-$root/build/src/cli/mx}"
export MX_SERVER_BIN="${MX_SERVER_BIN:-$root/build/src/server/mx-server}"
export MX_STREAM_BENCH_BIN="${MX_STREAM_BENCH_BIN:-$root/build/bench/mx_stream_bench}"
for b in "$MX_BIN" "$MX_SERVER_BIN" "$MX_STREAM_BENCH_BIN"; do
  [[ -x "$b" ]] || { echo "fetch.sh: $b not found or not executable (build first)" >&2; exit 2; }
done
exec /usr/bin/python3 "$here/fetch_bench.py" "$@"
