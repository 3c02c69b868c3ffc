// Download: fills the cache with one revision of a repo (or a subset of its files), as
// `hf download` does, through the one RangeEngine.
//
// Guarantees:
// - A blob becomes visible (renamed into blobs/) only after its size and hash (sha256 for
//   LFS files, git sha1 otherwise) match the listing; a mismatch is re-fetched, then fails.
// - Every temp file is unique to its process; a process killed at any moment leaves the
//   cache valid, and the next run adopts the orphaned temp file and fetches only the bytes
//   it lacks (per-chunk progress is recorded beside it).
// - Several processes on one cache (one host, or hosts sharing NFS) fetch each blob once
//   when flock works: a blob locked by another process is waited for, not fetched again.
//   When flock is a no-op they fetch twice and stay correct (rename of identical content).
// - It follows the cache protocol in hub/cache.h: the repo lock is held shared for the
//   whole run, each blob is symlinked from the snapshot as soon as it is in place, and the
//   ref is written last, after every selected file was checked to resolve.
// - Every exit, errors included, closes its descriptors and releases its locks; a partial
//   temp file left by a failed run is resumed by the next run, even one in this process.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "hub/hub_client.h"

namespace mx::hub {

struct DownloadProgress {
  uint64_t bytes_total = 0;  // bytes of the selected files still to fetch at start
  uint64_t bytes_done = 0;   // bytes received so far
  size_t files_total = 0;
  size_t files_done = 0;
  double seconds = 0;
};

struct DownloadOptions {
  std::string repo_id;
  std::string revision = "main";
  std::vector<std::string> files;    // exact paths; empty = the whole repo
  std::vector<std::string> include;  // fnmatch globs, '*' crosses '/'
  std::vector<std::string> exclude;
  std::optional<std::string> local_dir;  // plain files there instead of the cache layout
  int max_workers = 16;                  // HTTP connections
  // Called on the download thread about 5 times a second.
  std::function<void(const DownloadProgress&)> on_progress;
  // When set and it turns true, the download stops within about a second with Cancelled:
  // transfers are aborted, partial temp files and their progress stay for a later run.
  const std::atomic<bool>* cancel = nullptr;
};

struct DownloadReport {
  std::string path;  // snapshots/<commit> (or the local dir)
  std::string commit;
  size_t files = 0;            // files in the selection
  uint64_t bytes = 0;          // their total size
  uint64_t bytes_fetched = 0;  // body bytes that crossed the network in this run
  double seconds = 0;
};

Result<DownloadReport> Download(HubClient& client, const DownloadOptions& options);

// hf-style pattern selection: a file is kept if it matches an include pattern (or there
// are none) and no exclude pattern. A pattern ending in '/' matches everything below it.
bool MatchesPatterns(const std::string& path, const std::vector<std::string>& include,
                     const std::vector<std::string>& exclude);

}  // namespace mx::hub
