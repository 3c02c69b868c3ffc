#include "hub/cache.h"

#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "common/fs.h"
#include "common/hash.h"
#include "common/text.h"

namespace mx::hub {

namespace {
// A ref holds a 40-hex commit; anything much longer is not a ref.
constexpr uint64_t kMaxRefBytes = 256;
}  // namespace

std::string RepoFolderName(RepoType type, const std::string& repo_id) {
  std::string folder = RepoTypePlural(type);
  folder += "--";
  for (char c : repo_id) {
    if (c == '/') {
      folder += "--";
    } else {
      folder.push_back(c);
    }
  }
  return folder;
}

Status ParseRepoFolderName(const std::string& folder, RepoType* type, std::string* repo_id) {
  size_t sep = folder.find("--");
  if (sep == std::string::npos) return Status::InvalidArgument("not a repo folder: " + folder);
  auto t = ParseRepoType(folder.substr(0, sep));
  if (!t.ok()) return Status::InvalidArgument("not a repo folder: " + folder);
  *type = *t;
  std::string rest = folder.substr(sep + 2);
  std::string id;
  for (size_t i = 0; i < rest.size(); ++i) {
    if (rest.compare(i, 2, "--") == 0) {
      id.push_back('/');
      ++i;
    } else {
      id.push_back(rest[i]);
    }
  }
  *repo_id = id;
  return Status::OK();
}

Status ValidateRepoId(const std::string& repo_id) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("invalid repo id '" + Printable(repo_id, 96) + "': " + why +
                                   " (expected 'name' or 'org/name')");
  };
  if (repo_id.empty() || repo_id.size() > 96) return bad("empty or too long");
  int slashes = 0;
  for (char c : repo_id) {
    slashes += (c == '/');
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_' || c == '.' || c == '/';
    if (!ok) return bad("unexpected character");
  }
  if (slashes > 1 || !IsSafeRelativePath(repo_id)) return bad("path tricks");
  if (repo_id.find("--") != std::string::npos) return bad("'--' is reserved");
  return Status::OK();
}

Status ValidateRevision(const std::string& revision) {
  auto bad = [&](const std::string& why) {
    return Status::InvalidArgument("invalid revision '" + Printable(revision, 64) + "': " + why +
                                   " (expected a branch, a tag or a 40-hex commit)");
  };
  if (revision.empty()) return bad("empty");
  if (revision.size() > 255) return bad("longer than 255 bytes");
  if (!IsValidUtf8(revision)) return bad("not UTF-8");
  if (revision == "@") return bad("'@' alone is not a ref name");
  if (revision.find("..") != std::string::npos) return bad("'..' is not allowed");
  if (revision.find("@{") != std::string::npos) return bad("'@{' is not allowed");
  if (revision.front() == '/' || revision.back() == '/' ||
      revision.find("//") != std::string::npos) {
    return bad("leading, trailing or double '/'");
  }
  if (revision.back() == '.') return bad("ends with '.'");
  for (char ch : revision) {
    unsigned char c = static_cast<unsigned char>(ch);
    if (c < 0x20 || c == 0x7f) return bad("control character");
    if (std::string_view(" ~^:?*[\\").find(ch) != std::string_view::npos) {
      return bad(std::string("'") + ch + "' is not allowed");
    }
  }
  size_t start = 0;
  while (start <= revision.size()) {
    size_t slash = revision.find('/', start);
    std::string_view part(revision.data() + start,
                          (slash == std::string::npos ? revision.size() : slash) - start);
    if (part.front() == '.') return bad("a component starts with '.'");
    if (part.size() >= 5 && part.substr(part.size() - 5) == ".lock") {
      return bad("a component ends with '.lock'");
    }
    if (slash == std::string::npos) break;
    start = slash + 1;
  }
  return Status::OK();
}

RepoCache::RepoCache(std::string root, RepoType type, const std::string& repo_id)
    : root_(std::move(root)), folder_(RepoFolderName(type, repo_id)) {
  repo_dir_ = root_ + "/" + folder_;
}

std::string RepoCache::lock_path(const std::string& etag) const {
  return root_ + "/.locks/" + folder_ + "/" + etag + ".lock";
}

std::string RepoCache::repo_lock_path() const {
  return root_ + "/.locks/" + folder_ + "/.repo.lock";
}

Result<FileLock> RepoCache::LockForUse(int timeout_ms) const {
  MX_RETURN_IF_ERROR(MakeDirs(DirName(repo_lock_path())));
  MX_ASSIGN_OR_RETURN(FileLock lock,
                      FileLock::Acquire(repo_lock_path(), LockMode::kShared, timeout_ms));
  if (!lock.held()) {
    return Status::Unavailable(folder_ + " is being cleaned up (mx cache rm/prune or eviction)" +
                               "; try again later");
  }
  return lock;
}

