// Device memory in the transfer engine: regions and destinations that live on an
// accelerator (Region::device >= 0, PullItem::device >= 0).
//
// Debian's UCX has no CUDA transport and process_vm_readv cannot read device memory, so
// device bytes always travel through pinned host staging buffers, over TCP:
// - a source copies each piece of a requested range to a staging buffer and sends it from
//   there (its CRCs are computed the same way, once, at publish);
// - a target lands each chunk in a staging buffer, checks its CRC there, and starts the copy
//   to the device while it receives the next chunk into its other buffer; a chunk is marked
//   verified (servable to swarm peers) only once it is on the device.
//
// DeviceCopier is the seam: CudaCopier() where CUDA is built in and a GPU is present; tests
// use a copier whose "device" is host memory, which exercises the same staging paths.
#pragma once

#include <algorithm>
#include <condition_variable>
#include <cstddef>
#include <cstdint>
#include <mutex>
#include <vector>

#include "common/status.h"

namespace mx::transfer {

// Staging buffers hold this much; chunks bound for a device are read at most this large.
inline constexpr size_t kStagingBytes = 4 << 20;

class DeviceCopier {
 public:
  virtual ~DeviceCopier() = default;
  // Copies `n` bytes at device address `src` into host memory `dst`; returns when done.
  virtual Status ToHost(int device, uint64_t src, size_t n, char* dst) = 0;
  // Starts copying `n` host bytes at `src` to device address `dst`; `src` must stay
  // unchanged until Wait(ticket) returned. A ticket is waited exactly once.
  virtual Result<uint64_t> ToDeviceAsync(int device, const char* src, size_t n, uint64_t dst) = 0;
  virtual Status Wait(uint64_t ticket) = 0;
  // Host memory the device can copy from/to at full speed (pinned), kStagingBytes large.
  virtual Result<char*> AllocateStaging() = 0;
  virtual void FreeStaging(char* buffer) = 0;
};

// The process's CUDA copier: FailedPrecondition "built without CUDA" or "no usable CUDA
// device" when it cannot work. Thread-safe.
Result<DeviceCopier*> CudaCopier();

// A bounded set of staging buffers shared by the threads of one server or pull, allocated
// on first use and reused until the pool goes; Acquire() waits (up to `wait_ms`) while all
// are leased. Thread-safe; every lease must end before the pool does.
class StagingPool {
 public:
  StagingPool(DeviceCopier* copier, int max_buffers) : copier_(copier), max_(max_buffers) {}
  ~StagingPool();
  StagingPool(const StagingPool&) = delete;
  StagingPool& operator=(const StagingPool&) = delete;

  class Lease {
   public:
    Lease() = default;
    Lease(StagingPool* pool, char* buffer) : pool_(pool), buffer_(buffer) {}
    Lease(Lease&& o) noexcept : pool_(o.pool_), buffer_(o.buffer_) { o.pool_ = nullptr; }
    Lease& operator=(Lease&& o) noexcept;
    ~Lease() { Reset(); }
    char* data() const { return buffer_; }

   private:
    void Reset();
    StagingPool* pool_ = nullptr;
    char* buffer_ = nullptr;
  };

  Result<Lease> Acquire(int wait_ms);
  DeviceCopier* copier() const { return copier_; }

 private:
  void Release(char* buffer);

  DeviceCopier* copier_;
  const int max_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<char*> free_;
  int allocated_ = 0;
};

// Copies device range [src, src+n) to the host piece by piece through `pool`, calling
// `piece(data, size)` for each piece in order. The first failure (copy or callback) ends it.
template <typename PieceFn>
Status ForEachStagedPiece(StagingPool& pool, int device, uint64_t src, uint64_t n, int wait_ms,
                          PieceFn piece) {
  MX_ASSIGN_OR_RETURN(StagingPool::Lease lease, pool.Acquire(wait_ms));
  for (uint64_t done = 0; done < n;) {
    size_t step = static_cast<size_t>(std::min<uint64_t>(kStagingBytes, n - done));
    MX_RETURN_IF_ERROR(pool.copier()->ToHost(device, src + done, step, lease.data()));
    MX_RETURN_IF_ERROR(piece(lease.data(), step));
    done += step;
  }
  return Status::OK();
}

}  // namespace mx::transfer
