#include "hub/downloader.h"

#include <dirent.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstring>
#include <deque>
#include <filesystem>
#include <map>
#include <memory>
#include <mutex>
#include <thread>

#include "common/env.h"
#include "common/fs.h"
#include "common/hash.h"
#include "common/log.h"
#include "http/range_engine.h"
#include "hub/cache.h"
#include "hub/progress_file.h"

namespace mx::hub {
namespace {

using Clock = std::chrono::steady_clock;

constexpr int kMaxFileAttempts = 3;
// Hash the written prefix in steps of this much, so verifying overlaps the download; small,
// so little is left to hash after the last byte.
constexpr uint64_t kHashStepBytes = 1ull << 20;
constexpr uint64_t kMaxChunkBytes = 16ull << 20;
constexpr uint64_t kMinChunkBytes = 1ull << 20;
// Files staged (lock + temp file + progress record open) at once: a repo of thousands of
// files must not need thousands of descriptors (ulimit -n is often 1024, or less).
constexpr size_t kMaxFilesInFlight = 64;
// Files made durable and renamed into place at once (fdatasync mostly waits on the disk;
// one file after another would leave a tail of syncs after the last byte arrived).
constexpr int kPublishThreads = 4;
constexpr int kHashLanes = 2;
// The connections a file's chunking plans for when the engine chooses the number itself.
constexpr int kAdaptivePlanningWorkers = 32;
constexpr int kDefaultMaxConnections = 128;

double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// Big enough that per-request overhead vanishes, small enough that one file keeps every
// connection busy and that the tail (the last chunks in flight) stays short.
uint64_t ChooseChunkBytes(uint64_t size, int workers) {
  uint64_t per = size / static_cast<uint64_t>(std::max(1, workers) * 2);
  per = (per + kMinChunkBytes - 1) / kMinChunkBytes * kMinChunkBytes;
  per = std::clamp(per, kMinChunkBytes, kMaxChunkBytes);
  // Keep the progress record's table within its bound even for enormous files.
  return std::max<uint64_t>(per, size / ProgressFile::kMaxChunks + 1);
}

bool FileHasSize(const std::string& path, uint64_t size) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
         static_cast<uint64_t>(st.st_size) == size;
}

// One file to produce: a blob (cache mode) or a final path (local dir / no symlinks).
struct Target {
  Target() = default;
  Target(const Target&) = delete;
  Target& operator=(const Target&) = delete;
  // Every exit of a download, error paths included, gives back what a target holds.
  ~Target() { Abandon(); }

  // Closes the temp file (kept on disk for a later run to resume), its progress record,
  // and gives up the blob lock and the in-process claim on the temp file.
  void Abandon() {
    if (fd >= 0) ::close(fd);
    fd = -1;
    progress.Close();
    owned.Release();
    lock.Release();
  }

  // After a failed transfer: keeps the temp file only when its progress record says some
  // bytes are in place (a rerun resumes them); otherwise removes it and its record, so a
  // failed run leaves neither clutter nor a reservation behind. Then Abandon().
  void AbandonAfterFailure() {
    if (!temp_path.empty() && progress.BytesDone() == 0) {
      ::unlink(temp_path.c_str());
      progress.Remove();
    }
    Abandon();
  }

  // The file failed verification or could not be made durable: its bytes are worthless, so
  // the temp file and its progress record go, the claim is given up, and `why` is kept.
  void Discard(Status why) {
    ::close(fd);
    fd = -1;
    ::unlink(temp_path.c_str());
    progress.Remove();
    owned.Release();
    verify_status = std::move(why);
  }

  TreeEntry entry;
  std::string final_path;
  std::string temp_dir;
  std::string lock_path;
  std::string url;
  int attempts = 0;
  size_t lane = 0;  // hashing lane (HashLanes)

  // While being produced:
  FileLock lock;
  int fd = -1;
  std::string temp_path;
  OwnedTempFile owned;  // tells TempFileIsOrphaned a thread of ours writes temp_path
  ProgressFile progress;
  std::vector<size_t> chunk_of_range;
  // Hashing follows the written prefix (engine thread submits, the hash thread consumes).
  std::unique_ptr<Hasher> hasher;
  uint64_t hash_submitted = 0;
  size_t first_open_chunk = 0;
  Status fetch_status;
  Status verify_status;
  bool done = false;
  bool fetched = false;  // published by this run (so --force-download fetches it once)
  bool retry = false;
  bool reserved = false;  // disk space reserved (only once bytes arrived)
};

// Runs hashing and publishing off the download thread, in submission order (one thread),
// so a file's prefix is hashed while its later ranges are still arriving.
class VerifyPool {
 public:
  explicit VerifyPool(int threads) {
    for (int i = 0; i < threads; ++i) workers_.emplace_back([this] { Loop(); });
  }
  ~VerifyPool() {
    {
      std::lock_guard<std::mutex> l(mu_);
      stop_ = true;
    }
    cv_.notify_all();
    for (auto& w : workers_) w.join();
  }
  void Submit(std::function<void()> fn) {
    {
      std::lock_guard<std::mutex> l(mu_);
      queue_.push_back(std::move(fn));
      ++pending_;
    }
    cv_.notify_one();
  }
  void Wait() {
    std::unique_lock<std::mutex> l(mu_);
    idle_cv_.wait(l, [this] { return pending_ == 0; });
  }

