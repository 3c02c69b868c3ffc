// RepoCache: the Hugging Face cache layout for one repo, and the only code in mx that
// writes into a cache. Everything it publishes is complete when visible: refs and tree
// listings by temp + rename, snapshot entries as relative symlinks swapped in atomically,
// blobs only after their hash was checked (see downloader).
//
//   <root>/models--org--name/refs/<revision>            40-hex commit, no newline
//   <root>/models--org--name/blobs/<etag>               immutable contents
//   <root>/models--org--name/snapshots/<commit>/<path>  -> ../../blobs/<etag>
//   <root>/models--org--name/.no_exist/<commit>/<path>  known-missing marker
//   <root>/models--org--name/trees/<commit>.json        listing cache
//   <root>/models--org--name/.mx-bad-blobs/<etag>       `mx cache verify` found it corrupt
//   <root>/.locks/models--org--name/<etag>.lock         one writer per blob
//   <root>/.locks/models--org--name/.repo.lock          the repo lock (below)
//
// THE PROTOCOL FOR CHANGING THE CACHE. Every process that adds to, reads from or removes
// from a cache (mx download, mx cache, every mx-server replica on every host sharing the
// volume) follows it; nothing else deletes anything published.
//
// 1. Two roles. Users add or read: downloads (RepoCache writers) and readers that need
//    files to stay put (mx-server streams: ModelManager::Pin .. Unpin). Cleaners remove:
//    `mx cache prune`, `mx cache rm`, mx-server DeleteModel and eviction. Users never
//    delete anything but their own temp files; cleaners never create anything.
// 2. The repo lock, <root>/.locks/<repo folder>/.repo.lock (LockRepoForUse /
//    LockRepoForCleanup). Users hold it SHARED (flock LOCK_SH) for their whole duration: a
//    download from before it resolves the revision until after it wrote the ref, a stream
//    for the whole stream. Cleaners take it EXCLUSIVE without blocking and, when a user
//    holds it, leave the repo alone: prune skips it, rm / DeleteModel / eviction fail with
//    FailedPrecondition ("in use"). DeleteModel of a model this or any other replica is
//    streaming is therefore refused, never deferred; the caller may retry later. A
//    download waits (bounded, kRepoLockWaitMs) for a cleaner that holds it. The flock is
//    visible to every process on the volume, so it is the cross-replica in-use lease. The
//    lock file is never deleted (not even by `rm` of the repo): two processes could
//    otherwise lock two different inodes of one name.
// 3. Publish order. A download renames a verified blob into blobs/, then at once points
//    every snapshot path with that etag at it, and writes refs/<revision> last, after
//    checking that every selected snapshot entry resolves (a blob a cleaner removed is
//    fetched again). So no verified blob stays unreferenced longer than one rename plus
//    one symlink, and a ref never names an incomplete snapshot. A snapshot without a ref
//    is either a detached revision or a download in progress.
// 4. Correct without locks. flock is a no-op on some NFS mounts (MX_TEST_DISABLE_FLOCK=1
//    simulates it), so cleaners are conservative on their own:
//    - a repo with a live temp file (*.incomplete or *.tmp, or their .progress record,
//      whose owner is alive on this host or that changed in the last 10 minutes; see
//      TempFileIsOrphaned) has a download in progress: prune removes no revision and no
//      blob there, rm / DeleteModel / eviction refuse it;
//    - prune never removes a blob, nor a snapshot, that has an entry modified within the
//      grace period (kCacheGraceSeconds, `mx cache prune --grace`), which covers the
//      moments between a download's temp files (symlinking, writing the ref).
//    Without working locks a stream can still lose its files to rm on another host; that
//    is the one guarantee that needs flock.
// 5. Hostile neighbours. A shared cache may hold files of other users who plant symlinks
//    or files of theirs under names mx uses. So: every cache file (lock files, temp files,
//    progress records, refs, trees) is opened O_NOFOLLOW | O_CLOEXEC; a lock file is
//    chmodded (0664) only when this open created it (O_CREAT | O_EXCL), never when it
//    existed; an orphaned temp file is adopted only when it is a regular file owned by
//    the effective user (lstat before the rename, fstat again after the O_NOFOLLOW open),
//    and its progress record likewise; a repo whose blobs/ or snapshots/ is a symlink (or
//    not a directory) is refused by downloads and cleaners alike, with the path in the
//    error (CheckRepoDirsNotSymlinks). Cleaners delete in blobs/ only names that are blob
//    hashes (40 or 64 lowercase hex) or mx temp files (*.incomplete, *.incomplete.progress,
//    *.mx-<owner>*.tmp); anything else there is left alone.
// 6. Space and descriptors. A temp file is sized sparse and its space reserved
//    (fallocate) only once the first bytes arrived, not on the hub's word; on failure a
//    temp file whose progress record shows no bytes done is removed with its record,
//    while one with progress stays for a rerun to resume. At most kMaxFilesInFlight (64)
//    files are staged (lock, temp file, progress record open) at once; the rest wait for
//    a later round, so the descriptor count does not grow with the repo's file count.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/fs.h"
#include "common/status.h"
#include "hub/hub_client.h"

