#include "http/http.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <mutex>
#include <random>
#include <thread>

#include "common/env.h"
#include "common/hash.h"
#include "common/log.h"
#include "http/curl_util.h"

namespace mx::http {
namespace internal {

void GlobalInitOnce() {
  static std::once_flag once;
  std::call_once(once, [] { curl_global_init(CURL_GLOBAL_DEFAULT); });
}

void ApplyCommonOptions(CURL* easy) {
  curl_easy_setopt(easy, CURLOPT_USERAGENT, UserAgent());
  // Only HTTP(S), for the first request and every redirect: a hostile Link or Location must
  // not make mx speak gopher to a local Redis or read file:///dev/zero.
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(easy, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT, 20L);
  // A peer that sends nothing for a while is dead: fail the transfer so it is retried.
  static const long stall_seconds = [] {
    auto v = GetEnv("MX_STALL_TIMEOUT_SECONDS");
    if (!v || v->empty()) return 30L;
    Result<int64_t> s = ParseIntInRange("MX_STALL_TIMEOUT_SECONDS", *v, 1, 3600);
    if (!s.ok()) spdlog::error("{}; using 30 s", s.status().message());
    return s.ok() ? static_cast<long>(*s) : 30L;
  }();
  curl_easy_setopt(easy, CURLOPT_LOW_SPEED_LIMIT, 1L);
  curl_easy_setopt(easy, CURLOPT_LOW_SPEED_TIME, stall_seconds);
  curl_easy_setopt(easy, CURLOPT_HTTP_VERSION, CURL_HTTP_VERSION_2TLS);
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
  curl_easy_setopt(easy, CURLOPT_MAXREDIRS, 10L);
  curl_easy_setopt(easy, CURLOPT_UNRESTRICTED_AUTH, 0L);
  curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, nullptr);  // byte ranges must be raw
  // A private CA (an in-cluster mirror, an S3-compatible store, an emulator over TLS): the
  // variables curl, OpenSSL and Python's requests read, in that order. libcurl's built-in
  // bundle path would otherwise win over OpenSSL's SSL_CERT_FILE.
  static const std::string ca_bundle = [] {
    for (const char* name : {"CURL_CA_BUNDLE", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"}) {
      if (auto v = GetEnv(name); v && !v->empty()) return *v;
    }
    return std::string();
  }();
  if (!ca_bundle.empty()) curl_easy_setopt(easy, CURLOPT_CAINFO, ca_bundle.c_str());
}

bool ParseHeaderLine(std::string_view line, std::string* name, std::string_view* value) {
  size_t colon = line.find(':');
  if (line.substr(0, 5) == "HTTP/" || colon == std::string_view::npos) return false;
  name->assign(line.substr(0, colon));
  std::transform(name->begin(), name->end(), name->begin(), ::tolower);
  std::string_view v = line.substr(colon + 1);
  while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
  while (!v.empty() && (v.back() == '\r' || v.back() == '\n' || v.back() == ' '))
    v.remove_suffix(1);
  *value = v;
  return true;
}

curl_slist* MakeHeaderList(const std::vector<std::string>& headers) {
  curl_slist* list = nullptr;
  for (const auto& h : headers) list = curl_slist_append(list, h.c_str());
  return list;
}

std::optional<std::string> PermanentTlsFailure(CURLcode rc, std::string_view detail) {
  auto says = [detail](std::string_view what) {
    return detail.find(what) != std::string_view::npos;
  };
  const std::string why =
      " (" + std::string(detail.empty() ? curl_easy_strerror(rc) : detail) + ")";
  const char* kCaHint =
      ": set CURL_CA_BUNDLE or SSL_CERT_FILE to a CA bundle that holds the issuer of the "
      "server's certificate";
  switch (rc) {
    case CURLE_SSL_CONNECT_ERROR:
      // OpenSSL read an HTTP answer where a TLS record should be. Other handshake failures
      // under this code (a reset, a timeout) may pass, so they stay retryable.
      if (says("wrong version number") || says("packet length too long") ||
          says("unknown protocol")) {
        return "TLS handshake failed: the server does not speak TLS on this port "
               "(http:// instead of https://?)" +
               why;
      }
      if (says("unsupported protocol") || says("alert protocol version") ||
          says("no protocols available")) {
        return "TLS handshake failed: the server and mx share no TLS version" + why;
      }
      if (says("unknown ca") || says("certificate required") || says("bad certificate")) {
        return "TLS handshake failed: the server refused our client certificate" + why;
      }
      return std::nullopt;
    case CURLE_PEER_FAILED_VERIFICATION:
      if (says("subject name") || says("host name") || says("hostname")) {
        return "TLS certificate is for another host name than the one in the URL" + why;
      }
      return "TLS certificate not trusted" + why + kCaHint;
    case CURLE_SSL_CACERT_BADFILE:
      return "cannot use the CA bundle (check CURL_CA_BUNDLE / SSL_CERT_FILE / "
             "REQUESTS_CA_BUNDLE)" +
             why;
    case CURLE_SSL_CERTPROBLEM:
      return "TLS client certificate problem" + why;
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_INVALIDCERTSTATUS:
      return "TLS certificate not accepted" + why;
    case CURLE_SSL_CIPHER:
    case CURLE_SSL_ENGINE_NOTFOUND:
    case CURLE_SSL_ENGINE_SETFAILED:
    case CURLE_SSL_ENGINE_INITFAILED:
    case CURLE_SSL_CRL_BADFILE:
      return "TLS set-up failed" + why;
    default:
      return std::nullopt;
  }
}

}  // namespace internal

const char* UserAgent() { return "mx/0.1 (huggingface_hub-compatible; C++)"; }

bool IsRetryableStatus(long status) {
  return status == 408 || status == 429 || status == 500 || status == 502 || status == 503 ||
         status == 504;
}

std::optional<double> ParseRetryAfter(std::string_view value) {
  std::string v(value);
  while (!v.empty() && (v.back() == ' ' || v.back() == '\r' || v.back() == '\n')) v.pop_back();
  while (!v.empty() && v.front() == ' ') v.erase(0, 1);
  if (v.empty()) return std::nullopt;
  if (v.find_first_not_of("0123456789.") == std::string::npos) {
    try {
      return std::stod(v);
    } catch (...) {
      return std::nullopt;
    }
  }
  time_t when = curl_getdate(v.c_str(), nullptr);
  if (when < 0) return std::nullopt;
  double delta = std::difftime(when, std::time(nullptr));
  return std::max(0.0, delta);
}

double BackoffSeconds(int attempt, const RetryPolicy& policy, std::optional<double> retry_after) {
  if (retry_after) return std::min(*retry_after, std::max(policy.max_delay_s, 60.0));
  thread_local std::mt19937_64 rng{std::random_device{}()};
  double ceiling = std::min(policy.max_delay_s, policy.base_delay_s * std::pow(2.0, attempt - 1));
  // Half fixed, half jitter: spreads retries of many clients without ever retrying at once.
  std::uniform_real_distribution<double> jitter(0.5, 1.0);
  return ceiling * jitter(rng);
}

std::optional<std::string> Response::Header(std::string_view lowercase_name) const {
  for (const auto& [k, v] : headers) {
    if (k == lowercase_name) return v;
  }
  return std::nullopt;
}

namespace {

struct BodySink {
  Response* response;
  size_t limit;  // 0: none
};

size_t CollectBody(char* data, size_t size, size_t n, void* user) {
  auto* sink = static_cast<BodySink*>(user);
  std::string& body = sink->response->body;
  if (sink->limit != 0 && body.size() + size * n > sink->limit) {
    body.append(data, sink->limit - body.size());
    sink->response->body_truncated = true;
    return 0;  // aborts the transfer (CURLE_WRITE_ERROR)
  }
  body.append(data, size * n);
  return size * n;
}

size_t CollectHeader(char* data, size_t size, size_t n, void* user) {
  auto* headers = static_cast<std::vector<std::pair<std::string, std::string>>*>(user);
  std::string_view line(data, size * n);
  if (line.substr(0, 5) == "HTTP/") {
    headers->clear();  // a new response in a redirect chain: keep only the last one
    return size * n;
  }
  std::string name;
  std::string_view value;
  if (internal::ParseHeaderLine(line, &name, &value))
    headers->emplace_back(std::move(name), std::string(value));
  return size * n;
}

}  // namespace

static Result<Response> FetchOnce(const Request& request) {
  internal::GlobalInitOnce();
  CURL* easy = curl_easy_init();
  if (easy == nullptr) return Status::Internal("curl_easy_init failed");
  internal::ApplyCommonOptions(easy);
  Response response;
  curl_slist* headers = internal::MakeHeaderList(request.headers);
  curl_easy_setopt(easy, CURLOPT_URL, request.url.c_str());
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
  bool follow = request.follow_redirects && !CarriesStorageCredentials(request.headers);
  curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, follow ? 1L : 0L);
  curl_easy_setopt(easy, CURLOPT_TIMEOUT, request.timeout_seconds);
  if (request.method == "HEAD") curl_easy_setopt(easy, CURLOPT_NOBODY, 1L);
  if (request.method == "POST" || request.method == "PUT") {
    // COPYPOSTFIELDS: curl keeps its own copy, so a retry re-sends the same bytes.
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE,
                     static_cast<curl_off_t>(request.body.size()));
    curl_easy_setopt(easy, CURLOPT_COPYPOSTFIELDS, request.body.c_str());
    if (request.method == "PUT") curl_easy_setopt(easy, CURLOPT_CUSTOMREQUEST, "PUT");
  }
  BodySink sink{&response, request.max_body_bytes};
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, CollectBody);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &sink);
  curl_easy_setopt(easy, CURLOPT_HEADERFUNCTION, CollectHeader);
  curl_easy_setopt(easy, CURLOPT_HEADERDATA, &response.headers);
  char errbuf[CURL_ERROR_SIZE] = {0};
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, errbuf);
  CURLcode rc = curl_easy_perform(easy);
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &response.status);
  char* effective = nullptr;
  curl_easy_getinfo(easy, CURLINFO_EFFECTIVE_URL, &effective);
  if (effective) response.effective_url = effective;
  curl_slist_free_all(headers);
  curl_easy_cleanup(easy);
  if (rc == CURLE_WRITE_ERROR && response.body_truncated) return response;  // asked for
  if (rc != CURLE_OK) {
    std::string why = errbuf[0] ? errbuf : curl_easy_strerror(rc);
    // Not Unavailable (transient): Fetch returns it at once instead of backing off.
    if (auto tls = internal::PermanentTlsFailure(rc, why))
      return Status::FailedPrecondition(request.method + " " + RedactUrl(request.url) + ": " +
                                        *tls);
    return Status::Unavailable(request.method + " " + RedactUrl(request.url) + ": " + why);
  }
  return response;
}

