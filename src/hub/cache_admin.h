// Cache management behind `mx cache ...`: list, locate, verify, remove, prune. Works on
// any huggingface_hub-layout cache, not only ones mx wrote.
#pragma once

#include <cstdint>
#include <ctime>
#include <optional>
#include <string>
#include <vector>

#include "common/status.h"
#include "hub/cache.h"
#include "hub/hub_client.h"

namespace mx::hub {

struct CachedRevision {
  std::string commit;
  std::vector<std::string> refs;  // revisions (branches, tags, PR refs) pointing here
  size_t files = 0;
  uint64_t bytes = 0;  // sum of file sizes in the snapshot
  std::time_t last_modified = 0;
};

struct CachedRepo {
  RepoType type = RepoType::kModel;
  std::string repo_id;
  std::string dir;
  uint64_t size_on_disk = 0;  // blobs (each counted once)
  std::time_t last_modified = 0;
  std::vector<CachedRevision> revisions;
};

// Every repo folder under `root`, sorted by type then id.
Result<std::vector<CachedRepo>> ScanCache(const std::string& root);

struct VerifyReport {
  size_t files_checked = 0;
  uint64_t bytes_checked = 0;
  std::vector<std::string> problems;  // one line per bad file; empty = all good
  // The bad files whose blob name is known (a mismatch, an unreadable or missing blob):
  // what `mx cache verify --repair` fetches again.
  struct BadFile {
    std::string commit;
    std::string path;  // in the snapshot
    std::string etag;  // the blob it should be
  };
  std::vector<BadFile> bad;
};
// Re-hashes every file of every snapshot (or only `revision`'s): sha256 for LFS blobs,
// git sha1 for the rest, as named by the blob (or by trees/<commit>.json without symlinks).
// A blob whose contents do not match gets a bad-blob marker (RepoCache::MarkBlobBad), so
// downloads stop trusting it; a blob that matches loses any marker it had.
Result<VerifyReport> VerifyRepo(const std::string& root, RepoType type, const std::string& repo_id,
                                const std::optional<std::string>& revision);

struct RemoveReport {
  size_t revisions_removed = 0;
  size_t blobs_removed = 0;
  uint64_t bytes_freed = 0;
  size_t repos_in_use = 0;  // prune: repos left (partly) alone because they were in use
};
// Removes the whole repo, or one revision (its snapshot and the refs to it) and then the
// blobs nothing references any more. A cleaner under the protocol in hub/cache.h:
// FailedPrecondition, and nothing removed, while a download or a stream (any process on
// the volume) uses the repo.
Result<RemoveReport> RemoveFromCache(const std::string& root, RepoType type,
                                     const std::string& repo_id,
                                     const std::optional<std::string>& revision);
// Removes revisions no ref points to, blobs nothing references, and temp files whose
// owner is gone, in every repo; a cleaner under the protocol in hub/cache.h: repos in use
// are skipped (counted in repos_in_use), and no revision or blob changed in the last
// `grace_seconds` is removed. Filesystem errors (EACCES, ...) come back as a Status after
// the other repos were pruned; a repo that cannot be read completely loses nothing.
Result<RemoveReport> PruneCache(const std::string& root,
                                int64_t grace_seconds = kCacheGraceSeconds);

}  // namespace mx::hub