 private:
  void Loop() {
    for (;;) {
      std::function<void()> fn;
      {
        std::unique_lock<std::mutex> l(mu_);
        cv_.wait(l, [this] { return stop_ || !queue_.empty(); });
        if (queue_.empty()) return;
        fn = std::move(queue_.front());
        queue_.pop_front();
      }
      fn();
      {
        std::lock_guard<std::mutex> l(mu_);
        --pending_;
      }
      idle_cv_.notify_all();
    }
  }

  std::mutex mu_;
  std::condition_variable cv_, idle_cv_;
  std::deque<std::function<void()>> queue_;
  std::vector<std::thread> workers_;
  int pending_ = 0;
  bool stop_ = false;
};

// Hashing lanes: each file is hashed on one lane, in order; files on different lanes hash
// at once, so several large files finishing together do not queue their last hashing
// behind one another after the last byte.
class HashLanes {
 public:
  explicit HashLanes(int lanes) {
    for (int i = 0; i < lanes; ++i) lanes_.push_back(std::make_unique<VerifyPool>(1));
  }
  void Submit(size_t lane, std::function<void()> fn) {
    lanes_[lane % lanes_.size()]->Submit(std::move(fn));
  }
  void Wait() {
    for (auto& l : lanes_) l->Wait();
  }

 private:
  std::vector<std::unique_ptr<VerifyPool>> lanes_;
};

class Downloader {
 public:
  Downloader(HubClient& client, const DownloadOptions& options)
      : client_(client),
        options_(options),
        cache_(client.config().cache_dir, client.type(), options.repo_id) {}

  Result<DownloadReport> Run();

 private:
  Result<DownloadReport> RunOffline(const std::string& why);
  Result<DownloadReport> RunLocalOffline(const std::string& why);
  Result<DownloadReport> AnswerFromCache(const Status& hub_error);
  Result<std::vector<TreeEntry>> Select(const std::string& commit,
                                        const std::vector<TreeEntry>& listing);
  Status CheckNotEmpty(const std::vector<TreeEntry>& selected, size_t listed) const;
  Status CheckNoBadBlobs() const;
  std::string RepairAdvice() const;
  void PlanTargets(const std::string& commit, const std::vector<TreeEntry>& selected);
  Status FetchAll();
  Status Stage(Target& t);
  bool AdoptOrphan(Target& t);
  void AdvanceHash(Target& t, HashLanes& lanes);
  void HashRange(Target& t, uint64_t from, uint64_t to);
  void Verify(Target& t, VerifyPool& publisher);
  void PublishBlob(Target& t);
  // The engine's ceiling and whether it adapts below it (see DownloadOptions::max_workers).
  Result<http::EngineOptions> ConnectionOptions() const;
  Status Publish(const std::string& commit, const std::vector<TreeEntry>& listing,
                 const std::vector<TreeEntry>& selected);
  Status LinkBlob(const std::string& etag);
  Status FetchAndLink(const std::vector<TreeEntry>& selected);
  void ReportProgress(bool force);

  // True when the target need not be fetched: it is in place and --force-download does not
  // ask for a fresh copy (or this run already made one).
  bool CanSkip(const Target& t) const {
    return (!options_.force || t.fetched) && AlreadyPresent(t);
  }
  // True when the target's final file is in place: a published blob (immutable, verified
  // when published), or a --local-dir file whose metadata records the same etag.
  bool AlreadyPresent(const Target& t) const {
    if (!FileHasSize(t.final_path, t.entry.size)) return false;
    if (!local_dir()) return true;
    auto meta = ReadFile(LocalMetaDir() + "/" + t.entry.path + ".metadata");
    if (!meta.ok()) return false;
    size_t first = meta->find('\n');
    return first != std::string::npos &&
           meta->compare(first + 1, t.entry.etag().size(), t.entry.etag()) == 0;
  }
  bool use_symlinks() const { return !client_.config().disable_symlinks && !local_dir(); }
  bool local_dir() const { return options_.local_dir.has_value(); }
  std::string LocalMetaDir() const { return *options_.local_dir + "/.cache/huggingface/download"; }
  // mx's record of the last complete download into the local dir: the whole listing, its
  // revision and commit (TreeJson), so a later run can tell offline whether it is complete.
  std::string LocalRecordPath() const { return LocalMetaDir() + "/.mx-snapshot.json"; }
  // The local dir as an absolute path (hf prints it so, whatever the flag said).
  std::string LocalDirShown() const {
    std::error_code ec;
    std::filesystem::path p = std::filesystem::weakly_canonical(*options_.local_dir, ec);
    if (ec) p = std::filesystem::absolute(*options_.local_dir, ec).lexically_normal();
    std::string out = ec ? *options_.local_dir : p.string();
    while (out.size() > 1 && out.back() == '/') out.pop_back();
    return out;
  }

