// Download: fills the cache with one revision of a repo (or a subset of its files), as
// `hf download` does, through the one RangeEngine.
//
// Guarantees:
// - A blob that `mx cache verify` marked bad is never reported as in place: the download
//   fails (FailedPrecondition, saying how to repair it) unless `force` fetches it again.
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
  int connections = 0;  // HTTP transfers in flight now
};

struct DownloadOptions {
  std::string repo_id;
  std::string revision = "main";
  // Exact paths; empty = the whole repo. Named files win over include/exclude, which are
  // then ignored (as `hf download` does; the CLI warns about it).
  std::vector<std::string> files;
  std::vector<std::string> include;  // fnmatch globs, '*' crosses '/'
  std::vector<std::string> exclude;
  std::optional<std::string> local_dir;  // plain files there instead of the cache layout
  // HTTP connections: 0 lets the range engine find the number itself (adaptive, up to
  // MX_MAX_CONNECTIONS, default 128); N > 0 uses exactly N (--max-workers N).
  int max_workers = 0;
  // Fetch every selected file again even when it is in place (`--force-download`): each
  // new copy is verified as usual and then replaces the old one by rename. This is how a
  // blob `mx cache verify` marked bad is repaired (see RepoCache::MarkBlobBad).
  bool force = false;
  // When the hub cannot be reached (Unavailable: connection refused, DNS, timeout, 5xx or
  // 429 after retries) and the revision is complete in the cache (refs/<revision>, or a
  // commit's snapshot, with every selected file of its trees/<commit>.json) or in the
  // --local-dir (the record mx writes there), answer from there with one warning, as
  // huggingface_hub does. Otherwise the hub's error is returned. Off for servers.
  bool use_cache_when_unreachable = false;
  // A selection that include/exclude reduce to no file at all is FailedPrecondition
  // instead of an empty success.
  bool fail_on_empty_selection = false;
  // Called about 5 times a second while bytes arrive, and as each file completes: on the
  // download thread or the verify thread, never two at once.
  std::function<void(const DownloadProgress&)> on_progress;
  // When set and it turns true, the download stops within about a second with Cancelled:
  // transfers are aborted, partial temp files and their progress stay for a later run.
  const std::atomic<bool>* cancel = nullptr;
};

struct DownloadReport {
  std::string path;  // snapshots/<commit> (or the local dir, made absolute)
  std::string commit;
  size_t files = 0;            // files in the selection
  uint64_t bytes = 0;          // their total size
  uint64_t bytes_fetched = 0;  // body bytes that crossed the network in this run
  double seconds = 0;
  bool from_cache = false;  // answered from the cache: offline, or the hub unreachable
};

Result<DownloadReport> Download(HubClient& client, const DownloadOptions& options);

// hf-style pattern selection: a file is kept if it matches an include pattern (or there
// are none) and no exclude pattern. A pattern ending in '/' matches everything below it.
bool MatchesPatterns(const std::string& path, const std::vector<std::string>& include,
                     const std::vector<std::string>& exclude);

}  // namespace mx::hub
