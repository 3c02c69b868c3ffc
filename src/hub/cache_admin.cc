#include "hub/cache_admin.h"

#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <map>
#include <set>

#include "common/fs.h"
#include "common/hash.h"
#include "common/log.h"
#include "hub/cache.h"

namespace mx::hub {

namespace fs = std::filesystem;

namespace {

// Every helper here reports filesystem errors (EACCES, ELOOP, ENOTDIR, ...) as a Status:
// only the error_code overloads of std::filesystem are used, so nothing throws. A listing
// that fails part-way is an error, never a shorter list: a cleaner that missed a
// snapshot would delete the blobs it references.

Status FsError(const std::string& what, const std::error_code& ec) {
  return Status::IoError(what + ": " + ec.message());
}

bool IsNotFound(const std::error_code& ec) { return ec == std::errc::no_such_file_or_directory; }

// Entry names in `dir`, sorted; empty when `dir` does not exist.
Result<std::vector<std::string>> ListDir(const std::string& dir) {
  std::vector<std::string> out;
  std::error_code ec;
  fs::directory_iterator it(dir, ec);
  if (IsNotFound(ec)) return out;
  for (; !ec && it != fs::directory_iterator(); it.increment(ec)) {
    out.push_back(it->path().filename());
  }
  if (ec) return FsError("list " + dir, ec);
  std::sort(out.begin(), out.end());
  return out;
}

// Walks `dir` recursively (symlinks not followed), calling fn(entry) for each entry.
template <typename Fn>
Status Walk(const std::string& dir, Fn&& fn) {
  std::error_code ec;
  fs::recursive_directory_iterator it(dir, ec);
  if (IsNotFound(ec)) return Status::OK();
  for (; !ec && it != fs::recursive_directory_iterator(); it.increment(ec)) {
    MX_RETURN_IF_ERROR(fn(*it));
  }
  if (ec) return FsError("walk " + dir, ec);
  return Status::OK();
}

// refs/<name> files, including nested ones like refs/refs/pr/1 -> "refs/pr/1".
Result<std::map<std::string, std::string>> ReadRefs(const std::string& repo_dir) {
  std::map<std::string, std::string> refs;
  std::string refs_dir = repo_dir + "/refs";
  MX_RETURN_IF_ERROR(Walk(refs_dir, [&](const fs::directory_entry& e) {
    std::error_code ec;
    if (!e.is_regular_file(ec)) return Status::OK();  // dirs, links, errors: not a ref
    std::string name = e.path().lexically_relative(refs_dir).string();
    if (name.find(".tmp") != std::string::npos) return Status::OK();
    auto content = ReadFile(e.path(), 256);
    if (content.ok() && IsLowerHex(*content, 40)) refs[name] = *content;
    return Status::OK();
  }));
  return refs;
}

// Every non-directory entry under snapshots/<commit>, as (relative path, absolute path).
Result<std::vector<std::pair<std::string, std::string>>> SnapshotFiles(
    const std::string& snap_dir) {
  std::vector<std::pair<std::string, std::string>> out;
  MX_RETURN_IF_ERROR(Walk(snap_dir, [&](const fs::directory_entry& e) {
    std::error_code ec;
    if (e.is_directory(ec) && !e.is_symlink(ec)) return Status::OK();
    out.emplace_back(e.path().lexically_relative(snap_dir).string(), e.path().string());
    return Status::OK();
  }));
  std::sort(out.begin(), out.end());
  return out;
}

// Blob names every snapshot of the repo links to.
Result<std::set<std::string>> ReferencedBlobs(const std::string& repo_dir) {
  std::set<std::string> used;
  MX_ASSIGN_OR_RETURN(std::vector<std::string> commits, ListDir(repo_dir + "/snapshots"));
  for (const auto& commit : commits) {
    MX_ASSIGN_OR_RETURN(auto files, SnapshotFiles(repo_dir + "/snapshots/" + commit));
    for (const auto& [rel, abs] : files) {
      std::error_code ec;
      fs::path target = fs::read_symlink(abs, ec);
      if (!ec) used.insert(target.filename());
    }
  }
  return used;
}

bool EndsWith(const std::string& s, std::string_view suffix) {
  return s.size() > suffix.size() &&
         s.compare(s.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// The names a cleaner may delete are only those mx (or huggingface_hub) makes: temp files
// ("*.incomplete", their ".progress" record, "<name>.mx-<owner>.tmp") ...
bool IsTempName(const std::string& name) {
  return EndsWith(name, ".incomplete") || EndsWith(name, ".incomplete.progress") ||
         (EndsWith(name, ".tmp") && name.find(".mx-") != std::string::npos);
}

// ... and blobs, named by their hash: 40 (git sha1) or 64 (sha256) lowercase hex.
bool IsBlobName(const std::string& name) { return IsLowerHex(name, 40) || IsLowerHex(name, 64); }

// True if a temp file's writer is gone: "<name>.<owner suffix>.incomplete|tmp[.progress]".
bool TempIsStale(const std::string& dir, const std::string& name) {
  size_t mx = name.find(".mx-");
  std::string owner = mx == std::string::npos ? "" : name.substr(mx + 1);
  return TempFileIsOrphaned(dir + "/" + name, owner.substr(0, owner.find('.')));
}

// Protocol rule 4: a live temp file in blobs/ means a download is in progress.
Result<bool> HasLiveTemp(const std::string& repo_dir) {
  std::string blobs = repo_dir + "/blobs";
  MX_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDir(blobs));
  for (const auto& name : names) {
    if (IsTempName(name) && !TempIsStale(blobs, name)) return true;
  }
  return false;
}

// The newest change (lstat mtime) of `path` or anything below it.
Result<std::time_t> NewestChange(const std::string& path) {
  struct stat st;
  if (::lstat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return std::time_t{0};
    return Status::FromErrno(errno, "stat " + path);
  }
  std::time_t newest = st.st_mtime;
  if (!S_ISDIR(st.st_mode)) return newest;
  MX_RETURN_IF_ERROR(Walk(path, [&](const fs::directory_entry& e) {
    struct stat est;
    if (::lstat(e.path().c_str(), &est) == 0) newest = std::max(newest, est.st_mtime);
    return Status::OK();
  }));
  return newest;
}

bool WithinGrace(std::time_t changed, int64_t grace_seconds) {
  return grace_seconds > 0 && std::time(nullptr) - changed < grace_seconds;
}

// Removes blobs no snapshot references (left alone while younger than `grace_seconds`)
// and temp files whose writer is gone.
Status RemoveUnreferencedBlobs(const std::string& repo_dir, int64_t grace_seconds,
                               RemoveReport* report) {
  MX_RETURN_IF_ERROR(CheckRepoDirsNotSymlinks(repo_dir));  // never unlink through a link
  MX_ASSIGN_OR_RETURN(std::set<std::string> used, ReferencedBlobs(repo_dir));
  std::string blobs = repo_dir + "/blobs";
  MX_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDir(blobs));
  for (const auto& name : names) {
    std::string path = blobs + "/" + name;
    bool temp = IsTempName(name);
    if (!temp && !IsBlobName(name)) continue;  // not ours to delete, whatever it is
    if (temp ? !TempIsStale(blobs, name) : used.count(name) > 0) continue;
    struct stat st;
    if (::lstat(path.c_str(), &st) != 0) continue;
    if (!temp && WithinGrace(st.st_mtime, grace_seconds)) continue;
    if (::unlink(path.c_str()) == 0) {
      report->bytes_freed += static_cast<uint64_t>(st.st_size);
      if (!temp) ++report->blobs_removed;
    }
  }
  return Status::OK();
}

Status RemoveRevision(const std::string& repo_dir, const std::string& commit,
                      RemoveReport* report) {
  MX_ASSIGN_OR_RETURN(auto refs, ReadRefs(repo_dir));
  std::error_code ec;
  for (const auto& [name, target] : refs) {
    if (target == commit) fs::remove(repo_dir + "/refs/" + name, ec);
  }
  fs::remove_all(repo_dir + "/.no_exist/" + commit, ec);
  fs::remove(repo_dir + "/trees/" + commit + ".json", ec);
  ec.clear();
  auto removed = fs::remove_all(repo_dir + "/snapshots/" + commit, ec);
  if (ec) return FsError("remove snapshot " + commit, ec);
  if (removed > 0) ++report->revisions_removed;
  return Status::OK();
}

// Per-blob lock files of a removed repo; the repo lock itself stays (protocol rule 2).
void RemoveBlobLocks(const std::string& lock_dir) {
  auto names = ListDir(lock_dir);
  if (!names.ok()) return;
  for (const auto& name : *names) {
    if (name != ".repo.lock") ::unlink((lock_dir + "/" + name).c_str());
  }
}

// One repo folder, read into `repo`.
Status ScanRepo(CachedRepo* repo) {
  struct stat st;
  MX_ASSIGN_OR_RETURN(std::vector<std::string> blobs, ListDir(repo->dir + "/blobs"));
  for (const auto& blob : blobs) {
    if (IsTempName(blob)) continue;
    if (::stat((repo->dir + "/blobs/" + blob).c_str(), &st) == 0) {
      repo->size_on_disk += static_cast<uint64_t>(st.st_size);
      repo->last_modified = std::max(repo->last_modified, st.st_mtime);
    }
  }
  MX_ASSIGN_OR_RETURN(auto refs, ReadRefs(repo->dir));
  MX_ASSIGN_OR_RETURN(std::vector<std::string> commits, ListDir(repo->dir + "/snapshots"));
  for (const auto& commit : commits) {
    CachedRevision rev;
    rev.commit = commit;
    for (const auto& [name, target] : refs) {
      if (target == commit) rev.refs.push_back(name);
    }
    MX_ASSIGN_OR_RETURN(auto files, SnapshotFiles(repo->dir + "/snapshots/" + commit));
    for (const auto& [rel, abs] : files) {
      ++rev.files;
      if (::stat(abs.c_str(), &st) == 0) {
        rev.bytes += static_cast<uint64_t>(st.st_size);
        rev.last_modified = std::max(rev.last_modified, st.st_mtime);
        // Without symlinks the files live in the snapshot itself.
        struct stat lst;
        if (::lstat(abs.c_str(), &lst) == 0 && S_ISREG(lst.st_mode)) {
          repo->size_on_disk += static_cast<uint64_t>(st.st_size);
        }
      }
    }
    repo->revisions.push_back(std::move(rev));
  }
  return Status::OK();
}

// Prune of one repo, under its exclusive lock (the caller holds it).
Status PruneRepo(const CachedRepo& repo, int64_t grace_seconds, RemoveReport* report) {
  // Never delete through a symlinked blobs/ or snapshots/ (it may lead to anyone's home).
  MX_RETURN_IF_ERROR(CheckRepoDirsNotSymlinks(repo.dir));
  MX_ASSIGN_OR_RETURN(bool downloading, HasLiveTemp(repo.dir));
  if (!downloading) {
    for (const auto& rev : repo.revisions) {
      if (!rev.refs.empty()) continue;
      MX_ASSIGN_OR_RETURN(std::time_t changed, NewestChange(repo.dir + "/snapshots/" + rev.commit));
      if (WithinGrace(changed, grace_seconds)) continue;  // maybe a download that just began
      MX_RETURN_IF_ERROR(RemoveRevision(repo.dir, rev.commit, report));
    }
    MX_RETURN_IF_ERROR(RemoveUnreferencedBlobs(repo.dir, grace_seconds, report));
  } else {
    ++report->repos_in_use;
    // Only the temp files of dead writers (those are never a live download's).
    std::string blobs = repo.dir + "/blobs";
    MX_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDir(blobs));
    for (const auto& name : names) {
      if (IsTempName(name) && TempIsStale(blobs, name)) ::unlink((blobs + "/" + name).c_str());
    }
  }
  // Stale temp files of refs and trees too.
  for (const char* sub : {"/refs", "/trees"}) {
    std::string dir = repo.dir + sub;
    MX_ASSIGN_OR_RETURN(std::vector<std::string> names, ListDir(dir));
    for (const auto& name : names) {
      if (IsTempName(name) && TempIsStale(dir, name)) ::unlink((dir + "/" + name).c_str());
    }
  }
  return Status::OK();
}

}  // namespace

