#include "streamer/streamer.h"

#include <sys/mman.h>
#include <sys/stat.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <map>
#include <mutex>
#include <thread>

#include "common/env.h"
#include "common/fs.h"
#include "common/log.h"
#include "common/text.h"
#include "hub/cache.h"
#include "hub/hub_client.h"
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
  enum class Kind { kPooled, kMapped, kCaller } kind = Kind::kPooled;
  uint64_t capacity = 0;     // pooled: the buffer's size
  void* map_base = nullptr;  // mapped: what to munmap
  size_t map_len = 0;
  std::atomic<int> pieces_left{0};
};

struct Piece {
  Batch* batch;
  uint64_t offset;  // absolute in the file
  uint64_t len;
  char* dst;  // where the bytes go (mapped batches: where they already are)
};

// The pipeline's memory: every byte it has mapped (buffers in use, buffers kept for reuse,
// mapped file ranges) counts against `limit`. Anonymous buffers are recycled: a model
// streams through a few buffers, not through fresh (page-faulting, zero-filled) memory.
class Memory {
 public:
  explicit Memory(uint64_t limit) : limit_(limit) {}
  ~Memory() {
    for (auto& [cap, p] : free_) ::munmap(p, cap);
  }

  // A buffer of at least `size` bytes (its capacity in *cap); nullptr when aborted.
  char* Get(uint64_t size, uint64_t* cap) {
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      if (aborted_) return nullptr;
      auto it = free_.lower_bound(size);
      if (it != free_.end() && it->first <= 2 * size + (64 << 10)) {
        *cap = it->first;
        char* p = static_cast<char*>(it->second);
        free_.erase(it);
        return p;
      }
      if (MakeRoom(size, l)) break;
    }
    l.unlock();
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      Unreserve(size);
      return nullptr;
    }
    *cap = size;
    return static_cast<char*>(p);
  }
  void Put(char* p, uint64_t cap) {
    {
      std::lock_guard<std::mutex> l(mu_);
      free_.emplace(cap, p);
    }
    cv_.notify_all();
  }
  // Counts `size` bytes mapped elsewhere (a file range); blocks until they fit.
  bool Reserve(uint64_t size) {
    std::unique_lock<std::mutex> l(mu_);
    for (;;) {
      if (aborted_) return false;
      if (MakeRoom(size, l)) return true;
    }
  }
  void Unreserve(uint64_t size) {
    {
      std::lock_guard<std::mutex> l(mu_);
      used_ -= size;
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
  // Under the lock: reserves `size` if it fits (after dropping idle buffers), else waits
  // for a release and returns false so the caller looks again.
  bool MakeRoom(uint64_t size, std::unique_lock<std::mutex>& l) {
    if (size > limit_) {  // can never fit: fail rather than wait forever
      aborted_ = true;
      cv_.notify_all();
      return false;
    }
    while (used_ + size > limit_ && !free_.empty()) {
      auto biggest = std::prev(free_.end());
      ::munmap(biggest->second, biggest->first);
      used_ -= biggest->first;
      free_.erase(biggest);
    }
    if (used_ + size <= limit_) {
      used_ += size;
      return true;
    }
    cv_.wait(l);
    return false;
  }

  std::mutex mu_;
  std::condition_variable cv_;
  uint64_t limit_;
  uint64_t used_ = 0;
  std::multimap<uint64_t, void*> free_;  // idle buffers by capacity
  bool aborted_ = false;
};

// More readers than this only adds threads: no storage serves one client faster.
constexpr int64_t kMaxConcurrency = 1024;

Result<int64_t> EnvInt(const char* name, int64_t fallback, int64_t min, int64_t max = INT64_MAX) {
  auto v = GetEnv(name);
  if (!v || v->empty()) return fallback;
  return ParseIntInRange(name, *v, min, max);
}

bool EndsWith(const std::string& s, const std::string& suffix) {
  return s.size() >= suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
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
  bool MapBatch(Batch& b);
  void Work();
  void Fail(const Status& st);
  Status Consume();

  StreamOptions options_;
  const TensorCallback& on_tensor_;
  const Destination& destination_;
  std::vector<std::unique_ptr<storage::Storage>> storages_;
  std::vector<OpenFile> files_;
  std::vector<std::unique_ptr<Batch>> batches_;
  std::shared_ptr<Memory> memory_;  // shared: holds may outlive the pipeline
  // Read-ahead: bytes admitted but not yet handed to the consumer stay under this, so the
  // pipeline never runs far ahead of a slow consumer (memory the consumer holds is the
  // memory limit's business, not this).
  uint64_t window_ = 0;
  uint64_t undelivered_ = 0;
  std::condition_variable window_cv_;
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
  for (const auto& named : uris) {
    MX_ASSIGN_OR_RETURN(std::string uri, ResolveModelUri(named));
    MX_ASSIGN_OR_RETURN(auto store, storage::OpenStorage(uri, so));
    MX_ASSIGN_OR_RETURN(auto objects, store->List(uri));
    std::vector<storage::ObjectInfo> chosen;
    const storage::ObjectInfo* index = nullptr;
    for (const auto& o : objects) {
      if (EndsWith(o.name, "model.safetensors.index.json")) index = &o;
    }
    if (index) {
      // The index names the shards: stream exactly those.
      MX_RETURN_IF_ERROR(storage::CheckInMemorySize(*index));
      MX_ASSIGN_OR_RETURN(auto reader, store->Open(*index));
      std::string text(index->size, '\0');
      MX_RETURN_IF_ERROR(reader->ReadAt(0, index->size, text.data()));
      MX_ASSIGN_OR_RETURN(auto idx, safetensors::ParseIndex(text));
      std::string dir = index->name.substr(
          0, index->name.size() - std::string("model.safetensors.index.json").size());
      for (const auto& shard : idx.Shards()) {
        auto it = std::find_if(objects.begin(), objects.end(),
                               [&](const storage::ObjectInfo& o) { return o.name == dir + shard; });
        if (it == objects.end())
          return Status::NotFound(uri + ": the index names " + shard + ", which is missing");
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
  // Rounding a batch out to the device's alignment, or to pages when it is mapped.
  uint64_t slack = 2 * std::max<uint64_t>(alignment_, 4096);
  uint64_t limit = options_.memory_limit < 0    ? UINT64_MAX
                   : options_.memory_limit == 0 ? largest + slack
                                                : static_cast<uint64_t>(options_.memory_limit);
  memory_ = std::make_shared<Memory>(limit);
  uint64_t batch_limit =
      std::min<uint64_t>(options_.chunk_bytes, limit > slack ? limit - slack : 1);
  window_ = std::max<uint64_t>(
      2 * static_cast<uint64_t>(options_.concurrency) * options_.chunk_bytes, largest + slack);
  for (size_t fi = 0; fi < files_.size(); ++fi) {
    const auto& h = files_[fi].header;
    Batch* current = nullptr;
    for (size_t ti = 0; ti < h.tensors.size(); ++ti) {
      const TensorInfo& t = h.tensors[ti];
      if (t.bytes() + slack > limit) {
        return Status::ResourceExhausted(
            files_[fi].name + ": tensor '" + t.name + "' needs " + FormatBytes(t.bytes()) +
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
  memory_->Abort();
  work_cv_.notify_all();
  ready_cv_.notify_all();
  window_cv_.notify_all();
}

// Files already in the page cache need no copy: map the batch's range and let the
// workers load its pages. Only without O_DIRECT or a caller-owned destination.
bool Pipeline::MapBatch(Batch& b) {
  if (options_.direct_io || destination_) return false;
  void* base = nullptr;
  size_t len = 0;
  storage::RangeReader& reader = *files_[b.file].reader;
  uint64_t map_bytes = b.buf_bytes + 4096;  // page rounding
  if (!memory_->Reserve(map_bytes)) return false;
  auto data = reader.Map(b.buf_begin, b.buf_bytes, &base, &len);
  if (!data.ok()) {
    memory_->Unreserve(map_bytes);
    return false;
  }
  if (len != map_bytes) {
    // Account exactly what was mapped.
    if (len > map_bytes) {
      memory_->Reserve(len - map_bytes);
    } else {
      memory_->Unreserve(map_bytes - len);
    }
  }
  b.kind = Batch::Kind::kMapped;
  b.map_base = base;
  b.map_len = len;
  b.buffer = const_cast<char*>(*data);
  return true;
}

void Pipeline::Produce() {
  for (auto& owned : batches_) {
    Batch* b = owned.get();
    const OpenFile& f = files_[b->file];
    uint64_t size = f.reader->info().size;
    if (destination_) {
      const TensorInfo& t = f.header.tensors[b->tensors[0]];
      b->buffer = destination_(f.name, t);
      b->kind = Batch::Kind::kCaller;
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
      {
        std::unique_lock<std::mutex> l(mu_);
        window_cv_.wait(l, [&] {
          return stop_ || undelivered_ == 0 || undelivered_ + b->buf_bytes <= window_;
        });
        if (stop_) return;
        undelivered_ += b->buf_bytes;
      }
      if (b->buf_bytes > 0 && !MapBatch(*b)) {
        uint64_t cap = 0;
        b->buffer = memory_->Get(b->buf_bytes, &cap);
        if (b->buffer == nullptr) {
          Fail(Status::ResourceExhausted("cannot map " + FormatBytes(b->buf_bytes) +
                                         " for tensors"));
          return;
        }
        b->kind = Batch::Kind::kPooled;
        b->capacity = cap;
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
    storage::RangeReader& reader = *files_[p.batch->file].reader;
    Status st = p.batch->kind == Batch::Kind::kMapped ? reader.Populate(p.dst, p.len)
                                                      : reader.ReadAt(p.offset, p.len, p.dst);
    if (!st.ok()) {
      Fail(st);
      return;
    }
    if (options_.bytes_read != nullptr) *options_.bytes_read += p.len;
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
    {
      std::lock_guard<std::mutex> l(mu_);
      undelivered_ -= std::min(undelivered_, b->buf_bytes);
    }
    window_cv_.notify_all();
    // The batch's memory goes back when the last holder lets go: to the pool (anonymous
    // buffers) or unmapped (file ranges).
    std::shared_ptr<Memory> memory = memory_;
    std::shared_ptr<void> hold;
    switch (b->kind) {
      case Batch::Kind::kPooled: {
        uint64_t cap = b->capacity;
        hold = std::shared_ptr<void>(b->buffer, [memory, cap](void* p) {
          if (p != nullptr) memory->Put(static_cast<char*>(p), cap);
        });
        break;
      }
      case Batch::Kind::kMapped: {
        void* base = b->map_base;
        size_t len = b->map_len;
        hold = std::shared_ptr<void>(base, [memory, len](void* p) {
          ::munmap(p, len);
          memory->Unreserve(len);
        });
        b->map_base = nullptr;
        break;
      }
      case Batch::Kind::kCaller:
        hold = std::shared_ptr<void>(b->buffer, [](void*) {});
        break;
    }
    const OpenFile& f = files_[b->file];
    for (size_t ti : b->tensors) {
      const TensorInfo& t = f.header.tensors[ti];
      const char* data = b->buffer + (f.header.data_start + t.begin - b->buf_begin);
      if (stats_.tensors == 0) {
        stats_.first_tensor_seconds = std::chrono::duration<double>(Clock::now() - start_).count();
      }
      Status st = on_tensor_(Tensor{f.name, t, f.header.data_start, data}, hold);
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
  window_cv_.notify_all();
  memory_->Abort();
  producer.join();
  for (auto& w : workers) w.join();
  // Batches read but never delivered (after an error) still own their memory.
  for (auto& b : batches_) {
    if (b->kind == Batch::Kind::kPooled && b->buffer != nullptr)
      memory_->Put(b->buffer, b->capacity);
    if (b->kind == Batch::Kind::kMapped && b->map_base != nullptr)
      ::munmap(b->map_base, b->map_len);
  }
  if (!st.ok()) return st;
  stats_.seconds = std::chrono::duration<double>(Clock::now() - start_).count();
  return stats_;
}

}  // namespace

Result<StreamOptions> StreamOptions::FromEnvironment() {
  StreamOptions o;
  MX_ASSIGN_OR_RETURN(int64_t c,
                      EnvInt("RUNAI_STREAMER_CONCURRENCY", o.concurrency, 1, kMaxConcurrency));
  o.concurrency = static_cast<int>(c);
  if (auto v = GetEnv("RUNAI_STREAMER_CHUNK_BYTESIZE"); v && !v->empty()) {
    MX_ASSIGN_OR_RETURN(o.chunk_bytes, ParseChunkSize("RUNAI_STREAMER_CHUNK_BYTESIZE", *v));
  }
  if (auto v = GetEnv("RUNAI_STREAMER_MEMORY_LIMIT"); v && !v->empty()) {
    MX_ASSIGN_OR_RETURN(o.memory_limit, ParseMemoryLimit("RUNAI_STREAMER_MEMORY_LIMIT", *v));
  }
  return o;
}

Result<uint64_t> ParseChunkSize(std::string_view what, std::string_view text) {
  return ParseByteSizeInRange(what, text, 1, kMaxChunkBytes);
}

Result<int64_t> ParseMemoryLimit(std::string_view what, std::string_view text) {
  if (text == "-1") return -1;  // unlimited (Run:ai's spelling)
  MX_ASSIGN_OR_RETURN(uint64_t n,
                      ParseByteSizeInRange(what, text, 0, static_cast<uint64_t>(INT64_MAX)));
  return static_cast<int64_t>(n);
}

Result<std::string> ResolveModelUri(const std::string& uri) {
  bool is_path = uri.rfind("/", 0) == 0 || uri.rfind("./", 0) == 0 || uri.rfind("../", 0) == 0;
  if (is_path || uri.find("://") != std::string::npos) return uri;
  // A relative name that exists here (a directory or a file, `cd origin; mx stream acme/m`)
  // is what the user points at: only a name that is not on disk is a hub id.
  if (struct stat st; ::stat(uri.c_str(), &st) == 0) {
    spdlog::debug("stream: '{}' is an existing {} here: reading it as a path", EscapeControl(uri),
                  S_ISDIR(st.st_mode) ? "directory" : "file");
    return "./" + uri;  // storage takes a relative path only in this explicit form
  }
  std::string repo = uri, revision = "main";
  if (size_t at = uri.find('@'); at != std::string::npos) {
    repo = uri.substr(0, at);
    revision = uri.substr(at + 1);
  }
  MX_RETURN_IF_ERROR(hub::ValidateRepoId(repo));
  MX_RETURN_IF_ERROR(hub::ValidateRevision(revision));
  hub::RepoCache cache(hub::HubConfig::FromEnvironment().cache_dir, hub::RepoType::kModel, repo);
  auto commit = cache.ResolveLocal(revision);
  if (!commit.ok()) {
    return Status::NotFound(repo + "@" + revision.substr(0, 256) +
                            " is no file or directory here, nor in the local HF cache (" +
                            cache.root() + "); run: mx download " + repo);
  }
  spdlog::debug("stream: '{}' is no file or directory here: the hub id {}@{} in the HF cache: {}",
                EscapeControl(uri), EscapeControl(repo), EscapeControl(revision),
                EscapeControl(cache.snapshot_dir(*commit)));
  return cache.snapshot_dir(*commit);
}

Result<StreamStats> StreamModel(const std::vector<std::string>& uris, const StreamOptions& options,
                                const TensorCallback& on_tensor, const Destination& destination) {
  Pipeline p(options, on_tensor, destination);
  return p.Run(uris);
}

}  // namespace mx::streamer
