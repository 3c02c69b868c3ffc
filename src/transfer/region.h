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
// - Checksum() answers the CRC-32C of a readable range, remembered per range: a source
//   computes each chunk's CRC once (PrecomputeChecksums, or on first request) instead of for
//   every peer, and a receiver remembers the CRC it verified a chunk with. A remembered CRC
//   describes the memory when it was verified; a peer whose copy does not match it asks
//   again with `fresh` (the memory as it is now: an engine may update weights in place), and
//   only a second mismatch fails the read. At most one CRC per 64 KiB of a region is kept,
//   so peers asking odd ranges cannot grow it without bound.
// - Thread-safe.
#pragma once

#include <atomic>
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "transfer/device.h"

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
  RegionRegistry();
  ~RegionRegistry();
  // Lets regions live on a device (see device.h): their bytes are read through a pool of
  // `max_staging` pinned buffers of `copier`, which must outlive the registry.
  void EnableDevices(DeviceCopier* copier, int max_staging = 16);
  // The staging pool for device regions; null until EnableDevices.
  StagingPool* staging() const { return staging_.get(); }

  // `complete`: the whole region is verified from the start (a source's loaded weights).
  // A device region needs EnableDevices first.
  Status Register(const Region& region, bool complete);
  void Unregister(uint64_t addr);
  // Marks [addr, addr+size) verified; it must lie in one region. `crc`, when given, is the
  // range's CRC-32C the caller checked it against (remembered for Checksum).
  Status MarkVerified(uint64_t addr, uint64_t size, std::optional<uint32_t> crc = std::nullopt);
  // The region holding [addr, addr+size) when that whole range is registered and verified.
  // NotFound when it is outside every region; Unavailable when not (yet) verified.
  Result<Region> Readable(uint64_t addr, uint64_t size) const;
  // Readable(addr, size), then the range's CRC-32C: remembered, or computed and remembered
  // (always computed, and remembered anew, when `fresh`). `region`, when given, receives the
  // region holding the range.
  Result<uint32_t> Checksum(uint64_t addr, uint64_t size, bool fresh = false,
                            Region* region = nullptr);
  // Computes the CRC of every `chunk_bytes` piece (from each region's start, as PullOptions
  // deals chunks) of the complete regions, on `threads` threads, so the first peers do not
  // wait for them. Returns early once `*cancel` is true.
  void PrecomputeChecksums(uint64_t chunk_bytes, int threads,
                           const std::atomic<bool>* cancel = nullptr);
  std::vector<Region> List() const;
  uint64_t verified_bytes() const;

 private:
  struct Entry {
    Region region;
    std::map<uint64_t, uint64_t> verified;                   // start -> end, disjoint, merged
    std::map<uint64_t, std::pair<uint64_t, uint32_t>> crcs;  // start -> (size, CRC-32C)
  };
  const Entry* FindLocked(uint64_t addr, uint64_t size) const;
  Status ReadableLocked(const Entry* e, uint64_t addr, uint64_t size) const;
  void RememberLocked(Entry* e, uint64_t addr, uint64_t size, uint32_t crc);

  Result<uint32_t> ComputeChecksum(const Region& region, uint64_t addr, uint64_t size);

  mutable std::mutex mu_;
  std::map<uint64_t, Entry> regions_;  // by start address
  std::unique_ptr<StagingPool> staging_;
};

}  // namespace mx::transfer
