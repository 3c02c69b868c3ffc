#include "transfer/pull.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>

namespace mx::transfer {
namespace {

struct Chunk {
  size_t item;
  uint64_t offset;
  uint64_t size;
};

class Puller {
 public:
  Puller(const std::vector<PullItem>& items, const std::vector<PullPeer>& peers,
         const PullOptions& o)
      : items_(items), peers_(peers), o_(o) {}

  Status Run(PullStats* stats) {
    auto start = std::chrono::steady_clock::now();
    uint64_t host_chunk = std::max<uint64_t>(4096, std::min(o_.chunk_bytes, kMaxReadBytes));
    left_in_item_.assign(items_.size(), 0);
    for (size_t i = 0; i < items_.size(); ++i) {
      if (items_[i].device >= 0 && o_.staging == nullptr) {
        return Status::FailedPrecondition("tensor " + std::to_string(i) +
                                          " goes to device memory, but no staging is set");
      }
      uint64_t chunk =
          items_[i].device >= 0 ? std::min<uint64_t>(host_chunk, kStagingBytes) : host_chunk;
      for (uint64_t off = 0; off < items_[i].size; off += chunk) {
        chunks_.push_back({i, off, std::min(chunk, items_[i].size - off)});
        ++left_in_item_[i];
      }
      if (items_[i].size == 0 && o_.on_item) o_.on_item(i);
    }
    slots_ = std::max(1, o_.swarm_slots);
    self_slot_ = std::clamp(o_.self_slot, 0, slots_ - 1);
    pending_.resize(slots_);
    released_.assign(slots_, false);
    released_[self_slot_] = true;
    for (size_t c = 0; c < chunks_.size(); ++c) pending_[SlotOf(c)].push_back(c);
    last_progress_.assign(peers_.size(), std::chrono::steady_clock::now());
    peer_stats_.resize(peers_.size());
    threads_left_.assign(peers_.size(), 0);
    // Count every peer before any thread starts: a thread must never see a partial count
    // (no full source yet would read as "stuck").
    std::vector<size_t> workers;
    for (size_t p = 0; p < peers_.size(); ++p) {
      peer_stats_[p].name = peers_[p].name;
      if (peers_[p].remote_addr.size() != items_.size()) {
        peer_stats_[p].failed = true;
        peer_stats_[p].error = "its manifest does not match";
        continue;
      }
      if (peers_[p].partial &&
          (peers_[p].slot < 0 || peers_[p].slot >= slots_ || peers_[p].slot == self_slot_)) {
        continue;  // a receiver outside this rollout's deal: not needed
      }
      ++live_peers_;
      if (!peers_[p].partial) ++live_full_;
      threads_left_[p] = std::max(1, o_.connections_per_peer);
      workers.push_back(p);
    }
    std::vector<std::thread> threads;
    {
      std::lock_guard<std::mutex> l(mu_);  // the threads start once all are counted
      for (size_t p : workers) {
        for (int k = 0; k < threads_left_[p]; ++k) threads.emplace_back([this, p] { Work(p); });
      }
    }
    for (auto& t : threads) t.join();
    if (stats != nullptr) {
      stats->bytes = bytes_;
      stats->seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      stats->peers = peer_stats_;
    }
    if (done_ == chunks_.size()) return Status::OK();
    if (!local_error_.ok()) return local_error_;
    std::string why;
    for (const auto& s : peer_stats_) {
      if (s.failed) why += (why.empty() ? "" : "; ") + s.name + ": " + s.error;
    }
    if (std::chrono::steady_clock::now() >= o_.deadline) {
      return Status::Unavailable("transfer deadline passed with " +
                                 std::to_string(chunks_.size() - done_) + " chunks missing");
    }
    return Status::Unavailable("every source failed before the transfer finished" +
                               (why.empty() ? std::string() : " (" + why + ")"));
  }

 private:
  bool Finished() const { return done_ == chunks_.size(); }
  int SlotOf(size_t chunk) const { return static_cast<int>(chunk % slots_); }

  // A chunk peer p may take now (removed from its queue), or -1. REQUIRES: mu_ held.
  long Pick(size_t p) {
    auto take = [&](int slot) -> long {
      auto& q = pending_[slot];
      if (q.empty()) return -1;
      size_t c = q.front();
      q.pop_front();
      return static_cast<long>(c);
    };
    if (peers_[p].partial) return take(peers_[p].slot);
    if (long c = take(self_slot_); c >= 0) return c;
    for (int s = 0; s < slots_; ++s) {
      if (released_[s]) {
        if (long c = take(s); c >= 0) return c;
      }
    }
    return -1;
  }