namespace mx::hub {

// How long prune leaves a blob or snapshot alone after its last change (protocol rule 4).
constexpr int64_t kCacheGraceSeconds = 600;
// How long a download waits for a cleaner that holds the repo lock exclusively.
constexpr int kRepoLockWaitMs = 120000;
// "models--org--name" for ("org/name", kModel).
std::string RepoFolderName(RepoType type, const std::string& repo_id);
// Inverse of RepoFolderName; InvalidArgument for names that are not repo folders.
Status ParseRepoFolderName(const std::string& folder, RepoType* type, std::string* repo_id);
// Checks a repo id: "name" or "org/name", no path tricks.
Status ValidateRepoId(const std::string& repo_id);
// Checks a revision before it reaches a path or a URL: a 40-hex commit, or a branch/tag
// name by git's ref-name rules (git check-ref-format --allow-onelevel: no "..", no
// component starting with '.' or ending in ".lock", no control characters, space, ~ ^ : ?
// * [ \, no "@{", not "@", no leading, trailing or double '/', no trailing '.'), valid
// UTF-8, at most 255 bytes. "refs/pr/1" is a valid revision; "../x" and "a/../b" are not.
Status ValidateRevision(const std::string& revision);

// FailedPrecondition, naming the path, when <repo_dir>/blobs or <repo_dir>/snapshots
// exists and is a symlink (or not a directory): on a shared cache a neighbour could point
// it at another user's files, which downloads would then write and cleaners delete.
Status CheckRepoDirsNotSymlinks(const std::string& repo_dir);

// trees/<commit>.json's format (huggingface_hub's, format_version 1) as JSON text, with the
// `extra` string fields added at the top level (a --local-dir record keeps its revision and
// commit there).
std::string TreeJson(const std::vector<TreeEntry>& files,
                     const std::vector<std::pair<std::string, std::string>>& extra = {});
// Parses TreeJson's output; DataLoss (naming `what`) for anything malformed or a hostile
// path or an etag that is not a hash.
Result<std::vector<TreeEntry>> ParseTreeJson(std::string_view text, const std::string& what);
// A top-level string field of a TreeJson text; nullopt when absent or not a string.
std::optional<std::string> TreeJsonField(std::string_view text, const std::string& key);

class RepoCache {
 public:
  RepoCache(std::string root, RepoType type, const std::string& repo_id);

  const std::string& root() const { return root_; }
  const std::string& repo_dir() const { return repo_dir_; }
  std::string blobs_dir() const { return repo_dir_ + "/blobs"; }
  std::string blob_path(const std::string& etag) const { return blobs_dir() + "/" + etag; }
  std::string lock_path(const std::string& etag) const;
  // <root>/.locks/<repo folder>/.repo.lock (protocol rule 2).
  std::string repo_lock_path() const;
  std::string snapshot_dir(const std::string& commit) const;
  std::string snapshot_path(const std::string& commit, const std::string& path) const;

  // The commit a revision points to: refs/<revision>, or the revision itself when it is
  // a 40-hex commit. NotFound when neither.
  Result<std::string> ResolveLocal(const std::string& revision) const;
  // Writes refs/<revision> atomically; skipped when unchanged or when revision == commit.
  Status WriteRef(const std::string& revision, const std::string& commit) const;

  // Creates the dirs a download needs (blobs/, snapshots/<commit>/, .locks/...).
  Status Prepare(const std::string& commit) const;
  // snapshots/<commit>/<path> -> ../../blobs/<etag> (relative; one more ../ per subdir).
  Status LinkSnapshot(const std::string& commit, const std::string& path,
                      const std::string& etag) const;
  // True when snapshots/<commit>/<path> resolves to a blob of the expected size.
  bool SnapshotFileOk(const std::string& commit, const std::string& path, uint64_t size) const;
  // Empty marker: the file does not exist at that commit.
  Status MarkNoExist(const std::string& commit, const std::string& path) const;
  // trees/<commit>.json in huggingface_hub's format (format_version 1).
  Status WriteTree(const std::string& commit, const std::vector<TreeEntry>& files) const;
  // Reads trees/<commit>.json back. NotFound when absent.
  Result<std::vector<TreeEntry>> ReadTree(const std::string& commit) const;

  // Bad-blob markers: `mx cache verify` marks a blob whose contents do not match its name,
  // so a later download (which trusts published blobs without re-hashing them) refuses it
  // and says how to repair it; publishing a fresh copy of the blob clears the mark. A
  // marker is an empty file, <repo>/.mx-bad-blobs/<etag>, outside the folders
  // huggingface_hub reads.
  std::string bad_blob_marker(const std::string& etag) const;
  bool BlobMarkedBad(const std::string& etag) const;
  Status MarkBlobBad(const std::string& etag) const;
  void ClearBlobBad(const std::string& etag) const;

  // The repo lock, shared, for a user (download or reader); waits up to `timeout_ms` for a
  // cleaner. Unavailable when a cleaner held it all that time.
  Result<FileLock> LockForUse(int timeout_ms = kRepoLockWaitMs) const;
  // The repo lock, exclusive, for a cleaner; never waits. FailedPrecondition ("in use")
  // when a user (any process on the volume) holds it.
  Result<FileLock> LockForCleanup() const;

 private:
  std::string root_;
  std::string folder_;
  std::string repo_dir_;
};

}  // namespace mx::hub
