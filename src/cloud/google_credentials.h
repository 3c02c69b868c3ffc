// The Google default credential chain (Application Default Credentials), in
// google-auth-library's order:
//   1. GOOGLE_APPLICATION_CREDENTIALS: a JSON file of type service_account (an RS256-signed
//      JWT assertion exchanged at its token_uri), authorized_user (a refresh_token grant) or
//      external_account (workload identity federation: a subject token from a file or URL,
//      exchanged at the STS token_url, optionally impersonating a service account);
//   2. gcloud's ADC file, $CLOUDSDK_CONFIG/application_default_credentials.json, else
//      $HOME/.config/gcloud/application_default_credentials.json (same three types);
//   3. the metadata server (GCE, GKE Workload Identity): GCE_METADATA_HOST or
//      GCE_METADATA_IP, else 169.254.169.254; METADATA_SERVER_DETECTION=none skips it,
//      assume-present skips the probe.
// A link that is configured but fails (an unreadable key file, a token endpoint refusing)
// is an error naming the link and the endpoint; it never falls through to the next link.
// Nothing found is not an error: Found() is false and Source() lists what was tried.
//
// Provider contract: see token_cache.h (Get/Invalidate/Source, refresh kRefreshMargin
// before expiry, thread-safe, no secret in any message).
#pragma once

#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "cloud/token_cache.h"
#include "common/status.h"

namespace mx::cloud {

// What mx asks for: it only reads objects. google-auth sends the scopes its caller gives;
// the oracle (tests/sdk_oracle/google.mjs) is given this one.
inline constexpr char kGcsReadOnlyScope[] = "https://www.googleapis.com/auth/devstorage.read_only";
inline constexpr char kCloudPlatformScope[] = "https://www.googleapis.com/auth/cloud-platform";
inline constexpr char kGoogleTokenUrl[] = "https://oauth2.googleapis.com/token";

// A `service_account` key file.
struct GoogleServiceAccountKey {
  std::string client_email;
  std::string private_key;  // PEM (PKCS#8 "PRIVATE KEY" or PKCS#1 "RSA PRIVATE KEY")
  std::string private_key_id;
  std::string token_uri = kGoogleTokenUrl;
};

// An `authorized_user` file (what `gcloud auth application-default login` writes).
struct GoogleAuthorizedUser {
  std::string client_id;
  std::string client_secret;
  std::string refresh_token;
  std::string token_uri = kGoogleTokenUrl;
};

// An `external_account` file (workload identity federation, identity-pool sources).
struct GoogleExternalAccount {
  std::string audience;
  std::string subject_token_type;
  std::string token_url = "https://sts.googleapis.com/v1/token";
  std::string service_account_impersonation_url;  // empty: use the STS token itself
  int impersonation_lifetime_seconds = 3600;
  std::string client_id, client_secret;  // optional: HTTP Basic on the STS request
  // credential_source: exactly one of file / url.
  std::string source_file;
  std::string source_url;
  std::vector<std::string> source_headers;  // "Name: value" (url sources)
  std::string format_type = "text";         // "text" or "json"
  std::string subject_token_field_name;     // json format
};

using GoogleCredentialFile =
    std::variant<GoogleServiceAccountKey, GoogleAuthorizedUser, GoogleExternalAccount>;

// Parses a credential JSON file's text. `origin` names where it came from (e.g.
// "GOOGLE_APPLICATION_CREDENTIALS (/path)") for errors; no field value is quoted in them.
// Types mx does not implement (impersonated_service_account, external_account with an AWS,
// executable or certificate source, ...) are Unimplemented, naming the type.
Result<GoogleCredentialFile> ParseGoogleCredentialFile(std::string_view json,
                                                       std::string_view origin);

// The signed JWT assertion of the service-account flow: header {"alg":"RS256","typ":"JWT"
// [,"kid"]}, claims {iss, scope, aud=token_uri, iat=now, exp=now+3600}, RS256 over
// base64url(header).base64url(claims) with the key's private_key.
Result<std::string> BuildGoogleJwtAssertion(const GoogleServiceAccountKey& key,
                                            std::string_view scope, std::time_t now);

// An OAuth token answer {"access_token": "...", "expires_in": N}: the token must be a
// non-empty header-safe string (at most 16 KiB); expires_in a positive number (absent:
// 3600 s; above 24 h: capped at 24 h). `endpoint` names the server in errors.
Result<Expiring<std::string>> ParseGoogleTokenResponse(std::string_view body,
                                                       std::string_view endpoint, std::time_t now);
// The IAM Credentials generateAccessToken answer {"accessToken", "expireTime" (RFC 3339)}.
Result<Expiring<std::string>> ParseGoogleImpersonationResponse(std::string_view body,
                                                               std::string_view endpoint,
                                                               std::time_t now);

// One Google identity for GCS reads. Cheap to construct: the chain is resolved on first
// use (Found/Get/Source) and once; every later call shares that answer.
class GoogleCredentialProvider {
 public:
  // Environment lookup, injectable so tests can resolve the chain without touching the
  // process environment. Default: the process environment.
  struct Options {
    std::string scope = kGcsReadOnlyScope;
    EnvLookup env;  // empty: GetEnv
  };

  GoogleCredentialProvider();
  explicit GoogleCredentialProvider(Options options);
  ~GoogleCredentialProvider();
  GoogleCredentialProvider(const GoogleCredentialProvider&) = delete;
  GoogleCredentialProvider& operator=(const GoogleCredentialProvider&) = delete;

  // True when a link supplied an identity; false when the chain found nothing (anonymous);
  // an error when a configured link is broken (bad file, bad key).
  Result<bool> Found();

  // A bearer token valid for at least kRefreshMargin. FailedPrecondition when Found() is
  // false; an error naming the link and the endpoint when the token cannot be had.
  Result<std::string> Get();

  // Drops the cached token (a 401/403); the next Get() fetches a fresh one.
  void Invalidate();

  // Which link supplies the identity, e.g. "service account key file: sa@p.iam.gserviceaccount.com
  // (GOOGLE_APPLICATION_CREDENTIALS)"; "anonymous: nothing found; tried ..." when none did.
  // Never a secret.
  Result<std::string> Source();

  // True when Get() can mint another token (every link mx implements can).
  bool Refreshable();

 private:
  struct Chain;
  Status Resolve();  // under resolve_mu_, once

  Options options_;
  std::mutex resolve_mu_;
  bool resolved_ = false;
  Status resolve_status_;
  std::unique_ptr<Chain> chain_;  // null when nothing was found
  std::string tried_;             // what the chain looked at, for "nothing found"
};

}  // namespace mx::cloud
