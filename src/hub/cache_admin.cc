#include "hub/cache_admin.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "common/fs.h"
#include "common/hash.h"
#include "hub/cache.h"

namespace mx::hub {

namespace fs = std::filesystem;

namespace {

std::vector<std::string> ListDir(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) out.push_back(e.path().filename());
  std::sort(out.begin(), out.end());
  return out;
}

// refs/<name> files, including nested ones like refs/refs/pr/1 -> "refs/pr/1".
std::map<std::string, std::string> ReadRefs(const std::string& repo_dir) {
  std::map<std::string, std::string> refs;
  std::error_code ec;
  std::string refs_dir = repo_dir + "/refs";
  for (auto it = fs::recursive_directory_iterator(refs_dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (!it->is_regular_file()) continue;
    std::string name = it->path().lexically_relative(refs_dir).string();
    if (name.find(".tmp") != std::string::npos) continue;
    auto content = ReadFile(it->path());
    if (content.ok() && IsLowerHex(*content, 40)) refs[name] = *content;
  }
  return refs;
}

// Every file under snapshots/<commit>, as (relative path, absolute path).
std::vector<std::pair<std::string, std::string>> SnapshotFiles(const std::string& snap_dir) {
  std::vector<std::pair<std::string, std::string>> out;
  std::error_code ec;
  for (auto it = fs::recursive_directory_iterator(snap_dir, ec);
       !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    if (it->is_directory() && !it->is_symlink()) continue;
    out.emplace_back(it->path().lexically_relative(snap_dir).string(), it->path().string());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// Blob names every snapshot of the repo links to.
std::set<std::string> ReferencedBlobs(const std::string& repo_dir) {
  std::set<std::string> used;
  for (const auto& commit : ListDir(repo_dir + "/snapshots")) {
    for (const auto& [rel, abs] : SnapshotFiles(repo_dir + "/snapshots/" + commit)) {
      std::error_code ec;
      fs::path target = fs::read_symlink(abs, ec);
      if (!ec) used.insert(target.filename());
    }
  }
  return used;
}

bool IsTempName(const std::string& name) {
  return name.find(".incomplete") != std::string::npos ||
         name.size() > 4 && name.compare(name.size() - 4, 4, ".tmp") == 0;
}

// True if a temp file's writer is gone: "<name>.<owner suffix>.incomplete|tmp".
bool TempIsStale(const std::string& dir, const std::string& name) {
  size_t mx = name.find(".mx-");
  std::string owner = mx == std::string::npos ? "" : name.substr(mx + 1);
  return TempFileIsOrphaned(dir + "/" + name, owner.substr(0, owner.find('.')));
}

Status RemoveUnreferencedBlobs(const std::string& repo_dir, RemoveReport* report) {
  std::set<std::string> used = ReferencedBlobs(repo_dir);
  std::string blobs = repo_dir + "/blobs";
  for (const auto& name : ListDir(blobs)) {
    std::string path = blobs + "/" + name;
    if (IsTempName(name)) {
      if (!TempIsStale(blobs, name)) continue;
    } else if (used.count(name)) {
      continue;
    }
    struct stat st;
    if (::lstat(path.c_str(), &st) == 0 && ::unlink(path.c_str()) == 0) {
      report->bytes_freed += static_cast<uint64_t>(st.st_size);
      if (!IsTempName(name)) ++report->blobs_removed;
    }
  }
  return Status::OK();
}

Status RemoveRevision(const std::string& repo_dir, const std::string& commit,
                      RemoveReport* report) {
  std::error_code ec;
  for (const auto& [name, target] : ReadRefs(repo_dir)) {
    if (target == commit) fs::remove(repo_dir + "/refs/" + name, ec);
  }
  fs::remove_all(repo_dir + "/.no_exist/" + commit, ec);
  fs::remove(repo_dir + "/trees/" + commit + ".json", ec);
  if (fs::remove_all(repo_dir + "/snapshots/" + commit, ec) > 0) ++report->revisions_removed;
  if (ec) return Status::IoError("remove snapshot " + commit + ": " + ec.message());
  return Status::OK();
}

}  // namespace

Result<std::vector<CachedRepo>> ScanCache(const std::string& root) {
  std::vector<CachedRepo> repos;
  struct stat st;
  if (::stat(root.c_str(), &st) != 0) return repos;  // no cache yet: nothing cached
  for (const auto& folder : ListDir(root)) {
    CachedRepo repo;
    if (!ParseRepoFolderName(folder, &repo.type, &repo.repo_id).ok()) continue;
    repo.dir = root + "/" + folder;
    for (const auto& blob : ListDir(repo.dir + "/blobs")) {
      if (IsTempName(blob)) continue;
      if (::stat((repo.dir + "/blobs/" + blob).c_str(), &st) == 0) {
        repo.size_on_disk += static_cast<uint64_t>(st.st_size);
        repo.last_modified = std::max(repo.last_modified, st.st_mtime);
      }
    }
    auto refs = ReadRefs(repo.dir);
    for (const auto& commit : ListDir(repo.dir + "/snapshots")) {
      CachedRevision rev;
      rev.commit = commit;
      for (const auto& [name, target] : refs) {
        if (target == commit) rev.refs.push_back(name);
      }
      for (const auto& [rel, abs] : SnapshotFiles(repo.dir + "/snapshots/" + commit)) {
        ++rev.files;
        if (::stat(abs.c_str(), &st) == 0) {
          rev.bytes += static_cast<uint64_t>(st.st_size);
          rev.last_modified = std::max(rev.last_modified, st.st_mtime);
          // Without symlinks the files live in the snapshot itself.
          struct stat lst;
          if (::lstat(abs.c_str(), &lst) == 0 && S_ISREG(lst.st_mode)) {
            repo.size_on_disk += static_cast<uint64_t>(st.st_size);
          }
        }
      }
      repo.revisions.push_back(std::move(rev));
    }
    repos.push_back(std::move(repo));
  }
  return repos;
}

Result<VerifyReport> VerifyRepo(const std::string& root, RepoType type, const std::string& repo_id,
                                const std::optional<std::string>& revision) {
  MX_RETURN_IF_ERROR(ValidateRepoId(repo_id));
  RepoCache cache(root, type, repo_id);
  std::vector<std::string> commits;
  if (revision) {
    MX_ASSIGN_OR_RETURN(std::string commit, cache.ResolveLocal(*revision));
    commits.push_back(commit);
  } else {
    commits = ListDir(cache.repo_dir() + "/snapshots");
  }
  if (commits.empty()) return Status::NotFound(repo_id + " is not in the cache at " + root);
  VerifyReport report;
  for (const auto& commit : commits) {
    std::map<std::string, TreeEntry> listed;
    if (auto tree = cache.ReadTree(commit); tree.ok()) {
      for (auto& e : *tree) listed[e.path] = e;
    }
    for (const auto& [rel, abs] : SnapshotFiles(cache.snapshot_dir(commit))) {
      std::string where = commit.substr(0, 8) + "/" + rel;
      std::error_code ec;
      std::string expected;
      fs::path target = fs::read_symlink(abs, ec);
      if (!ec) {
        expected = target.filename();
        if (!fs::exists(abs)) {
          report.problems.push_back(where + ": broken symlink (blob missing)");
          continue;
        }
      } else if (auto it = listed.find(rel); it != listed.end()) {
        expected = it->second.etag();
      } else {
        report.problems.push_back(where + ": no symlink and no listing to check it against");
        continue;
      }
      HashKind kind = expected.size() == 64 ? HashKind::kSha256 : HashKind::kGitSha1;
      auto digest = HashFile(abs, kind);
      ++report.files_checked;
      if (!digest.ok()) {
        report.problems.push_back(where + ": " + digest.status().message());
      } else if (*digest != expected) {
        report.problems.push_back(where + ": hash mismatch (expected " + expected + ", got " +
                                  *digest + ")");
      } else {
        struct stat st;
        if (::stat(abs.c_str(), &st) == 0)
          report.bytes_checked += static_cast<uint64_t>(st.st_size);
      }
    }
  }
  return report;
}

Result<RemoveReport> RemoveFromCache(const std::string& root, RepoType type,
                                     const std::string& repo_id,
                                     const std::optional<std::string>& revision) {
  MX_RETURN_IF_ERROR(ValidateRepoId(repo_id));
  RepoCache cache(root, type, repo_id);
  RemoveReport report;
  struct stat st;
  if (::stat(cache.repo_dir().c_str(), &st) != 0) {
    return Status::NotFound(repo_id + " is not in the cache at " + root);
  }
  if (!revision) {
    auto repos = ScanCache(root);
    if (repos.ok()) {
      for (const auto& r : *repos) {
        if (r.dir == cache.repo_dir()) {
          report.bytes_freed = r.size_on_disk;
          report.revisions_removed = r.revisions.size();
        }
      }
    }
    std::error_code ec;
    fs::remove_all(cache.repo_dir(), ec);
    if (ec) return Status::IoError("remove " + cache.repo_dir() + ": " + ec.message());
    fs::remove_all(root + "/.locks/" + RepoFolderName(type, repo_id), ec);
    return report;
  }
  MX_ASSIGN_OR_RETURN(std::string commit, cache.ResolveLocal(*revision));
  if (::stat(cache.snapshot_dir(commit).c_str(), &st) != 0) {
    return Status::NotFound(repo_id + "@" + *revision + " has no snapshot in the cache");
  }
  MX_RETURN_IF_ERROR(RemoveRevision(cache.repo_dir(), commit, &report));
  MX_RETURN_IF_ERROR(RemoveUnreferencedBlobs(cache.repo_dir(), &report));
  return report;
}

Result<RemoveReport> PruneCache(const std::string& root) {
  MX_ASSIGN_OR_RETURN(std::vector<CachedRepo> repos, ScanCache(root));
  RemoveReport report;
  for (const auto& repo : repos) {
    for (const auto& rev : repo.revisions) {
      if (rev.refs.empty()) MX_RETURN_IF_ERROR(RemoveRevision(repo.dir, rev.commit, &report));
    }
    MX_RETURN_IF_ERROR(RemoveUnreferencedBlobs(repo.dir, &report));
    // Stale temp files of refs and trees too.
    for (const char* sub : {"/refs", "/trees"}) {
      std::string dir = repo.dir + sub;
      for (const auto& name : ListDir(dir)) {
        if (IsTempName(name) && TempIsStale(dir, name)) ::unlink((dir + "/" + name).c_str());
      }
    }
  }
  return report;
}

}  // namespace mx::hub
