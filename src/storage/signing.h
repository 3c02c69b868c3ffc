// Request signing for object stores: AWS Signature Version 4 (S3, GCS HMAC keys) and
// Azure Blob SharedKey. Pure functions: tested against the providers' published examples.
#pragma once

#include <ctime>
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace mx::storage {

struct SigV4Request {
  std::string method = "GET";
  std::string canonical_uri = "/";                         // already percent-encoded, as sent
  std::vector<std::pair<std::string, std::string>> query;  // raw (unencoded) name/value
  std::map<std::string, std::string> headers;  // lowercase names; must include host, x-amz-date
  std::string payload_hash;                    // hex sha256 of the body, or UNSIGNED-PAYLOAD
};

// The Authorization header value.
std::string SigV4Authorization(const SigV4Request& request, const std::string& access_key,
                               const std::string& secret_key, const std::string& region,
                               const std::string& service);
// "20150830T123600Z"
std::string AmzDate(std::time_t t);

struct AzureRequest {
  std::string method = "GET";
  std::string account;
  std::string canonical_path;                              // URL path as sent, starting with '/'
  std::vector<std::pair<std::string, std::string>> query;  // raw name/value
  std::map<std::string, std::string> headers;              // lowercase names (x-ms-*, range, ...)
};
// "SharedKey <account>:<signature>"; `key` is the decoded account key.
std::string AzureSharedKeyAuthorization(const AzureRequest& request, const std::string& key);
// "Sun, 06 Nov 1994 08:49:37 GMT"
std::string HttpDate(std::time_t t);

}  // namespace mx::storage
