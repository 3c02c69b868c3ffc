#include "hub/hub_client.h"

#include <nlohmann/json.hpp>
#include <set>

#include "common/env.h"
#include "common/fs.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/text.h"
#include "http/http.h"

namespace mx::hub {

using nlohmann::json;

Result<RepoType> ParseRepoType(std::string_view text) {
  if (text == "model" || text == "models") return RepoType::kModel;
  if (text == "dataset" || text == "datasets") return RepoType::kDataset;
  if (text == "space" || text == "spaces") return RepoType::kSpace;
  return Status::InvalidArgument("unknown repo type '" + std::string(text) +
                                 "' (use model, dataset or space)");
}

const char* RepoTypePlural(RepoType type) {
  switch (type) {
    case RepoType::kModel:
      return "models";
    case RepoType::kDataset:
      return "datasets";
    case RepoType::kSpace:
      return "spaces";
  }
  return "models";
}

HubConfig HubConfig::FromEnvironment() {
  HubConfig c;
  if (auto e = GetEnv("HF_ENDPOINT"); e && !e->empty()) c.endpoint = *e;
  while (!c.endpoint.empty() && c.endpoint.back() == '/') c.endpoint.pop_back();
  if (auto h = GetEnv("HF_HOME"); h && !h->empty()) {
    c.hf_home = *h;
  } else if (auto x = GetEnv("XDG_CACHE_HOME"); x && !x->empty()) {
    c.hf_home = *x + "/huggingface";
  } else {
    c.hf_home = GetEnv("HOME").value_or("/root") + "/.cache/huggingface";
  }
  if (auto d = GetEnv("HF_HUB_CACHE"); d && !d->empty()) {
    c.cache_dir = *d;
  } else if (auto l = GetEnv("HUGGINGFACE_HUB_CACHE"); l && !l->empty()) {
    c.cache_dir = *l;
  } else {
    c.cache_dir = c.hf_home + "/hub";
  }
  if (auto t = GetEnv("HF_TOKEN"); t && !t->empty()) {
    c.token = std::string(TrimWhitespace(*t));
  } else if (auto lt = GetEnv("HUGGING_FACE_HUB_TOKEN"); lt && !lt->empty()) {
    c.token = std::string(TrimWhitespace(*lt));
  } else if (auto f = ReadFile(c.hf_home + "/token"); f.ok() && !TrimWhitespace(*f).empty()) {
    c.token = std::string(TrimWhitespace(*f));
  }
  c.offline = EnvIsTruthy("HF_HUB_OFFLINE");
  c.disable_symlinks = EnvIsTruthy("HF_HUB_DISABLE_SYMLINKS");
  return c;
}

HubClient::HubClient(HubConfig config, RepoType type) : config_(std::move(config)), type_(type) {
  while (!config_.endpoint.empty() && config_.endpoint.back() == '/') config_.endpoint.pop_back();
}

std::vector<std::string> HubClient::AuthHeaders() const {
  if (!config_.token) return {};
  return {"Authorization: Bearer " + *config_.token};
}

std::string HubClient::ApiBase(const std::string& repo_id) const {
  return config_.endpoint + "/api/" + RepoTypePlural(type_) + "/" + repo_id;
}

std::string HubClient::FileUrl(const std::string& repo_id, const std::string& revision,
                               const std::string& path) const {
  std::string prefix = type_ == RepoType::kModel ? "" : std::string(RepoTypePlural(type_)) + "/";
  return config_.endpoint + "/" + prefix + repo_id + "/resolve/" + http::UrlQuote(revision) + "/" +
         http::UrlQuote(path, "/");
}

// The server's own words, safe for a terminal: cut at a UTF-8 boundary near the bound,
// control characters and invalid bytes escaped.
static std::string ShownServerMessage(const std::string& text) {
  std::string_view view = text;
  bool cut = view.size() > kMaxServerMessageBytes;
  if (cut) {
    size_t end = kMaxServerMessageBytes;
    while (end > 0 && (static_cast<unsigned char>(view[end]) & 0xC0) == 0x80) --end;
    view = view.substr(0, end);
  }
  std::string out = EscapeControl(view);
  while (!out.empty() && out.back() == ' ') out.pop_back();
  return cut ? out + "..." : out;
}

Status HubErrorStatus(long http_status, const std::string& error_code, const std::string& what,
                      bool have_token, const std::string& server_message) {
  std::string msg = what + ": HTTP " + std::to_string(http_status);
  // X-Error-Code is the server's text: bounded and without control characters, so it
  // cannot drive a terminal or a log viewer.
  if (!error_code.empty()) msg += " (" + Printable(error_code, 64) + ")";
  std::string said = ShownServerMessage(server_message);
  bool server_said = !said.empty();
  if (server_said) msg += ": " + said;
  if (error_code == "GatedRepo" || http_status == 401 || http_status == 403) {
    // With the server's explanation in hand, only a fact is added: whether a token was sent.
    std::string hint = server_said ? (have_token ? "" : "; no token was sent (set HF_TOKEN)")
                       : have_token
                           ? "; the token was refused: check it has access to this repo"
                           : "; this repo needs authentication: set HF_TOKEN or pass --token";
    return Status(http_status == 403 && have_token ? StatusCode::kPermissionDenied
                                                   : StatusCode::kUnauthenticated,
                  msg + hint);
  }
  if (error_code == "RepoNotFound") {
    return Status::NotFound(msg + (server_said ? "; it does not exist there, or is not visible: "
                                                 "check the repo id and --repo-type"
                                               : "; the repository does not exist (or is "
                                                 "private: set HF_TOKEN)"));
  }
  if (error_code == "RevisionNotFound") return Status::NotFound(msg + "; no such revision");
  if (error_code == "EntryNotFound")
    return Status::NotFound(msg + "; no such file at this revision");
  if (http_status == 404) return Status::NotFound(msg);
  if (http_status == 429 || http_status >= 500) {
    return Status::Unavailable(
        msg + (server_said ? "" : "; the hub is overloaded or down, try again later"));
  }
  return Status::Internal(msg);
}

static Status CheckResponse(const http::Response& r, const std::string& what, bool have_token) {
  if (r.status >= 200 && r.status < 300) return Status::OK();
  return HubErrorStatus(r.status, r.Header("x-error-code").value_or(""), what, have_token,
                        r.Header("x-error-message").value_or(""));
}

Result<std::string> HubClient::ResolveRevision(const std::string& repo_id,
                                               const std::string& revision, bool* restricted) {
  std::string what = std::string(RepoTypePlural(type_)) + "/" + repo_id + "@" + revision;
  http::Request req;
  req.url = ApiBase(repo_id) + "/revision/" + http::UrlQuote(revision);
  req.headers = AuthHeaders();
  MX_ASSIGN_OR_RETURN(http::Response r, http::FetchMetadata(req));
  MX_RETURN_IF_ERROR(CheckResponse(r, what, config_.token.has_value()));
  MX_ASSIGN_OR_RETURN(RevisionAnswer answer, ParseRevisionAnswer(r.body, what));
  if (restricted) *restricted = answer.restricted;
  return answer.commit;
}

Result<RevisionAnswer> ParseRevisionAnswer(std::string_view body, const std::string& what) {
  json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_object() || !doc.contains("sha") || !doc["sha"].is_string()) {
    return Status::DataLoss(what + ": revision API answered without a commit sha");
  }
  RevisionAnswer answer;
  answer.commit = doc["sha"].get<std::string>();
  if (!IsLowerHex(answer.commit, 40)) {
    return Status::DataLoss(what + ": malformed commit sha '" +
                            EscapeControl(answer.commit.substr(0, 64)) + "'");
  }
  // "gated" is false, "auto" or "manual"; anything but an explicit false/absent counts.
  auto flag = [&](const char* key) {
    auto it = doc.find(key);
    if (it == doc.end() || it->is_null()) return false;
    if (it->is_boolean()) return it->get<bool>();
    return !(it->is_string() && it->get<std::string>().empty());
  };
  answer.restricted = flag("private") || flag("gated");
  return answer;
}

