#include "transfer/device.h"

#include <chrono>

namespace mx::transfer {

StagingPool::~StagingPool() {
  for (char* b : free_) copier_->FreeStaging(b);
}

StagingPool::Lease& StagingPool::Lease::operator=(Lease&& o) noexcept {
  if (this != &o) {
    Reset();
    pool_ = o.pool_;
    buffer_ = o.buffer_;
    o.pool_ = nullptr;
  }
  return *this;
}

void StagingPool::Lease::Reset() {
  if (pool_ != nullptr) pool_->Release(buffer_);
  pool_ = nullptr;
}

Result<StagingPool::Lease> StagingPool::Acquire(int wait_ms) {
  std::unique_lock<std::mutex> l(mu_);
  bool ready = cv_.wait_for(l, std::chrono::milliseconds(wait_ms),
                            [&] { return !free_.empty() || allocated_ < max_; });
  if (!ready) return Status::Unavailable("every staging buffer stayed in use");
  if (!free_.empty()) {
    char* b = free_.back();
    free_.pop_back();
    return Lease(this, b);
  }
  ++allocated_;
  l.unlock();
  auto b = copier_->AllocateStaging();
  if (!b.ok()) {
    l.lock();
    --allocated_;
    cv_.notify_one();
    return b.status();
  }
  return Lease(this, *b);
}

void StagingPool::Release(char* buffer) {
  std::lock_guard<std::mutex> l(mu_);
  free_.push_back(buffer);
  cv_.notify_one();
}

}  // namespace mx::transfer
