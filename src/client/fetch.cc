#include "client/fetch.h"

#include <fcntl.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cctype>
#include <chrono>
#include <map>
#include <memory>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <thread>

#include "common/env.h"
#include "common/fs.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/text.h"
#include "hub/cache.h"
#include "hub/downloader.h"
#include "hub/hub_client.h"

namespace mx::client {

namespace mm = model_express::model;
using Clock = std::chrono::steady_clock;

namespace {

const char* const kWeightPatterns[] = {"*.safetensors", "*.bin",     "*.pt",    "*.pth",
                                       "*.h5",          "*.msgpack", "*.ckpt*", "*.gguf"};
constexpr size_t kMaxFiles = 100000;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

struct WantedFile {
  std::string path;
  uint64_t size = 0;
  std::string blob_hash;  // empty when the server did not say
};

// Shared state of one run: what is done, the counters, the progress callback.
struct RunState {
  const FetchOptions* options = nullptr;
  std::mutex mu;
  std::set<std::string> done;  // files in place (this run or before)
  std::atomic<uint64_t> bytes_streamed{0};
  uint64_t bytes_total = 0;
  size_t files_total = 0;
  Clock::time_point last_report{};
  bool warned_shared = false;

  void Progress(const std::string& stage, const std::string& message, bool force = false) {
    if (!options->on_progress) return;
    std::lock_guard<std::mutex> lock(mu);
    if (!force && Clock::now() - last_report < std::chrono::milliseconds(200)) return;
    last_report = Clock::now();
    FetchProgress p;
    p.stage = stage;
    p.message = message;
    p.bytes_done = bytes_streamed.load();
    p.bytes_total = bytes_total;
    p.files_done = done.size();
    p.files_total = files_total;
    options->on_progress(p);
  }
  void Warn(const std::string& text) {
    if (options->on_warning) {
      options->on_warning(text);
    } else {
      spdlog::warn("{}", text);
    }
  }
};

// Codes after which another attempt at the same call may succeed.
bool Retriable(const Status& st) {
  switch (st.code()) {
    case StatusCode::kUnavailable:
    case StatusCode::kCancelled:
    case StatusCode::kInternal:
    case StatusCode::kDataLoss:
      return true;
    default:
      return false;
  }
}

// Where a model's files live on this worker, and how a verified file is put in place.
class LocalLayout {
 public:
  virtual ~LocalLayout() = default;
  // The directory the engine reads: the snapshot (hub) or the model's directory (objects).
  virtual std::string SnapshotDir(const std::string& commit) const = 0;
  // True when `path` is in place, a regular file of `size` bytes, readable here.
  virtual bool FileOk(const std::string& commit, const std::string& path, uint64_t size) const = 0;
  // Creates what StreamFiles writes into; takes the layout's lock when it has one.
  virtual Status Prepare(const std::string& commit) = 0;
  // Links a file whose contents are already here under another name (hub blobs); false
  // when there is none.
  virtual Result<bool> Adopt(const std::string& commit, const WantedFile& f) = 0;
  virtual std::string TempDir() const = 0;
  // Moves the verified, fsynced `temp` (contents hashing to `digest`) into place.
  virtual Status Place(const std::string& commit, const WantedFile& f, const std::string& temp,
                       const std::string& digest) = 0;
  // After every file of a phase is in place: refs (hub) or the copy's marker (objects).
  virtual Status Finish(const std::string& revision, const std::string& commit,
                        const std::vector<WantedFile>& files, bool weights) = 0;
};

// The HF cache: blobs/ named by hash, snapshot symlinks, refs/ last.
class HubLayout : public LocalLayout {
 public:
  HubLayout(const std::string& root, const std::string& model)
      : cache_(root, hub::RepoType::kModel, model) {}
  std::string SnapshotDir(const std::string& commit) const override {
    return cache_.snapshot_dir(commit);
  }
  bool FileOk(const std::string& commit, const std::string& path, uint64_t size) const override {
    return cache_.SnapshotFileOk(commit, path, size) &&
           ::access(cache_.snapshot_path(commit, path).c_str(), R_OK) == 0;
  }
  Status Prepare(const std::string& commit) override {
    MX_RETURN_IF_ERROR(hub::CheckRepoDirsNotSymlinks(cache_.repo_dir()));
    MX_RETURN_IF_ERROR(cache_.Prepare(commit));
    MX_ASSIGN_OR_RETURN(lock_, cache_.LockForUse());
    return Status::OK();
  }
  Result<bool> Adopt(const std::string& commit, const WantedFile& f) override {
    struct stat st;
    if (f.blob_hash.empty() || cache_.BlobMarkedBad(f.blob_hash) ||
        ::stat(cache_.blob_path(f.blob_hash).c_str(), &st) != 0 ||
        static_cast<uint64_t>(st.st_size) != f.size) {
      return false;
    }
    MX_RETURN_IF_ERROR(cache_.LinkSnapshot(commit, f.path, f.blob_hash));
    return true;
  }
  std::string TempDir() const override { return cache_.blobs_dir(); }
  Status Place(const std::string& commit, const WantedFile& f, const std::string& temp,
               const std::string& digest) override {
    std::string blob = cache_.blob_path(digest);
    if (::rename(temp.c_str(), blob.c_str()) != 0) {
      return Status::FromErrno(errno, "rename " + temp);
    }
    cache_.ClearBlobBad(digest);
    return cache_.LinkSnapshot(commit, f.path, digest);
  }
  Status Finish(const std::string& revision, const std::string& commit,
                const std::vector<WantedFile>&, bool) override {
    return cache_.WriteRef(revision, commit);
  }

