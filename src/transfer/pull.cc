#include "transfer/pull.h"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
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
    uint64_t chunk = std::max<uint64_t>(4096, std::min(o_.chunk_bytes, kMaxReadBytes));
    left_in_item_.assign(items_.size(), 0);
    for (size_t i = 0; i < items_.size(); ++i) {
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

  void Work(size_t p) {
    const PullPeer& peer = peers_[p];
    auto conn = Connect(peer.endpoint, o_.connect);
    std::unique_lock<std::mutex> l(mu_);
    if (!conn.ok()) {
      // One refused connection of several is not the peer's death; the last one is.
      if (--threads_left_[p] == 0) FailPeer(p, conn.status());
      return;
    }
    peer_stats_[p].transport = (*conn)->transport();
    while (true) {
      bool ready = cv_.wait_until(l, o_.deadline, [&] {
        return Finished() || peer_stats_[p].failed || live_peers_ == 0 || Stuck() || HasWork(p);
      });
      if (!ready || Finished() || peer_stats_[p].failed || Stuck()) break;
      long picked = Pick(p);
      if (picked < 0) break;  // live_peers_ == 0
      size_t c = static_cast<size_t>(picked);
      l.unlock();
      const Chunk& ch = chunks_[c];
      const PullItem& item = items_[ch.item];
      uint32_t crc = 0;
      Status st = (*conn)->Read(peer.remote_addr[ch.item] + ch.offset, ch.size,
                                item.dest + ch.offset, &crc);
      if (st.ok() && o_.verified != nullptr) {
        st = o_.verified->MarkVerified(reinterpret_cast<uint64_t>(item.dest + ch.offset), ch.size,
                                       crc);
      }
      l.lock();
      if (st.ok()) {
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
      if (--threads_left_[p] == 0 || (*conn)->broken()) FailPeer(p, st);
      return;
    }
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
};

}  // namespace

Status Pull(const std::vector<PullItem>& items, const std::vector<PullPeer>& peers,
            const PullOptions& options, PullStats* stats) {
  if (peers.empty()) return Status::Unavailable("no source to pull from");
  Puller p(items, peers, options);
  return p.Run(stats);
}

}  // namespace mx::transfer
