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
  std::string method = "GET";  // GET or HEAD
  std::string url;
  // "Name: value" lines. Authorization is only ever sent to the URL's own host: libcurl
  // drops custom Authorization headers when a redirect changes host.
  std::vector<std::string> headers;
  bool follow_redirects = true;
  long timeout_seconds = 60;
};

struct Response {
  long status = 0;
  std::string body;
  std::vector<std::pair<std::string, std::string>> headers;  // final response, names lowercased
  std::string effective_url;

  // First header with this (lowercase) name.
  std::optional<std::string> Header(std::string_view lowercase_name) const;
};

// Performs the request, retrying transient failures per `policy`. Returns the final
// response whatever its status (callers map 4xx to their own errors); a transport failure
// that outlives the retries is Unavailable, naming the URL (query redacted).
Result<Response> Fetch(const Request& request, const RetryPolicy& policy = {});

// scheme://host:port of a URL, lowercased; empty if unparsable.
std::string OriginOf(std::string_view url);
// Resolves a (possibly relative) Location against the URL it came from.
std::string ResolveUrl(std::string_view base, std::string_view location);
// Percent-encodes everything but unreserved characters and those in `safe`.
std::string UrlQuote(std::string_view text, std::string_view safe = "");

// The User-Agent every request carries.
const char* UserAgent();

}  // namespace mx::http
