#include "streamer/streamer.h"

#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>

#include "common/env.h"
#include "common/fs.h"
#include "common/log.h"
#include "storage/storage.h"

namespace mx::streamer {
namespace {

using Clock = std::chrono::steady_clock;
using safetensors::TensorInfo;

struct OpenFile {
  std::string name;
  std::unique_ptr<storage::RangeReader> reader;
  safetensors::Header header;
};

struct Batch {
  size_t file = 0;
  uint64_t begin = 0, end = 0;  // absolute file offsets covered by its tensors
  std::vector<size_t> tensors;  // indexes into the file's header.tensors
  uint64_t buf_begin = 0;       // absolute offset of buffer[0]
  uint64_t buf_bytes = 0;
  char* buffer = nullptr;
  bool owned = true;            // false when it is caller-owned memory
  std::atomic<int> pieces_left{0};
};

struct Piece {
  Batch* batch;
  uint64_t offset;  // absolute in the file
  uint64_t len;
  char* dst;
};

// Bytes of memory the pipeline may hold at once; Acquire blocks until there is room.
class Budget {
 public:
  explicit Budget(uint64_t limit) : available_(limit) {}
  bool Acquire(uint64_t n) {
    std::unique_lock<std::mutex> l(mu_);
    cv_.wait(l, [&] { return aborted_ || available_ >= n; });
    if (aborted_) return false;
    available_ -= n;
    return true;
  }
  void Release(uint64_t n) {
    {
      std::lock_guard<std::mutex> l(mu_);
      available_ += n;
    }
    cv_.notify_all();
  }
  void Abort() {
    {
      std::lock_guard<std::mutex> l(mu_);
      aborted_ = true;
    }
    cv_.notify_all();
  }

