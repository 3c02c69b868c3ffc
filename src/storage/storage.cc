#include "storage/storage.h"

#include <ctime>

#include "common/log.h"
#include "http/http.h"
#include "hub/cache.h"
#include "hub/hub_client.h"
#include "storage/backends.h"

namespace mx::storage {
namespace {

// One object served over plain HTTP(S) ranges; its size comes from a HEAD.
class HttpStorage : public Storage {
 public:
  explicit HttpStorage(const StorageOptions& o) : engine_(StartEngine(o.connections)) {}

  Result<std::vector<ObjectInfo>> List(const std::string& uri) override {
    http::Request req;
    req.method = "HEAD";
    req.url = uri;
    MX_ASSIGN_OR_RETURN(http::Response r, http::Fetch(req));
    if (r.status == 404) return Status::NotFound(RedactUrl(uri) + ": HTTP 404 (no such file)");
    if (r.status != 200)
      return Status::Unavailable(RedactUrl(uri) + ": HTTP " + std::to_string(r.status));
    auto len = r.Header("content-length");
    if (!len)
      return Status::FailedPrecondition(RedactUrl(uri) + ": the server does not say the size");
    std::string path = uri.substr(0, uri.find('?'));
    final_url_ = r.effective_url;
    return std::vector<ObjectInfo>{{RedactUrl(uri), path.substr(path.rfind('/') + 1),
                                    std::strtoull(len->c_str(), nullptr, 10)}};
  }

  Result<std::unique_ptr<RangeReader>> Open(const ObjectInfo& object) override {
    return MakeRemoteReader(object, final_url_.empty() ? object.uri : final_url_, nullptr, "",
                            engine_.get());
  }

 private:
  std::unique_ptr<http::RangeEngine> engine_;
  std::string final_url_;
};

// "org/name[@rev]" resolved to a snapshot directory of the local HF cache.
Result<std::string> HubCachePath(const std::string& uri) {
  std::string repo = uri, revision = "main";
  if (size_t at = uri.find('@'); at != std::string::npos) {
    repo = uri.substr(0, at);
    revision = uri.substr(at + 1);
  }
  MX_RETURN_IF_ERROR(hub::ValidateRepoId(repo));
  hub::RepoCache cache(hub::HubConfig::FromEnvironment().cache_dir, hub::RepoType::kModel, repo);
  auto commit = cache.ResolveLocal(revision);
  if (!commit.ok()) {
    return Status::NotFound(repo + "@" + revision + " is not in the local HF cache (" +
                            cache.root() + "); run: mx download " + repo);
  }
  return cache.snapshot_dir(*commit);
}

class LocalAlias : public Storage {
 public:
  LocalAlias(std::unique_ptr<Storage> local, std::string path)
      : local_(std::move(local)), path_(std::move(path)) {}
  Result<std::vector<ObjectInfo>> List(const std::string&) override { return local_->List(path_); }
  Result<std::unique_ptr<RangeReader>> Open(const ObjectInfo& o) override {
    return local_->Open(o);
  }

 private:
  std::unique_ptr<Storage> local_;
  std::string path_;
};

}  // namespace

Result<std::unique_ptr<Storage>> OpenStorage(const std::string& uri,
                                             const StorageOptions& options) {
  if (uri.rfind("s3://", 0) == 0) return OpenS3Storage("s3", options);
  if (uri.rfind("gs://", 0) == 0) return OpenS3Storage("gs", options);
  if (uri.rfind("az://", 0) == 0) return OpenAzureStorage(options);
  if (uri.rfind("http://", 0) == 0 || uri.rfind("https://", 0) == 0) {
    return std::unique_ptr<Storage>(new HttpStorage(options));
  }
  if (uri.rfind("file://", 0) == 0 || uri.rfind("/", 0) == 0 || uri.rfind("./", 0) == 0 ||
      uri.rfind("../", 0) == 0) {
    return OpenLocalStorage(options);
  }
  if (uri.find("://") != std::string::npos) {
    return Status::InvalidArgument("unsupported URI scheme in '" + RedactUrl(uri) +
                                   "' (use a path, http(s)://, s3://, gs://, az:// or org/name)");
  }
  MX_ASSIGN_OR_RETURN(std::string path, HubCachePath(uri));
  MX_ASSIGN_OR_RETURN(auto local, OpenLocalStorage(options));
  return std::unique_ptr<Storage>(new LocalAlias(std::move(local), path));
}

}  // namespace mx::storage