Result<Response> Fetch(const Request& request, const RetryPolicy& policy) {
  for (int attempt = 1;; ++attempt) {
    Result<Response> result = FetchOnce(request);
    std::optional<double> retry_after;
    if (result.ok()) {
      if (!IsRetryableStatus(result->status)) return result;
      if (auto ra = result->Header("retry-after")) retry_after = ParseRetryAfter(*ra);
    } else if (result.status().code() == StatusCode::kFailedPrecondition) {
      return result;  // a TLS misconfiguration (PermanentTlsFailure): retrying cannot help
    }
    if (attempt >= policy.max_attempts) {
      if (result.ok()) return result;  // the caller reports the final status
      return result.status().WithContext("giving up after " + std::to_string(attempt) +
                                         " attempts");
    }
    double wait = BackoffSeconds(attempt, policy, retry_after);
    spdlog::debug(
        "retrying {} in {:.2f}s ({})", RedactUrl(request.url), wait,
        result.ok() ? "HTTP " + std::to_string(result->status) : result.status().message());
    std::this_thread::sleep_for(std::chrono::duration<double>(wait));
  }
}

Result<Response> FetchMetadata(Request request, size_t max_body, const RetryPolicy& policy) {
  request.max_body_bytes = max_body;
  MX_ASSIGN_OR_RETURN(Response r, Fetch(request, policy));
  if (r.body_truncated) {
    return Status::ResourceExhausted(request.method + " " + RedactUrl(request.url) +
                                     ": response body exceeds the " +
                                     std::to_string(max_body >> 20) + " MiB metadata limit");
  }
  return r;
}