  HubClient& client_;
  const DownloadOptions& options_;
  RepoCache cache_;
  FileLock repo_lock_;  // shared, for the whole download (protocol in hub/cache.h)
  std::string commit_;
  // Snapshot paths per blob, to link each blob as soon as it is in place.
  std::map<std::string, std::vector<std::string>> paths_of_etag_;
  std::vector<std::unique_ptr<Target>> targets_;
  Clock::time_point start_ = Clock::now();
  // progress_ is written by the download thread and reported from the verify thread too
  // (as files complete), so it and the callback are serialized by progress_mu_.
  std::mutex progress_mu_;
  Clock::time_point last_progress_{};
  DownloadProgress progress_;
  // Files in place, counted as each one is published (on the verify thread) or found.
  std::atomic<size_t> files_done_{0};
  uint64_t bytes_fetched_ = 0;
};

bool AllFilesPresent(const RepoCache& cache, const std::string& commit,
                     const std::vector<TreeEntry>& files) {
  return std::all_of(files.begin(), files.end(), [&](const TreeEntry& e) {
    return cache.SnapshotFileOk(commit, e.path, e.size);
  });
}

}  // namespace

bool MatchesPatterns(const std::string& path, const std::vector<std::string>& include,
                     const std::vector<std::string>& exclude) {
  auto matches = [&](std::string pattern) {
    if (!pattern.empty() && pattern.back() == '/') pattern += "*";
    return ::fnmatch(pattern.c_str(), path.c_str(), 0) == 0;
  };
  bool included = include.empty() || std::any_of(include.begin(), include.end(), matches);
  return included && std::none_of(exclude.begin(), exclude.end(), matches);
}

Result<std::vector<TreeEntry>> Downloader::Select(const std::string& commit,
                                                  const std::vector<TreeEntry>& listing) {
  std::vector<TreeEntry> selected;
  if (!options_.files.empty()) {
    std::map<std::string, const TreeEntry*> by_path;
    for (const auto& e : listing) by_path[e.path] = &e;
    for (const auto& f : options_.files) {
      if (!IsSafeRelativePath(f)) return Status::InvalidArgument("invalid file path '" + f + "'");
      auto it = by_path.find(f);
      if (it == by_path.end()) {
        if (!local_dir()) (void)cache_.MarkNoExist(commit, f);
        return Status::NotFound("file '" + f + "' does not exist in " + options_.repo_id + " at " +
                                options_.revision + " (" + commit + ")");
      }
      selected.push_back(*it->second);  // named files win over include/exclude (as hf does)
    }
  } else {
    for (const auto& e : listing) {
      if (MatchesPatterns(e.path, options_.include, options_.exclude)) selected.push_back(e);
    }
  }
  return selected;
}

Status Downloader::CheckNotEmpty(const std::vector<TreeEntry>& selected, size_t listed) const {
  if (!selected.empty() || !options_.fail_on_empty_selection || !options_.files.empty())
    return Status::OK();
  if (options_.include.empty() && options_.exclude.empty()) return Status::OK();
  std::string patterns;
  for (const auto& p : options_.include) patterns += " --include '" + p + "'";
  for (const auto& p : options_.exclude) patterns += " --exclude '" + p + "'";
  return Status::FailedPrecondition("no file of " + options_.repo_id + "@" + options_.revision +
                                    " matches" + patterns + " (the revision has " +
                                    std::to_string(listed) + " file(s)); nothing to download");
}

std::string Downloader::RepairAdvice() const {
  std::string repo = options_.repo_id;
  std::string type = client_.type() == RepoType::kModel
                         ? ""
                         : std::string(" --repo-type ") + RepoTypePlural(client_.type());
  if (!type.empty()) type.pop_back();  // "datasets" -> "dataset"
  return "repair it with `mx cache verify --repair " + repo + type + "` or `mx download " + repo +
         type + " --force-download`";
}

Status Downloader::CheckNoBadBlobs() const {
  if (local_dir() || options_.force) return Status::OK();
  size_t bad = 0;
  const Target* first = nullptr;
  for (const auto& t : targets_) {
    if (!cache_.BlobMarkedBad(t->entry.etag()) || !AlreadyPresent(*t)) continue;
    if (!first) first = t.get();
    ++bad;
  }
  if (!first) return Status::OK();
  return Status::FailedPrecondition(
      "the cache holds a bad blob for " + first->entry.path + " (blobs/" + first->entry.etag() +
      (bad > 1 ? ", and " + std::to_string(bad - 1) + " more" : "") +
      ": its contents do not match its hash, found by `mx cache verify`); " + RepairAdvice());
}

void Downloader::PlanTargets(const std::string& commit, const std::vector<TreeEntry>& selected) {
  std::map<std::string, Target*> by_final;
  for (const auto& e : selected) {
    paths_of_etag_[e.etag()].push_back(e.path);
    auto t = std::make_unique<Target>();
    t->entry = e;
    t->url = client_.FileUrl(options_.repo_id, commit, e.path);
    if (local_dir()) {
      t->final_path = *options_.local_dir + "/" + e.path;
      t->temp_dir = LocalMetaDir();
      t->lock_path = LocalMetaDir() + "/" + e.path + ".lock";
    } else {
      t->final_path =
          use_symlinks() ? cache_.blob_path(e.etag()) : cache_.snapshot_path(commit, e.path);
      t->temp_dir = cache_.blobs_dir();
      t->lock_path = cache_.lock_path(e.etag());
    }
    if (by_final.count(t->final_path)) continue;  // two paths, one blob: fetch once
    by_final[t->final_path] = t.get();
    targets_.push_back(std::move(t));
  }
  // Big files first: their chunks keep every connection busy, small files fill the gaps.
  std::stable_sort(targets_.begin(), targets_.end(),
                   [](const auto& a, const auto& b) { return a->entry.size > b->entry.size; });
}