Result<FileLock> RepoCache::LockForCleanup() const {
  MX_RETURN_IF_ERROR(MakeDirs(DirName(repo_lock_path())));
  MX_ASSIGN_OR_RETURN(FileLock lock, FileLock::TryAcquire(repo_lock_path(), LockMode::kExclusive));
  if (!lock.held()) {
    return Status::FailedPrecondition(folder_ +
                                      " is in use (a download or a stream holds it); try again "
                                      "later");
  }
  return lock;
}

std::string RepoCache::snapshot_dir(const std::string& commit) const {
  return repo_dir_ + "/snapshots/" + commit;
}

std::string RepoCache::snapshot_path(const std::string& commit, const std::string& path) const {
  return snapshot_dir(commit) + "/" + path;
}

Result<std::string> RepoCache::ResolveLocal(const std::string& revision) const {
  // Never build a path from an unchecked revision: "../../x" would read outside the cache.
  MX_RETURN_IF_ERROR(ValidateRevision(revision));
  auto ref = ReadFile(repo_dir_ + "/refs/" + revision, kMaxRefBytes, /*no_follow=*/true);
  if (ref.ok()) {
    std::string commit = *ref;
    while (!commit.empty() && (commit.back() == '\n' || commit.back() == ' ')) commit.pop_back();
    if (IsLowerHex(commit, 40)) return commit;
    return Status::DataLoss("corrupt ref " + repo_dir_ + "/refs/" + revision);
  }
  if (IsLowerHex(revision, 40)) return revision;
  return Status::NotFound("revision '" + revision + "' is not in the cache at " + repo_dir_);
}

Status RepoCache::WriteRef(const std::string& revision, const std::string& commit) const {
  if (revision == commit) return Status::OK();
  MX_RETURN_IF_ERROR(ValidateRevision(revision));
  if (!IsLowerHex(commit, 40)) return Status::InvalidArgument("not a commit: " + commit);
  std::string path = repo_dir_ + "/refs/" + revision;
  auto existing = ReadFile(path, kMaxRefBytes, /*no_follow=*/true);
  if (existing.ok() && *existing == commit) return Status::OK();
  MX_RETURN_IF_ERROR(MakeDirs(DirName(path)));
  return WriteFileAtomic(path, commit);
}

Status CheckRepoDirsNotSymlinks(const std::string& repo_dir) {
  for (const char* sub : {"/blobs", "/snapshots"}) {
    std::string dir = repo_dir + sub;
    struct stat st;
    if (::lstat(dir.c_str(), &st) != 0) continue;  // absent: created as a real directory
    if (S_ISLNK(st.st_mode) || !S_ISDIR(st.st_mode)) {
      return Status::FailedPrecondition(
          "refusing to use the cache: " + dir +
          " is a symlink or not a directory (a shared-cache neighbour may have planted it); "
          "remove it");
    }
  }
  return Status::OK();
}

Status RepoCache::Prepare(const std::string& commit) const {
  MX_RETURN_IF_ERROR(CheckRepoDirsNotSymlinks(repo_dir_));
  MX_RETURN_IF_ERROR(MakeDirs(blobs_dir()));
  MX_RETURN_IF_ERROR(MakeDirs(snapshot_dir(commit)));
  MX_RETURN_IF_ERROR(MakeDirs(root_ + "/.locks/" + folder_));
  // Again: a neighbour may have swapped one in between the check and mkdir.
  MX_RETURN_IF_ERROR(CheckRepoDirsNotSymlinks(repo_dir_));
  std::string tag = root_ + "/CACHEDIR.TAG";
  if (::access(tag.c_str(), F_OK) != 0) {
    // Tells backup tools this is a cache (https://bford.info/cachedir/).
    (void)WriteFileAtomic(tag,
                          "Signature: 8a477f597d28d172789f06886806bc55\n"
                          "# This file is a cache directory tag created by mx.\n");
  }
  return Status::OK();
}

Status RepoCache::LinkSnapshot(const std::string& commit, const std::string& path,
                               const std::string& etag) const {
  std::string link = snapshot_path(commit, path);
  MX_RETURN_IF_ERROR(MakeDirs(DirName(link)));
  std::string target;
  for (int i = 0; i < PathDepth(path) + 2; ++i) target += "../";
  target += "blobs/" + etag;
  char existing[512];
  ssize_t n = ::readlink(link.c_str(), existing, sizeof existing - 1);
  if (n > 0 && std::string(existing, static_cast<size_t>(n)) == target) return Status::OK();
  return ReplaceSymlink(target, link);
}