  bool HasWork(size_t p) const {
    if (peers_[p].partial) return !pending_[peers_[p].slot].empty();
    for (int s = 0; s < slots_; ++s) {
      if (released_[s] && !pending_[s].empty()) return true;
    }
    return false;
  }

  // No full source is left while chunks only a full source may send are waiting.
  bool Stuck() const {
    if (live_full_ > 0) return false;
    for (int s = 0; s < slots_; ++s) {
      if (released_[s] && !pending_[s].empty()) return true;
    }
    return false;
  }

  // Marks peer p failed (once) and wakes everyone: its chunks are back in the queue.
  void FailPeer(size_t p, const Status& st) {
    if (!peer_stats_[p].failed) {
      peer_stats_[p].failed = true;
      peer_stats_[p].error = st.message();
      --live_peers_;
      if (peers_[p].partial) {
        released_[peers_[p].slot] = true;  // its slot now comes from the full sources
      } else {
        --live_full_;
      }
    }
    cv_.notify_all();
  }

  // A chunk bound for a device: received into `lease`, checked, and being copied.
  struct InFlight {
    size_t chunk = 0;
    uint32_t crc = 0;
    uint64_t ticket = 0;
    StagingPool::Lease lease;
  };

  // Counts chunk c as landed (verified, servable). REQUIRES: mu_ held; may drop it briefly
  // for the item callback.
  void Complete(size_t p, size_t c, std::unique_lock<std::mutex>& l) {
    const Chunk& ch = chunks_[c];
    ++done_;
    bytes_ += ch.size;
    peer_stats_[p].bytes += ch.size;
    last_progress_[p] = std::chrono::steady_clock::now();
    bool item_done = --left_in_item_[ch.item] == 0;
    cv_.notify_all();
    if (item_done && o_.on_item) {
      l.unlock();
      o_.on_item(ch.item);
      l.lock();
    }
  }

  Status MarkVerified(size_t c, uint32_t crc) {
    if (o_.verified == nullptr) return Status::OK();
    const Chunk& ch = chunks_[c];
    return o_.verified->MarkVerified(reinterpret_cast<uint64_t>(items_[ch.item].dest + ch.offset),
                                     ch.size, crc);
  }

  // Waits for a device copy and counts its chunk. A failed copy is this process's failure,
  // not the peer's: the whole pull ends with it. REQUIRES: mu_ held (released while waiting).
  void Land(size_t p, InFlight& f, std::unique_lock<std::mutex>& l) {
    l.unlock();
    Status st = o_.staging->copier()->Wait(f.ticket);
    if (st.ok()) st = MarkVerified(f.chunk, f.crc);
    f.lease = StagingPool::Lease();
    l.lock();
    if (st.ok()) {
      Complete(p, f.chunk, l);
    } else {
      if (local_error_.ok()) local_error_ = st;
      cv_.notify_all();
    }
  }

  // Reads chunk c from the peer: straight into host memory, or into a staging buffer and on
  // to the device (`slots[next]`'s previous copy is landed first, so its buffer can be
  // reused; when the pool has no free buffer, the other copy is landed too, so a thread never
  // waits for a buffer while holding one).
  Status Fetch(size_t p, Connection& conn, size_t c, std::optional<InFlight> (&slots)[2], int next,
               std::unique_lock<std::mutex>& l, bool* landed_now) {
    const Chunk& ch = chunks_[c];
    const PullItem& item = items_[ch.item];
    uint64_t remote = peers_[p].remote_addr[ch.item] + ch.offset;
    uint32_t crc = 0;
    *landed_now = false;
    if (item.device < 0) {
      l.unlock();
      Status st = conn.Read(remote, ch.size, item.dest + ch.offset, &crc);
      if (st.ok()) st = MarkVerified(c, crc);
      l.lock();
      *landed_now = st.ok();
      return st;
    }
    std::optional<InFlight>* slot = &slots[next];
    if (slot->has_value()) {
      Land(p, **slot, l);
      slot->reset();
    }
    l.unlock();
    Status st;
    InFlight f;
    f.chunk = c;
    auto lease = o_.staging->Acquire(0);
    if (!lease.ok()) {
      std::optional<InFlight>& other = slots[next ^ 1];
      if (other.has_value()) {
        l.lock();
        Land(p, *other, l);
        other.reset();
        l.unlock();
      }
      lease = o_.staging->Acquire(o_.connect.stall_ms);
    }
    if (!lease.ok()) {
      st = lease.status();
    } else {
      f.lease = std::move(*lease);
      st = conn.Read(remote, ch.size, f.lease.data(), &f.crc);
    }
    if (st.ok()) {
      auto ticket = o_.staging->copier()->ToDeviceAsync(
          item.device, f.lease.data(), ch.size, reinterpret_cast<uint64_t>(item.dest + ch.offset));
      if (ticket.ok()) {
        f.ticket = *ticket;
        *slot = std::move(f);
      } else {
        l.lock();
        if (local_error_.ok()) local_error_ = ticket.status();
        cv_.notify_all();
        l.unlock();
        st = ticket.status();
      }
    }
    l.lock();
    return st;
  }

