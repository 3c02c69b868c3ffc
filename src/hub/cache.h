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
//   <root>/.locks/models--org--name/<etag>.lock
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "hub/hub_client.h"

namespace mx::hub {

// "models--org--name" for ("org/name", kModel).
std::string RepoFolderName(RepoType type, const std::string& repo_id);
// Inverse of RepoFolderName; InvalidArgument for names that are not repo folders.
Status ParseRepoFolderName(const std::string& folder, RepoType* type, std::string* repo_id);
// Checks a repo id: "name" or "org/name", no path tricks.
Status ValidateRepoId(const std::string& repo_id);

class RepoCache {
 public:
  RepoCache(std::string root, RepoType type, const std::string& repo_id);

  const std::string& root() const { return root_; }
  const std::string& repo_dir() const { return repo_dir_; }
  std::string blobs_dir() const { return repo_dir_ + "/blobs"; }
  std::string blob_path(const std::string& etag) const { return blobs_dir() + "/" + etag; }
  std::string lock_path(const std::string& etag) const;
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

 private:
  std::string root_;
  std::string folder_;
  std::string repo_dir_;
};

}  // namespace mx::hub
