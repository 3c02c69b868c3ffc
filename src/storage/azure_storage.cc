// Azure Blob Storage: List Blobs for prefixes, ranged GETs signed with SharedKey (the
// signature covers the Range header, so each request is signed for its own range) or
// authorized by a SAS token.
#include <algorithm>
#include <ctime>

#include "common/env.h"
#include "common/hash.h"
#include "http/http.h"
#include "storage/backends.h"
#include "storage/signing.h"

namespace mx::storage {
namespace {

constexpr const char* kApiVersion = "2021-08-06";

struct AzureConfig {
  std::string account;
  std::string key;       // decoded account key
  std::string sas;       // without the leading '?'
  std::string endpoint;  // https://<account>.blob.core.windows.net or an emulator URL
};

Result<AzureConfig> ConfigFromEnvironment() {
  AzureConfig c;
  std::string encoded_key;
  if (auto cs = GetEnv("AZURE_STORAGE_CONNECTION_STRING"); cs && !cs->empty()) {
    size_t pos = 0;
    while (pos < cs->size()) {
      size_t semi = cs->find(';', pos);
      std::string part =
          cs->substr(pos, semi == std::string::npos ? std::string::npos : semi - pos);
      size_t eq = part.find('=');
      if (eq != std::string::npos) {
        std::string k = part.substr(0, eq), v = part.substr(eq + 1);
        if (k == "AccountName") c.account = v;
        if (k == "AccountKey") encoded_key = v;
        if (k == "BlobEndpoint") c.endpoint = v;
        if (k == "SharedAccessSignature") c.sas = v;
      }
      if (semi == std::string::npos) break;
      pos = semi + 1;
    }
  }
  if (auto v = GetEnv("AZURE_STORAGE_ACCOUNT"); v && !v->empty()) c.account = *v;
  if (auto v = GetEnv("AZURE_STORAGE_KEY"); v && !v->empty()) encoded_key = *v;
  if (auto v = GetEnv("AZURE_STORAGE_SAS_TOKEN"); v && !v->empty()) c.sas = *v;
  if (auto v = GetEnv("AZURE_STORAGE_BLOB_ENDPOINT"); v && !v->empty()) c.endpoint = *v;
  if (!c.sas.empty() && c.sas.front() == '?') c.sas.erase(0, 1);
  if (c.account.empty()) {
    return Status::InvalidArgument(
        "az:// needs AZURE_STORAGE_ACCOUNT (or AZURE_STORAGE_CONNECTION_STRING)");
  }
  if (!encoded_key.empty()) {
    auto key = Base64Decode(encoded_key);
    if (!key.ok()) return Status::InvalidArgument("AZURE_STORAGE_KEY is not base64");
    c.key = *key;
  }
  if (c.endpoint.empty()) c.endpoint = "https://" + c.account + ".blob.core.windows.net";
  while (!c.endpoint.empty() && c.endpoint.back() == '/') c.endpoint.pop_back();
  return c;
}

std::string PathOf(const std::string& url) {
  size_t p = url.find("://");
  size_t slash = url.find('/', p == std::string::npos ? 0 : p + 3);
  return slash == std::string::npos ? "" : url.substr(slash);
}

class AzureStorage : public Storage {
 public:
  AzureStorage(AzureConfig c, const StorageOptions& o)
      : c_(std::move(c)), engine_(StartEngine(o.connections)) {}

  Result<std::vector<ObjectInfo>> List(const std::string& uri) override {
    std::string container, path;
    MX_RETURN_IF_ERROR(SplitBucketKey(uri, 5, &container, &path));
    MX_ASSIGN_OR_RETURN(auto blobs, ListPrefix(container, path, uri));
    for (const auto& [name, size] : blobs) {
      if (name == path)
        return std::vector<ObjectInfo>{{uri, name.substr(name.rfind('/') + 1), size}};
    }
    std::string prefix = path.empty() || path.back() == '/' ? path : path + "/";
    std::vector<ObjectInfo> out;
    for (const auto& [name, size] : blobs) {
      if (name.rfind(prefix, 0) == 0 && name.size() > prefix.size()) {
        out.push_back({"az://" + container + "/" + name, name.substr(prefix.size()), size});
      }
    }
    if (out.empty())
      return Status::NotFound("no blobs at " + uri + " (check the container and path)");
    std::sort(out.begin(), out.end(),
              [](const ObjectInfo& a, const ObjectInfo& b) { return a.name < b.name; });
    return out;
  }

