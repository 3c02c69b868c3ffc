// Synchronous HTTP for small requests (JSON APIs, HEAD probes), with the retry policy
// every mx network path shares: exponential backoff with jitter on 408/429/5xx and
// dropped connections, honouring Retry-After. Bulk bytes go through RangeEngine.
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace mx::http {

struct RetryPolicy {
  int max_attempts = 6;        // total tries of one request (or of one range, in the engine)
  double base_delay_s = 0.25;  // first backoff; doubles each attempt
  double max_delay_s = 20.0;   // cap on one wait, Retry-After included
};

// Seconds to wait before attempt number `attempt` (1 = first retry): full jitter over an
// exponential ramp, or the server's Retry-After when it gave one.
double BackoffSeconds(int attempt, const RetryPolicy& policy, std::optional<double> retry_after);

// True for statuses worth retrying: 408, 429, 500, 502, 503, 504.
bool IsRetryableStatus(long status);

// Parses Retry-After: delta-seconds or an HTTP date.
std::optional<double> ParseRetryAfter(std::string_view value);

struct Request {
  std::string method = "GET";  // GET, HEAD, POST or PUT
  std::string url;
  // Sent as the request body (POST/PUT: token endpoints' form or JSON bodies). Never logged.
  std::string body;
  // "Name: value" lines. Authorization is only ever sent to the URL's own host: libcurl
  // drops custom Authorization headers when a redirect changes host; requests carrying
  // other credential headers (see CarriesStorageCredentials) do not follow redirects.
  std::vector<std::string> headers;
  bool follow_redirects = true;
  long timeout_seconds = 60;
  // Stop reading the body past this many bytes (0: no limit); the response then has
  // body_truncated set. Probes use it so a server that ignores Range cannot send gigabytes.
  size_t max_body_bytes = 0;
};

struct Response {
  long status = 0;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // final response, names lowercased
  std::string effective_url;
  bool body_truncated = false;  // the body reached Request::max_body_bytes

  // First header with this (lowercase) name.
  std::optional<std::string> Header(std::string_view lowercase_name) const;
};

// Performs the request, retrying transient failures per `policy`. Returns the final
// response whatever its status (callers map 4xx to their own errors); a transport failure
// that outlives the retries is Unavailable, naming the URL (query redacted).
Result<Response> Fetch(const Request& request, const RetryPolicy& policy = {});

// The cap on any metadata body (revision, tree page, S3 ListObjectsV2, Azure List Blobs
// page): 32 MiB, far above any real page (the hub pages trees at ~1 000 entries), so a
// hostile server streaming an endless body costs bounded memory.
inline constexpr size_t kMaxMetadataBodyBytes = 32u << 20;

// Fetch for metadata: the body is capped at `max_body` bytes, and a body that reaches the
// cap is an error (ResourceExhausted naming the URL, query redacted), not a truncated answer.
Result<Response> FetchMetadata(Request request, size_t max_body = kMaxMetadataBodyBytes,
                               const RetryPolicy& policy = {});

// True when `headers` ("Name: value" lines) carry a storage credential other than
// Authorization: x-amz-*, x-ms-*, x-goog-*. Such signed requests never follow redirects
// (S3, Azure and GCS never need them, and libcurl strips only Authorization when a redirect
// changes host), so the session token or SAS cannot reach another host.
bool CarriesStorageCredentials(const std::vector<std::string>& headers);

// scheme://host:port of a URL, lowercased; empty if unparsable.
std::string OriginOf(std::string_view url);
// True when both URLs are http(s) and share scheme, host and port: the test before a
// credential goes to a URL that a response named (a Link header, a redirect).
bool IsSameHttpOrigin(std::string_view a, std::string_view b);
// Resolves a (possibly relative) Location against the URL it came from.
std::string ResolveUrl(std::string_view base, std::string_view location);
// The one percent-encoder (RFC 3986; also S3's and Azure's URI encoding): everything but
// unreserved characters (A-Z a-z 0-9 - _ . ~) and those in `safe`, as uppercase %XX.
std::string UrlQuote(std::string_view text, std::string_view safe = "");

// The User-Agent every request carries.
const char* UserAgent();

}  // namespace mx::http