bool RepoCache::SnapshotFileOk(const std::string& commit, const std::string& path,
                               uint64_t size) const {
  struct stat st;
  if (::stat(snapshot_path(commit, path).c_str(), &st) != 0) return false;
  return S_ISREG(st.st_mode) && static_cast<uint64_t>(st.st_size) == size;
}

Status RepoCache::MarkNoExist(const std::string& commit, const std::string& path) const {
  std::string marker = repo_dir_ + "/.no_exist/" + commit + "/" + path;
  MX_RETURN_IF_ERROR(MakeDirs(DirName(marker)));
  return WriteFileAtomic(marker, "");
}

std::string TreeJson(const std::vector<TreeEntry>& files,
                     const std::vector<std::pair<std::string, std::string>>& extra) {
  nlohmann::json doc;
  doc["format_version"] = 1;
  for (const auto& [key, value] : extra) doc[key] = value;
  nlohmann::json& out = doc["files"] = nlohmann::json::object();
  for (const auto& e : files) {
    nlohmann::json f;
    f["size"] = e.size;
    f["blob_id"] = e.git_oid;
    if (e.is_lfs()) {
      f["lfs_sha256"] = *e.lfs_sha256;
      f["lfs_size"] = e.size;
    }
    out[e.path] = std::move(f);
  }
  return doc.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
}

Result<std::vector<TreeEntry>> ParseTreeJson(std::string_view text, const std::string& what) {
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
  if (!doc.is_object() || !doc.contains("files") || !doc["files"].is_object()) {
    return Status::DataLoss("corrupt " + what);
  }
  std::vector<TreeEntry> out;
  for (auto& [path, f] : doc["files"].items()) {
    if (!IsSafeRelativePath(path) || !f.is_object() || !f.contains("size") ||
        !f["size"].is_number_unsigned() || !f.contains("blob_id") || !f["blob_id"].is_string()) {
      return Status::DataLoss("corrupt entry in " + what);
    }
    TreeEntry e;
    e.path = path;
    e.size = f["size"].get<uint64_t>();
    e.git_oid = f["blob_id"].get<std::string>();
    if (f.contains("lfs_sha256") && f["lfs_sha256"].is_string()) {
      e.lfs_sha256 = f["lfs_sha256"].get<std::string>();
    }
    // The etag names a file in blobs/: only a hash may do that.
    if (!IsLowerHex(e.etag(), e.is_lfs() ? 64 : 40)) {
      return Status::DataLoss("corrupt entry in " + what);
    }
    out.push_back(std::move(e));
  }
  return out;
}

std::optional<std::string> TreeJsonField(std::string_view text, const std::string& key) {
  nlohmann::json doc = nlohmann::json::parse(text, nullptr, false);
  if (!doc.is_object()) return std::nullopt;
  auto it = doc.find(key);
  if (it == doc.end() || !it->is_string()) return std::nullopt;
  return it->get<std::string>();
}

Status RepoCache::WriteTree(const std::string& commit, const std::vector<TreeEntry>& files) const {
  std::string path = repo_dir_ + "/trees/" + commit + ".json";
  MX_RETURN_IF_ERROR(MakeDirs(DirName(path)));
  return WriteFileAtomic(path, TreeJson(files));
}

Result<std::vector<TreeEntry>> RepoCache::ReadTree(const std::string& commit) const {
  MX_ASSIGN_OR_RETURN(std::string text, ReadFile(repo_dir_ + "/trees/" + commit + ".json",
                                                 64ull << 20, /*no_follow=*/true));
  return ParseTreeJson(text, "trees/" + commit + ".json");
}

std::string RepoCache::bad_blob_marker(const std::string& etag) const {
  return repo_dir_ + "/.mx-bad-blobs/" + etag;
}

bool RepoCache::BlobMarkedBad(const std::string& etag) const {
  struct stat st;
  return ::lstat(bad_blob_marker(etag).c_str(), &st) == 0;
}

Status RepoCache::MarkBlobBad(const std::string& etag) const {
  if (!IsLowerHex(etag, 40) && !IsLowerHex(etag, 64)) {
    return Status::InvalidArgument("not a blob name: " + etag);
  }
  std::string path = bad_blob_marker(etag);
  MX_RETURN_IF_ERROR(MakeDirs(DirName(path)));
  return WriteFileAtomic(path, "");
}

void RepoCache::ClearBlobBad(const std::string& etag) const {
  ::unlink(bad_blob_marker(etag).c_str());
}

}  // namespace mx::hub
