#!/usr/bin/env bash
# Peer-to-peer weights benchmark: `mx p2p pull` against memcpy, iperf3, and itself at
# fleet scale. One invocation; results appended to bench/RESULTS.md.
#
# What it measures (mx-server on 127.0.0.1, workers on their own 127.0.0.x addresses)
#   a) Same host, 2 GiB (BENCH_SAME_HOST_MIB): one `mx p2p serve` on 127.0.0.2, one
#      `mx p2p pull` on 127.0.0.3 with the default transport (cma: the source is a process
#      on this host), and with MX_P2P_TRANSPORT=tcp and =ucx for reference; best of 3 each. Peer: one
#      single-threaded memcpy of the same size between two pre-faulted buffers, measured in
#      the same run. Target: pull >= 0.5x memcpy. The pull's own "seconds" (list, manifest,
#      transfer, checksums, faulting in its fresh destination memory; not process start) is
#      used, best of 3; every run is printed (on a VM, memory the hypervisor reclaimed is
#      slow to fault in again, which memcpy's pre-faulted buffers do not pay).
#   b) Two addresses capped at 1 Gbit/s each (tc htb classes on lo, filtered by source
#      address), 512 MiB, MX_P2P_TRANSPORT=tcp (shared memory would bypass the caps). Peer:
#      iperf3 (5 s) from 127.0.0.2 to 127.0.0.3 under the same caps. Target: >= 0.9x iperf3.
#   c) Fleet rollout, 512 MiB (BENCH_FLEET_MIB), every address capped at 400 Mbit/s: one
#      seed and N = 1, 2, 4, 8 receivers started together, TCP. T(N) = wall time from
#      starting the receivers to the last one done. Swarm: `pull --serve` (receivers serve
#      verified chunks to each other); seed-only: plain `pull` (all bytes from the seed).
#      Target: swarm T(8)/T(1) <= 1.5; seed-only shown beside it (expected near N).
#   d) How the TCP backend sends registered memory: send() (used) vs MSG_ZEROCOPY vs
#      sendfile from a memfd, 1 GiB over 4 loopback connections (bench/tcp_send_probe.cc,
#      built as build/bench/mx_tcp_send_probe; MX_TCP_SEND_PROBE overrides). No target:
#      it records why the backend sends the way it does.
#   The tc classes are removed at the end (also on error or Ctrl-C). The script refuses to
#   run when lo already has a root qdisc other than the default (someone else's caps).
#   While it runs, those caps also slow anything else on 127.0.0.2-3 and 127.0.0.11-18:
#   do not run the integration tests at the same time.
#
# How to run
#   bash bench/p2p.sh                 # needs root for tc, iperf3, a built mx and mx-server
#   BENCH_NO_APPEND=1 bash bench/p2p.sh
# Env: BENCH_SAME_HOST_MIB (2048), BENCH_FLEET_MIB (512), BENCH_FLEET_NS ("1 2 4 8"),
#      MX_BIN (default build/src/cli/mx). Work data in bench/work/p2p-* (removed at the end).
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/.." && pwd)"
export MX_BIN="${MX_BIN:-$root/build/src/cli/mx}"
[[ -x "$MX_BIN" ]] || { echo "p2p.sh: $MX_BIN not found or not executable (build first)" >&2; exit 2; }
for t in tc iperf3; do
  command -v "$t" >/dev/null || { echo "p2p.sh: $t not installed" >&2; exit 2; }
done
exec /usr/bin/python3 "$here/p2p_bench.py" "$@"
