#include "storage/storage.h"

#include <ctime>

#include "common/env.h"
#include "common/log.h"
#include "http/http.h"
#include "storage/backends.h"

namespace mx::storage {
namespace {

// The object size from a 206's "Content-Range: bytes 0-0/<size>".
Result<uint64_t> SizeFromContentRange(const std::string& value) {
  size_t slash = value.rfind('/');
  if (value.rfind("bytes ", 0) != 0 || slash == std::string::npos) {
    return Status::DataLoss("malformed Content-Range '" + value.substr(0, 64) + "'");
  }
  auto size = ParseObjectSize(std::string_view(value).substr(slash + 1));
  if (!size.ok())
    return Status::DataLoss("Content-Range without a size: " + size.status().message());
  return *size;
}

// One object served over plain HTTP(S) ranges. Its size comes from a 1-byte ranged GET,
// not a HEAD: a presigned S3/GCS URL is signed for GET only and answers HEAD with 403.
class HttpStorage : public Storage {
 public:
  explicit HttpStorage(const StorageOptions& o) : engine_(StartEngine(o.connections)) {}

  Result<std::vector<ObjectInfo>> List(const std::string& uri) override {
    http::Request req;
    req.url = uri;
    req.headers = {"Range: bytes=0-0"};
    req.max_body_bytes = 64 << 10;
    MX_ASSIGN_OR_RETURN(http::Response r, http::Fetch(req));
    std::string where = RedactUrl(uri);
    if (r.status == 404) return Status::NotFound(where + ": HTTP 404 (no such file)");
    uint64_t size = 0;
    if (r.status == 206) {
      auto range = r.Header("content-range");
      if (!range) return Status::DataLoss(where + ": a 206 without Content-Range");
      auto parsed = SizeFromContentRange(*range);
      if (!parsed.ok()) return parsed.status().WithContext(where);
      size = *parsed;
    } else if (r.status == 416) {
      size = 0;  // "bytes 0-0" is unsatisfiable only for an empty object
    } else if (r.status == 200) {
      return Status::FailedPrecondition(where +
                                        ": the server ignores Range requests (HTTP 200 to a "
                                        "ranged GET); streaming needs ranged reads");
    } else {
      return Status::Unavailable(
          where + ": HTTP " + std::to_string(r.status) +
          (r.status == 403 ? " (forbidden: expired or wrong signature?)" : ""));
    }
    std::string path = uri.substr(0, uri.find('?'));
    final_url_ = r.effective_url;
    return std::vector<ObjectInfo>{{where, path.substr(path.rfind('/') + 1), size}};
  }

  Result<std::unique_ptr<RangeReader>> Open(const ObjectInfo& object) override {
    return MakeRemoteReader(object, final_url_.empty() ? object.uri : final_url_, nullptr, "",
                            engine_.get());
  }

 private:
  std::unique_ptr<http::RangeEngine> engine_;
  std::string final_url_;
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
  // Hub ids (org/name) are the streamer's to resolve to a cache path: storage knows bytes,
  // not the hub's cache layout.
  return Status::InvalidArgument("'" + uri.substr(0, 256) +
                                 "' is not a path or a URI (a hub id must be resolved to its "
                                 "cache directory first)");
}

}  // namespace mx::storage