  Result<std::unique_ptr<RangeReader>> Open(const ObjectInfo& object) override {
    std::string container, name;
    MX_RETURN_IF_ERROR(SplitBucketKey(object.uri, 5, &container, &name));
    std::string url = c_.endpoint + "/" + container + "/" + http::UrlQuote(name, "/");
    std::string path = PathOf(url);
    if (!c_.sas.empty()) url += "?" + c_.sas;
    RangeSigner signer = [this, path](uint64_t begin, uint64_t end) {
      return Sign(path, {}, "bytes=" + std::to_string(begin) + "-" + std::to_string(end - 1));
    };
    return MakeRemoteReader(object, url, signer, Hint(), engine_.get());
  }

 private:
  std::string Hint() const {
    return "check AZURE_STORAGE_KEY or AZURE_STORAGE_SAS_TOKEN for account " + c_.account +
           " and the container's access";
  }

  std::vector<std::string> Sign(const std::string& path,
                                const std::vector<std::pair<std::string, std::string>>& query,
                                const std::string& range) const {
    std::string date = HttpDate(std::time(nullptr));
    std::vector<std::string> headers = {"x-ms-date: " + date,
                                        std::string("x-ms-version: ") + kApiVersion};
    if (c_.key.empty()) return headers;  // SAS (in the URL) or anonymous
    AzureRequest r;
    r.account = c_.account;
    r.canonical_path = path;
    r.query = query;
    r.headers = {{"x-ms-date", date}, {"x-ms-version", kApiVersion}};
    if (!range.empty()) r.headers["range"] = range;
    headers.push_back("Authorization: " + AzureSharedKeyAuthorization(r, c_.key));
    return headers;
  }

  Result<std::vector<std::pair<std::string, uint64_t>>> ListPrefix(const std::string& container,
                                                                   const std::string& prefix,
                                                                   const std::string& where) {
    std::vector<std::pair<std::string, uint64_t>> out;
    std::string marker;
    for (int page = 0; page < 100000; ++page) {
      std::vector<std::pair<std::string, std::string>> q = {{"restype", "container"},
                                                            {"comp", "list"}};
      if (!prefix.empty()) q.emplace_back("prefix", prefix);
      if (!marker.empty()) q.emplace_back("marker", marker);
      std::string url = c_.endpoint + "/" + container;
      std::string path = PathOf(url);
      std::string query;
      for (const auto& [k, v] : q)
        query += (query.empty() ? "?" : "&") + k + "=" + http::UrlQuote(v);
      if (!c_.sas.empty()) query += "&" + c_.sas;
      http::Request req;
      req.url = url + query;
      req.headers = Sign(path, q, "");
      MX_ASSIGN_OR_RETURN(http::Response r, http::FetchMetadata(req));
      if (r.status != 200) {
        size_t p = 0;
        std::string code;
        NextXmlElement(r.body, "Code", &p, &code);
        std::string what =
            where + ": HTTP " + std::to_string(r.status) + (code.empty() ? "" : " " + code);
        if (code == "ContainerNotFound")
          return Status::NotFound(what + ": the container does not exist");
        if (r.status == 401 || r.status == 403)
          return Status::PermissionDenied(what + ": " + Hint());
        return Status::Unavailable(what);
      }
      size_t pos = 0;
      std::string blob;
      while (NextXmlElement(r.body, "Blob", &pos, &blob)) {
        size_t p = 0;
        std::string name, size;
        if (!NextXmlElement(blob, "Name", &p, &name)) continue;
        p = 0;
        NextXmlElement(blob, "Content-Length", &p, &size);
        MX_RETURN_IF_ERROR(CheckListedKey(name, prefix, where));
        auto n = ParseObjectSize(size);
        if (!n.ok()) return n.status().WithContext(where + ": listing size of " + name);
        out.emplace_back(name, *n);
      }
      size_t p = 0;
      if (!NextXmlElement(r.body, "NextMarker", &p, &marker) || marker.empty()) return out;
    }
    return out;
  }

  AzureConfig c_;
  std::unique_ptr<http::RangeEngine> engine_;
};

}  // namespace

Result<std::unique_ptr<Storage>> OpenAzureStorage(const StorageOptions& options) {
  MX_ASSIGN_OR_RETURN(AzureConfig c, ConfigFromEnvironment());
  return std::unique_ptr<Storage>(new AzureStorage(std::move(c), options));
}

}  // namespace mx::storage