static std::optional<std::string> NextLink(const std::string& link_header) {
  // Link: <https://...>; rel="next", <...>; rel="prev"
  size_t pos = 0;
  while (pos < link_header.size()) {
    size_t lt = link_header.find('<', pos);
    if (lt == std::string::npos) break;
    size_t gt = link_header.find('>', lt);
    if (gt == std::string::npos) break;
    size_t end = link_header.find(',', gt);
    std::string params =
        link_header.substr(gt + 1, end == std::string::npos ? std::string::npos : end - gt - 1);
    if (params.find("rel=\"next\"") != std::string::npos ||
        params.find("rel=next") != std::string::npos) {
      return link_header.substr(lt + 1, gt - lt - 1);
    }
    if (end == std::string::npos) break;
    pos = end + 1;
  }
  return std::nullopt;
}

// Sizes beyond 2^50 bytes (1 PiB) are not real model files; refuse them before they reach
// fallocate or arithmetic.
static constexpr uint64_t kMaxFileSize = 1ull << 50;

static Result<uint64_t> SizeField(const json& obj, const char* key, const std::string& path) {
  if (!obj.contains(key) || !obj[key].is_number_unsigned()) {
    return Status::DataLoss("tree entry '" + path + "': missing or invalid '" + key + "'");
  }
  uint64_t v = obj[key].get<uint64_t>();
  if (v > kMaxFileSize) return Status::DataLoss("tree entry '" + path + "': absurd size");
  return v;
}