 private:
  hub::RepoCache cache_;
  std::optional<FileLock> lock_;
};

// An object-store model, as ModelExpress keeps it: <root>/s3|gcs/<bucket>/<prefix>/ with the
// files at their relative paths and a marker (.mx-model, the format mx-server writes)
// written last, naming the commit and every file.
class ObjectLayout : public LocalLayout {
 public:
  ObjectLayout(std::string canonical, std::string dir)
      : canonical_(std::move(canonical)), dir_(std::move(dir)) {}
  std::string SnapshotDir(const std::string&) const override { return dir_; }
  bool FileOk(const std::string&, const std::string& path, uint64_t size) const override {
    struct stat st;
    std::string p = dir_ + "/" + path;
    return ::lstat(p.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
           static_cast<uint64_t>(st.st_size) == size && ::access(p.c_str(), R_OK) == 0;
  }
  Status Prepare(const std::string&) override {
    MX_RETURN_IF_ERROR(MakeDirs(TempDir()));
    return Status::OK();
  }
  Result<bool> Adopt(const std::string&, const WantedFile&) override { return false; }
  std::string TempDir() const override { return dir_ + "/.mx-incoming"; }
  Status Place(const std::string&, const WantedFile& f, const std::string& temp,
               const std::string&) override {
    std::string final_path = dir_ + "/" + f.path;
    MX_RETURN_IF_ERROR(MakeDirs(DirName(final_path)));
    if (::rename(temp.c_str(), final_path.c_str()) != 0) {
      return Status::FromErrno(errno, "rename " + temp);
    }
    return Status::OK();
  }
  Status Finish(const std::string&, const std::string& commit, const std::vector<WantedFile>& files,
                bool weights) override {
    nlohmann::json marker = {{"name", canonical_},
                             {"commit", commit},
                             {"ignore_weights", !weights},
                             {"files", nlohmann::json::array()}};
    for (const auto& f : files) marker["files"].push_back({{"path", f.path}, {"size", f.size}});
    ::rmdir(TempDir().c_str());  // empty once every file is in place
    return WriteFileAtomic(dir_ + "/.mx-model", marker.dump());
  }

 private:
  std::string canonical_;
  std::string dir_;
};

// One file being received: a temp file, hashed as it is written.
class Incoming {
 public:
  ~Incoming() { Abandon(); }