bool Downloader::AdoptOrphan(Target& t) {
  DIR* dir = ::opendir(t.temp_dir.c_str());
  if (dir == nullptr) return false;
  const std::string prefix = t.entry.etag() + ".";
  const std::string suffix = ".incomplete";
  std::vector<std::string> candidates;
  while (dirent* d = ::readdir(dir)) {
    std::string name = d->d_name;
    if (name.size() > prefix.size() + suffix.size() && name.rfind(prefix, 0) == 0 &&
        name.compare(name.size() - suffix.size(), suffix.size(), suffix) == 0) {
      candidates.push_back(name);
    }
  }
  ::closedir(dir);
  for (const auto& name : candidates) {
    std::string owner_text =
        name.substr(prefix.size(), name.size() - prefix.size() - suffix.size());
    std::string path = t.temp_dir + "/" + name;
    // A live writer (possibly on another host) owns it.
    if (!TempFileIsOrphaned(path, owner_text)) continue;
    // Only our own regular files: on a shared cache a neighbour may plant a symlink (or
    // a file of theirs) named like an orphan, to have us write through it.
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != ::geteuid()) {
      continue;
    }
    // rename() is atomic: of several adopters exactly one wins, the others get ENOENT.
    if (::rename(path.c_str(), t.temp_path.c_str()) != 0) continue;
    std::string new_progress = t.temp_path + ".progress";
    if (::rename((path + ".progress").c_str(), new_progress.c_str()) != 0) {
      ::unlink(new_progress.c_str());  // no usable progress: all bytes count as missing
    }
    spdlog::debug("{}: resuming the partial download left by {}", t.entry.path, owner_text);
    return true;
  }
  return false;
}

Status Downloader::Stage(Target& t) {
  MX_RETURN_IF_ERROR(MakeDirs(t.temp_dir));
  t.temp_path = t.temp_dir + "/" + t.entry.etag() + "." + UniqueTempSuffix() + ".incomplete";
  t.owned = OwnedTempFile(t.temp_path);  // before it exists: no adopter may take it
  bool adopted = AdoptOrphan(t);
  if (adopted) {
    // The adopted inode is checked again after open: it may have been swapped between
    // the lstat in AdoptOrphan and here.
    t.fd = ::open(t.temp_path.c_str(), O_RDWR | O_NOFOLLOW | O_CLOEXEC);
    struct stat st;
    if (t.fd >= 0 &&
        (::fstat(t.fd, &st) != 0 || !S_ISREG(st.st_mode) || st.st_uid != ::geteuid())) {
      ::close(t.fd);
      t.fd = -1;
    }
    if (t.fd < 0) {
      adopted = false;
      ::unlink(t.temp_path.c_str());  // our name: removes the link or foreign file, not its target
    }
  }
  if (t.fd < 0) {
    t.fd = ::open(t.temp_path.c_str(), O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0644);
  }
  if (t.fd < 0) return Status::FromErrno(errno, "create " + t.temp_path);
  uint64_t size = t.entry.size;
  // Sized but sparse: space is reserved only once the first bytes arrive (Reserve), not on
  // the hub's word alone (a 403 must not leave gigabytes allocated).
  t.reserved = false;
  if (::ftruncate(t.fd, static_cast<off_t>(size)) != 0) {
    return Status::FromErrno(errno, "size " + t.temp_path);
  }
  std::string progress_path = t.temp_path + ".progress";
  bool resumed = false;
  if (adopted) {
    auto p = ProgressFile::Open(progress_path, size);
    if (p.ok()) {
      t.progress = std::move(*p);
      resumed = true;
    } else {
      // An implausible record: trust none of the adopted bytes, start the file over.
      spdlog::debug("{}: {}; starting over", t.entry.path, p.status().message());
    }
  }
  if (!resumed) {
    MX_ASSIGN_OR_RETURN(
        t.progress, ProgressFile::Create(progress_path, size,
                                         ChooseChunkBytes(size, options_.max_workers > 0
                                                                    ? options_.max_workers
                                                                    : kAdaptivePlanningWorkers)));
  }
  t.hasher =
      std::make_unique<Hasher>(t.entry.is_lfs() ? HashKind::kSha256 : HashKind::kGitSha1, size);
  t.hash_submitted = 0;
  t.first_open_chunk = 0;
  return Status::OK();
}

// Reserves the whole file once bytes arrived, so a full disk fails early rather than at
// the end; a failure here is left to the writes themselves to report.
static void Reserve(Target& t) {
  if (t.reserved || t.fd < 0 || t.entry.size == 0) return;
  t.reserved = true;
  (void)::fallocate(t.fd, 0, 0, static_cast<off_t>(t.entry.size));
}