 private:
  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t available_;
  bool aborted_ = false;
};

Result<int64_t> EnvInt(const char* name, int64_t fallback, int64_t min) {
  auto v = GetEnv(name);
  if (!v || v->empty()) return fallback;
  try {
    size_t pos = 0;
    long long n = std::stoll(*v, &pos);
    if (pos != v->size() || n < min) throw std::out_of_range(name);
    return static_cast<int64_t>(n);
  } catch (...) {
    return Status::InvalidArgument(std::string(name) + "='" + *v + "' is not a valid number");
  }
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() && s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

class Pipeline {
 public:
  Pipeline(const StreamOptions& o, const TensorCallback& cb, const Destination& dst)
      : options_(o), on_tensor_(cb), destination_(dst) {}
  Result<StreamStats> Run(const std::vector<std::string>& uris);

 private:
  Status OpenAll(const std::vector<std::string>& uris);
  Status ReadHeader(OpenFile& f);
  Status Plan();
  void Produce();
  void Work();
  void Fail(const Status& st);
  Status Consume();

  StreamOptions options_;
  const TensorCallback& on_tensor_;
  const Destination& destination_;
  std::vector<std::unique_ptr<storage::Storage>> storages_;
  std::vector<OpenFile> files_;
  std::vector<std::unique_ptr<Batch>> batches_;
  std::shared_ptr<Budget> budget_;  // shared: holds may outlive the pipeline
  uint64_t alignment_ = 1;

  std::mutex mu_;
  std::condition_variable work_cv_, ready_cv_;
  std::deque<Piece> pieces_;
  std::deque<Batch*> ready_;
  bool producing_done_ = false;
  bool stop_ = false;
  Status error_;
  StreamStats stats_;
  Clock::time_point start_ = Clock::now();
};

Status Pipeline::OpenAll(const std::vector<std::string>& uris) {
  storage::StorageOptions so;
  so.connections = options_.concurrency;
  so.direct_io = options_.direct_io;
  for (const auto& uri : uris) {
    MX_ASSIGN_OR_RETURN(auto store, storage::OpenStorage(uri, so));
    MX_ASSIGN_OR_RETURN(auto objects, store->List(uri));
    std::vector<storage::ObjectInfo> chosen;
    const storage::ObjectInfo* index = nullptr;
    for (const auto& o : objects) {
      if (EndsWith(o.name, "model.safetensors.index.json")) index = &o;
    }
    if (index) {
      // The index names the shards: stream exactly those.
      MX_ASSIGN_OR_RETURN(auto reader, store->Open(*index));
      std::string text(index->size, '\0');
      MX_RETURN_IF_ERROR(reader->ReadAt(0, index->size, text.data()));
      MX_ASSIGN_OR_RETURN(auto idx, safetensors::ParseIndex(text));
      std::string dir = index->name.substr(0, index->name.size() - std::string("model.safetensors.index.json").size());
      for (const auto& shard : idx.Shards()) {
        auto it = std::find_if(objects.begin(), objects.end(),
                               [&](const storage::ObjectInfo& o) { return o.name == dir + shard; });
        if (it == objects.end()) return Status::NotFound(uri + ": the index names " + shard + ", which is missing");
        chosen.push_back(*it);
      }
    } else {
      for (const auto& o : objects) {
        if (EndsWith(o.name, ".safetensors")) chosen.push_back(o);
      }
    }
    if (chosen.empty()) return Status::NotFound("no .safetensors files at " + uri);
    for (const auto& o : chosen) {
      OpenFile f;
      f.name = o.name;
      MX_ASSIGN_OR_RETURN(f.reader, store->Open(o));
      files_.push_back(std::move(f));
    }
    storages_.push_back(std::move(store));
  }
  return Status::OK();
}

Status Pipeline::ReadHeader(OpenFile& f) {
  const auto& info = f.reader->info();
  std::string first(8, '\0');
  if (info.size < 8) {
    return safetensors::ParseHeaderLength("", info.size).status().WithContext(info.uri);
  }
  MX_RETURN_IF_ERROR(f.reader->ReadAt(0, 8, first.data()));
  auto n = safetensors::ParseHeaderLength(first, info.size);
  if (!n.ok()) return n.status().WithContext(info.uri);
  std::string json(*n, '\0');
  MX_RETURN_IF_ERROR(f.reader->ReadAt(8, *n, json.data()));
  auto h = safetensors::ParseHeader(json, info.size);
  if (!h.ok()) return h.status().WithContext(info.uri);
  f.header = std::move(*h);
  return Status::OK();
}

Status Pipeline::Plan() {
  uint64_t largest = 0;
  for (const auto& f : files_) {
    for (const auto& t : f.header.tensors) largest = std::max(largest, t.bytes());
  }
  alignment_ = 1;
  for (const auto& f : files_) alignment_ = std::max(alignment_, f.reader->alignment());
  uint64_t slack = 2 * alignment_;  // rounding a batch out to the device's alignment
  uint64_t limit = options_.memory_limit < 0 ? UINT64_MAX
                   : options_.memory_limit == 0 ? largest + slack
                                                : static_cast<uint64_t>(options_.memory_limit);
  budget_ = std::make_shared<Budget>(limit);
  uint64_t batch_limit = std::min<uint64_t>(options_.chunk_bytes, limit > slack ? limit - slack : 1);
  for (size_t fi = 0; fi < files_.size(); ++fi) {
    const auto& h = files_[fi].header;
    Batch* current = nullptr;
    for (size_t ti = 0; ti < h.tensors.size(); ++ti) {
      const TensorInfo& t = h.tensors[ti];
      if (t.bytes() + slack > limit) {
        return Status::ResourceExhausted(files_[fi].name + ": tensor '" + t.name + "' needs " + FormatBytes(t.bytes()) +
                                         ", more than the memory limit of " + FormatBytes(limit) +
                                         "; raise RUNAI_STREAMER_MEMORY_LIMIT (0 = the largest tensor)");
      }
      uint64_t abs_begin = h.data_start + t.begin, abs_end = h.data_start + t.end;
      // Caller-owned destinations take one tensor per batch: each lands in its own memory.
      bool fits = current && !destination_ && abs_end - current->begin <= batch_limit;
      if (!fits) {
        batches_.push_back(std::make_unique<Batch>());
        current = batches_.back().get();
        current->file = fi;
        current->begin = abs_begin;
      }
      current->end = abs_end;
      current->tensors.push_back(ti);
    }
  }
  return Status::OK();
}

void Pipeline::Fail(const Status& st) {
  {
    std::lock_guard<std::mutex> l(mu_);
    if (error_.ok()) error_ = st;
    stop_ = true;
  }
  budget_->Abort();
  work_cv_.notify_all();
  ready_cv_.notify_all();
}

void Pipeline::Produce() {
  for (auto& owned : batches_) {
    Batch* b = owned.get();
    const OpenFile& f = files_[b->file];
    uint64_t size = f.reader->info().size;
    if (destination_) {
      const TensorInfo& t = f.header.tensors[b->tensors[0]];
      b->buffer = destination_(f.name, t);
      b->owned = false;
      b->buf_begin = b->begin;
      b->buf_bytes = b->end - b->begin;
      if (b->buffer == nullptr && b->buf_bytes > 0) {
        Fail(Status::InvalidArgument("the destination gave no memory for '" + t.name + "'"));
        return;
      }
    } else {
      b->buf_begin = b->begin / alignment_ * alignment_;
      uint64_t buf_end = std::min(size, (b->end + alignment_ - 1) / alignment_ * alignment_);
      b->buf_bytes = std::max(buf_end, b->buf_begin) - b->buf_begin;
      if (!budget_->Acquire(b->buf_bytes)) return;  // aborted
      if (b->buf_bytes > 0) {
        void* p = ::mmap(nullptr, b->buf_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) {
          budget_->Release(b->buf_bytes);
          Fail(Status::ResourceExhausted("cannot map " + FormatBytes(b->buf_bytes) + " for tensors"));
          return;
        }
        b->buffer = static_cast<char*>(p);
      }
    }
    std::vector<Piece> pieces;
    uint64_t step = std::max<uint64_t>(alignment_, options_.chunk_bytes / alignment_ * alignment_);
    for (uint64_t off = b->buf_begin; off < b->buf_begin + b->buf_bytes; off += step) {
      uint64_t len = std::min(step, b->buf_begin + b->buf_bytes - off);
      pieces.push_back({b, off, len, b->buffer + (off - b->buf_begin)});
    }
    b->pieces_left = static_cast<int>(pieces.size());
    {
      std::lock_guard<std::mutex> l(mu_);
      if (stop_) return;
      if (pieces.empty()) {
        ready_.push_back(b);  // only empty tensors
      } else {
        for (auto& p : pieces) pieces_.push_back(p);
      }
    }
    if (pieces.empty()) ready_cv_.notify_one();
    work_cv_.notify_all();
  }
  {
    std::lock_guard<std::mutex> l(mu_);
    producing_done_ = true;
  }
  work_cv_.notify_all();
}

void Pipeline::Work() {
  for (;;) {
    Piece p;
    {
      std::unique_lock<std::mutex> l(mu_);
      work_cv_.wait(l, [&] { return stop_ || !pieces_.empty() || producing_done_; });
      if (stop_ || (pieces_.empty() && producing_done_)) return;
      p = pieces_.front();
      pieces_.pop_front();
    }
    Status st = files_[p.batch->file].reader->ReadAt(p.offset, p.len, p.dst);
    if (!st.ok()) {
      Fail(st);
      return;
    }
    if (--p.batch->pieces_left == 0) {
      {
        std::lock_guard<std::mutex> l(mu_);
        ready_.push_back(p.batch);
      }
      ready_cv_.notify_one();
    }
  }
}

Status Pipeline::Consume() {
  size_t delivered = 0;
  while (delivered < batches_.size()) {
    Batch* b;
    {
      std::unique_lock<std::mutex> l(mu_);
      ready_cv_.wait(l, [&] { return stop_ || !ready_.empty(); });
      if (stop_) return error_;
      b = ready_.front();
      ready_.pop_front();
    }
    std::shared_ptr<Budget> budget = budget_;
    uint64_t bytes = b->buf_bytes;
    // The batch's memory returns to the budget when the last holder lets go.
    std::shared_ptr<void> hold;
    if (b->owned) {
      hold = std::shared_ptr<void>(b->buffer, [budget, bytes](void* p) {
        if (p != nullptr) ::munmap(p, bytes);
        budget->Release(bytes);
      });
    } else {
      hold = std::shared_ptr<void>(b->buffer, [](void*) {});
    }
    const OpenFile& f = files_[b->file];
    for (size_t ti : b->tensors) {
      const TensorInfo& t = f.header.tensors[ti];
      const char* data = b->buffer + (f.header.data_start + t.begin - b->buf_begin);
      if (stats_.tensors == 0) {
        stats_.first_tensor_seconds = std::chrono::duration<double>(Clock::now() - start_).count();
      }
      Status st = on_tensor_(Tensor{f.name, t, data}, hold);
      if (!st.ok()) return st;
      ++stats_.tensors;
      stats_.bytes += t.bytes();
    }
    b->buffer = nullptr;
    ++delivered;
  }
  return Status::OK();
}

Result<StreamStats> Pipeline::Run(const std::vector<std::string>& uris) {
  if (options_.concurrency < 1) return Status::InvalidArgument("concurrency must be at least 1");
  if (options_.chunk_bytes == 0) return Status::InvalidArgument("chunk size must be positive");
  MX_RETURN_IF_ERROR(OpenAll(uris));
  for (auto& f : files_) MX_RETURN_IF_ERROR(ReadHeader(f));
  MX_RETURN_IF_ERROR(Plan());
  stats_.files = files_.size();
  std::thread producer([this] { Produce(); });
  std::vector<std::thread> workers;
  for (int i = 0; i < options_.concurrency; ++i) workers.emplace_back([this] { Work(); });
  Status st = Consume();
  if (!st.ok()) Fail(st);
  {
    std::lock_guard<std::mutex> l(mu_);
    stop_ = true;
  }
  work_cv_.notify_all();
  budget_->Abort();
  producer.join();
  for (auto& w : workers) w.join();
  // Batches read but never delivered (after an error) still own their memory.
  for (auto& b : batches_) {
    if (b->owned && b->buffer != nullptr) ::munmap(b->buffer, b->buf_bytes);
  }
  if (!st.ok()) return st;
  stats_.seconds = std::chrono::duration<double>(Clock::now() - start_).count();
  return stats_;
}

}  // namespace

Result<StreamOptions> StreamOptions::FromEnvironment() {
  StreamOptions o;
  MX_ASSIGN_OR_RETURN(int64_t c, EnvInt("RUNAI_STREAMER_CONCURRENCY", o.concurrency, 1));
  MX_ASSIGN_OR_RETURN(int64_t chunk, EnvInt("RUNAI_STREAMER_CHUNK_BYTESIZE", static_cast<int64_t>(o.chunk_bytes), 1));
  MX_ASSIGN_OR_RETURN(int64_t limit, EnvInt("RUNAI_STREAMER_MEMORY_LIMIT", o.memory_limit, -1));
  o.concurrency = static_cast<int>(c);
  o.chunk_bytes = static_cast<uint64_t>(chunk);
  o.memory_limit = limit;
  return o;
}

Result<StreamStats> StreamModel(const std::vector<std::string>& uris, const StreamOptions& options,
                                const TensorCallback& on_tensor, const Destination& destination) {
  Pipeline p(options, on_tensor, destination);
  return p.Run(uris);
}

}  // namespace mx::streamer