  Status Open(const LocalLayout& layout, const WantedFile& f) {
    file_ = f;
    kind_ = !f.blob_hash.empty()
                ? (f.blob_hash.size() == 64 ? HashKind::kSha256 : HashKind::kGitSha1)
                : (IsWeightFile(f.path) ? HashKind::kSha256 : HashKind::kGitSha1);
    hasher_ = std::make_unique<Hasher>(kind_, f.size);
    temp_ = layout.TempDir() + "/" + (f.blob_hash.empty() ? "stream" : f.blob_hash) + "." +
            UniqueTempSuffix() + ".tmp";
    fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                 DefaultFileMode());
    if (fd_ < 0) return Status::FromErrno(errno, "create " + temp_);
    offset_ = 0;
    written_back_ = 0;
    return Status::OK();
  }

  Status Write(const std::string& data) {
    size_t put = 0;
    while (put < data.size()) {
      ssize_t n =
          ::pwrite(fd_, data.data() + put, data.size() - put, static_cast<off_t>(offset_ + put));
      if (n < 0 && errno == EINTR) continue;
      if (n <= 0) return Status::FromErrno(errno, "write " + temp_);
      put += static_cast<size_t>(n);
    }
    hasher_->Update(data.data(), data.size());
    offset_ += data.size();
    StartWriteback();
    return Status::OK();
  }

  // Starts the disk writing what has arrived so far, every kWritebackBytes, without waiting
  // for it: the fsync before the rename then finds little left to do, so the disk works
  // while the network does instead of after it (the install's tail).
  void StartWriteback() {
    constexpr uint64_t kWritebackBytes = 32ull << 20;
    if (offset_ - written_back_ < kWritebackBytes) return;
    (void)::sync_file_range(fd_, static_cast<off_t>(written_back_),
                            static_cast<off_t>(offset_ - written_back_), SYNC_FILE_RANGE_WRITE);
    written_back_ = offset_;
  }

  // Size and hash checked, fsynced, put in place by the layout.
  Status Publish(LocalLayout& layout, const std::string& commit) {
    if (offset_ != file_.size) {
      return Status::DataLoss(file_.path + ": got " + std::to_string(offset_) +
                              " bytes, expected " + std::to_string(file_.size));
    }
    std::string digest = hasher_->FinalHex();
    if (!file_.blob_hash.empty() && digest != file_.blob_hash) {
      return Status::DataLoss(file_.path + ": hash mismatch (expected " + file_.blob_hash +
                              ", got " + digest + "): corrupted in flight");
    }
    if (::fsync(fd_) != 0) return Status::FromErrno(errno, "fsync " + temp_);
    ::close(fd_);
    fd_ = -1;
    MX_RETURN_IF_ERROR(layout.Place(commit, file_, temp_, digest));
    temp_.clear();
    return Status::OK();
  }

  void Abandon() {
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    if (!temp_.empty()) ::unlink(temp_.c_str());
    temp_.clear();
  }

  bool open() const { return fd_ >= 0; }
  uint64_t offset() const { return offset_; }
  const WantedFile& file() const { return file_; }

