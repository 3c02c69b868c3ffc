// What the three credential chains share: a cached, thread-safe, refresh-before-expiry
// credential, the small helpers token endpoints need, and how a chain names its source.
//
// Contract of every provider in src/cloud:
//  - Get() returns a credential valid for at least kRefreshMargin, fetching or refreshing
//    it under a lock (one fetch at a time; other callers wait for it and share the answer).
//  - Invalidate() drops the cached credential (a 401/403 that says it expired); the next
//    Get() fetches again.
//  - Source() says which link of the chain supplied the identity, in the SDK's terms,
//    with no secret in it ("web identity: role arn:aws:iam::1:role/r (AWS_ROLE_ARN)").
//  - No secret (key, token, signature, assertion) appears in an error, a log line or
//    Source(); errors name the endpoint (query redacted) and the variable that pointed there.
#pragma once

#include <chrono>
#include <ctime>
#include <functional>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/status.h"

namespace mx::cloud {

// Refresh this long before a credential expires (the AWS SDKs refresh 5 minutes early,
// google-auth 3 min 45 s, azure-identity 5 minutes: the largest wins).
inline constexpr std::chrono::seconds kRefreshMargin{300};

// A credential and when it stops working (nullopt: never, e.g. static keys).
template <typename T>
struct Expiring {
  T value;
  std::optional<std::time_t> expires_at;
};

// Caches one credential; Get() calls `fetch` when there is none or it is within
// kRefreshMargin of expiry. If a refresh fails while the cached value is still valid
// (not yet expired), the cached value is returned (the SDKs do the same: a token endpoint
// hiccup must not fail reads that the old token still covers). Thread-safe.
template <typename T>
class TokenCache {
 public:
  using Fetcher = std::function<Result<Expiring<T>>()>;
  explicit TokenCache(Fetcher fetch) : fetch_(std::move(fetch)) {}

  Result<T> Get() {
    std::lock_guard<std::mutex> lock(mu_);
    std::time_t now = std::time(nullptr);
    if (cached_ && !NeedsRefresh(*cached_, now)) return cached_->value;
    Result<Expiring<T>> fresh = fetch_();
    if (!fresh.ok()) {
      if (cached_ && cached_->expires_at && *cached_->expires_at > now) return cached_->value;
      return fresh.status();
    }
    cached_ = std::move(*fresh);
    return cached_->value;
  }

  void Invalidate() {
    std::lock_guard<std::mutex> lock(mu_);
    cached_.reset();
  }

 private:
  static bool NeedsRefresh(const Expiring<T>& e, std::time_t now) {
    return e.expires_at && *e.expires_at - now <= kRefreshMargin.count();
  }

  Fetcher fetch_;
  std::mutex mu_;
  std::optional<Expiring<T>> cached_;
};

// How a chain reads its environment: the variable's value, nullopt when unset. Unit tests
// pass a map; ProcessEnvironment() reads the process's own (GetEnv).
using EnvLookup = std::function<std::optional<std::string>(const char* name)>;
EnvLookup ProcessEnvironment();

// "2026-11-30T23:00:00Z" (also with fractional seconds or a +00:00 offset) -> epoch seconds.
Result<std::time_t> ParseIso8601Utc(std::string_view text);

// application/x-www-form-urlencoded body from name/value pairs.
std::string FormEncode(const std::vector<std::pair<std::string, std::string>>& fields);

// Reads a token file (a projected ServiceAccount token, a web-identity token): at most
// 64 KiB, surrounding whitespace trimmed; an empty file is an error naming `variable`
// (the environment variable or config key that named the path).
Result<std::string> ReadTokenFile(const std::string& path, std::string_view variable);

}  // namespace mx::cloud
