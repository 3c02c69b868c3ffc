#include "server/mirror.h"

#include <fcntl.h>
#include <unistd.h>

#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/fs.h"
#include "common/hash.h"
#include "common/log.h"
#include "http/http.h"
#include "hub/cache.h"

namespace mx::server {

using nlohmann::json;

struct Mirror::Repo {
  std::string id;
  std::string revision;  // as asked
  std::string commit;
  std::map<std::string, hub::TreeEntry> entries;  // every file of the commit
};

namespace {

constexpr size_t kTreePageSize = 1000;

HttpResponse HubError(int status, const std::string& code, const std::string& message) {
  HttpResponse r = HttpResponse::Text(status, json{{"error", message}}.dump(), "application/json");
  r.Add("X-Error-Code", code);
  r.Add("X-Error-Message", message);
  return r;
}

// Length of the git-lfs pointer file for a blob of this size (what the hub reports as
// pointerSize): "version ...\noid sha256:<64 hex>\nsize <n>\n".
uint64_t LfsPointerSize(uint64_t size) { return 43 + 76 + 6 + std::to_string(size).size(); }

// Splits "a/b/c" at the first '/' into ("a", "b/c").
std::pair<std::string, std::string> FirstSegment(const std::string& s) {
  size_t slash = s.find('/');
  if (slash == std::string::npos) return {s, ""};
  return {s.substr(0, slash), s.substr(slash + 1)};
}

// The hub's answer for an upstream failure (X-Error-Code as the hub would send it).
HttpResponse ErrorResponse(const Status& st) {
  const std::string& m = st.message();
  switch (st.code()) {
    case StatusCode::kInvalidArgument:
      return HubError(400, "BadRequest", m);
    case StatusCode::kUnauthenticated:
    case StatusCode::kPermissionDenied:
      return HubError(401, "GatedRepo", m);
    case StatusCode::kUnimplemented:
      return HubError(501, "NotImplemented", m);
    case StatusCode::kNotFound:
      if (m.find("RevisionNotFound") != std::string::npos)
        return HubError(404, "RevisionNotFound", m);
      if (m.find("EntryNotFound") != std::string::npos) return HubError(404, "EntryNotFound", m);
      return HubError(404, "RepoNotFound", m);
    default:
      return HubError(502, "UpstreamError", m);
  }
}

}  // namespace

Result<Mirror::Repo> Mirror::Listing(const std::string& repo_id, const std::string& revision) {
  MX_RETURN_IF_ERROR(hub::ValidateRepoId(repo_id));
  const ServerConfig& config = manager_->config();
  hub::RepoCache cache(config.hub.cache_dir, hub::RepoType::kModel, repo_id);
  Repo repo;
  repo.id = repo_id;
  repo.revision = revision;
  auto commit = cache.ResolveLocal(revision);
  auto tree =
      commit.ok() ? cache.ReadTree(*commit) : Result<std::vector<hub::TreeEntry>>(commit.status());
  if (!tree.ok()) {
    if (config.hub.offline) {
      return Status::NotFound("RepoNotFound: " + repo_id + "@" + revision +
                              " is not cached and the server is offline");
    }
    // Metadata only: a client asking for a listing must not wait for the weights.
    hub::HubClient upstream(config.hub, hub::RepoType::kModel);
    commit = upstream.ResolveRevision(repo_id, revision);
    if (!commit.ok()) return commit.status();
    tree = upstream.ListFiles(repo_id, *commit);
    if (!tree.ok()) return tree.status();
    MX_RETURN_IF_ERROR(cache.WriteTree(*commit, *tree));
  }
  repo.commit = *commit;
  for (auto& e : *tree) repo.entries[e.path] = e;
  return repo;
}

Result<LocalFile> Mirror::Fetch(const Repo& repo, const std::string& path) {
  auto find = [&]() -> std::optional<LocalFile> {
    auto snap = manager_->Snapshot(repo.id, repo.commit, false);
    if (!snap.ok()) return std::nullopt;
    for (const auto& f : snap->files) {
      if (f.relative_path == path) return f;
    }
    return std::nullopt;
  };
  if (auto f = find()) return *f;
  registry::ModelKey key{kHuggingFace, repo.id, repo.revision == "main" ? "" : repo.revision,
                         false};
  StatusUpdate final;
  MX_RETURN_IF_ERROR(manager_->Ensure(key, [&](const StatusUpdate& u) { final = u; }));
  if (final.state != registry::ModelState::kDownloaded) return Status::Unavailable(final.message);
  if (auto f = find()) return *f;
  return Status::Internal(path + " is missing from the snapshot after the download");
}

HttpResponse Mirror::Handle(const HttpRequest& req) {
  const ServerConfig& config = manager_->config();
  if (!config.auth_token.empty() && req.Header("authorization") != "Bearer " + config.auth_token) {
    return HubError(401, "GatedRepo", "this mirror needs its bearer token: set HF_TOKEN to it");
  }
  const std::string& raw = req.raw_path;
  std::string repo_part, rest, kind;
  auto split = [&](const std::string& prefix, const std::string& marker) {
    if (raw.rfind(prefix, 0) != 0) return false;
    size_t at = raw.find(marker, prefix.size());
    if (at == std::string::npos) return false;
    repo_part = UrlDecode(raw.substr(prefix.size(), at - prefix.size()));
    rest = raw.substr(at + marker.size());
    kind = marker;
    return true;
  };
  bool matched = split("/api/models/", "/revision/") || split("/api/models/", "/tree/") ||
                 split("/", "/resolve/");
  if (!matched && raw.rfind("/api/models/", 0) == 0) {
    repo_part = UrlDecode(raw.substr(12));
    rest = "main";
    kind = "/revision/";
    matched = true;
  }
  if (!matched) {
    if (raw.rfind("/api/datasets/", 0) == 0 || raw.rfind("/datasets/", 0) == 0) {
      return HubError(404, "RepoNotFound", "this mirror serves model repos only");
    }
    return HubError(404, "EntryNotFound", "unknown endpoint " + req.path);
  }
  auto [rev_raw, tail] = FirstSegment(rest);
  std::string revision = UrlDecode(rev_raw);
  auto repo = Listing(repo_part, revision.empty() ? "main" : revision);
  if (!repo.ok()) return ErrorResponse(repo.status());
  if (kind == "/revision/") {
    auto b = req.query.find("blobs");
    return RevisionInfo(*repo, b != req.query.end() && (b->second == "true" || b->second == "1" ||
                                                        b->second == "True"));
  }
  if (kind == "/tree/") return Tree(*repo, UrlDecode(tail), req);
  return Resolve(*repo, UrlDecode(tail), req);
}

HttpResponse Mirror::RevisionInfo(const Repo& repo, bool blobs) {
  json siblings = json::array();
  for (const auto& [path, e] : repo.entries) {
    json sibling{{"rfilename", path}};
    if (blobs) {  // ?blobs=true: what huggingface_hub's files_metadata asks for
      sibling["size"] = e.size;
      sibling["blobId"] = e.git_oid;
      if (e.is_lfs()) {
        sibling["lfs"] = {
            {"sha256", *e.lfs_sha256}, {"size", e.size}, {"pointerSize", LfsPointerSize(e.size)}};
      }
    }
    siblings.push_back(std::move(sibling));
  }
  json body{{"id", repo.id},    {"modelId", repo.id}, {"sha", repo.commit}, {"siblings", siblings},
            {"private", false}, {"gated", false},     {"disabled", false}};
  return HttpResponse::Text(200, body.dump(), "application/json");
}

HttpResponse Mirror::Tree(const Repo& repo, const std::string& subpath, const HttpRequest& req) {
  bool recursive = req.query.count("recursive") &&
                   (req.query.at("recursive") == "true" || req.query.at("recursive") == "1" ||
                    req.query.at("recursive") == "True");
  std::string prefix = subpath.empty() ? "" : subpath + "/";
  std::vector<json> items;
  std::set<std::string> dirs;
  for (const auto& [path, e] : repo.entries) {
    if (path.rfind(prefix, 0) != 0) continue;
    std::string below = path.substr(prefix.size());
    if (!recursive) {
      size_t slash = below.find('/');
      if (slash != std::string::npos) {  // below a child directory: list the directory only
        dirs.insert(prefix + below.substr(0, slash));
        continue;
      }
    } else {
      for (size_t p = below.find('/'); p != std::string::npos; p = below.find('/', p + 1)) {
        dirs.insert(prefix + below.substr(0, p));
      }
    }
    json item{{"type", "file"}, {"path", path}, {"size", e.size}, {"oid", e.git_oid}};
    if (e.is_lfs()) {
      item["lfs"] = {
          {"oid", *e.lfs_sha256}, {"size", e.size}, {"pointerSize", LfsPointerSize(e.size)}};
    }
    items.push_back(std::move(item));
  }
  for (const auto& d : dirs) {
    items.push_back({{"type", "directory"}, {"path", d}, {"oid", GitSha1Hex(d)}});
  }
  std::sort(items.begin(), items.end(), [](const json& a, const json& b) {
    return a["path"].get<std::string>() < b["path"].get<std::string>();
  });
  size_t start = 0;
  if (req.query.count("cursor")) start = std::strtoull(req.query.at("cursor").c_str(), nullptr, 10);
  size_t end = std::min(items.size(), start + kTreePageSize);
  json page = json::array();
  for (size_t i = start; i < end; ++i) page.push_back(items[i]);
  HttpResponse r = HttpResponse::Text(200, page.dump(), "application/json");
  if (end < items.size()) {
    std::string host = req.Header("host");
    std::string next = "http://" + host + req.raw_path +
                       "?recursive=" + (recursive ? "true" : "false") +
                       "&cursor=" + std::to_string(end);
    r.Add("Link", "<" + next + ">; rel=\"next\"");
  }
  return r;
}

HttpResponse Mirror::Resolve(const Repo& repo, const std::string& path, const HttpRequest& req) {
  auto entry = repo.entries.find(path);
  if (!IsSafeRelativePath(path) || entry == repo.entries.end()) {
    HttpResponse r = HubError(404, "EntryNotFound", path + " does not exist at " + repo.commit);
    r.Add("X-Repo-Commit", repo.commit);
    return r;
  }
  const hub::TreeEntry& e = entry->second;
  HttpResponse r;
  r.Add("X-Repo-Commit", repo.commit);
  r.Add("Accept-Ranges", "bytes");
  r.Add("Content-Type", "application/octet-stream");
  r.Add("ETag", "\"" + e.etag() + "\"");
  if (e.is_lfs()) {
    r.Add("X-Linked-Etag", "\"" + e.etag() + "\"");
    r.Add("X-Linked-Size", std::to_string(e.size));
  }
  LocalFile f{path, "", e.size};
  if (req.method == "GET") {
    auto fetched = Fetch(repo, path);
    if (!fetched.ok()) return ErrorResponse(fetched.status());
    f = *fetched;
  }
  uint64_t begin = 0, end = f.size;  // [begin, end)
  std::string range = req.Header("range");
  if (!range.empty()) {
    bool ok = range.rfind("bytes=", 0) == 0 && range.find(',') == std::string::npos;
    std::string spec = ok ? range.substr(6) : "";
    size_t dash = spec.find('-');
    ok = ok && dash != std::string::npos;
    if (ok) {
      std::string a = spec.substr(0, dash), b = spec.substr(dash + 1);
      if (a.empty()) {  // suffix: last b bytes
        uint64_t n = std::strtoull(b.c_str(), nullptr, 10);
        begin = f.size - std::min<uint64_t>(n, f.size);
      } else {
        begin = std::strtoull(a.c_str(), nullptr, 10);
        if (!b.empty()) end = std::min<uint64_t>(f.size, std::strtoull(b.c_str(), nullptr, 10) + 1);
      }
      ok = begin < end;
    }
    if (!ok) {
      HttpResponse bad = HttpResponse::Text(416, "");
      bad.Add("Content-Range", "bytes */" + std::to_string(f.size));
      return bad;
    }
    r.status = 206;
    r.Add("Content-Range", "bytes " + std::to_string(begin) + "-" + std::to_string(end - 1) + "/" +
                               std::to_string(f.size));
  }
  if (req.method == "HEAD") {
    // Headers only: the length a GET would send, from the listing (nothing is fetched).
    r.head_length = end - begin;
    return r;
  }
  int fd = ::open(f.absolute_path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return HubError(500, "InternalError", "cannot open " + path);
  r.file_fd = fd;
  r.file_offset = begin;
  r.file_length = end - begin;
  metrics_->bytes_mirrored += end - begin;
  return r;
}

}  // namespace mx::server
