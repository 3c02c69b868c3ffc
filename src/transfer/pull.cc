#include "transfer/pull.h"

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
    for (size_t c = 0; c < chunks_.size(); ++c) pending_.push_back(c);
    peer_stats_.resize(peers_.size());
    threads_left_.assign(peers_.size(), 0);
    std::vector<std::thread> threads;
    for (size_t p = 0; p < peers_.size(); ++p) {
      peer_stats_[p].name = peers_[p].name;
      if (peers_[p].remote_addr.size() != items_.size()) {
        peer_stats_[p].failed = true;
        peer_stats_[p].error = "its manifest does not match";
        continue;
      }
      ++live_peers_;
      int n = std::max(1, o_.connections_per_peer);
      threads_left_[p] = n;
      for (int k = 0; k < n; ++k) threads.emplace_back([this, p] { Work(p); });
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

  // Marks peer p failed (once) and wakes everyone: its chunks are back in the queue.
  void FailPeer(size_t p, const Status& st) {
    if (!peer_stats_[p].failed) {
      peer_stats_[p].failed = true;
      peer_stats_[p].error = st.message();
      --live_peers_;
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
    while (true) {
      bool ready = cv_.wait_until(l, o_.deadline, [&] {
        return Finished() || peer_stats_[p].failed || live_peers_ == 0 || !pending_.empty();
      });
      if (!ready || Finished() || peer_stats_[p].failed || pending_.empty()) break;
      size_t c = pending_.front();
      pending_.pop_front();
      l.unlock();
      const Chunk& ch = chunks_[c];
      const PullItem& item = items_[ch.item];
      Status st =
          (*conn)->Read(peer.remote_addr[ch.item] + ch.offset, ch.size, item.dest + ch.offset);
      if (st.ok() && o_.verified != nullptr) {
        st = o_.verified->MarkVerified(reinterpret_cast<uint64_t>(item.dest + ch.offset), ch.size);
      }
      l.lock();
      if (st.ok()) {
        ++done_;
        bytes_ += ch.size;
        peer_stats_[p].bytes += ch.size;
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
        // A partial peer without this chunk yet: someone else may take it meanwhile.
        pending_.push_back(c);
        cv_.notify_all();
        l.unlock();
        std::this_thread::sleep_for(std::chrono::milliseconds(5));
        l.lock();
        continue;
      }
      pending_.push_front(c);
      if (--threads_left_[p] == 0 || (*conn)->broken()) FailPeer(p, st);
      return;
    }
    --threads_left_[p];
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
  std::deque<size_t> pending_;
  size_t done_ = 0;
  uint64_t bytes_ = 0;
  int live_peers_ = 0;
};

}  // namespace

Status Pull(const std::vector<PullItem>& items, const std::vector<PullPeer>& peers,
            const PullOptions& options, PullStats* stats) {
  if (peers.empty()) return Status::Unavailable("no source to pull from");
  Puller p(items, peers, options);
  return p.Run(stats);
}

}  // namespace mx::transfer
