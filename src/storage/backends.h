// Internal to src/storage: the backends and helpers they share.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "http/range_engine.h"
#include "storage/storage.h"

namespace mx::storage {

Result<std::unique_ptr<Storage>> OpenLocalStorage(const StorageOptions& options);
Result<std::unique_ptr<Storage>> OpenHttpStorage(const StorageOptions& options);
Result<std::unique_ptr<Storage>> OpenS3Storage(const std::string& scheme,
                                               const StorageOptions& options);
Result<std::unique_ptr<Storage>> OpenAzureStorage(const StorageOptions& options);

// Signs one ranged GET of an object: the request headers for bytes [begin, end).
using RangeSigner = std::function<std::vector<std::string>(uint64_t begin, uint64_t end)>;

// A RangeReader over HTTP ranges, through a shared background RangeEngine. When set,
// `on_auth_failure` is asked once per read after a 401/403 (see FetchJob::on_auth_failure):
// it drops an expired cached token and returns true to have the range signed again.
std::unique_ptr<RangeReader> MakeRemoteReader(ObjectInfo info, std::string url, RangeSigner signer,
                                              std::string auth_hint, http::RangeEngine* engine,
                                              std::function<bool()> on_auth_failure = nullptr);

// A background RangeEngine with `connections` connections.
std::unique_ptr<http::RangeEngine> StartEngine(int connections);

// The text of the first <tag>...</tag> at or after `pos` (entities decoded); advances pos.
bool NextXmlElement(const std::string& xml, const std::string& tag, size_t* pos, std::string* text);

// A size from the network (a listing's <Size>, a Content-Range total): base-10, at most
// kMaxObjectBytes. DataLoss otherwise.
Result<uint64_t> ParseObjectSize(std::string_view text);

// Refuses a listed key that has "." or ".." path segments (libcurl and servers normalise
// them into another object's path) or that does not start with the prefix the listing
// asked for. `where` names the listing in the error.
Status CheckListedKey(const std::string& key, const std::string& prefix, const std::string& where);

// True when a key has a "." or ".." segment.
bool HasDotSegment(std::string_view key);

// Splits "scheme://bucket/key" into bucket and key.
Status SplitBucketKey(const std::string& uri, size_t scheme_len, std::string* bucket,
                      std::string* key);

}  // namespace mx::storage