bool CarriesStorageCredentials(const std::vector<std::string>& headers) {
  for (const auto& h : headers) {
    std::string name = h.substr(0, std::min<size_t>(h.find(':'), 8));
    std::transform(name.begin(), name.end(), name.begin(), ::tolower);
    if (name.rfind("x-amz-", 0) == 0 || name.rfind("x-ms-", 0) == 0 ||
        name.rfind("x-goog-", 0) == 0) {
      return true;
    }
  }
  return false;
}

std::string OriginOf(std::string_view url) {
  CURLU* u = curl_url();
  std::string out;
  if (curl_url_set(u, CURLUPART_URL, std::string(url).c_str(), 0) == CURLUE_OK) {
    char *scheme = nullptr, *host = nullptr, *port = nullptr;
    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0);
    curl_url_get(u, CURLUPART_HOST, &host, 0);
    curl_url_get(u, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT);
    if (scheme && host && port) out = std::string(scheme) + "://" + host + ":" + port;
    curl_free(scheme);
    curl_free(host);
    curl_free(port);
  }
  curl_url_cleanup(u);
  std::transform(out.begin(), out.end(), out.begin(), ::tolower);
  return out;
}

bool IsSameHttpOrigin(std::string_view a, std::string_view b) {
  std::string oa = OriginOf(a);
  bool http = oa.rfind("http://", 0) == 0 || oa.rfind("https://", 0) == 0;
  return http && oa == OriginOf(b);
}

std::string ResolveUrl(std::string_view base, std::string_view location) {
  CURLU* u = curl_url();
  std::string out(location);
  if (curl_url_set(u, CURLUPART_URL, std::string(base).c_str(), 0) == CURLUE_OK &&
      curl_url_set(u, CURLUPART_URL, std::string(location).c_str(), 0) == CURLUE_OK) {
    char* full = nullptr;
    if (curl_url_get(u, CURLUPART_URL, &full, 0) == CURLUE_OK) out = full;
    curl_free(full);
  }
  curl_url_cleanup(u);
  return out;
}

std::string UrlQuote(std::string_view text, std::string_view safe) {
  std::string out;
  for (unsigned char c : text) {
    bool unreserved = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
                      c == '-' || c == '_' || c == '.' || c == '~';
    if (unreserved || safe.find(static_cast<char>(c)) != std::string_view::npos) {
      out.push_back(static_cast<char>(c));
    } else {
      char byte = static_cast<char>(c);
      out += '%' + HexEncode(std::string_view(&byte, 1), /*uppercase=*/true);
    }
  }
  return out;
}

}  // namespace mx::http
