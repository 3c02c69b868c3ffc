#include "storage/signing.h"

#include <algorithm>

#include "common/hash.h"
#include "http/http.h"

namespace mx::storage {

std::string AmzDate(std::time_t t) {
  char buf[32];
  std::tm tm;
  gmtime_r(&t, &tm);
  std::strftime(buf, sizeof buf, "%Y%m%dT%H%M%SZ", &tm);
  return buf;
}

std::string HttpDate(std::time_t t) {
  char buf[64];
  std::tm tm;
  gmtime_r(&t, &tm);
  std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return buf;
}

std::string SigV4Authorization(const SigV4Request& r, const std::string& access_key,
                               const std::string& secret_key, const std::string& region,
                               const std::string& service) {
  std::vector<std::pair<std::string, std::string>> q;
  for (const auto& [k, v] : r.query) q.emplace_back(http::UrlQuote(k), http::UrlQuote(v));
  std::sort(q.begin(), q.end());
  std::string query;
  for (const auto& [k, v] : q) query += (query.empty() ? "" : "&") + k + "=" + v;
  std::string canonical_headers, signed_headers;
  for (const auto& [k, v] : r.headers) {  // std::map: sorted by name
    canonical_headers += k + ":" + v + "\n";
    signed_headers += (signed_headers.empty() ? "" : ";") + k;
  }
  std::string canonical = r.method + "\n" + r.canonical_uri + "\n" + query + "\n" +
                          canonical_headers + "\n" + signed_headers + "\n" + r.payload_hash;
  const std::string& amz_date = r.headers.at("x-amz-date");
  std::string day = amz_date.substr(0, 8);
  std::string scope = day + "/" + region + "/" + service + "/aws4_request";
  std::string to_sign =
      "AWS4-HMAC-SHA256\n" + amz_date + "\n" + scope + "\n" + Sha256Hex(canonical);
  std::string k = HmacSha256("AWS4" + secret_key, day);
  k = HmacSha256(k, region);
  k = HmacSha256(k, service);
  k = HmacSha256(k, "aws4_request");
  std::string signature = HexEncode(HmacSha256(k, to_sign));
  return "AWS4-HMAC-SHA256 Credential=" + access_key + "/" + scope +
         ", SignedHeaders=" + signed_headers + ", Signature=" + signature;
}

std::string AzureSharedKeyAuthorization(const AzureRequest& r, const std::string& key) {
  auto h = [&](const char* name) {
    auto it = r.headers.find(name);
    return it == r.headers.end() ? std::string() : it->second;
  };
  std::string content_length = h("content-length");
  if (content_length == "0") content_length.clear();
  std::string to_sign = r.method + "\n" + h("content-encoding") + "\n" + h("content-language") +
                        "\n" + content_length + "\n" + h("content-md5") + "\n" + h("content-type") +
                        "\n" + h("date") + "\n" + h("if-modified-since") + "\n" + h("if-match") +
                        "\n" + h("if-none-match") + "\n" + h("if-unmodified-since") + "\n" +
                        h("range") + "\n";
  for (const auto& [k, v] : r.headers) {
    if (k.rfind("x-ms-", 0) == 0) to_sign += k + ":" + v + "\n";
  }
  to_sign += "/" + r.account + r.canonical_path;
  std::map<std::string, std::string> q;
  for (const auto& [k, v] : r.query) {
    std::string lk = k;
    std::transform(lk.begin(), lk.end(), lk.begin(), ::tolower);
    q[lk] = q.count(lk) ? q[lk] + "," + v : v;
  }
  for (const auto& [k, v] : q) to_sign += "\n" + k + ":" + v;
  return "SharedKey " + r.account + ":" + Base64Encode(HmacSha256(key, to_sign));
}

}  // namespace mx::storage
