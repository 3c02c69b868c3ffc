// Pull: moves a set of items (a tensor each) from one or more peers into local memory, in
// chunks, over several connections per peer, backend-agnostic.
//
// Contract:
// - Every item's bytes land in its `dest`; every chunk is CRC-checked by the connection and
//   then marked verified in `verified` (when given), so this process can serve it at once.
// - A peer that fails (dies, stalls past the stall deadline, sends a bad checksum) is
//   dropped and its unfinished chunks go to the other peers; a peer that answers "not
//   verified yet" (a partial swarm peer) is asked again later and its chunks may go to any
//   other peer meanwhile.
// - Returns OK only when every chunk arrived and verified; Unavailable when every peer
//   failed first, DeadlineExceeded-like Unavailable when `deadline` passed. Never hangs.
#pragma once

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "common/status.h"
#include "transfer/device.h"
#include "transfer/region.h"
#include "transfer/transport.h"

namespace mx::transfer {

struct PullItem {
  char* dest = nullptr;  // a device address when `device` >= 0
  uint64_t size = 0;
  int device = -1;  // >= 0: `dest` is on that device; landed via PullOptions::staging
};

struct PullPeer {
  std::string name;      // for reports: worker id
  std::string endpoint;  // "tcp://HOST:PORT"
  // The peer's address of each item (same order as the items).
  std::vector<uint64_t> remote_addr;
  // A partial peer (a receiver still receiving): "not verified" from it is normal. It is
  // asked only for the chunks of its swarm slot (see PullOptions).
  bool partial = false;
  int slot = -1;  // its swarm slot; a partial peer without one is not used
  // Some of its memory is on a device: only its tcp reads can stage that (see device.h).
  bool device_memory = false;
};

// The chunk a pull reads and checks at once; sources precompute their CRCs at this grain.
inline constexpr uint64_t kDefaultChunkBytes = 4ull << 20;

struct PullOptions {
  uint64_t chunk_bytes = kDefaultChunkBytes;
  int connections_per_peer = 4;
  ConnectOptions connect;
  std::chrono::steady_clock::time_point deadline = std::chrono::steady_clock::time_point::max();
  RegionRegistry* verified = nullptr;  // chunks are marked verified here when set
  // Needed when an item is on a device: each pulling thread lands a chunk in one of two
  // staging buffers, checks it, and copies it to the device while receiving the next.
  StagingPool* staging = nullptr;
  // Swarm: the chunks are dealt round-robin into `swarm_slots` slots, one per receiver of
  // the rollout (this one included, at `self_slot`). Each receiver takes its own slot from
  // the full sources and every other slot from the receiver that owns it, which got it
  // from the full sources just before. Why this and not rarest-first: rarest-first needs
  // every peer's availability map and still lets N receivers ask the seed for the same
  // rare chunk at once; a static deal needs no exchange (the receivers agree on the order of
  // their worker ids), makes the full sources send each chunk about once, and spreads the
  // rest over every receiver's uplink, so N receivers take about the time of one. A slot
  // whose owner dies, or sends nothing for `release_ms` while we wait on it, is released:
  // the full sources serve it then, so a dead or stuck peer costs time, never correctness.
  int swarm_slots = 1;
  int self_slot = 0;
  int release_ms = 2000;
  // Called for each finished item (index), from a pulling thread.
  std::function<void(size_t)> on_item;
};

struct PeerStats {
  std::string name;
  uint64_t bytes = 0;
  bool failed = false;
  std::string error;
  std::string transport;  // of its connections: "tcp" or "ucx"
};

struct PullStats {
  uint64_t bytes = 0;
  double seconds = 0;
  std::vector<PeerStats> peers;
};

Status Pull(const std::vector<PullItem>& items, const std::vector<PullPeer>& peers,
            const PullOptions& options, PullStats* stats);

}  // namespace mx::transfer