 private:
  WantedFile file_;
  HashKind kind_ = HashKind::kSha256;
  std::unique_ptr<Hasher> hasher_;
  std::string temp_;
  int fd_ = -1;
  uint64_t offset_ = 0;
  uint64_t written_back_ = 0;  // bytes handed to sync_file_range so far
};

// Files cut off by a dropped stream, kept (temp file and hash state) to resume from.
using Partials = std::map<std::string, std::unique_ptr<Incoming>>;

// One StreamModelFiles call for `group` (those not done yet). OK when all arrived.
Status StreamOnce(MxClient* client, const FetchOptions& o, LocalLayout& layout,
                  const std::string& commit, const std::vector<WantedFile>& group, RunState* run,
                  Partials* partials, bool* progressed) {
  std::map<std::string, const WantedFile*> remaining;
  mm::ModelFilesRequest req;
  req.set_model_name(o.model);
  req.set_provider(static_cast<mm::ModelProvider>(o.provider));
  req.set_chunk_size(o.chunk_size);
  req.set_revision(commit);
  {
    std::lock_guard<std::mutex> lock(run->mu);
    for (const auto& f : group) {
      if (run->done.count(f.path)) continue;
      remaining[f.path] = &f;
      req.mutable_file_selector()->add_paths(f.path);
      auto p = partials->find(f.path);
      if (p != partials->end() && p->second->offset() > 0) {
        (*req.mutable_start_offsets())[f.path] = p->second->offset();
      }
    }
  }
  if (remaining.empty()) return Status::OK();
  // Metadata only: say so, since a server may hold only that much (an object-store copy
  // made with ignore_weights answers nothing else).
  bool weights = false;
  for (const auto& [path, f] : remaining) weights = weights || IsWeightFile(path);
  req.set_ignore_weights(!weights);
  MX_ASSIGN_OR_RETURN(auto ctx, client->NewContext(0));
  auto reader = client->models().StreamModelFiles(ctx.get(), req);
  mm::FileChunk chunk;
  Incoming* in = nullptr;  // the file being received, owned by *partials
  Status local;            // an error found here (not by gRPC)
  bool first = true;
  while (reader->Read(&chunk)) {
    if (chunk.has_commit_hash() && chunk.commit_hash() != commit) {
      local = Status::FailedPrecondition(
          "the server streamed commit " + Printable(chunk.commit_hash(), 64) + " of " +
          Printable(o.model) + " but this install is pinned to " + commit +
          "; refusing to mix two commits (run again to install the new one)");
      break;
    }
    if (first && !chunk.has_commit_hash()) {
      spdlog::debug("the server did not say which commit it streams");
    }
    first = false;
    auto it = remaining.find(chunk.relative_path());
    if (it == remaining.end()) {
      local = Status::DataLoss("the server sent a file that was not asked for: " +
                               Printable(chunk.relative_path()));
      break;
    }
    const WantedFile& f = *it->second;
    if (in == nullptr || in->file().path != f.path) {
      if (in != nullptr) {
        local = Status::DataLoss(in->file().path + " ended before its last chunk");
        break;
      }
      auto& slot = (*partials)[f.path];
      // Resume where we stopped when the server starts there; a server that ignores
      // start_offsets starts at 0, and so do we.
      if (!slot || chunk.offset() != slot->offset()) {
        slot = std::make_unique<Incoming>();
        if (local = slot->Open(layout, f); !local.ok()) break;
      } else if (slot->offset() > 0) {
        spdlog::info("resuming {} at byte {}", f.path, slot->offset());
      }
      in = slot.get();
    }
    if (chunk.total_size() != f.size || chunk.offset() != in->offset() ||
        chunk.data().size() > f.size - in->offset()) {
      local = Status::DataLoss(f.path + ": chunk at offset " + std::to_string(chunk.offset()) +
                               " does not continue the file (size " +
                               std::to_string(chunk.total_size()) + ")");
      partials->erase(f.path);
      in = nullptr;
      break;
    }
    if (local = in->Write(chunk.data()); !local.ok()) break;
    run->bytes_streamed += chunk.data().size();
    if (chunk.is_last_chunk()) {
      local = in->Publish(layout, commit);
      partials->erase(f.path);  // published, or corrupt: either way not resumable
      in = nullptr;
      if (!local.ok()) break;
      {
        std::lock_guard<std::mutex> lock(run->mu);
        run->done.insert(f.path);
      }
      remaining.erase(it);
      *progressed = true;
      run->Progress("stream", f.path);
    } else {
      *progressed = true;
      run->Progress("stream", f.path);
    }
  }
  if (!local.ok()) ctx->TryCancel();
  grpc::Status gs = reader->Finish();
  if (!local.ok()) return local;
  MX_RETURN_IF_ERROR(FromGrpc(gs, "StreamModelFiles"));
  if (!remaining.empty()) {
    return Status::DataLoss("the stream ended without " + remaining.begin()->first);
  }
  return Status::OK();
}

// Retries StreamOnce until the group is complete, a fatal error, or resume_seconds pass
// without progress.
Status StreamGroup(MxClient* client, const FetchOptions& o, LocalLayout& layout,
                   const std::string& commit, const std::vector<WantedFile>& group, RunState* run) {
  auto last_progress = Clock::now();
  std::map<std::string, int> corrupt;
  Partials partials;  // their temp files go when this returns (Incoming's destructor)
  for (int attempt = 0;; ++attempt) {
    bool progressed = false;
    Status st = StreamOnce(client, o, layout, commit, group, run, &partials, &progressed);
    if (st.ok()) return st;
    if (progressed) last_progress = Clock::now();
    if (!Retriable(st)) return st;
    if (st.code() == StatusCode::kDataLoss && ++corrupt[st.message()] > 2) return st;
    if (SecondsSince(last_progress) > o.resume_seconds) return st;
    spdlog::info("stream interrupted ({}); resuming", st.message());
    run->Progress("stream", "reconnecting", true);
    std::this_thread::sleep_for(std::chrono::milliseconds(std::min(250 * (attempt + 1), 2000)));
    (void)client->Connect();  // bounded wait; the next call reports the error
  }
}

Status StreamFiles(MxClient* client, const FetchOptions& o, LocalLayout& layout,
                   const std::string& commit, const std::vector<WantedFile>& files, RunState* run) {
  MX_RETURN_IF_ERROR(layout.Prepare(commit));
  std::vector<WantedFile> todo;
  for (const auto& f : files) {
    bool here = layout.FileOk(commit, f.path, f.size);
    if (!here) {
      // The same contents under another revision: link, do not fetch.
      MX_ASSIGN_OR_RETURN(here, layout.Adopt(commit, f));
    }
    if (here) {
      std::lock_guard<std::mutex> l(run->mu);
      run->done.insert(f.path);
      continue;
    }
    todo.push_back(f);
  }
  if (todo.empty()) return Status::OK();
  // Largest first onto the lightest group: the groups finish at about the same time.
  std::sort(todo.begin(), todo.end(), [](auto& a, auto& b) { return a.size > b.size; });
  size_t n = static_cast<size_t>(std::clamp(o.streams, 1, 16));
  n = std::min(n, todo.size());
  std::vector<std::vector<WantedFile>> groups(n);
  std::vector<uint64_t> weight(n, 0);
  for (auto& f : todo) {
    size_t g = std::min_element(weight.begin(), weight.end()) - weight.begin();
    weight[g] += f.size + 1;
    groups[g].push_back(f);
  }
  std::vector<Status> results(n);
  std::vector<std::thread> threads;
  for (size_t i = 0; i < n; ++i) {
    threads.emplace_back([&, i] {
      try {
        results[i] = StreamGroup(client, o, layout, commit, groups[i], run);
      } catch (const std::exception& e) {
        results[i] = Status::Internal(std::string("stream thread: ") + e.what());
      }
    });
  }
  for (auto& t : threads) t.join();
  // A fatal error (a mixed commit) wins over a transient one in another group.
  for (auto& r : results) {
    if (r.code() == StatusCode::kFailedPrecondition) return r;
  }
  for (auto& r : results) MX_RETURN_IF_ERROR(r);
  return Status::OK();
}

Result<std::vector<WantedFile>> ValidatedList(const mm::ModelFileList& list) {
  if (static_cast<size_t>(list.files_size()) > kMaxFiles) {
    return Status::DataLoss("the server listed more than " + std::to_string(kMaxFiles) + " files");
  }
  std::vector<WantedFile> out;
  std::set<std::string> seen;
  for (const auto& f : list.files()) {
    if (!IsValidUtf8(f.relative_path()) || !IsSafeRelativePath(f.relative_path()) ||
        !seen.insert(f.relative_path()).second) {
      return Status::DataLoss("the server listed a bad or duplicate path: " +
                              Printable(f.relative_path()));
    }
    const std::string& h = f.blob_hash();
    if (!h.empty() && !IsLowerHex(h, 40) && !IsLowerHex(h, 64)) {
      return Status::DataLoss("the server gave a bad blob hash for " + f.relative_path());
    }
    out.push_back({f.relative_path(), f.size(), h});
  }
  return out;
}

constexpr int kProviderGcs = 2;
constexpr int kProviderS3 = 3;

bool StartsWithNoCase(std::string_view text, std::string_view prefix) {
  if (text.size() < prefix.size()) return false;
  for (size_t i = 0; i < prefix.size(); ++i) {
    if (std::tolower(static_cast<unsigned char>(text[i])) != prefix[i]) return false;
  }
  return true;
}

// The local directory of an object-store model, from its name, checked the way mx-server
// checks it (the server refuses what this refuses): "s3://bucket/prefix" or
// "gs://bucket/prefix", bucket one segment, prefix a safe relative path.
Result<std::unique_ptr<ObjectLayout>> MakeObjectLayout(const FetchOptions& o);

Result<std::unique_ptr<LocalLayout>> MakeLayout(const FetchOptions& o) {
  MX_ASSIGN_OR_RETURN(std::unique_ptr<ObjectLayout> object, MakeObjectLayout(o));
  if (!object) return std::unique_ptr<LocalLayout>(new HubLayout(o.cache_root, o.model));
  return std::unique_ptr<LocalLayout>(std::move(object));
}

// Null for hub models.
Result<std::unique_ptr<ObjectLayout>> MakeObjectLayout(const FetchOptions& o) {
  std::string_view name = o.model;
  bool s3 = StartsWithNoCase(name, "s3://"), gs = StartsWithNoCase(name, "gs://");
  bool object = o.provider == kProviderS3 || o.provider == kProviderGcs || s3 || gs;
  if (!object) return std::unique_ptr<ObjectLayout>();
  bool want_gs = o.provider == kProviderGcs || (o.provider == 0 && gs);
  if (!(want_gs ? gs : s3)) {
    return Status::InvalidArgument("an " + std::string(want_gs ? "GCS" : "S3") +
                                   " model is named " + (want_gs ? "gs" : "s3") +
                                   "://BUCKET/PREFIX, not '" + Printable(name) + "'");
  }
  name.remove_prefix(5);
  while (!name.empty() && name.back() == '/') name.remove_suffix(1);
  size_t slash = name.find('/');
  std::string bucket(name.substr(0, slash));
  std::string prefix(slash == std::string_view::npos ? "" : name.substr(slash + 1));
  bool bucket_ok = !bucket.empty() && std::isalnum(static_cast<unsigned char>(bucket[0]));
  for (char c : bucket) {
    bucket_ok = bucket_ok &&
                (std::isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' || c == '-');
  }
  if (!bucket_ok || prefix.empty() || !IsValidUtf8(prefix) || !IsSafeRelativePath(prefix)) {
    return Status::InvalidArgument("bad object-store model name '" + Printable(o.model) +
                                   "': expected " + (want_gs ? "gs" : "s3") +
                                   "://BUCKET/PREFIX with no empty, '.' or '..' segment");
  }
  std::string scheme = want_gs ? "gs" : "s3";
  std::string canonical = scheme + "://" + bucket + "/" + prefix;
  std::string dir = o.cache_root + "/" + (want_gs ? "gcs" : "s3") + "/" + bucket + "/" + prefix;
  return std::make_unique<ObjectLayout>(canonical, dir);
}

Result<FetchReport> FromServer(MxClient* client, const FetchOptions& o, RunState* run) {
  MX_RETURN_IF_ERROR(client->Connect());
  FetchReport report;
  std::optional<std::string> pinned = o.expect_commit;
  bool shared = o.shared_storage;
  std::vector<bool> phases;
  if (o.phase != Phase::kWeights) phases.push_back(true);
  if (o.phase != Phase::kMetadata) phases.push_back(false);
  MX_ASSIGN_OR_RETURN(std::unique_ptr<LocalLayout> layout, MakeLayout(o));
  std::set<std::string> listed;
  std::vector<WantedFile> all_files;
  for (bool ignore_weights : phases) {
    mm::ModelDownloadRequest req;
    req.set_model_name(o.model);
    req.set_provider(static_cast<mm::ModelProvider>(o.provider));
    req.set_ignore_weights(ignore_weights);
    if (!o.revision.empty()) req.set_revision(o.revision);
    run->Progress("server", "asking the server for " + o.model, true);
    // Ensure is idempotent: a connection lost while waiting (keepalive, a server restart)
    // asks again, for up to resume_seconds.
    auto asked = Clock::now();
    Result<mm::ModelStatusUpdate> ensured = Status::Unavailable("not asked");
    while (true) {
      ensured = client->Ensure(req, [&](const mm::ModelStatusUpdate& u) {
        run->Progress("server", Printable(u.message(), 200), true);
      });
      if (ensured.ok() || ensured.status().code() != StatusCode::kUnavailable ||
          SecondsSince(asked) > o.resume_seconds) {
        break;
      }
      spdlog::info("EnsureModelDownloaded interrupted ({}); asking again",
                   ensured.status().message());
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
      if (Status c = client->Connect(); !c.ok() && SecondsSince(asked) > o.resume_seconds) break;
    }
    MX_RETURN_IF_ERROR(ensured.status());
    const mm::ModelStatusUpdate& done = *ensured;
    std::string commit = done.resolved_revision();
    if (pinned && *pinned != commit) {
      return Status::FailedPrecondition(
          Printable(o.model) + " moved from commit " + *pinned + " to " + commit +
          " between phases; refusing to mix two commits (run again to install the new one)");
    }
    pinned = commit;
    mm::ModelFilesRequest lreq;
    lreq.set_model_name(o.model);
    lreq.set_provider(static_cast<mm::ModelProvider>(o.provider));
    lreq.set_ignore_weights(ignore_weights);
    lreq.set_revision(commit);
    MX_ASSIGN_OR_RETURN(mm::ModelFileList list, client->ListFiles(lreq, 30000));
    MX_ASSIGN_OR_RETURN(std::vector<WantedFile> files, ValidatedList(list));
    for (const auto& f : files) {
      if (listed.insert(f.path).second) {
        report.bytes += f.size, ++report.files;
        all_files.push_back(f);
      }
    }
    {
      std::lock_guard<std::mutex> l(run->mu);
      run->files_total = report.files;
      run->bytes_total = report.bytes;
    }
    if (shared) {
      size_t missing = 0;
      std::string example;
      for (const auto& f : files) {
        // Present with its size, and readable by this process (not only stat-able).
        if (!layout->FileOk(commit, f.path, f.size)) {
          if (missing++ == 0) example = f.path;
        }
      }
      if (missing == 0) continue;
      run->Warn("the server's snapshot " + layout->SnapshotDir(commit) +
                " is not readable or not complete from this process (" + std::to_string(missing) +
                " of " + std::to_string(files.size()) + " files missing, e.g. " +
                EscapeControl(example) +
                "): no shared storage here, streaming the files from the server instead");
      shared = false;
    }
    MX_RETURN_IF_ERROR(StreamFiles(client, o, *layout, commit, files, run));
  }
  report.commit = *pinned;
  report.path = layout->SnapshotDir(report.commit);
  report.strategy = shared ? "shared-storage" : "stream";
  if (!shared) {
    // Refs (or the copy's marker) last: only once every file is in place.
    std::string rev = o.revision.empty() ? "main" : o.revision;
    MX_RETURN_IF_ERROR(layout->Finish(rev, report.commit, all_files, o.phase != Phase::kMetadata));
  }
  return report;
}

Result<FetchReport> FromHub(const FetchOptions& o, RunState* run) {
  if (o.provider != 0) {
    return Status::Unimplemented("only hugging-face models can be downloaded without the server");
  }
  hub::HubConfig config = hub::HubConfig::FromEnvironment();
  config.cache_dir = o.cache_root;
  hub::HubClient hub_client(config, hub::RepoType::kModel);
  hub::DownloadOptions d;
  d.repo_id = o.model;
  d.revision = o.revision.empty() ? "main" : o.revision;
  if (o.phase == Phase::kMetadata) {
    for (const char* p : kWeightPatterns) d.exclude.push_back(p);
  }
  d.on_progress = [&](const hub::DownloadProgress& p) {
    if (!o.on_progress) return;
    FetchProgress fp;
    fp.stage = "hub";
    fp.bytes_done = p.bytes_done;
    fp.bytes_total = p.bytes_total;
    fp.files_done = p.files_done;
    fp.files_total = p.files_total;
    o.on_progress(fp);
  };
  MX_ASSIGN_OR_RETURN(hub::DownloadReport r, hub::Download(hub_client, d));
  if (o.expect_commit && *o.expect_commit != r.commit) {
    return Status::FailedPrecondition("the hub has commit " + r.commit + ", not the expected " +
                                      *o.expect_commit);
  }
  FetchReport report;
  report.path = r.path;
  report.commit = r.commit;
  report.files = r.files;
  report.bytes = r.bytes;
  report.strategy = "hub";
  return report;
}

// Failures after which the hub may still give the model.
bool ServerFailed(const Status& st) {
  switch (st.code()) {
    case StatusCode::kUnavailable:
    case StatusCode::kInternal:
    case StatusCode::kDataLoss:
    case StatusCode::kResourceExhausted:
    case StatusCode::kUnimplemented:
    case StatusCode::kCancelled:
    case StatusCode::kIoError:
      return true;
    default:
      return false;
  }
}

}  // namespace

bool IsWeightFile(const std::string& path) {
  std::string base = path.substr(path.rfind('/') == std::string::npos ? 0 : path.rfind('/') + 1);
  for (const char* p : kWeightPatterns) {
    if (::fnmatch(p, base.c_str(), 0) == 0) return true;
  }
  return false;
}

Result<Strategy> ParseStrategy(const std::string& text) {
  if (text == "smart-fallback") return Strategy::kSmartFallback;
  if (text == "server-only") return Strategy::kServerOnly;
  if (text == "direct") return Strategy::kDirect;
  return Status::InvalidArgument("unknown strategy '" + Printable(text) +
                                 "' (smart-fallback, server-only, direct)");
}

const char* StrategyName(Strategy s) {
  switch (s) {
    case Strategy::kServerOnly:
      return "server-only";
    case Strategy::kDirect:
      return "direct";
    default:
      return "smart-fallback";
  }
}

Result<int> ParseProvider(const std::string& text) {
  if (text == "hugging-face" || text == "huggingface" || text == "hf") return 0;
  if (text == "ngc") return 1;
  if (text == "gcs") return 2;
  if (text == "s3") return 3;
  return Status::InvalidArgument("unknown provider '" + Printable(text) +
                                 "' (hugging-face, s3, gcs, ngc)");
}

Result<std::optional<std::string>> ObjectModelDir(const std::string& cache_root, int provider,
                                                  const std::string& model) {
  FetchOptions o;
  o.cache_root = cache_root;
  o.provider = provider;
  o.model = model;
  MX_ASSIGN_OR_RETURN(std::unique_ptr<ObjectLayout> layout, MakeObjectLayout(o));
  if (!layout) return std::optional<std::string>();
  return std::optional<std::string>(layout->SnapshotDir(""));
}

std::string ResolveCacheRoot(const std::string& flag) {
  if (!flag.empty()) return flag;
  for (const char* var : {"MODEL_EXPRESS_CACHE_DIRECTORY", "HF_HUB_CACHE"}) {
    if (auto v = GetEnv(var); v && !v->empty()) return *v;
  }
  if (auto v = GetEnv("HF_HOME"); v && !v->empty()) return *v + "/hub";
  std::string home = GetEnv("HOME").value_or("/root");
  return home + "/.cache/huggingface/hub";
}

Result<FetchReport> FetchModel(MxClient* client, const FetchOptions& options) {
  auto start = Clock::now();
  RunState run;
  run.options = &options;
  // A bad name fails here, before the server is asked anything.
  MX_ASSIGN_OR_RETURN(std::unique_ptr<ObjectLayout> object, MakeObjectLayout(options));
  if (!object) MX_RETURN_IF_ERROR(hub::ValidateRepoId(options.model));
  if (!options.revision.empty()) MX_RETURN_IF_ERROR(hub::ValidateRevision(options.revision));
  Result<FetchReport> result = Status::Unavailable("no strategy ran");
  if (options.strategy != Strategy::kDirect) {
    if (client == nullptr) return Status::InvalidArgument("no server client");
    result = FromServer(client, options, &run);
    if (!result.ok() && options.strategy == Strategy::kSmartFallback &&
        ServerFailed(result.status())) {
      run.Warn("mx-server failed (" + result.status().message() +
               "); downloading from the hub instead (smart-fallback)");
      result = FromHub(options, &run);
    }
  } else {
    result = FromHub(options, &run);
  }
  if (!result.ok()) return result.status();
  result->bytes_streamed = run.bytes_streamed.load();
  result->seconds = SecondsSince(start);
  return result;
}

}  // namespace mx::client
