// Azure Blob Storage: List Blobs for prefixes and ranged GETs, authorized by (in this order,
// see src/cloud/azure_credentials.h) an account key (SharedKey: the signature covers the
// Range header, so each request is signed for its own range), a SAS, a bearer token from
// the DefaultAzureCredential chain, or nothing (a public container).
#include <algorithm>
#include <ctime>
#include <mutex>

#include "cloud/azure_credentials.h"
#include "common/env.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/text.h"
#include "http/http.h"
#include "storage/backends.h"
#include "storage/signing.h"

namespace mx::storage {
namespace {

constexpr const char* kApiVersion = "2021-08-06";  // bearer tokens need 2017-11-09 or later

enum class AzureAuth { kSharedKey, kSas, kBearer, kAnonymous };

std::string PathOf(const std::string& url) {
  size_t p = url.find("://");
  size_t slash = url.find('/', p == std::string::npos ? 0 : p + 3);
  return slash == std::string::npos ? "" : url.substr(slash);
}

class AzureStorage : public Storage {
 public:
  AzureStorage(cloud::AzureStorageConfig c, std::unique_ptr<cloud::AzureCredentialProvider> p,
               const StorageOptions& o)
      : c_(std::move(c)), provider_(std::move(p)), engine_(StartEngine(o.connections)) {}

  Result<std::vector<ObjectInfo>> List(const std::string& uri) override {
    std::string container, path;
    MX_RETURN_IF_ERROR(SplitBucketKey(uri, 5, &container, &path));
    MX_ASSIGN_OR_RETURN(AzureAuth auth, ResolveAuth());
    MX_ASSIGN_OR_RETURN(auto blobs, ListPrefix(container, path, uri, auth));
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
    MX_ASSIGN_OR_RETURN(AzureAuth auth, ResolveAuth());
    if (auth == AzureAuth::kBearer) {
      // Surface a failing token endpoint here, with its message, rather than as a 401.
      auto token = provider_->Get();
      if (!token.ok()) return token.status().WithContext(object.uri);
    }
    std::string url = c_.endpoint + "/" + container + "/" + http::UrlQuote(name, "/");
    std::string path = PathOf(url);
    if (auth == AzureAuth::kSas) url += "?" + c_.sas;
    RangeSigner signer = [this, path, auth](uint64_t begin, uint64_t end) {
      return Sign(auth, path, {}, "bytes=" + std::to_string(begin) + "-" + std::to_string(end - 1));
    };
    std::function<bool()> on_auth_failure;
    if (auth == AzureAuth::kBearer) {
      // A 401/403 may mean the token expired early (revoked, clock skew): fetch a new one.
      on_auth_failure = [this] {
        provider_->Invalidate();
        return true;
      };
    }
    return MakeRemoteReader(object, url, signer, Hint(auth), engine_.get(), on_auth_failure);
  }

  Result<std::string> DescribeCredentials() override {
    MX_ASSIGN_OR_RETURN(AzureAuth auth, ResolveAuth());
    switch (auth) {
      case AzureAuth::kSharedKey:
      case AzureAuth::kSas:
        return c_.source + " via " + RedactUrl(c_.endpoint);
      case AzureAuth::kBearer: {
        auto token = provider_->Get();
        if (!token.ok()) return token.status();
        return provider_->Source() + "; reading " + RedactUrl(c_.endpoint);
      }
      case AzureAuth::kAnonymous:
        break;
    }
    return "anonymous: nothing found; tried " + Tried() + "; reading " + RedactUrl(c_.endpoint) +
           " without credentials (public containers only)";
  }

 private:
  std::string Tried() const {
    return "account key, connection string, SAS (AZURE_STORAGE_KEY, AZURE_ACCOUNT_KEY, "
           "AZURE_STORAGE_CONNECTION_STRING, AZURE_STORAGE_SAS_TOKEN not set), " +
           provider_->Tried();
  }

  // Decides once how requests are authorized: a configured key or SAS; else the token
  // chain's first token (NotFound from it: nothing configured, read anonymously).
  Result<AzureAuth> ResolveAuth() {
    std::lock_guard<std::mutex> lock(mu_);
    if (auth_) return *auth_;
    if (!c_.shared_key.empty()) return *(auth_ = AzureAuth::kSharedKey);
    if (!c_.sas.empty()) return *(auth_ = AzureAuth::kSas);
    auto token = provider_->Get();
    if (!token.ok()) {
      if (token.status().code() != StatusCode::kNotFound) return token.status();
      spdlog::info("azure: no credential found (tried {}); reading {} anonymously", Tried(),
                   RedactUrl(c_.endpoint));
      return *(auth_ = AzureAuth::kAnonymous);
    }
    if (c_.endpoint.rfind("https://", 0) != 0) {
      // A bearer token is good for every account the identity can read: never in clear text.
      return Status::FailedPrecondition(
          provider_->Source() + ": a bearer token is only sent over https, and the blob endpoint " +
          RedactUrl(c_.endpoint) +
          " is not (AZURE_STORAGE_BLOB_ENDPOINT or the connection string's BlobEndpoint)");
    }
    return *(auth_ = AzureAuth::kBearer);
  }