void Downloader::AdvanceHash(Target& t, HashLanes& lanes) {
  uint64_t prefix = t.progress.PrefixEnd(&t.first_open_chunk);
  if (prefix < t.hash_submitted + kHashStepBytes && prefix < t.entry.size) return;
  if (prefix <= t.hash_submitted) return;
  uint64_t from = t.hash_submitted;
  t.hash_submitted = prefix;
  lanes.Submit(t.lane, [this, &t, from, prefix] { HashRange(t, from, prefix); });
}

void Downloader::HashRange(Target& t, uint64_t from, uint64_t to) {
  if (!t.verify_status.ok()) return;
  thread_local std::vector<char> buf(1 << 20);
  for (uint64_t off = from; off < to;) {
    size_t want = static_cast<size_t>(std::min<uint64_t>(buf.size(), to - off));
    ssize_t n = ::pread(t.fd, buf.data(), want, static_cast<off_t>(off));
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      t.verify_status = Status::FromErrno(n < 0 ? errno : EIO, "read back " + t.temp_path);
      return;
    }
    t.hasher->Update(buf.data(), static_cast<size_t>(n));
    off += static_cast<uint64_t>(n);
  }
  // Start writeback of what is verified now, so the fdatasync before publishing is short.
  ::sync_file_range(t.fd, static_cast<off_t>(from), static_cast<off_t>(to - from),
                    SYNC_FILE_RANGE_WRITE);
}

void Downloader::Verify(Target& t, VerifyPool& publisher) {
  const TreeEntry& e = t.entry;
  if (!t.verify_status.ok()) return t.Discard(t.verify_status);
  if (t.hash_submitted != e.size)
    return t.Discard(Status::Internal(e.path + ": hashed only part of the file"));
  std::string digest = t.hasher->FinalHex();
  if (digest != e.etag()) {
    return t.Discard(Status::DataLoss(e.path + ": hash mismatch (expected " + e.etag() + ", got " +
                                      digest + ")"));
  }
  publisher.Submit([this, &t] { PublishBlob(t); });
}

// Publisher thread (several run at once, each on its own target).
void Downloader::PublishBlob(Target& t) {
  const TreeEntry& e = t.entry;
  ::fchmod(t.fd, DefaultFileMode());
  // Durable before visible: after a power loss a blob is either absent or whole.
  if (::fdatasync(t.fd) != 0) return t.Discard(Status::FromErrno(errno, "fsync " + t.temp_path));
  ::close(t.fd);
  t.fd = -1;
  Status st = MakeDirs(DirName(t.final_path));
  if (st.ok() && ::rename(t.temp_path.c_str(), t.final_path.c_str()) != 0) {
    st = Status::FromErrno(errno, "rename into " + t.final_path);
  }
  t.progress.Remove();
  t.owned.Release();
  if (!st.ok()) {
    ::unlink(t.temp_path.c_str());
    t.verify_status = st;
    return;
  }
  t.done = true;
  t.fetched = true;
  ++files_done_;
  ReportProgress(true);  // files done move as each file completes, not per batch
  if (!local_dir()) cache_.ClearBlobBad(e.etag());  // a fresh, verified copy is in place
  // Referenced at once (protocol rule 3): a cleaner never sees this blob unreferenced.
  if (use_symlinks()) {
    Status linked = LinkBlob(t.entry.etag());
    if (!linked.ok()) spdlog::warn("{}: {}", t.entry.path, linked.message());  // linked again later
  }
}

Status Downloader::LinkBlob(const std::string& etag) {
  auto it = paths_of_etag_.find(etag);
  if (it == paths_of_etag_.end()) return Status::OK();
  for (const auto& path : it->second) MX_RETURN_IF_ERROR(cache_.LinkSnapshot(commit_, path, etag));
  return Status::OK();
}

Result<http::EngineOptions> Downloader::ConnectionOptions() const {
  http::EngineOptions eo;
  if (options_.max_workers > 0) {
    eo.max_connections = options_.max_workers;
    eo.adaptive = false;
    return eo;
  }
  eo.max_connections = kDefaultMaxConnections;
  if (auto v = GetEnv("MX_MAX_CONNECTIONS"); v && !v->empty()) {
    MX_ASSIGN_OR_RETURN(int64_t n, ParseIntInRange("MX_MAX_CONNECTIONS", *v, 1, 1024));
    eo.max_connections = static_cast<int>(n);
  }
  return eo;
}

void Downloader::ReportProgress(bool force) {
  if (!options_.on_progress) return;
  auto now = Clock::now();
  std::lock_guard<std::mutex> l(progress_mu_);
  if (!force && now - last_progress_ < std::chrono::milliseconds(200)) return;
  last_progress_ = now;
  progress_.seconds = SecondsSince(start_);
  progress_.files_done = files_done_.load();
  options_.on_progress(progress_);
}