  void Work(size_t p) {
    const PullPeer& peer = peers_[p];
    ConnectOptions connect = o_.connect;
    if (peer.device_memory) connect.transport = "tcp";
    auto conn = Connect(peer.endpoint, connect);
    std::unique_lock<std::mutex> l(mu_);
    if (!conn.ok()) {
      // One refused connection of several is not the peer's death; the last one is.
      if (--threads_left_[p] == 0) FailPeer(p, conn.status());
      return;
    }
    peer_stats_[p].transport = (*conn)->transport();
    // Two device copies in flight at most: one lands while the next chunk is received.
    std::optional<InFlight> slots[2];
    int next_slot = 0;
    auto land_all = [&] {
      for (auto& s : slots) {
        if (s.has_value()) Land(p, *s, l);
        s.reset();
      }
    };
    while (true) {
      if (!HasWork(p) && (slots[0] || slots[1])) {
        land_all();  // nothing to receive meanwhile: finish what is on its way
        continue;
      }
      bool ready = cv_.wait_until(l, o_.deadline, [&] {
        return Finished() || peer_stats_[p].failed || live_peers_ == 0 || Stuck() ||
               !local_error_.ok() || HasWork(p);
      });
      if (!ready || Finished() || peer_stats_[p].failed || Stuck() || !local_error_.ok()) break;
      long picked = Pick(p);
      if (picked < 0) break;  // live_peers_ == 0
      size_t c = static_cast<size_t>(picked);
      bool landed_now = false;
      Status st = Fetch(p, **conn, c, slots, next_slot, l, &landed_now);
      if (st.ok()) {
        next_slot ^= 1;
        if (landed_now) Complete(p, c, l);
        continue;
      }
      if (st.code() == StatusCode::kUnavailable && !(*conn)->broken()) {
        // A partial peer without this chunk yet: ask again soon, unless it has sent nothing
        // for a while (stuck or starved): then its slot goes to the full sources.
        pending_[SlotOf(c)].push_front(c);
        if (peers_[p].partial && std::chrono::steady_clock::now() - last_progress_[p] >
                                     std::chrono::milliseconds(o_.release_ms)) {
          released_[peers_[p].slot] = true;
        }
        cv_.notify_all();
        l.unlock();
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        l.lock();
        continue;
      }
      pending_[SlotOf(c)].push_front(c);
      land_all();  // received and checked before the failure: still good
      if (--threads_left_[p] == 0 || (*conn)->broken()) FailPeer(p, st);
      return;
    }
    land_all();
    // The peer's last thread leaving early hands its share on (a partial peer's slot goes to
    // the full sources), so no chunk waits for a peer nobody asks any more.
    if (--threads_left_[p] == 0 && !Finished()) {
      FailPeer(p, Status::Unavailable("stopped before the transfer finished"));
    }
  }

  const std::vector<PullItem>& items_;
  const std::vector<PullPeer>& peers_;
  const PullOptions& o_;
  std::vector<Chunk> chunks_;
  std::vector<size_t> left_in_item_;
  std::vector<int> threads_left_;
  std::vector<PeerStats> peer_stats_;
  std::mutex mu_;
  std::condition_variable cv_;
  std::vector<std::deque<size_t>> pending_;  // by swarm slot
  std::vector<bool> released_;               // slots the full sources may send
  std::vector<std::chrono::steady_clock::time_point> last_progress_;
  int slots_ = 1;
  int self_slot_ = 0;
  size_t done_ = 0;
  uint64_t bytes_ = 0;
  int live_peers_ = 0;
  int live_full_ = 0;
  Status local_error_;  // a device copy failed: the pull ends with it
};

}  // namespace

Status Pull(const std::vector<PullItem>& items, const std::vector<PullPeer>& peers,
            const PullOptions& options, PullStats* stats) {
  if (peers.empty()) return Status::Unavailable("no source to pull from");
  Puller p(items, peers, options);
  return p.Run(stats);
}

}  // namespace mx::transfer
