// Internal to src/storage: the backends and helpers they share.
#pragma once

#include <functional>
#include <memory>
#include <string>
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

// A RangeReader over HTTP ranges, through a shared background RangeEngine.
std::unique_ptr<RangeReader> MakeRemoteReader(ObjectInfo info, std::string url, RangeSigner signer,
                                              std::string auth_hint, http::RangeEngine* engine);

// A background RangeEngine with `connections` connections.
std::unique_ptr<http::RangeEngine> StartEngine(int connections);

// The text of the first <tag>...</tag> at or after `pos` (entities decoded); advances pos.
bool NextXmlElement(const std::string& xml, const std::string& tag, size_t* pos, std::string* text);

// Splits "scheme://bucket/key" into bucket and key.
Status SplitBucketKey(const std::string& uri, size_t scheme_len, std::string* bucket,
                      std::string* key);

}  // namespace mx::storage