Status Downloader::FetchAll() {
  std::vector<Target*> pending;
  for (auto& t : targets_) {
    if (CanSkip(*t)) {
      t->done = true;  // a published blob is immutable and was verified when published
      ++files_done_;
    } else {
      pending.push_back(t.get());
      std::lock_guard<std::mutex> l(progress_mu_);
      progress_.bytes_total += t->entry.size;
    }
  }
  {
    std::lock_guard<std::mutex> l(progress_mu_);
    progress_.files_total = targets_.size();
  }
  // Smallest first: the engine starts jobs in the order added, so small files (a round
  // trip each, latency-bound) all go out together at the start and overlap the large
  // ones, instead of trailing after the last large byte.
  std::stable_sort(pending.begin(), pending.end(),
                   [](const Target* a, const Target* b) { return a->entry.size < b->entry.size; });
  MX_ASSIGN_OR_RETURN(http::EngineOptions eo, ConnectionOptions());
  HashLanes verifier(kHashLanes);
  VerifyPool publisher(kPublishThreads);
  size_t next_lane = 0;
  std::vector<Status> failures;
  bool announced_wait = false;
  while (!pending.empty()) {
    if (options_.cancel && options_.cancel->load()) return Status::Cancelled("download cancelled");
    std::vector<Target*> round, waiting, later;
    for (Target* t : pending) {
      if (round.size() >= kMaxFilesInFlight) {
        later.push_back(t);  // opened in a later round, when this one's files are closed
        continue;
      }
      Status dirs = MakeDirs(DirName(t->lock_path));
      auto lock = dirs.ok() ? FileLock::TryAcquire(t->lock_path) : Result<FileLock>(dirs);
      if (!lock.ok()) {
        failures.push_back(lock.status());
        continue;
      }
      if (!lock->held()) {
        waiting.push_back(t);
        continue;
      }
      if (CanSkip(*t)) {
        t->done = true;  // another process finished it while we were busy
        ++files_done_;
        continue;
      }
      t->lock = std::move(*lock);
      t->retry = false;
      t->fetch_status = Status::OK();
      t->verify_status = Status::OK();
      Status st = Stage(*t);
      if (!st.ok()) {
        failures.push_back(st);
        t->AbandonAfterFailure();
        continue;
      }
      {
        std::lock_guard<std::mutex> l(progress_mu_);
        progress_.bytes_total -= std::min(progress_.bytes_total, t->progress.BytesDone());
      }
      t->lane = next_lane++;
      round.push_back(t);
    }

    if (!round.empty()) {
      eo.cancel = options_.cancel;
      const http::RangeEngine* running = nullptr;  // set before Run, read on its thread
      eo.on_bytes = [this, &running](uint64_t n) {
        {
          std::lock_guard<std::mutex> l(progress_mu_);
          progress_.bytes_done += n;
          if (running) progress_.connections = running->connections_active();
        }
        ReportProgress(false);
      };
      http::RangeEngine engine(eo);
      running = &engine;
      for (Target* t : round) {
        http::FetchJob job;
        job.url = t->url;
        job.headers = client_.AuthHeaders();
        job.size = t->entry.size;
        job.fd = t->fd;
        job.display_name = t->entry.path;
        job.auth_hint = "access refused: set HF_TOKEN or --token";
        t->chunk_of_range.clear();
        for (size_t k = 0; k < t->progress.chunk_count(); ++k) {
          http::ByteRange r = t->progress.MissingInChunk(k);
          if (r.begin < r.end) {
            job.ranges.push_back(r);
            t->chunk_of_range.push_back(k);
          }
        }
        job.on_progress = [this, t, &verifier](size_t index, uint64_t cursor) {
          Reserve(*t);
          t->progress.Record(t->chunk_of_range[index], cursor);
          AdvanceHash(*t, verifier);
        };
        job.on_done = [this, t, &verifier, &publisher](const Status& st) {
          t->fetch_status = st;
          if (!st.ok()) return;
          AdvanceHash(*t, verifier);
          verifier.Submit(t->lane, [this, t, &publisher] { Verify(*t, publisher); });
        };
        engine.Add(std::move(job));
      }
      Status st = engine.Run();
      verifier.Wait();
      publisher.Wait();
      bytes_fetched_ += engine.bytes_received();
      if (!st.ok()) {
        // fds, progress records, locks, claims; temp files with nothing to resume go.
        for (Target* t : round) {
          if (t->done) {
            t->Abandon();
          } else {
            t->AbandonAfterFailure();
          }
        }
        return st;
      }
    }

    std::vector<Target*> next;
    for (Target* t : round) {
      if (t->done) {
        // counted in files_done_ when it was published
      } else if (!t->fetch_status.ok()) {
        t->AbandonAfterFailure();  // a partial file stays: a rerun (even ours) resumes it
        failures.push_back(t->fetch_status);
      } else if (t->verify_status.code() == StatusCode::kDataLoss &&
                 ++t->attempts < kMaxFileAttempts) {
        spdlog::warn("{}; fetching it again", t->verify_status.message());
        {
          std::lock_guard<std::mutex> l(progress_mu_);
          progress_.bytes_total += t->entry.size;
        }
        next.push_back(t);
      } else {
        failures.push_back(t->verify_status.code() == StatusCode::kDataLoss
                               ? t->verify_status.WithContext(
                                     "after " + std::to_string(kMaxFileAttempts) + " attempts")
                               : t->verify_status);
      }
      t->lock.Release();
    }
    if (round.empty() && !waiting.empty()) {
      if (!announced_wait) {
        spdlog::info("waiting for another process that is downloading {} file(s) of {}",
                     waiting.size(), options_.repo_id);
        announced_wait = true;
      }
      ReportProgress(false);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    next.insert(next.end(), later.begin(), later.end());
    next.insert(next.end(), waiting.begin(), waiting.end());
    pending = std::move(next);
  }
  ReportProgress(true);
  if (failures.empty()) return Status::OK();
  if (failures.size() == 1) return failures[0];
  return failures[0].WithContext(std::to_string(failures.size()) + " files failed; first");
}

Status Downloader::Publish(const std::string& commit, const std::vector<TreeEntry>& listing,
                           const std::vector<TreeEntry>& selected) {
  if (local_dir()) {
    // huggingface_hub's local-dir metadata: lets it (and us) skip up-to-date files later.
    for (const auto& e : selected) {
      std::string meta = LocalMetaDir() + "/" + e.path + ".metadata";
      MX_RETURN_IF_ERROR(MakeDirs(DirName(meta)));
      MX_RETURN_IF_ERROR(WriteFileAtomic(
          meta, commit + "\n" + e.etag() + "\n" + std::to_string(std::time(nullptr)) + "\n"));
    }
    // Last, like a ref: what an offline run checks the local dir against.
    return WriteFileAtomic(LocalRecordPath(), TreeJson(listing, {{"revision", options_.revision},
                                                                 {"commit", commit}}));
  }
  // Ref last (protocol rule 3): it never names a snapshot that lacks a file.
  return cache_.WriteRef(options_.revision, commit);
}

Status Downloader::FetchAndLink(const std::vector<TreeEntry>& selected) {
  constexpr int kMaxRounds = 3;
  for (int round = 1;; ++round) {
    MX_RETURN_IF_ERROR(FetchAll());
    if (local_dir()) return Status::OK();
    if (use_symlinks()) {
      for (const auto& e : selected)
        MX_RETURN_IF_ERROR(cache_.LinkSnapshot(commit_, e.path, e.etag()));
    }
    // Without working locks (some NFS mounts) a cleaner may have removed a blob this run
    // found in place or published: fetch it again rather than report success.
    std::vector<std::string> missing;
    for (const auto& e : selected) {
      if (!cache_.SnapshotFileOk(commit_, e.path, e.size)) missing.push_back(e.path);
    }
    if (missing.empty()) return Status::OK();
    if (round == kMaxRounds) {
      return Status::Unavailable(std::to_string(missing.size()) + " file(s) of " +
                                 options_.repo_id + " (first: " + missing[0] +
                                 ") kept disappearing from the cache while downloading; is "
                                 "another process removing them?");
    }
    spdlog::warn(
        "{} file(s) of {} were removed from the cache while downloading (first: {}); "
        "fetching them again",
        missing.size(), options_.repo_id, missing[0]);
    for (auto& t : targets_) {
      t->done = false;
      t->attempts = 0;
    }
    {
      std::lock_guard<std::mutex> l(progress_mu_);
      progress_ = DownloadProgress{};
    }
    files_done_ = 0;
  }
}

// Answers from the cache alone. `why` starts every error ("offline mode (HF_HUB_OFFLINE)",
// "the hub is unreachable").
Result<DownloadReport> Downloader::RunOffline(const std::string& why) {
  auto commit = cache_.ResolveLocal(options_.revision);
  if (!commit.ok()) {
    return Status::FailedPrecondition(why + " and " + options_.repo_id + "@" + options_.revision +
                                      " is not in the cache at " + cache_.root() +
                                      "; download it first with network access");
  }
  commit_ = *commit;
  std::string snap = cache_.snapshot_dir(*commit);
  struct stat st;
  if (::stat(snap.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    return Status::FailedPrecondition(why + " and the snapshot " + snap + " is missing");
  }
  DownloadReport report;
  report.commit = *commit;
  report.path = snap;
  report.from_cache = true;
  auto tree = cache_.ReadTree(*commit);
  if (tree.ok()) {
    auto selected = Select(*commit, *tree);
    if (!selected.ok()) return selected.status();
    MX_RETURN_IF_ERROR(CheckNotEmpty(*selected, tree->size()));
    if (!AllFilesPresent(cache_, *commit, *selected)) {
      return Status::FailedPrecondition(why + " and the cached snapshot " + snap +
                                        " lacks some of the requested files");
    }
    PlanTargets(*commit, *selected);
    MX_RETURN_IF_ERROR(CheckNoBadBlobs());
    report.files = selected->size();
    for (const auto& e : *selected) report.bytes += e.size;
  }
  for (const auto& f : options_.files) {
    if (::access(cache_.snapshot_path(*commit, f).c_str(), R_OK) != 0) {
      return Status::FailedPrecondition(why + " and '" + f + "' is not in " + snap);
    }
  }
  report.seconds = SecondsSince(start_);
  return report;
}

// A --local-dir without the hub: complete when mx's record of the last download there
// names this revision (or commit) and every selected file is in place with its etag.
Result<DownloadReport> Downloader::RunLocalOffline(const std::string& why) {
  const std::string shown = LocalDirShown();
  auto text = ReadFile(LocalRecordPath(), 64ull << 20, /*no_follow=*/true);
  if (!text.ok()) {
    return Status::FailedPrecondition(why + " and " + shown +
                                      " holds no record of a complete mx download");
  }
  auto listing = ParseTreeJson(*text, LocalRecordPath());
  if (!listing.ok()) return listing.status();
  std::string commit = TreeJsonField(*text, "commit").value_or("");
  std::string revision = TreeJsonField(*text, "revision").value_or("");
  if (!IsLowerHex(commit, 40)) return Status::DataLoss("corrupt " + LocalRecordPath());
  if (options_.revision != revision && options_.revision != commit) {
    return Status::FailedPrecondition(why + " and " + shown + " holds " + revision + " (" + commit +
                                      "), not " + options_.revision);
  }
  commit_ = commit;
  MX_ASSIGN_OR_RETURN(std::vector<TreeEntry> selected, Select(commit, *listing));
  MX_RETURN_IF_ERROR(CheckNotEmpty(selected, listing->size()));
  PlanTargets(commit, selected);
  for (const auto& t : targets_) {
    if (!AlreadyPresent(*t)) {
      return Status::FailedPrecondition(why + " and " + shown + " lacks " + t->entry.path +
                                        " (or it changed since it was downloaded)");
    }
  }
  DownloadReport report;
  report.commit = commit;
  report.path = shown;
  report.from_cache = true;
  report.files = selected.size();
  for (const auto& e : selected) report.bytes += e.size;
  report.seconds = SecondsSince(start_);
  return report;
}

// The hub could not be reached: huggingface_hub's fallback to what is already here.
Result<DownloadReport> Downloader::AnswerFromCache(const Status& hub_error) {
  const std::string why = "the hub is unreachable";
  auto report = local_dir() ? RunLocalOffline(why) : RunOffline(why);
  if (!report.ok()) {
    // Only a cache that does not hold the revision gives way to the hub's error; a bad
    // blob or an empty selection is the more useful message.
    if (report.status().message().rfind(why, 0) == 0) {
      return Status(hub_error.code(), hub_error.message() + "; and " +
                                          report.status().message().substr(why.size() + 5));
    }
    return report.status();
  }
  spdlog::warn("cannot reach the hub ({}); using {}@{} ({}) from {}", hub_error.message(),
               options_.repo_id, options_.revision, report->commit, report->path);
  return report;
}

Result<DownloadReport> Downloader::Run() {
  MX_RETURN_IF_ERROR(ValidateRepoId(options_.repo_id));
  if (options_.max_workers < 0) return Status::InvalidArgument("--max-workers must be at least 1");
  MX_RETURN_IF_ERROR(ConnectionOptions().status());
  if (client_.config().offline) {
    if (options_.force) {
      return Status::FailedPrecondition("offline mode (HF_HUB_OFFLINE) cannot --force-download");
    }
    const std::string why = "offline mode (HF_HUB_OFFLINE)";
    return local_dir() ? RunLocalOffline(why) : RunOffline(why);
  }
  auto resolved = client_.ResolveRevision(options_.repo_id, options_.revision);
  auto listed = resolved.ok() ? client_.ListFiles(options_.repo_id, *resolved)
                              : Result<std::vector<TreeEntry>>(resolved.status());
  if (!listed.ok()) {
    // Unavailable: no connection, DNS, timeout, or 5xx/429 after the retries.
    bool unreachable = listed.status().code() == StatusCode::kUnavailable;
    if (unreachable && options_.use_cache_when_unreachable && !options_.force) {
      return AnswerFromCache(listed.status());
    }
    return listed.status();
  }
  commit_ = *resolved;
  std::vector<TreeEntry> listing = std::move(*listed);
  MX_ASSIGN_OR_RETURN(std::vector<TreeEntry> selected, Select(commit_, listing));
  MX_RETURN_IF_ERROR(CheckNotEmpty(selected, listing.size()));
  if (local_dir()) {
    MX_RETURN_IF_ERROR(MakeDirs(LocalMetaDir()));
  } else {
    // Held until this object is gone, i.e. past the ref write (protocol rule 2).
    MX_ASSIGN_OR_RETURN(repo_lock_, cache_.LockForUse());
    MX_RETURN_IF_ERROR(cache_.Prepare(commit_));
    MX_RETURN_IF_ERROR(cache_.WriteTree(commit_, listing));
  }
  PlanTargets(commit_, selected);
  MX_RETURN_IF_ERROR(CheckNoBadBlobs());
  MX_RETURN_IF_ERROR(FetchAndLink(selected));
  MX_RETURN_IF_ERROR(Publish(commit_, listing, selected));
  DownloadReport report;
  report.commit = commit_;
  report.path = local_dir() ? LocalDirShown() : cache_.snapshot_dir(commit_);
  report.files = selected.size();
  for (const auto& e : selected) report.bytes += e.size;
  report.bytes_fetched = bytes_fetched_;
  report.seconds = SecondsSince(start_);
  return report;
}

Result<DownloadReport> Download(HubClient& client, const DownloadOptions& options) {
  // Every entry (CLI, gRPC, mirror) comes through here: the revision names a ref file.
  MX_RETURN_IF_ERROR(ValidateRepoId(options.repo_id));
  MX_RETURN_IF_ERROR(ValidateRevision(options.revision));
  Downloader d(client, options);
  return d.Run();
}

}  // namespace mx::hub