Result<std::vector<CachedRepo>> ScanCache(const std::string& root) {
  std::vector<CachedRepo> repos;
  struct stat st;
  if (::stat(root.c_str(), &st) != 0) return repos;  // no cache yet: nothing cached
  MX_ASSIGN_OR_RETURN(std::vector<std::string> folders, ListDir(root));
  for (const auto& folder : folders) {
    CachedRepo repo;
    if (!ParseRepoFolderName(folder, &repo.type, &repo.repo_id).ok()) continue;
    repo.dir = root + "/" + folder;
    // One unreadable repo must not hide the others (ls) or stop eviction of the others.
    if (Status s = ScanRepo(&repo); !s.ok()) {
      spdlog::warn("skipping {} in the cache scan: {}", folder, s.message());
      continue;
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
    MX_RETURN_IF_ERROR(CheckRepoDirsNotSymlinks(cache.repo_dir()));
    MX_ASSIGN_OR_RETURN(std::string commit, cache.ResolveLocal(*revision));
    commits.push_back(commit);
  } else {
    MX_ASSIGN_OR_RETURN(commits, ListDir(cache.repo_dir() + "/snapshots"));
  }
  if (commits.empty()) return Status::NotFound(repo_id + " is not in the cache at " + root);
  VerifyReport report;
  for (const auto& commit : commits) {
    std::map<std::string, TreeEntry> listed;
    if (auto tree = cache.ReadTree(commit); tree.ok()) {
      for (auto& e : *tree) listed[e.path] = e;
    }
    MX_ASSIGN_OR_RETURN(auto files, SnapshotFiles(cache.snapshot_dir(commit)));
    for (const auto& [rel, abs] : files) {
      std::string where = commit.substr(0, 8) + "/" + rel;
      std::error_code ec;
      std::string expected;
      fs::path target = fs::read_symlink(abs, ec);
      bool linked = !ec;
      if (linked) {
        expected = target.filename();
        if (!fs::exists(abs, ec)) {
          report.problems.push_back(where + ": broken symlink (blob missing)");
          if (IsLowerHex(expected, 40) || IsLowerHex(expected, 64))
            report.bad.push_back({commit, rel, expected});
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
      bool named_by_hash = IsLowerHex(expected, 40) || IsLowerHex(expected, 64);
      if (!digest.ok()) {
        report.problems.push_back(where + ": " + digest.status().message());
        if (named_by_hash) report.bad.push_back({commit, rel, expected});
      } else if (*digest != expected) {
        report.problems.push_back(where + ": hash mismatch (expected " + expected + ", got " +
                                  *digest + ")");
        if (named_by_hash) {
          report.bad.push_back({commit, rel, expected});
          // Downloads trust a published blob without re-hashing it: tell them it is bad.
          if (Status st = cache.MarkBlobBad(expected); !st.ok()) {
            spdlog::warn("cannot mark {} bad: {}", where, st.message());
          }
        }
      } else {
        if (named_by_hash) cache.ClearBlobBad(expected);
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
  // Protocol rules 2 and 4: never while a download or a stream uses the repo.
  MX_ASSIGN_OR_RETURN(FileLock lock, cache.LockForCleanup());
  MX_ASSIGN_OR_RETURN(bool downloading, HasLiveTemp(cache.repo_dir()));
  if (downloading) {
    return Status::FailedPrecondition(repo_id + " is being downloaded; try again later");
  }
  if (!revision) {
    CachedRepo scanned;
    scanned.dir = cache.repo_dir();
    if (ScanRepo(&scanned).ok()) {
      report.bytes_freed = scanned.size_on_disk;
      report.revisions_removed = scanned.revisions.size();
    }
    std::error_code ec;
    fs::remove_all(cache.repo_dir(), ec);
    if (ec) return FsError("remove " + cache.repo_dir(), ec);
    RemoveBlobLocks(DirName(cache.repo_lock_path()));
    return report;
  }
  MX_RETURN_IF_ERROR(CheckRepoDirsNotSymlinks(cache.repo_dir()));
  MX_ASSIGN_OR_RETURN(std::string commit, cache.ResolveLocal(*revision));
  if (::stat(cache.snapshot_dir(commit).c_str(), &st) != 0) {
    return Status::NotFound(repo_id + "@" + *revision + " has no snapshot in the cache");
  }
  MX_RETURN_IF_ERROR(RemoveRevision(cache.repo_dir(), commit, &report));
  MX_RETURN_IF_ERROR(RemoveUnreferencedBlobs(cache.repo_dir(), 0, &report));
  return report;
}

Result<RemoveReport> PruneCache(const std::string& root, int64_t grace_seconds) {
  MX_ASSIGN_OR_RETURN(std::vector<CachedRepo> repos, ScanCache(root));
  RemoveReport report;
  Status first_error;
  for (const auto& repo : repos) {
    RepoCache cache(root, repo.type, repo.repo_id);
    auto lock = cache.LockForCleanup();
    if (!lock.ok()) {
      if (lock.status().code() != StatusCode::kFailedPrecondition && first_error.ok()) {
        first_error = lock.status();
      }
      ++report.repos_in_use;  // a download or a stream: left alone (rule 2)
      continue;
    }
    Status st = PruneRepo(repo, grace_seconds, &report);
    if (!st.ok() && first_error.ok()) first_error = st.WithContext(repo.repo_id);
  }
  if (!first_error.ok()) return first_error;
  return report;
}

}  // namespace mx::hub
