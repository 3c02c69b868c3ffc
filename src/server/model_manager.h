// ModelManager: the library behind ModelService and the mirror. Puts models into the
// cache exactly once across all replicas sharing a metadata store (claim + lease +
// takeover), answers what a snapshot holds (path-safe), deletes and evicts.
#pragma once

#include <functional>
#include <map>
#include <mutex>
#include <optional>
#include <string>
#include <vector>

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

// True for the files ignore_weights leaves out (*.safetensors, *.bin, *.pt, ...).
bool IsWeightFile(const std::string& path);

class ModelManager {
 public:
  ModelManager(const ServerConfig& config, registry::MetadataStore* store, Metrics* metrics);

  // Makes sure `key` is downloaded. Calls `send` once at once (already downloaded /
  // download in progress / previous download failed, retrying) and once with the final
  // state. Returns Unimplemented for providers this server cannot fetch from.
  Status Ensure(const registry::ModelKey& key,
                const std::function<void(const StatusUpdate&)>& send);

  // The local snapshot of a model, listing only files that stay inside the cache.
  Result<LocalSnapshot> Snapshot(const std::string& model,
                                 const std::optional<std::string>& revision,
                                 bool ignore_weights) const;

  // Removes the model from the cache and the registry.
  Status Delete(const std::string& model);

  // While pinned (streaming), a model is never evicted.
  void Pin(const std::string& model);
  void Unpin(const std::string& model);
  // Evicts least recently used models beyond the configured limits. Returns how many.
  int EvictIfNeeded();
  // Updates the cache size gauges.
  void RefreshCacheGauges();

  const ServerConfig& config() const { return config_; }

 private:
  Result<std::string> Download(const registry::ModelKey& key, uint64_t* bytes);
  Status RunClaimed(const registry::ModelKey& key, const std::string& claim_id,
                    const std::function<void(const StatusUpdate&)>& send);

  const ServerConfig& config_;
  registry::MetadataStore* store_;
  Metrics* metrics_;
  std::mutex pin_mu_;
  std::map<std::string, int> pins_;
};

}  // namespace mx::server
