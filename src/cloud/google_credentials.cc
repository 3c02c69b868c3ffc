#include "cloud/google_credentials.h"

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <sys/stat.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <nlohmann/json.hpp>

#include "cloud/jwt.h"
#include "common/env.h"
#include "common/fs.h"
#include "common/hash.h"
#include "common/log.h"
#include "http/http.h"

namespace mx::cloud {
namespace {

using json = nlohmann::json;

constexpr size_t kMaxCredentialFileBytes = 1 << 20;
constexpr size_t kMaxTokenBodyBytes = 1 << 20;
constexpr size_t kMaxAccessTokenBytes = 16 << 10;
constexpr int kDefaultTokenLifetime = 3600;   // when an answer gives no expiry
constexpr int kMaxTokenLifetime = 24 * 3600;  // Google tokens live 1 h, at most 12 h
constexpr char kJwtBearerGrant[] = "urn:ietf:params:oauth:grant-type:jwt-bearer";
constexpr char kTokenExchangeGrant[] = "urn:ietf:params:oauth:grant-type:token-exchange";
constexpr char kAccessTokenType[] = "urn:ietf:params:oauth:token-type:access_token";
constexpr char kAdcFileName[] = "application_default_credentials.json";

// ---------------------------------------------------------------------------------------
// JSON fields: types checked, values never quoted in errors (they may be secrets).

// An optional string field: "" when absent; an error when present with another type.
Result<std::string> StringField(const json& obj, const char* name, std::string_view origin) {
  auto it = obj.find(name);
  if (it == obj.end() || it->is_null()) return std::string();
  if (!it->is_string()) {
    return Status::InvalidArgument(std::string(origin) + ": \"" + name + "\" is not a string");
  }
  return it->get<std::string>();
}

Result<std::string> RequiredField(const json& obj, const char* name, std::string_view origin,
                                  std::string_view type) {
  MX_ASSIGN_OR_RETURN(std::string value, StringField(obj, name, origin));
  if (value.empty()) {
    return Status::InvalidArgument(std::string(origin) + ": the " + std::string(type) +
                                   " file has no \"" + name + "\"");
  }
  return value;
}

// A value that goes into an HTTP header line must not end it early.
bool HeaderSafe(std::string_view s) {
  return std::none_of(s.begin(), s.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u < 0x20 || u == 0x7f;
  });
}

// True for a dotted-quad IPv4 literal in 127.0.0.0/8 (not "127.0.0.1.example.com").
bool IsLoopbackIpv4(std::string_view host) {
  int parts = 0;
  size_t i = 0;
  std::string first;
  while (i <= host.size()) {
    size_t dot = host.find('.', i);
    if (dot == std::string_view::npos) dot = host.size();
    std::string_view part = host.substr(i, dot - i);
    if (part.empty() || part.size() > 3 ||
        !std::all_of(part.begin(), part.end(), [](char c) { return c >= '0' && c <= '9'; }) ||
        std::stoi(std::string(part)) > 255) {
      return false;
    }
    if (parts == 0) first = part;
    ++parts;
    i = dot + 1;
  }
  return parts == 4 && first == "127";
}

// https://..., or http:// to this machine: 127.0.0.0/8, localhost, [::1].
bool IsHttpsOrLoopbackHttp(const std::string& url) {
  std::string lower = url;
  std::transform(lower.begin(), lower.end(), lower.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  if (lower.rfind("https://", 0) == 0) return true;
  if (lower.rfind("http://", 0) != 0) return false;
  std::string authority = lower.substr(7, lower.find_first_of("/?#", 7) - 7);
  if (authority.find('@') != std::string::npos) return false;  // no userinfo tricks
  std::string host = authority;
  if (host.rfind("[::1]", 0) == 0) return host.size() == 5 || host[5] == ':';
  host = host.substr(0, host.find(':'));
  return host == "localhost" || IsLoopbackIpv4(host);
}

// Token endpoints receive secrets (assertions, refresh tokens, subject tokens): https, or
// plain http only to this machine (test stand-ins, local proxies).
Status CheckSecretEndpoint(const std::string& url, std::string_view what, std::string_view origin) {
  if (IsHttpsOrLoopbackHttp(url)) return Status::OK();
  return Status::InvalidArgument(std::string(origin) + ": " + std::string(what) + " " +
                                 RedactUrl(url) +
                                 " is not https (plain http is allowed only to 127.0.0.0/8)");
}

Result<GoogleCredentialFile> ParseServiceAccount(const json& j, std::string_view origin) {
  GoogleServiceAccountKey key;
  MX_ASSIGN_OR_RETURN(key.client_email,
                      RequiredField(j, "client_email", origin, "service_account"));
  MX_ASSIGN_OR_RETURN(key.private_key, RequiredField(j, "private_key", origin, "service_account"));
  MX_ASSIGN_OR_RETURN(key.private_key_id, StringField(j, "private_key_id", origin));
  MX_ASSIGN_OR_RETURN(std::string token_uri, StringField(j, "token_uri", origin));
  if (!token_uri.empty()) key.token_uri = token_uri;
  if (!HeaderSafe(key.client_email) || !HeaderSafe(key.private_key_id)) {
    return Status::InvalidArgument(std::string(origin) +
                                   ": client_email or private_key_id holds control characters");
  }
  MX_RETURN_IF_ERROR(CheckSecretEndpoint(key.token_uri, "token_uri", origin));
  return GoogleCredentialFile(std::move(key));
}

Result<GoogleCredentialFile> ParseAuthorizedUser(const json& j, std::string_view origin) {
  GoogleAuthorizedUser user;
  MX_ASSIGN_OR_RETURN(user.client_id, RequiredField(j, "client_id", origin, "authorized_user"));
  MX_ASSIGN_OR_RETURN(user.client_secret,
                      RequiredField(j, "client_secret", origin, "authorized_user"));
  MX_ASSIGN_OR_RETURN(user.refresh_token,
                      RequiredField(j, "refresh_token", origin, "authorized_user"));
  MX_ASSIGN_OR_RETURN(std::string token_uri, StringField(j, "token_uri", origin));
  if (!token_uri.empty()) user.token_uri = token_uri;
  MX_RETURN_IF_ERROR(CheckSecretEndpoint(user.token_uri, "token_uri", origin));
  return GoogleCredentialFile(std::move(user));
}

Result<GoogleCredentialFile> ParseExternalAccount(const json& j, std::string_view origin) {
  GoogleExternalAccount ext;
  MX_ASSIGN_OR_RETURN(ext.audience, RequiredField(j, "audience", origin, "external_account"));
  MX_ASSIGN_OR_RETURN(ext.subject_token_type,
                      RequiredField(j, "subject_token_type", origin, "external_account"));
  MX_ASSIGN_OR_RETURN(std::string token_url, StringField(j, "token_url", origin));
  if (!token_url.empty()) ext.token_url = token_url;
  MX_RETURN_IF_ERROR(CheckSecretEndpoint(ext.token_url, "token_url", origin));
  MX_ASSIGN_OR_RETURN(ext.service_account_impersonation_url,
                      StringField(j, "service_account_impersonation_url", origin));
  if (!ext.service_account_impersonation_url.empty()) {
    MX_RETURN_IF_ERROR(CheckSecretEndpoint(ext.service_account_impersonation_url,
                                           "service_account_impersonation_url", origin));
  }
  if (auto imp = j.find("service_account_impersonation"); imp != j.end() && imp->is_object()) {
    auto life = imp->find("token_lifetime_seconds");
    if (life != imp->end()) {
      if (!life->is_number_integer() || life->get<int64_t>() < 600 ||
          life->get<int64_t>() > 43200) {
        return Status::InvalidArgument(
            std::string(origin) +
            ": service_account_impersonation.token_lifetime_seconds must be 600..43200");
      }
      ext.impersonation_lifetime_seconds = static_cast<int>(life->get<int64_t>());
    }
  }
  MX_ASSIGN_OR_RETURN(ext.client_id, StringField(j, "client_id", origin));
  MX_ASSIGN_OR_RETURN(ext.client_secret, StringField(j, "client_secret", origin));

  auto src = j.find("credential_source");
  if (src == j.end() || !src->is_object()) {
    return Status::InvalidArgument(std::string(origin) +
                                   ": the external_account file has no credential_source object");
  }
  if (src->contains("environment_id")) {
    return Status::Unimplemented(std::string(origin) +
                                 ": external_account with an AWS credential_source is not "
                                 "supported by mx (use a file or url source)");
  }
  if (src->contains("executable") || src->contains("certificate")) {
    return Status::Unimplemented(std::string(origin) +
                                 ": external_account with an executable or certificate "
                                 "credential_source is not supported by mx");
  }
  MX_ASSIGN_OR_RETURN(ext.source_file, StringField(*src, "file", origin));
  MX_ASSIGN_OR_RETURN(ext.source_url, StringField(*src, "url", origin));
  if (ext.source_file.empty() == ext.source_url.empty()) {
    return Status::InvalidArgument(std::string(origin) +
                                   ": credential_source needs exactly one of file or url");
  }
  if (!ext.source_url.empty()) {
    std::string lower = ext.source_url.substr(0, 8);
    std::transform(lower.begin(), lower.end(), lower.begin(),
                   [](unsigned char c) { return std::tolower(c); });
    if (lower.rfind("http://", 0) != 0 && lower.rfind("https://", 0) != 0) {
      return Status::InvalidArgument(std::string(origin) +
                                     ": credential_source.url is not http(s)");
    }
  }
  if (auto headers = src->find("headers"); headers != src->end() && !headers->is_null()) {
    if (!headers->is_object()) {
      return Status::InvalidArgument(std::string(origin) +
                                     ": credential_source.headers is not an object");
    }
    for (const auto& [name, value] : headers->items()) {
      if (!value.is_string() || !HeaderSafe(name) || !HeaderSafe(value.get<std::string>()) ||
          name.empty() || name.find(':') != std::string::npos) {
        return Status::InvalidArgument(std::string(origin) +
                                       ": credential_source.headers holds an invalid header");
      }
      ext.source_headers.push_back(name + ": " + value.get<std::string>());
    }
  }
  if (auto format = src->find("format"); format != src->end() && !format->is_null()) {
    if (!format->is_object()) {
      return Status::InvalidArgument(std::string(origin) +
                                     ": credential_source.format is not an object");
    }
    MX_ASSIGN_OR_RETURN(std::string type, StringField(*format, "type", origin));
    if (!type.empty()) ext.format_type = type;
    MX_ASSIGN_OR_RETURN(ext.subject_token_field_name,
                        StringField(*format, "subject_token_field_name", origin));
  }
  if (ext.format_type != "text" && ext.format_type != "json") {
    return Status::InvalidArgument(std::string(origin) +
                                   ": credential_source.format.type must be text or json");
  }
  if (ext.format_type == "json" && ext.subject_token_field_name.empty()) {
    return Status::InvalidArgument(std::string(origin) +
                                   ": credential_source.format has no subject_token_field_name");
  }
  return GoogleCredentialFile(std::move(ext));
}

// ---------------------------------------------------------------------------------------
// Token endpoints

// The OAuth error code of a refusal ("invalid_grant"), when it is a short plain word:
// enough to act on, and unlike error_description it cannot carry an echoed secret.
std::string OAuthErrorCode(std::string_view body) {
  json j = json::parse(body.substr(0, 64 << 10), nullptr, false);
  if (j.is_discarded() || !j.is_object()) return "";
  const json& error = j.value("error", json());
  // OAuth: {"error": "invalid_grant"}; Google APIs: {"error": {"status": "PERMISSION_DENIED"}}.
  const json& value = error.is_object() ? error.value("status", json()) : error;
  if (!value.is_string()) return "";
  std::string code = value.get<std::string>();
  bool plain =
      !code.empty() && code.size() <= 64 && std::all_of(code.begin(), code.end(), [](char c) {
        return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
      });
  return plain ? code : "";
}

// One request to a token endpoint: bounded body, no redirects (a redirect would carry the
// secret elsewhere), a few retries on 5xx. A non-200 answer is an error naming `link`, the
// endpoint and the OAuth error code.
Result<http::Response> CallTokenEndpoint(http::Request req, std::string_view link,
                                         std::string_view what) {
  req.follow_redirects = false;
  req.timeout_seconds = 30;
  http::RetryPolicy policy{3, 0.25, 2.0};
  Result<http::Response> r = http::FetchMetadata(req, kMaxTokenBodyBytes, policy);
  if (!r.ok()) {
    return Status(r.status().code(), std::string(link) + ": " + std::string(what) + " " +
                                         RedactUrl(req.url) + ": " + r.status().message());
  }
  if (r->status != 200) {
    std::string code = OAuthErrorCode(r->body);
    std::string msg = std::string(link) + ": " + std::string(what) + " " + RedactUrl(req.url) +
                      " answered HTTP " + std::to_string(r->status) +
                      (code.empty() ? "" : " (" + code + ")");
    if (r->status == 400 || r->status == 401 || r->status == 403) {
      return Status::PermissionDenied(msg);
    }
    return Status::Unavailable(msg);
  }
  return r;
}

http::Request FormPost(std::string url, std::string body) {
  http::Request req;
  req.method = "POST";
  req.url = std::move(url);
  req.body = std::move(body);
  req.headers = {"Content-Type: application/x-www-form-urlencoded", "Accept: application/json"};
  return req;
}

Result<Expiring<std::string>> WithContext(Result<Expiring<std::string>> r, std::string_view link) {
  if (r.ok()) return r;
  return r.status().WithContext(link);
}

Result<std::string> ValidAccessToken(const json& j, const char* field, std::string_view endpoint) {
  auto it = j.find(field);
  if (it == j.end() || !it->is_string() || it->get_ref<const std::string&>().empty()) {
    return Status::InvalidArgument(std::string(endpoint) + ": the answer has no " + field);
  }
  const std::string& token = it->get_ref<const std::string&>();
  if (token.size() > kMaxAccessTokenBytes) {
    return Status::InvalidArgument(std::string(endpoint) + ": " + field + " is over 16 KiB");
  }
  bool ok = std::all_of(token.begin(), token.end(), [](char c) {
    auto u = static_cast<unsigned char>(c);
    return u > 0x20 && u < 0x7f;
  });
  if (!ok) {
    return Status::InvalidArgument(std::string(endpoint) + ": " + field +
                                   " holds characters that cannot go in a header");
  }
  return token;
}

Result<json> ParseAnswer(std::string_view body, std::string_view endpoint) {
  if (body.size() > kMaxTokenBodyBytes) {
    return Status::ResourceExhausted(std::string(endpoint) + ": the token answer is over 1 MiB");
  }
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::InvalidArgument(std::string(endpoint) +
                                   ": the token answer is not a JSON object");
  }
  return j;
}

bool IsRegularFile(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

}  // namespace

// -----------------------------------------------------------------------------------------
// Public parsers

Result<GoogleCredentialFile> ParseGoogleCredentialFile(std::string_view text,
                                                       std::string_view origin) {
  if (text.size() > kMaxCredentialFileBytes) {
    return Status::ResourceExhausted(std::string(origin) + ": the credential file is over 1 MiB");
  }
  json j = json::parse(text, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::InvalidArgument(std::string(origin) +
                                   ": the credential file is not a JSON object");
  }
  MX_ASSIGN_OR_RETURN(std::string type, StringField(j, "type", origin));
  if (type == "service_account") return ParseServiceAccount(j, origin);
  if (type == "authorized_user") return ParseAuthorizedUser(j, origin);
  if (type == "external_account") return ParseExternalAccount(j, origin);
  if (type.empty()) {
    return Status::InvalidArgument(std::string(origin) + ": the credential file has no \"type\"");
  }
  bool printable = type.size() <= 64 && HeaderSafe(type);
  return Status::Unimplemented(std::string(origin) + ": credential type \"" +
                               (printable ? type : std::string("?")) +
                               "\" is not supported by mx (service_account, authorized_user, "
                               "external_account are)");
}

Result<std::string> BuildGoogleJwtAssertion(const GoogleServiceAccountKey& key,
                                            std::string_view scope, std::time_t now) {
  json header = {{"alg", "RS256"}, {"typ", "JWT"}};
  if (!key.private_key_id.empty()) header["kid"] = key.private_key_id;
  json claims = {{"iss", key.client_email},
                 {"scope", std::string(scope)},
                 {"aud", key.token_uri},
                 {"iat", static_cast<int64_t>(now)},
                 {"exp", static_cast<int64_t>(now) + 3600}};
  Result<std::string> jwt = MakeJwtRs256(header.dump(), claims.dump(), key.private_key);
  if (!jwt.ok()) return jwt.status().WithContext("private_key");
  return jwt;
}

Result<Expiring<std::string>> ParseGoogleTokenResponse(std::string_view body,
                                                       std::string_view endpoint, std::time_t now) {
  MX_ASSIGN_OR_RETURN(json j, ParseAnswer(body, endpoint));
  MX_ASSIGN_OR_RETURN(std::string token, ValidAccessToken(j, "access_token", endpoint));
  double lifetime = kDefaultTokenLifetime;
  if (auto it = j.find("expires_in"); it != j.end() && !it->is_null()) {
    if (!it->is_number()) {
      return Status::InvalidArgument(std::string(endpoint) + ": expires_in is not a number");
    }
    lifetime = it->get<double>();
    if (!std::isfinite(lifetime) || lifetime <= 0) {
      return Status::InvalidArgument(std::string(endpoint) + ": expires_in is not positive");
    }
    lifetime = std::min<double>(lifetime, kMaxTokenLifetime);
  }
  return Expiring<std::string>{std::move(token), now + static_cast<std::time_t>(lifetime)};
}

Result<Expiring<std::string>> ParseGoogleImpersonationResponse(std::string_view body,
                                                               std::string_view endpoint,
                                                               std::time_t now) {
  MX_ASSIGN_OR_RETURN(json j, ParseAnswer(body, endpoint));
  MX_ASSIGN_OR_RETURN(std::string token, ValidAccessToken(j, "accessToken", endpoint));
  auto it = j.find("expireTime");
  if (it == j.end() || !it->is_string()) {
    return Status::InvalidArgument(std::string(endpoint) + ": the answer has no expireTime");
  }
  Result<std::time_t> expires = ParseIso8601Utc(it->get_ref<const std::string&>());
  if (!expires.ok()) return expires.status().WithContext(std::string(endpoint) + ": expireTime");
  if (*expires <= now) {
    return Status::InvalidArgument(std::string(endpoint) + ": expireTime is in the past");
  }
  return Expiring<std::string>{std::move(token),
                               std::min<std::time_t>(*expires, now + kMaxTokenLifetime)};
}

// -----------------------------------------------------------------------------------------
// The chain

struct GoogleCredentialProvider::Chain {
  std::string source;
  std::unique_ptr<TokenCache<std::string>> cache;
};

namespace {

using Fetcher = TokenCache<std::string>::Fetcher;

Fetcher ServiceAccountFetcher(GoogleServiceAccountKey key, std::string scope, std::string link) {
  return [key = std::move(key), scope = std::move(scope),
          link = std::move(link)]() -> Result<Expiring<std::string>> {
    std::time_t now = std::time(nullptr);
    Result<std::string> assertion = BuildGoogleJwtAssertion(key, scope, now);
    if (!assertion.ok()) return assertion.status().WithContext(link);
    http::Request req = FormPost(
        key.token_uri, FormEncode({{"grant_type", kJwtBearerGrant}, {"assertion", *assertion}}));
    MX_ASSIGN_OR_RETURN(http::Response r, CallTokenEndpoint(req, link, "token endpoint"));
    return WithContext(
        ParseGoogleTokenResponse(r.body, RedactUrl(key.token_uri), std::time(nullptr)), link);
  };
}

Fetcher AuthorizedUserFetcher(GoogleAuthorizedUser user, std::string link) {
  return [user = std::move(user), link = std::move(link)]() -> Result<Expiring<std::string>> {
    http::Request req = FormPost(user.token_uri, FormEncode({{"refresh_token", user.refresh_token},
                                                             {"client_id", user.client_id},
                                                             {"client_secret", user.client_secret},
                                                             {"grant_type", "refresh_token"}}));
    MX_ASSIGN_OR_RETURN(http::Response r, CallTokenEndpoint(req, link, "token endpoint"));
    return WithContext(
        ParseGoogleTokenResponse(r.body, RedactUrl(user.token_uri), std::time(nullptr)), link);
  };
}

// The external account's subject token: read afresh on every exchange (the platform
// rotates the file; the URL answers the current token).
Result<std::string> SubjectToken(const GoogleExternalAccount& ext, std::string_view link) {
  std::string text;
  std::string where;
  if (!ext.source_file.empty()) {
    where = "credential_source.file " + ext.source_file;
    if (ext.format_type == "text") {
      Result<std::string> token = ReadTokenFile(ext.source_file, "credential_source.file");
      if (!token.ok()) return token.status().WithContext(link);
      text = std::move(*token);
    } else {
      Result<std::string> body = ReadFile(ext.source_file, 64 << 10);
      if (!body.ok()) return body.status().WithContext(std::string(link) + ": " + where);
      text = std::move(*body);
    }
  } else {
    where = "credential_source.url " + RedactUrl(ext.source_url);
    http::Request req;
    req.url = ext.source_url;
    req.headers = ext.source_headers;
    req.follow_redirects = false;
    req.timeout_seconds = 10;
    Result<http::Response> r = http::FetchMetadata(req, 64 << 10, http::RetryPolicy{3, 0.25, 2.0});
    if (!r.ok()) return r.status().WithContext(link);
    if (r->status != 200) {
      return Status::PermissionDenied(std::string(link) + ": " + where + " answered HTTP " +
                                      std::to_string(r->status));
    }
    text = std::move(r->body);
    if (ext.format_type == "text") {
      while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
        text.pop_back();
    }
  }
  if (ext.format_type == "json") {
    json j = json::parse(text, nullptr, false);
    auto it = j.is_object() ? j.find(ext.subject_token_field_name) : j.end();
    if (j.is_discarded() || !j.is_object() || it == j.end() || !it->is_string()) {
      return Status::InvalidArgument(std::string(link) + ": " + where + " has no string field \"" +
                                     ext.subject_token_field_name + "\"");
    }
    text = it->get<std::string>();
  }
  if (text.empty()) {
    return Status::InvalidArgument(std::string(link) + ": " + where +
                                   " gave an empty subject token");
  }
  return text;
}

Fetcher ExternalAccountFetcher(GoogleExternalAccount ext, std::string scope, std::string link) {
  return [ext = std::move(ext), scope = std::move(scope),
          link = std::move(link)]() -> Result<Expiring<std::string>> {
    MX_ASSIGN_OR_RETURN(std::string subject, SubjectToken(ext, link));
    bool impersonate = !ext.service_account_impersonation_url.empty();
    // google-auth asks STS for cloud-platform when it will impersonate (the scope then
    // goes on the generateAccessToken call), else for the caller's scopes.
    http::Request req =
        FormPost(ext.token_url, FormEncode({{"grant_type", kTokenExchangeGrant},
                                            {"audience", ext.audience},
                                            {"scope", impersonate ? kCloudPlatformScope : scope},
                                            {"requested_token_type", kAccessTokenType},
                                            {"subject_token", subject},
                                            {"subject_token_type", ext.subject_token_type}}));
    if (!ext.client_id.empty()) {
      req.headers.push_back("Authorization: Basic " +
                            Base64Encode(ext.client_id + ":" + ext.client_secret));
    }
    MX_ASSIGN_OR_RETURN(http::Response r, CallTokenEndpoint(req, link, "STS token endpoint"));
    Result<Expiring<std::string>> sts =
        ParseGoogleTokenResponse(r.body, RedactUrl(ext.token_url), std::time(nullptr));
    if (!sts.ok() || !impersonate) return WithContext(std::move(sts), link);

    http::Request imp;
    imp.method = "POST";
    imp.url = ext.service_account_impersonation_url;
    imp.headers = {"Content-Type: application/json", "Accept: application/json",
                   "Authorization: Bearer " + sts->value};
    imp.body = json{{"scope", json::array({scope})},
                    {"lifetime", std::to_string(ext.impersonation_lifetime_seconds) + "s"}}
                   .dump();
    MX_ASSIGN_OR_RETURN(http::Response ir,
                        CallTokenEndpoint(imp, link, "service account impersonation endpoint"));
    return WithContext(
        ParseGoogleImpersonationResponse(ir.body, RedactUrl(ext.service_account_impersonation_url),
                                         std::time(nullptr)),
        link);
  };
}

Fetcher MetadataFetcher(std::string base, std::string scope, std::string link) {
  return [base = std::move(base), scope = std::move(scope),
          link = std::move(link)]() -> Result<Expiring<std::string>> {
    http::Request req;
    req.url = base + "/computeMetadata/v1/instance/service-accounts/default/token?scopes=" +
              http::UrlQuote(scope);
    req.headers = {"Metadata-Flavor: Google"};
    MX_ASSIGN_OR_RETURN(http::Response r, CallTokenEndpoint(req, link, "metadata server"));
    return WithContext(ParseGoogleTokenResponse(r.body, RedactUrl(req.url), std::time(nullptr)),
                       link);
  };
}

std::string LinkName(const GoogleCredentialFile& file) {
  if (std::holds_alternative<GoogleServiceAccountKey>(file)) return "service account key file";
  if (std::holds_alternative<GoogleAuthorizedUser>(file)) return "authorized user file";
  return "external account file";
}

}  // namespace

GoogleCredentialProvider::GoogleCredentialProvider() : GoogleCredentialProvider(Options{}) {}
GoogleCredentialProvider::GoogleCredentialProvider(Options options) : options_(std::move(options)) {
  if (!options_.env) options_.env = [](const char* name) { return GetEnv(name); };
}
GoogleCredentialProvider::~GoogleCredentialProvider() = default;

Status GoogleCredentialProvider::Resolve() {
  auto env = [this](const char* name) -> std::string {
    std::optional<std::string> v = options_.env(name);
    return v ? *v : "";
  };
  const std::string& scope = options_.scope;

  // A credential file: where it came from decides only the wording of Source() and errors.
  auto load = [&](const std::string& path, const std::string& origin) -> Status {
    Result<std::string> text = ReadFile(path, kMaxCredentialFileBytes);
    if (!text.ok()) {
      return Status(text.status().code(), "cannot read the credential file named by " + origin +
                                              ": " + text.status().message());
    }
    MX_ASSIGN_OR_RETURN(GoogleCredentialFile file, ParseGoogleCredentialFile(*text, origin));
    auto chain = std::make_unique<Chain>();
    std::string link = LinkName(file) + " (" + origin + ")";
    Fetcher fetch;
    if (auto* key = std::get_if<GoogleServiceAccountKey>(&file)) {
      // A key that cannot sign is a broken link now, not at the first read.
      Result<std::string> probe = BuildGoogleJwtAssertion(*key, scope, std::time(nullptr));
      if (!probe.ok())
        return probe.status().WithContext("service account key file (" + origin + ")");
      chain->source = "service account key file: " + key->client_email + " (" + origin + ")";
      fetch = ServiceAccountFetcher(*key, scope, link);
    } else if (auto* user = std::get_if<GoogleAuthorizedUser>(&file)) {
      chain->source = "authorized user (refresh token) file (" + origin + ")";
      fetch = AuthorizedUserFetcher(*user, link);
    } else {
      auto& ext = std::get<GoogleExternalAccount>(file);
      chain->source = "external account (workload identity federation): audience " + ext.audience +
                      ", subject token from " +
                      (ext.source_file.empty() ? "url " + RedactUrl(ext.source_url)
                                               : "file " + ext.source_file);
      if (!ext.service_account_impersonation_url.empty()) {
        std::string url = ext.service_account_impersonation_url;
        size_t at = url.find("serviceAccounts/");
        std::string email = at == std::string::npos ? RedactUrl(url) : url.substr(at + 16);
        email = email.substr(0, email.find(':'));
        chain->source += ", impersonating " + email;
      }
      chain->source += " (" + origin + ")";
      fetch = ExternalAccountFetcher(ext, scope, link);
    }
    chain->cache = std::make_unique<TokenCache<std::string>>(std::move(fetch));
    chain_ = std::move(chain);
    return Status::OK();
  };

  // 1. GOOGLE_APPLICATION_CREDENTIALS (google-auth also reads the lowercase spelling).
  std::string gac = env("GOOGLE_APPLICATION_CREDENTIALS");
  if (gac.empty()) gac = env("google_application_credentials");
  if (!gac.empty()) return load(gac, "GOOGLE_APPLICATION_CREDENTIALS " + gac);
  tried_ = "GOOGLE_APPLICATION_CREDENTIALS (unset)";

  // 2. gcloud's ADC file.
  std::string dir = env("CLOUDSDK_CONFIG");
  if (dir.empty() && !env("HOME").empty()) dir = env("HOME") + "/.config/gcloud";
  if (!dir.empty()) {
    std::string path = dir + "/" + kAdcFileName;
    if (IsRegularFile(path)) return load(path, "gcloud ADC file " + path);
    tried_ += ", " + path + " (absent)";
  }

  // 3. The metadata server.
  std::string detection = env("METADATA_SERVER_DETECTION");
  std::transform(detection.begin(), detection.end(), detection.begin(),
                 [](unsigned char c) { return std::tolower(c); });
  std::string host = env("GCE_METADATA_IP");
  std::string host_var = "GCE_METADATA_IP";
  if (host.empty()) {
    host = env("GCE_METADATA_HOST");
    host_var = "GCE_METADATA_HOST";
  }
  if (host.empty()) {
    host = "169.254.169.254";
    host_var.clear();
  }
  std::string base = host.find("://") == std::string::npos ? "http://" + host : host;
  while (!base.empty() && base.back() == '/') base.pop_back();
  std::string where = host_var.empty() ? "metadata server " + host
                                       : "metadata server " + host + " (" + host_var + ")";
  bool present = false;
  if (detection == "none") {
    tried_ += ", metadata server (METADATA_SERVER_DETECTION=none)";
    return Status::OK();
  } else if (detection == "assume-present") {
    present = true;
  } else if (!detection.empty() && detection != "ping-only" && detection != "bios-only") {
    return Status::InvalidArgument(
        "METADATA_SERVER_DETECTION must be assume-present, none, "
        "bios-only or ping-only");
  } else {
    // google-auth's residency test (serverless variables, a Google BIOS) first, then a ping.
    bool resident = !env("CLOUD_RUN_JOB").empty() || !env("FUNCTION_NAME").empty() ||
                    !env("K_SERVICE").empty() || !env("CLOUD_RUN_WORKER_POOL").empty();
    if (!resident && IsRegularFile("/sys/class/dmi/id/bios_date")) {
      Result<std::string> vendor = ReadFile("/sys/class/dmi/id/bios_vendor", 4096);
      resident = vendor.ok() && vendor->find("Google") != std::string::npos;
    }
    present = resident;
    if (!present && detection != "bios-only") {
      // Off Google Cloud nothing answers: fail fast (GCE_METADATA_TIMEOUT seconds, as in
      // google-auth for Python; default 1).
      long timeout = 1;
      if (std::string t = env("GCE_METADATA_TIMEOUT"); !t.empty()) {
        Result<int64_t> v = ParseIntInRange("GCE_METADATA_TIMEOUT", t, 1, 60);
        if (!v.ok()) return v.status();
        timeout = static_cast<long>(*v);
      }
      http::Request ping;
      ping.url = base + "/computeMetadata/v1/instance";
      ping.headers = {"Metadata-Flavor: Google"};
      ping.follow_redirects = false;
      ping.timeout_seconds = timeout;
      Result<http::Response> r = http::FetchMetadata(ping, 64 << 10, http::RetryPolicy{1, 0, 0});
      present = r.ok() && r->status == 200 && r->Header("metadata-flavor") == "Google";
    }
  }
  if (!present) {
    tried_ += ", " + where + " (no answer)";
    return Status::OK();
  }
  auto chain = std::make_unique<Chain>();
  chain->source = "metadata server: default service account (" +
                  (host_var.empty() ? host : host_var + "=" + host) + ")";
  chain->cache = std::make_unique<TokenCache<std::string>>(MetadataFetcher(base, scope, where));
  chain_ = std::move(chain);
  return Status::OK();
}

Result<bool> GoogleCredentialProvider::Found() {
  std::lock_guard<std::mutex> lock(resolve_mu_);
  if (!resolved_) {
    resolve_status_ = Resolve();
    resolved_ = true;
  }
  if (!resolve_status_.ok()) return resolve_status_;
  return chain_ != nullptr;
}

Result<std::string> GoogleCredentialProvider::Get() {
  MX_ASSIGN_OR_RETURN(bool found, Found());
  if (!found) {
    return Status::FailedPrecondition("no Google credentials found; tried " + tried_);
  }
  return chain_->cache->Get();
}

void GoogleCredentialProvider::Invalidate() {
  Result<bool> found = Found();
  if (found.ok() && *found) chain_->cache->Invalidate();
}

Result<std::string> GoogleCredentialProvider::Source() {
  MX_ASSIGN_OR_RETURN(bool found, Found());
  if (!found) return "anonymous: nothing found; tried " + tried_;
  return chain_->source;
}

bool GoogleCredentialProvider::Refreshable() {
  Result<bool> found = Found();
  return found.ok() && *found;
}

}  // namespace mx::cloud
