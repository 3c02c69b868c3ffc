#include "transfer/region.h"

namespace mx::transfer {

namespace {
bool RangeOverflows(uint64_t addr, uint64_t size) { return addr + size < addr; }
}  // namespace

Status RegionRegistry::Register(const Region& region, bool complete) {
  if (region.addr == 0 && region.size > 0) return Status::InvalidArgument("region at address 0");
  if (RangeOverflows(region.addr, region.size)) return Status::InvalidArgument("region wraps");
  std::lock_guard<std::mutex> l(mu_);
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
  Entry e{region, {}};
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

Status RegionRegistry::MarkVerified(uint64_t addr, uint64_t size) {
  std::lock_guard<std::mutex> l(mu_);
  const Entry* found = FindLocked(addr, size);
  if (found == nullptr) return Status::InvalidArgument("verified range outside every region");
  if (size == 0) return Status::OK();
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

Result<Region> RegionRegistry::Readable(uint64_t addr, uint64_t size) const {
  std::lock_guard<std::mutex> l(mu_);
  const Entry* e = FindLocked(addr, size);
  if (e == nullptr) return Status::NotFound("range is outside every registered region");
  if (size == 0) return e->region;
  auto it = e->verified.upper_bound(addr);
  if (it == e->verified.begin()) return Status::Unavailable("range not verified yet");
  --it;
  if (it->first > addr || it->second < addr + size) {
    return Status::Unavailable("range not verified yet");
  }
  return e->region;
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
