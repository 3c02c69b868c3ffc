#!/usr/bin/env bash
# Stream benchmark: `mx stream` vs cat / fio / aws s3 cp, all on the SAME data.
#
# What it measures
#   0. Writes a synthetic safetensors model under bench/work/stream-*/model
#      (on the disk; bench/work is checked not to be tmpfs, because O_DIRECT
#      needs a real filesystem): 8 shards model-0000N-of-00008.safetensors,
#      each with 4 BF16 tensors of BENCH_SIZE_MIB/32 MiB (default 2048 MiB in
#      all: 8 x 256 MiB shards of 4 x 64 MiB tensors), written with
#      tests/integration/storage_peers.py:write_safetensors. Only the shards
#      are in the directory, so every tool reads exactly the same files.
#   a) Page cache. The shards are read twice with `cat` (warm), then
#      `cat SHARDS > /dev/null` vs `mx stream DIR --json` (defaults:
#      concurrency 16, 8 MiB chunks), BENCH_RUNS runs each, interleaved, best
#      kept. Target: mx >= 0.9x cat. Reference row (no target): the same
#      shards read with plain read() calls into a fresh anonymous mmap per
#      shard (stream_bench.py --read-fresh), i.e. the page-fault cost of
#      landing the bytes in new memory, which cat (one reused 128 KiB buffer)
#      does not pay and mx (the tensors end up in memory) does.
#   b) Cold reads, O_DIRECT, 8 MiB blocks, both bypassing the page cache:
#      `mx stream DIR --direct --chunk-size 8MiB --json` vs
#      `fio --direct=1 --rw=read --bs=8M --ioengine=psync --group_reporting`
#      with 16 jobs = 2 per shard, each job reading one contiguous half of a
#      shard sequentially (--filename=SHARD --offset=0|HALF --size=HALF):
#      this matches mx's default of 16 parallel 8 MiB reads spread over the
#      8 files. fio skips each shard's few-hundred-byte tail past the last
#      whole 8 MiB block (O_DIRECT needs aligned lengths); MB/s uses the
#      bytes each tool read. fio also runs with 8 jobs (one whole shard
#      each) for reference, no target. Target: mx >= 0.9x fio (16 jobs),
#      comparing fio's own read bw (bw_bytes) with mx's own gb_per_second:
#      both exclude process start-up, which for fio's 16 forked jobs is a few
#      hundred ms; the wall-clock ratio is printed too. The host behind the
#      VM disk may cache it; "cold" means "not from this kernel's page cache".
#   c) S3. Starts s3rver (storage_peers.S3rver, data dir under bench/work),
#      uploads the model with awscli (S3rver.upload_dir -> s3://models/bench/model),
#      then `/usr/bin/aws s3 cp --recursive --only-show-errors
#      s3://models/bench/model DEST --endpoint-url URL` (awscli defaults:
#      10 concurrent requests, 8 MiB multipart chunks; DEST is a fresh dir on
#      disk, removed and `sync`ed outside the timing) vs
#      `mx stream s3://models/bench/model --json`, same env (S3rver.env()).
#      Target: mx >= 1.5x aws. s3rver's CPU seconds per run are recorded
#      (/proc/PID/stat): the Node server may be the bottleneck on 2 cores.
#   Every run is timed wall clock around the process (fork to exit); its CPU
#   and minor page faults come from wait4(); MB/s = bytes / wall s / 1e6.
#   Ratios for a) and c) use wall clock for both tools, b) the tools' own
#   numbers (see above). mx's peak RSS is its JSON peak_rss_bytes. "machine
#   CPU" is the whole machine's non-idle share of nproc x wall (/proc/stat),
#   i.e. saturation of the 2 cores. Every mx run must also report all files,
#   tensors and tensor bytes.
#   Prints a markdown report and appends it to bench/RESULTS.md as
#   "## mx stream vs cat / fio / aws s3 cp (bench/stream.sh), <date -u>".
#   Exit status 1 if any target fails (results are appended anyway).
#
# How to run
#   bash bench/stream.sh                       # full 2 GiB run (~3-6 min)
#   BENCH_SIZE_MIB=256 bash bench/stream.sh    # quick try
# Env:
#   BENCH_SIZE_MIB     model size in MiB (default 2048; 8 shards x 4 tensors)
#   BENCH_RUNS         runs per tool and scenario, best kept (default 2)
#   BENCH_NO_APPEND=1  print the report only, do not touch bench/RESULTS.md
#   MX_BIN             mx CLI (default build/src/cli/mx)
# Needs /usr/bin/python3 (stdlib), fio, /usr/bin/aws and s3rver. Nothing is
# built here. Work data goes to bench/work/stream-* (gitignored) and is
# removed at the end; s3rver is bound to 127.0.0.1 and stopped by PID.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export BENCH_SIZE_MIB="${BENCH_SIZE_MIB:-2048}"
export BENCH_RUNS="${BENCH_RUNS:-2}"
export MX_BIN="${MX_BIN:-$root/build/src/cli/mx}"
[[ -x "$MX_BIN" ]] || { echo "stream.sh: $MX_BIN not found or not executable (build first)" >&2; exit 2; }
for t in fio s3rver; do
  command -v "$t" >/dev/null || { echo "stream.sh: $t not installed" >&2; exit 2; }
done
[[ -x /usr/bin/aws ]] || { echo "stream.sh: /usr/bin/aws not installed" >&2; exit 2; }
exec /usr/bin/python3 "$here/stream_bench.py" "$@"