  std::string Hint(AzureAuth auth) const {
    switch (auth) {
      case AzureAuth::kSharedKey:
        return "check the account key (" + c_.source + ") and the container's name";
      case AzureAuth::kSas:
        return "check the SAS (" + c_.source + "): its expiry, permissions (r, l) and resource";
      case AzureAuth::kBearer:
        return "the token of " + provider_->Source() +
               " was refused: check the identity's role on the account (Storage Blob Data "
               "Reader) and the scope";
      case AzureAuth::kAnonymous:
        break;
    }
    return "no credential was found (tried " + Tried() +
           ") and the container does not allow anonymous reads";
  }

  std::vector<std::string> Sign(AzureAuth auth, const std::string& path,
                                const std::vector<std::pair<std::string, std::string>>& query,
                                const std::string& range) const {
    std::string date = HttpDate(std::time(nullptr));
    std::vector<std::string> headers = {"x-ms-date: " + date,
                                        std::string("x-ms-version: ") + kApiVersion};
    if (auth == AzureAuth::kBearer) {
      // Cached; refreshed kRefreshMargin before expiry. On failure the request goes out
      // unauthorized, is refused, and the 401/403 path fetches again (Open() has already
      // reported a token endpoint that fails outright).
      auto token = provider_->Get();
      if (token.ok()) {
        headers.push_back("Authorization: Bearer " + *token);
      } else {
        spdlog::warn("azure: {}", token.status().message());
      }
      return headers;
    }
    if (auth != AzureAuth::kSharedKey) return headers;  // SAS (in the URL) or anonymous
    AzureRequest r;
    r.account = c_.account;
    r.canonical_path = path;
    r.query = query;
    r.headers = {{"x-ms-date", date}, {"x-ms-version", kApiVersion}};
    if (!range.empty()) r.headers["range"] = range;
    headers.push_back("Authorization: " + AzureSharedKeyAuthorization(r, c_.shared_key));
    return headers;
  }

  Result<std::vector<std::pair<std::string, uint64_t>>> ListPrefix(const std::string& container,
                                                                   const std::string& prefix,
                                                                   const std::string& where,
                                                                   AzureAuth auth) {
    std::vector<std::pair<std::string, uint64_t>> out;
    std::string marker;
    bool renewed = false;
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
      if (auth == AzureAuth::kSas) query += "&" + c_.sas;
      http::Request req;
      req.url = url + query;
      req.headers = Sign(auth, path, q, "");
      MX_ASSIGN_OR_RETURN(http::Response r, http::FetchMetadata(req));
      if ((r.status == 401 || r.status == 403) && auth == AzureAuth::kBearer && !renewed) {
        renewed = true;  // once: a token revoked or expired early
        provider_->Invalidate();
        --page;
        continue;
      }
      if (r.status != 200) {
        size_t p = 0;
        std::string code;
        NextXmlElement(r.body, "Code", &p, &code);
        std::string what = where + ": HTTP " + std::to_string(r.status) +
                           (code.empty() ? "" : " " + Printable(code, 64));
        if (code == "ContainerNotFound")
          return Status::NotFound(what + ": the container does not exist");
        if (r.status == 401 || r.status == 403 || r.status == 404) {
          if (r.status != 404 || auth == AzureAuth::kAnonymous)
            return Status::PermissionDenied(what + ": " + Hint(auth));
        }
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

  cloud::AzureStorageConfig c_;
  std::unique_ptr<cloud::AzureCredentialProvider> provider_;
  std::unique_ptr<http::RangeEngine> engine_;
  std::mutex mu_;
  std::optional<AzureAuth> auth_;  // decided once by ResolveAuth(), under mu_
};

}  // namespace

Result<std::unique_ptr<Storage>> OpenAzureStorage(const StorageOptions& options) {
  cloud::EnvLookup env = cloud::ProcessEnvironment();
  MX_ASSIGN_OR_RETURN(cloud::AzureStorageConfig c, cloud::AzureStorageConfigFromEnvironment(env));
  MX_ASSIGN_OR_RETURN(auto provider, cloud::AzureCredentialProvider::FromEnvironment(env));
  return std::unique_ptr<Storage>(new AzureStorage(std::move(c), std::move(provider), options));
}

}  // namespace mx::storage
