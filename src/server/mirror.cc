#include "server/mirror.h"

#include <fcntl.h>
#include <unistd.h>

#include <charconv>
#include <filesystem>
#include <map>
#include <nlohmann/json.hpp>
#include <set>

#include "common/fs.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/text.h"
#include "http/http.h"
#include "hub/cache.h"
#include "hub/downloader.h"

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

// Client input can hold invalid UTF-8 (say, a file name upstream sent): it is replaced
// rather than thrown about (nlohmann's default throws type_error 316).
std::string Dump(const json& j) { return j.dump(-1, ' ', false, json::error_handler_t::replace); }

HttpResponse HubError(int status, const std::string& code, const std::string& message) {
  HttpResponse r = HttpResponse::Text(status, Dump(json{{"error", message}}), "application/json");
  r.Add("X-Error-Code", code);
  // Header values are bounded and printable: input echoed here cannot split a header.
  r.Add("X-Error-Message", Printable(message, 256));
  return r;
}

// Length of the git-lfs pointer file for a blob of this size (what the hub reports as
// pointerSize): "version ...\noid sha256:<64 hex>\nsize <n>\n".
uint64_t LfsPointerSize(uint64_t size) { return 43 + 76 + 6 + std::to_string(size).size(); }

// Splits "a/b/c" at the first '/' into ("a", "b/c").
std::pair<std::string_view, std::string_view> FirstSegment(std::string_view s) {
  size_t slash = s.find('/');
  if (slash == std::string_view::npos) return {s, ""};
  return {s.substr(0, slash), s.substr(slash + 1)};
}

bool IsTrue(const HttpRequest& req, const std::string& key) {
  auto it = req.query.find(key);
  return it != req.query.end() &&
         (it->second == "true" || it->second == "1" || it->second == "True");
}

}  // namespace

Result<MirrorRoute> ParseMirrorRoute(std::string_view raw) {
  MirrorRoute route;
  std::string_view rest;
  auto split = [&](std::string_view prefix, std::string_view marker, MirrorRoute::Kind kind) {
    if (raw.substr(0, prefix.size()) != prefix) return false;
    size_t at = raw.find(marker, prefix.size());
    if (at == std::string_view::npos) return false;
    route.repo_id = UrlDecode(raw.substr(prefix.size(), at - prefix.size()));
    rest = raw.substr(at + marker.size());
    route.kind = kind;
    return true;
  };
  // The first marker after the repo id decides: "/tree/main/revision/x" is a tree.
  size_t rev_at = raw.find("/revision/", 12), tree_at = raw.find("/tree/", 12);
  bool matched = (tree_at < rev_at && split("/api/models/", "/tree/", MirrorRoute::kTree)) ||
                 split("/api/models/", "/revision/", MirrorRoute::kRevision) ||
                 split("/api/models/", "/tree/", MirrorRoute::kTree) ||
                 split("/", "/resolve/", MirrorRoute::kResolve);
  if (!matched && raw.substr(0, 12) == "/api/models/") {
    route.repo_id = UrlDecode(raw.substr(12));
    route.kind = MirrorRoute::kRevision;
    rest = "main";
    matched = true;
  }
  if (!matched) {
    if (raw.substr(0, 14) == "/api/datasets/" || raw.substr(0, 10) == "/datasets/") {
      return Status::NotFound("RepoNotFound: this mirror serves model repos only");
    }
    return Status::NotFound("EntryNotFound: unknown endpoint");
  }
  MX_RETURN_IF_ERROR(hub::ValidateRepoId(route.repo_id));
  auto [rev_raw, tail] = FirstSegment(rest);
  // The revision is one segment; "refs/pr/1" arrives as refs%2Fpr%2F1, as hf sends it.
  route.revision = rev_raw.empty() ? "main" : UrlDecode(rev_raw);
  MX_RETURN_IF_ERROR(hub::ValidateRevision(route.revision));
  route.path = UrlDecode(tail);
  while (route.kind == MirrorRoute::kTree && !route.path.empty() && route.path.back() == '/') {
    route.path.pop_back();
  }
  if (route.kind == MirrorRoute::kResolve ||
      (route.kind == MirrorRoute::kTree && !route.path.empty())) {
    if (!IsSafeRelativePath(route.path) || !IsValidUtf8(route.path)) {
      return Status::InvalidArgument("invalid path '" + Printable(route.path) +
                                     "': must be relative, without '.' or '..'");
    }
  }
  return route;
}

HttpResponse Mirror::Error(const Status& st) const {
  HttpResponse r = ErrorFor(st);
  r.log_note = st.message();  // the detail (paths, the operator's advice) for the access log
  return r;
}