Status ParseTreePage(std::string_view body, std::vector<TreeEntry>* out) {
  json doc = json::parse(body, nullptr, /*allow_exceptions=*/false);
  if (!doc.is_array()) return Status::DataLoss("tree listing is not a JSON array");
  for (const json& item : doc) {
    if (!item.is_object() || !item.contains("type") || !item["type"].is_string() ||
        !item.contains("path") || !item["path"].is_string()) {
      return Status::DataLoss("tree listing has an entry without type/path");
    }
    std::string type = item["type"].get<std::string>();
    std::string path = item["path"].get<std::string>();
    if (!IsSafeRelativePath(path)) {
      return Status::DataLoss("refusing hostile path in tree listing: '" + RedactUrl(path) +
                              "' (absolute, '..', backslash or control character)");
    }
    if (type == "directory") continue;
    if (type != "file") return Status::DataLoss("tree entry '" + path + "': unknown type " + type);
    TreeEntry e;
    e.path = path;
    MX_ASSIGN_OR_RETURN(e.size, SizeField(item, "size", path));
    if (!item.contains("oid") || !item["oid"].is_string() ||
        !IsLowerHex(item["oid"].get<std::string>(), 40)) {
      return Status::DataLoss("tree entry '" + path + "': oid is not a 40-hex git sha1");
    }
    e.git_oid = item["oid"].get<std::string>();
    if (item.contains("lfs") && !item["lfs"].is_null()) {
      const json& lfs = item["lfs"];
      if (!lfs.is_object() || !lfs.contains("oid") || !lfs["oid"].is_string()) {
        return Status::DataLoss("tree entry '" + path + "': malformed lfs object");
      }
      std::string oid = lfs["oid"].get<std::string>();
      if (oid.rfind("sha256:", 0) == 0) oid = oid.substr(7);
      if (!IsLowerHex(oid, 64)) {
        return Status::DataLoss("tree entry '" + path + "': lfs oid is not a 64-hex sha256");
      }
      MX_ASSIGN_OR_RETURN(uint64_t lfs_size, SizeField(lfs, "size", path));
      if (lfs_size != e.size) {
        return Status::DataLoss("tree entry '" + path + "': size " + std::to_string(e.size) +
                                " disagrees with lfs size " + std::to_string(lfs_size));
      }
      e.lfs_sha256 = oid;
      if (lfs.contains("pointerSize") && lfs["pointerSize"].is_number_unsigned()) {
        e.lfs_pointer_size = lfs["pointerSize"].get<uint64_t>();
      }
    }
    out->push_back(std::move(e));
  }
  return Status::OK();
}

// Bounds on one tree listing: far above any real repo (the largest have ~100 k files, at
// ~1 000 entries a page), low enough that a hostile hub cannot page mx forever.
static constexpr size_t kMaxTreePages = 10000;
static constexpr size_t kMaxTreeEntries = 10000000;

Result<std::vector<TreeEntry>> HubClient::ListFiles(const std::string& repo_id,
                                                    const std::string& commit) {
  std::string what = std::string(RepoTypePlural(type_)) + "/" + repo_id + "@" + commit;
  std::vector<TreeEntry> entries;
  std::string url =
      ApiBase(repo_id) + "/tree/" + http::UrlQuote(commit) + "?recursive=true&expand=false";
  std::set<std::string> seen_urls;
  while (!url.empty()) {
    if (!seen_urls.insert(url).second) return Status::DataLoss(what + ": tree pagination loops");
    // A hub that pages forever (a fresh cursor each time) must not keep mx busy for hours.
    if (seen_urls.size() > kMaxTreePages) {
      return Status::DataLoss(what + ": the tree has more than " + std::to_string(kMaxTreePages) +
                              " pages; refusing to follow more");
    }
    http::Request req;
    req.url = url;
    req.headers = AuthHeaders();
    MX_ASSIGN_OR_RETURN(http::Response r, http::FetchMetadata(req));
    MX_RETURN_IF_ERROR(CheckResponse(r, what + " (tree)", config_.token.has_value()));
    MX_RETURN_IF_ERROR(ParseTreePage(r.body, &entries).WithContext(what));
    if (entries.size() > kMaxTreeEntries) {
      return Status::DataLoss(what + ": the tree lists more than " +
                              std::to_string(kMaxTreeEntries) + " entries; refusing it");
    }
    auto next = NextLink(r.Header("link").value_or(""));
    url = next ? http::ResolveUrl(url, *next) : "";
    // Each page carries the token: follow a Link only to the hub's own origin, never to
    // whatever host a response names.
    if (!url.empty() && !http::IsSameHttpOrigin(url, config_.endpoint)) {
      return Status::DataLoss(what + ": the tree's next page (" + RedactUrl(url).substr(0, 200) +
                              ") is not on the hub endpoint's origin (" +
                              http::OriginOf(config_.endpoint) + "); refusing to follow it");
    }
  }
  std::set<std::string> paths;
  for (const auto& e : entries) {
    if (!paths.insert(e.path).second) {
      return Status::DataLoss(what + ": tree lists '" + e.path + "' twice");
    }
  }
  return entries;
}

}  // namespace mx::hub
