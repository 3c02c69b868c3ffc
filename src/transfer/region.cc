#include "transfer/region.h"

#include <algorithm>
#include <atomic>
#include <thread>

#include "transfer/crc32c.h"

namespace mx::transfer {

namespace {
bool RangeOverflows(uint64_t addr, uint64_t size) { return addr + size < addr; }

// One remembered CRC per this many bytes of a region, at most.
constexpr uint64_t kCrcGrain = 64 << 10;
}  // namespace

RegionRegistry::RegionRegistry() = default;
RegionRegistry::~RegionRegistry() = default;

void RegionRegistry::EnableDevices(DeviceCopier* copier, int max_staging) {
  std::lock_guard<std::mutex> l(mu_);
  if (staging_ == nullptr) staging_ = std::make_unique<StagingPool>(copier, max_staging);
}

Status RegionRegistry::Register(const Region& region, bool complete) {
  if (region.addr == 0 && region.size > 0) return Status::InvalidArgument("region at address 0");
  if (RangeOverflows(region.addr, region.size)) return Status::InvalidArgument("region wraps");
  std::lock_guard<std::mutex> l(mu_);
  if (region.device >= 0 && staging_ == nullptr) {
    return Status::FailedPrecondition("region " + region.name +
                                      " is in device memory, but no device copier is set");
  }
  auto next = regions_.lower_bound(region.addr);
  if (next != regions_.end() && next->first < region.addr + region.size) {
    return Status::InvalidArgument("region " + region.name + " overlaps " +
                                   next->second.region.name);
  }
  if (next != regions_.begin()) {
    auto prev = std::prev(next);
    if (prev->first + prev->second.region.size > region.addr) {
      return Status::InvalidArgument("region " + region.name + " overlaps " +
                                     prev->second.region.name);
    }
  }
  Entry e{region, {}, {}};
  if (complete && region.size > 0) e.verified[region.addr] = region.addr + region.size;
  regions_[region.addr] = std::move(e);
  return Status::OK();
}

void RegionRegistry::Unregister(uint64_t addr) {
  std::lock_guard<std::mutex> l(mu_);
  regions_.erase(addr);
}

const RegionRegistry::Entry* RegionRegistry::FindLocked(uint64_t addr, uint64_t size) const {
  if (RangeOverflows(addr, size)) return nullptr;
  auto it = regions_.upper_bound(addr);
  if (it == regions_.begin()) return nullptr;
  --it;
  const Region& r = it->second.region;
  if (addr < r.addr || addr + size > r.addr + r.size) return nullptr;
  return &it->second;
}

Status RegionRegistry::MarkVerified(uint64_t addr, uint64_t size, std::optional<uint32_t> crc) {
  std::lock_guard<std::mutex> l(mu_);
  const Entry* found = FindLocked(addr, size);
  if (found == nullptr) return Status::InvalidArgument("verified range outside every region");
  if (size == 0) return Status::OK();
  if (crc.has_value()) RememberLocked(const_cast<Entry*>(found), addr, size, *crc);
  auto& v = const_cast<Entry*>(found)->verified;
  uint64_t start = addr, end = addr + size;
  // Merge with every interval that touches [start, end).
  auto it = v.upper_bound(start);
  if (it != v.begin() && std::prev(it)->second >= start) --it;
  while (it != v.end() && it->first <= end) {
    start = std::min(start, it->first);
    end = std::max(end, it->second);
    it = v.erase(it);
  }
  v[start] = end;
  return Status::OK();
}

Status RegionRegistry::ReadableLocked(const Entry* e, uint64_t addr, uint64_t size) const {
  if (e == nullptr) return Status::NotFound("range is outside every registered region");
  if (size == 0) return Status::OK();
  auto it = e->verified.upper_bound(addr);
  if (it == e->verified.begin()) return Status::Unavailable("range not verified yet");
  --it;
  if (it->first > addr || it->second < addr + size) {
    return Status::Unavailable("range not verified yet");
  }
  return Status::OK();
}

Result<Region> RegionRegistry::Readable(uint64_t addr, uint64_t size) const {
  std::lock_guard<std::mutex> l(mu_);
  const Entry* e = FindLocked(addr, size);
  MX_RETURN_IF_ERROR(ReadableLocked(e, addr, size));
  return e->region;
}

void RegionRegistry::RememberLocked(Entry* e, uint64_t addr, uint64_t size, uint32_t crc) {
  auto it = e->crcs.find(addr);
  if (it != e->crcs.end()) {
    it->second = {size, crc};
    return;
  }
  if (e->crcs.size() <= e->region.size / kCrcGrain) e->crcs[addr] = {size, crc};
}

Result<uint32_t> RegionRegistry::ComputeChecksum(const Region& region, uint64_t addr,
                                                 uint64_t size) {
  if (region.device < 0) return Crc32c(0, reinterpret_cast<const char*>(addr), size);
  uint32_t crc = 0;
  MX_RETURN_IF_ERROR(ForEachStagedPiece(*staging_, region.device, addr, size, 30000,
                                        [&](const char* piece, size_t n) {
                                          crc = Crc32c(crc, piece, n);
                                          return Status::OK();
                                        }));
  return crc;
}

Result<uint32_t> RegionRegistry::Checksum(uint64_t addr, uint64_t size, bool fresh,
                                          Region* region_out) {
  Region region;
  {
    std::lock_guard<std::mutex> l(mu_);
    const Entry* e = FindLocked(addr, size);
    MX_RETURN_IF_ERROR(ReadableLocked(e, addr, size));
    region = e->region;
    if (region_out != nullptr) *region_out = region;
    auto it = e->crcs.find(addr);
    if (!fresh && it != e->crcs.end() && it->second.first == size) return it->second.second;
  }
  // Computed without the lock: other peers' reads go on meanwhile.
  MX_ASSIGN_OR_RETURN(uint32_t crc, ComputeChecksum(region, addr, size));
  std::lock_guard<std::mutex> l(mu_);
  // The region may have gone meanwhile (Unregister): then the CRC is only answered.
  if (Entry* e = const_cast<Entry*>(FindLocked(addr, size)); e != nullptr && size > 0) {
    RememberLocked(e, addr, size, crc);
  }
  return crc;
}

void RegionRegistry::PrecomputeChecksums(uint64_t chunk_bytes, int threads,
                                         const std::atomic<bool>* cancel) {
  chunk_bytes = std::max<uint64_t>(chunk_bytes, kCrcGrain);
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  {
    std::lock_guard<std::mutex> l(mu_);
    for (const auto& [start, e] : regions_) {
      for (uint64_t off = 0; off < e.region.size; off += chunk_bytes) {
        uint64_t n = std::min(chunk_bytes, e.region.size - off);
        if (ReadableLocked(&e, start + off, n).ok() && e.crcs.count(start + off) == 0) {
          ranges.push_back({start + off, n});
        }
      }
    }
  }
  std::atomic<size_t> next{0};
  auto work = [&] {
    for (size_t i = next++; i < ranges.size(); i = next++) {
      if (cancel != nullptr && cancel->load()) return;
      (void)Checksum(ranges[i].first, ranges[i].second);
    }
  };
  std::vector<std::thread> pool;
  for (int t = 1; t < std::max(1, threads); ++t) pool.emplace_back(work);
  work();
  for (auto& t : pool) t.join();
}

std::vector<Region> RegionRegistry::List() const {
  std::lock_guard<std::mutex> l(mu_);
  std::vector<Region> out;
  for (const auto& [a, e] : regions_) out.push_back(e.region);
  return out;
}

uint64_t RegionRegistry::verified_bytes() const {
  std::lock_guard<std::mutex> l(mu_);
  uint64_t n = 0;
  for (const auto& [a, e] : regions_) {
    for (const auto& [s, t] : e.verified) n += t - s;
  }
  return n;
}

}  // namespace mx::transfer