HttpResponse Mirror::ErrorFor(const Status& st) const {
  // Local paths and the operator's advice are nobody's business on the network.
  std::string m = CallerMessage(st, manager_->config().hub.cache_dir);
  switch (st.code()) {
    case StatusCode::kInvalidArgument:
      return HubError(400, "BadRequest", m);
    case StatusCode::kUnauthenticated:
    case StatusCode::kPermissionDenied:
      return HubError(401, "GatedRepo", m);
    case StatusCode::kUnimplemented:
      return HubError(501, "NotImplemented", m);
    case StatusCode::kResourceExhausted:
      return HubError(503, "Busy", m);
    case StatusCode::kNotFound:
      if (m.find("RevisionNotFound") != std::string::npos)
        return HubError(404, "RevisionNotFound", m);
      if (m.find("EntryNotFound") != std::string::npos) return HubError(404, "EntryNotFound", m);
      return HubError(404, "RepoNotFound", m);
    default:
      return HubError(502, "UpstreamError", m);
  }
}

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
  const ServerConfig& config = manager_->config();
  hub::RepoCache cache(config.hub.cache_dir, hub::RepoType::kModel, repo.id);
  const hub::TreeEntry& entry = repo.entries.at(path);
  if (!cache.SnapshotFileOk(repo.commit, path, entry.size)) {
    if (config.hub.offline) {
      return Status::NotFound("EntryNotFound: " + path +
                              " is not cached and the server is offline");
    }
    // Just this file. Concurrent GETs (and other processes on the volume) wait on the
    // downloader's per-blob lock instead of fetching it twice; a killed fetch resumes.
    hub::HubClient upstream(config.hub, hub::RepoType::kModel);
    hub::DownloadOptions o;
    o.repo_id = repo.id;
    o.revision = repo.commit;
    o.files = {path};
    o.max_workers = config.download_workers;
    o.cancel = manager_->cancel_flag();  // shutdown must not wait for this download
    auto report = hub::Download(upstream, o);
    if (!report.ok()) return report.status();
    metrics_->bytes_from_upstream += report->bytes_fetched;
    LogEvent(spdlog::level::info, "mirror fetch done",
             {{"model", repo.id},
              {"commit", repo.commit},
              {"file", path},
              {"bytes", report->bytes},
              {"fetched_bytes", report->bytes_fetched},
              {"duration_s", report->seconds}});
    if (repo.revision != repo.commit) (void)cache.WriteRef(repo.revision, repo.commit);
  }
  std::error_code root_ec, real_ec;
  auto root = std::filesystem::weakly_canonical(config.hub.cache_dir, root_ec);
  auto real = std::filesystem::weakly_canonical(cache.snapshot_path(repo.commit, path), real_ec);
  if (root_ec || real_ec || root.empty() || root == "/" ||
      real.string().rfind(root.string() + "/", 0) != 0) {
    return Status::NotFound("EntryNotFound: " + path + " resolves outside the cache");
  }
  return LocalFile{path, real.string(), entry.size};
}

HttpResponse Mirror::Handle(const HttpRequest& req) {
  auto caller = access_.Classify(req.Header("authorization"));
  if (caller == AccessPolicy::Caller::kRejected) {
    return HubError(401, "GatedRepo", "this mirror needs its bearer token: set HF_TOKEN to it");
  }
  auto route = ParseMirrorRoute(req.raw_path);
  if (!route.ok()) return Error(route.status());
  if (Status st = access_.CheckRepo(caller, route->repo_id, route->revision); !st.ok()) {
    return Error(st);
  }
  auto repo = Listing(route->repo_id, route->revision);
  if (!repo.ok()) return Error(repo.status());
  switch (route->kind) {
    case MirrorRoute::kRevision:
      return RevisionInfo(*repo, IsTrue(req, "blobs"));
    case MirrorRoute::kTree:
      return Tree(*repo, route->path, req);
    case MirrorRoute::kResolve:
      return Resolve(*repo, route->path, req);
  }
  return HubError(404, "EntryNotFound", "unknown endpoint");
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
  return HttpResponse::Text(200, Dump(body), "application/json");
}

HttpResponse Mirror::Tree(const Repo& repo, const std::string& subpath, const HttpRequest& req) {
  bool recursive = IsTrue(req, "recursive");
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
  if (auto c = req.query.find("cursor"); c != req.query.end()) {
    auto [p, ec] = std::from_chars(c->second.data(), c->second.data() + c->second.size(), start);
    if (ec != std::errc() || p != c->second.data() + c->second.size()) {
      return HubError(400, "BadRequest", "cursor must be a number");
    }
  }
  start = std::min(start, items.size());
  size_t end = std::min(items.size(), start + kTreePageSize);
  json page = json::array();
  for (size_t i = start; i < end; ++i) page.push_back(items[i]);
  HttpResponse r = HttpResponse::Text(200, Dump(page), "application/json");
  if (end < items.size()) {
    // The Host header was checked by the parser (host[:port] only); without one, the
    // configured address. raw_path passed the route parser, which validated every part.
    std::string host = req.Header("host");
    if (host.empty()) host = "localhost:" + std::to_string(manager_->config().mirror_port);
    std::string next = "http://" + host + req.raw_path +
                       "?recursive=" + (recursive ? "true" : "false") +
                       "&cursor=" + std::to_string(end);
    r.Add("Link", "<" + next + ">; rel=\"next\"");
  }
  return r;
}

HttpResponse Mirror::Resolve(const Repo& repo, const std::string& path, const HttpRequest& req) {
  auto entry = repo.entries.find(path);
  if (entry == repo.entries.end()) {
    HttpResponse r =
        HubError(404, "EntryNotFound", Printable(path) + " does not exist at " + repo.commit);
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
    if (!fetched.ok()) return Error(fetched.status());
    f = *fetched;
  }
  uint64_t begin = 0, end = f.size;  // [begin, end)
  ByteRange range = ParseRange(req.Header("range"), f.size);
  if (range.kind == ByteRange::kUnsatisfiable) {
    HttpResponse bad = HttpResponse::Text(416, "");
    bad.Add("Content-Range", "bytes */" + std::to_string(f.size));
    return bad;
  }
  if (range.kind == ByteRange::kPartial) {
    begin = range.first;
    end = range.last + 1;
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
  if (fd < 0) return HubError(500, "InternalError", "cannot open " + Printable(path));
  r.file_fd = fd;
  r.file_offset = begin;
  r.file_length = end - begin;
  metrics_->bytes_mirrored += end - begin;
  return r;
}

}  // namespace mx::server
