// Models kept as objects under a bucket prefix (providers S3 and GCS), the way ModelExpress
// names and caches them: the model "s3://bucket/org/model" lives in
// <cache>/s3/bucket/org/model/, "gs://bucket/org/model" in <cache>/gcs/bucket/org/model/.
//
// A copy is all or nothing: the objects are read with the storage backends (src/storage,
// which bring the cloud credential chains) into a staging directory beside the model's,
// each verified by its listed size and, where the listing's ETag is a content MD5 (32 hex
// digits, no '-': a single-part upload), by its MD5; then a marker file (.mx-model, the
// name ModelExpress uses) records what was copied, and the staging directory is renamed
// into place. A failed copy leaves nothing behind. Multipart ETags cannot be checked
// that way: those objects are verified by size only.
#pragma once

#include <atomic>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/status.h"
#include "server/model_manager.h"

namespace mx::server {

// The marker a complete copy holds, in the model's directory.
inline constexpr char kObjectModelMarker[] = ".mx-model";

struct ObjectModelName {
  Provider provider = kS3;  // kS3 or kGcs
  std::string bucket;       // one segment: [A-Za-z0-9._-], starting with a letter or digit
  std::string prefix;       // a safe relative path: no empty, "." or ".." segment

  std::string scheme() const { return provider == kGcs ? "gs" : "s3"; }
  // "s3://bucket/prefix": the name the registry and the claims use.
  std::string canonical() const { return scheme() + "://" + bucket + "/" + prefix; }
  // "s3/bucket/prefix" or "gcs/bucket/prefix", relative to the cache directory.
  std::string cache_subdir() const {
    return std::string(provider == kGcs ? "gcs" : "s3") + "/" + bucket + "/" + prefix;
  }
};

// True when (provider, name) asks for an object-store model: provider S3 or GCS, or a name
// that starts with s3:// or gs:// (any case) sent with the default provider.
bool IsObjectModel(int provider, std::string_view name);

// Parses and canonicalises a model name as ModelExpress does: "s3://bucket/prefix" for S3,
// "gs://bucket/prefix" for GCS (scheme in any case, leading spaces and trailing '/'
// dropped). InvalidArgument for anything else: no bucket or prefix, a bucket with a '/'
// or odd characters, an empty, "." or ".." segment, control characters, invalid UTF-8,
// a scheme that does not match the provider.
Result<ObjectModelName> ParseObjectModelName(int provider, std::string_view name);

struct ObjectCopyOptions {
  std::string cache_dir;
  bool ignore_weights = false;
  int workers = 8;                            // objects copied at once
  const std::atomic<bool>* cancel = nullptr;  // set: stop soon with Cancelled
  bool verify_etag = true;                    // false: size only (SSE-KMS / SSE-C / CMEK)
};

struct ObjectCopyReport {
  std::string commit;  // 40 hex: sha1 over the listing's (path, size, ETag) lines
  uint64_t files = 0;
  uint64_t bytes = 0;          // in the copy
  uint64_t bytes_fetched = 0;  // read from the store by this call (0: already there)
  uint64_t size_only = 0;      // objects whose ETag could not be checked
};

// Lists the objects under the model's prefix and copies them into the cache (all but the
// weight files with ignore_weights). A copy already in place with the same listing is
// kept as is. Errors: NotFound (nothing under the prefix), DataLoss (a size or checksum
// mismatch, a listed key that is not a safe relative path), the store's own errors.
Result<ObjectCopyReport> CopyObjectModel(const ObjectModelName& model,
                                         const ObjectCopyOptions& options);

// The copy in the cache, from its marker: every recorded file present, a regular file of
// the recorded size, inside the model's directory. NotFound when there is no complete copy
// (or only the metadata, for a request with weights), or `revision` names another listing
// (revision may be empty, "main" or the commit).
Result<LocalSnapshot> ObjectModelSnapshot(const std::string& cache_dir,
                                          const ObjectModelName& model,
                                          const std::optional<std::string>& revision,
                                          bool ignore_weights);

// Removes the model's directory. NotFound when it is not in the cache.
Status RemoveObjectModel(const std::string& cache_dir, const ObjectModelName& model);

}  // namespace mx::server
