// RegionRegistry: the memory a process lets peers read, as named regions (address, size,
// device, dtype), and which byte ranges of each are verified (safe to serve).
//
// Contract:
// - A peer may read only a range that lies inside one registered region AND is verified.
//   A source's regions are registered complete (verified as a whole); a receiver registers
//   its destination empty and marks each chunk verified after its checksum matched, so it
//   can serve what it has while still receiving and never serves a byte it has not checked.
// - Regions never overlap; Register refuses an overlap. Unregister waits for nothing: the
//   caller must stop the servers that read a region before freeing its memory.
// - Thread-safe.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"

namespace mx::transfer {

struct Region {
  std::string name;
  uint64_t addr = 0;
  uint64_t size = 0;
  int device = -1;    // -1 = host memory; >= 0 a CUDA device (staged through host buffers)
  std::string dtype;  // informational: "torch.bfloat16", "" for raw bytes
};

class RegionRegistry {
 public:
  // `complete`: the whole region is verified from the start (a source's loaded weights).
  Status Register(const Region& region, bool complete);
  void Unregister(uint64_t addr);
  // Marks [addr, addr+size) verified; it must lie in one region.
  Status MarkVerified(uint64_t addr, uint64_t size);
  // The region holding [addr, addr+size) when that whole range is registered and verified.
  // NotFound when it is outside every region; Unavailable when not (yet) verified.
  Result<Region> Readable(uint64_t addr, uint64_t size) const;
  std::vector<Region> List() const;
  uint64_t verified_bytes() const;

 private:
  struct Entry {
    Region region;
    std::map<uint64_t, uint64_t> verified;  // start -> end, disjoint, merged
  };
  const Entry* FindLocked(uint64_t addr, uint64_t size) const;

  mutable std::mutex mu_;
  std::map<uint64_t, Entry> regions_;  // by start address
};

}  // namespace mx::transfer
