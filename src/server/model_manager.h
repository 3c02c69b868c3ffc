// ModelManager: the library behind ModelService and the mirror. Puts models into the
// cache exactly once across all replicas sharing a metadata store (claim + lease +
// takeover), answers what a snapshot holds (path-safe), deletes and evicts.
#pragma once

#include <atomic>
#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

#include "common/fs.h"
#include "common/status.h"
#include "registry/registry.h"
#include "server/config.h"
#include "server/metrics.h"

namespace mx::server {

enum Provider { kHuggingFace = 0, kNgc = 1, kGcs = 2, kS3 = 3 };

struct StatusUpdate {
  registry::ModelState state = registry::ModelState::kDownloading;
  std::string message;
  std::string resolved_revision;
};

struct LocalFile {
  std::string relative_path;
  std::string absolute_path;  // inside the cache (symlinks resolved)
  uint64_t size = 0;
};

struct LocalSnapshot {
  std::string commit;
  std::string dir;
  std::vector<LocalFile> files;  // sorted by relative path
};

// Errors that leave the server (gRPC statuses, mirror answers) are bounded to this.
inline constexpr size_t kMaxErrorBytes = 512;
// An error message fit for the network: the cache directory (as given and resolved)
// replaced by "<cache>", any other absolute local path by "<path>", control characters
// replaced, at most kMaxErrorBytes.
std::string SafeMessage(std::string message, const std::string& cache_dir);

// What a remote caller (gRPC, the mirror) is told about an error: SafeMessage, and
// advice meant for the server's operator ("set HF_TOKEN or pass --token", offline mode,
// "download it first") replaced by what is true from the caller's side: an upstream
// 401/403 becomes "the server's HF token cannot read this repo (or none is configured)",
// a repo that upstream reports missing "does not exist upstream, or it is private and the
// server's HF token cannot read it". The server logs the original message.
std::string CallerMessage(StatusCode code, const std::string& message,
                          const std::string& cache_dir);
inline std::string CallerMessage(const Status& status, const std::string& cache_dir) {
  return CallerMessage(status.code(), status.message(), cache_dir);
}

// True for the files ignore_weights leaves out (*.safetensors, *.bin, *.pt, ...).
bool IsWeightFile(const std::string& path);

class ModelManager {
 public:
  ModelManager(const ServerConfig& config, registry::MetadataStore* store, Metrics* metrics);

  // Makes sure `key` is downloaded. Calls `send` once at once (already downloaded /
  // download in progress / previous download failed, retrying) and once with the final
  // state. Returns Unimplemented for providers this server cannot fetch from.
  // While waiting for another caller's (or replica's) download, returns Cancelled as soon
  // as `cancelled` (polled every 50 ms) answers true or CancelDownloads was called; a
  // download this call claimed runs on regardless, for whoever else waits for it.
  Status Ensure(const registry::ModelKey& key, const std::function<void(const StatusUpdate&)>& send,
                const std::function<bool()>& cancelled = nullptr);

  // For shutdown: running downloads stop within about a second (their temp files stay
  // for a later run to resume, their claims are handed back), waiters return Cancelled,
  // and no new download starts.
  void CancelDownloads() { cancel_downloads_ = true; }
  // Set once CancelDownloads was called: for downloads made outside Ensure (the mirror's).
  const std::atomic<bool>* cancel_flag() const { return &cancel_downloads_; }

  // The local snapshot of a model, listing only files that stay inside the cache.
  Result<LocalSnapshot> Snapshot(const std::string& model,
                                 const std::optional<std::string>& revision,
                                 bool ignore_weights) const {
    return Snapshot(kHuggingFace, model, revision, ignore_weights);
  }
  // The same for any provider: S3/GCS models (server/object_models.h) are served from
  // their copy in <cache>/s3 or <cache>/gcs, whose commit is the id of the listing copied.
  Result<LocalSnapshot> Snapshot(int provider, const std::string& model,
                                 const std::optional<std::string>& revision,
                                 bool ignore_weights) const;

  // Removes the model from the cache and the registry. Refused with FailedPrecondition,
  // removing nothing, while the model is pinned here or in use (a stream or a download)
  // by any process sharing the cache (the cleaner rules in hub/cache.h). Not deferred:
  // the caller retries later.
  Status Delete(const std::string& model);
  // The same for any provider. An S3/GCS model's copy is refused only while this replica
  // streams it (no cross-replica lock: a reader elsewhere keeps its open files).
  Status Delete(int provider, const std::string& model);

  // While pinned (streaming), a model is neither evicted nor deleted, by this replica or
  // any other on the same volume: the first pin takes the repo lock shared (hub/cache.h),
  // which every replica's cleaner respects; the last unpin releases it. S3/GCS names
  // ("s3://...", "gs://...") pin their canonical name, in this replica only.
  void Pin(const std::string& model);
  void Unpin(const std::string& model);
  // Evicts least recently used models beyond the configured limits. Returns how many.
  int EvictIfNeeded();
  // Updates the cache size gauges.
  void RefreshCacheGauges();

  const ServerConfig& config() const { return config_; }

 private:
  Result<std::string> Download(const registry::ModelKey& key, uint64_t* bytes);
  Result<std::string> CopyObjects(const registry::ModelKey& key, uint64_t* bytes);
  // The name pins_ knows a model by: canonical for S3/GCS names, else as given.
  static std::string PinName(const std::string& model);
  Status RunClaimed(const registry::ModelKey& key, const std::string& claim_id,
                    const std::function<void(const StatusUpdate&)>& send);

  const ServerConfig& config_;
  registry::MetadataStore* store_;
  Metrics* metrics_;
  std::atomic<bool> cancel_downloads_{false};
  struct PinState {
    int count = 0;
    FileLock repo_lock;  // shared; unheld when the lock could not be taken
  };
  std::mutex pin_mu_;
  std::map<std::string, PinState> pins_;
};

}  // namespace mx::server
