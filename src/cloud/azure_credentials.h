// Azure identities for Blob Storage, in the order mx tries them (README "Azure (Blob)"):
//
//  1. Storage-native secrets, which need no token endpoint:
//     an account key (AZURE_STORAGE_KEY, or the Dynamo guide's AZURE_ACCOUNT_KEY), a
//     connection string (AZURE_STORAGE_CONNECTION_STRING, UseDevelopmentStorage=true
//     included), a SAS (AZURE_STORAGE_SAS_TOKEN). See AzureStorageConfigFromEnvironment.
//  2. Otherwise the token chain of azure-identity's DefaultAzureCredential, for the scope
//     https://storage.azure.com/.default (AzureCredentialProvider):
//       EnvironmentCredential       AZURE_TENANT_ID + AZURE_CLIENT_ID + AZURE_CLIENT_SECRET,
//                                   or + AZURE_CLIENT_CERTIFICATE_PATH (PEM key + cert)
//       WorkloadIdentityCredential  AZURE_FEDERATED_TOKEN_FILE + AZURE_CLIENT_ID +
//                                   AZURE_TENANT_ID (the file is read again for each token)
//       ManagedIdentityCredential   App Service (IDENTITY_ENDPOINT + IDENTITY_HEADER), else
//                                   IMDS (AZURE_POD_IDENTITY_AUTHORITY_HOST or
//                                   169.254.169.254); AZURE_CLIENT_ID picks a user-assigned
//                                   identity
//     AZURE_AUTHORITY_HOST replaces https://login.microsoftonline.com. The SDK's developer
//     credentials (Azure CLI, PowerShell, VS Code, azd) are not part of mx.
//  3. Nothing found (no variable, no IMDS answering): anonymous reads (public containers).
//
// A link whose variables are set but that fails is an error naming the link and the
// endpoint; mx never falls through from a configured link to a later one or to anonymous.
// IMDS is the exception, as in the SDK: it is "configured" only when it answers (nothing
// listening, or a 400 "no identity" for a system-assigned request, ends the chain).
// The provider follows token_cache.h's contract (cached, refreshed kRefreshMargin before
// expiry, Invalidate() after a 401/403, thread-safe, no secret in any message).
#pragma once

#include <ctime>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "cloud/token_cache.h"
#include "common/status.h"

namespace mx::cloud {

inline constexpr char kAzureStorageScope[] = "https://storage.azure.com/.default";
inline constexpr char kAzureStorageResource[] = "https://storage.azure.com";
inline constexpr char kAzureDefaultAuthorityHost[] = "https://login.microsoftonline.com";
inline constexpr char kAzureImdsHost[] = "http://169.254.169.254";

// Azurite's well-known development account (public, documented by Microsoft).
inline constexpr char kAzuriteAccount[] = "devstoreaccount1";
inline constexpr char kAzuriteKey[] =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
inline constexpr char kAzuriteBlobEndpoint[] = "http://127.0.0.1:10000/devstoreaccount1";

// The fields of a storage connection string mx uses ("Key=Value;..." with keys matched
// case-insensitively, values may contain '='). UseDevelopmentStorage=true expands to
// Azurite's account, key and blob endpoint (DevelopmentStorageProxyUri is not supported).
struct AzureConnectionString {
  std::string account;
  std::string account_key;  // base64, as written
  std::string sas;          // SharedAccessSignature, without a leading '?'
  std::string blob_endpoint;
  std::string protocol = "https";  // DefaultEndpointsProtocol
  std::string endpoint_suffix = "core.windows.net";
  bool development_storage = false;
};
// InvalidArgument naming the variable (never quoting the text: it holds the key).
Result<AzureConnectionString> ParseAzureConnectionString(std::string_view text);

// What the storage backend needs before any token: the account, the blob endpoint and a
// storage-native secret when one is configured.
struct AzureStorageConfig {
  std::string account;     // may be empty when an endpoint is given
  std::string endpoint;    // scheme://host[:port][/path], no trailing slash
  std::string shared_key;  // decoded account key; empty when none
  std::string sas;         // without '?'; empty when none
  // Where the secret came from, for --explain-credentials ("account key (AZURE_STORAGE_KEY)");
  // empty when neither a key nor a SAS is configured (the token chain decides).
  std::string source;
};
// Account: AZURE_STORAGE_ACCOUNT, else AZURE_ACCOUNT_NAME, else the connection string's.
// Key: AZURE_STORAGE_KEY, else AZURE_ACCOUNT_KEY, else the connection string's; a key
// wins over a SAS (the connection string's, else AZURE_STORAGE_SAS_TOKEN). Endpoint:
// AZURE_STORAGE_BLOB_ENDPOINT, else the connection string's, else
// https://<account>.blob.core.windows.net.
Result<AzureStorageConfig> AzureStorageConfigFromEnvironment(const EnvLookup& env);

// A token endpoint's answer. Azure AD: {"token_type":"Bearer","expires_in":3599,
// "access_token":"..."} (expires_in a number or a numeric string). Managed identity (IMDS,
// App Service): expires_on as epoch seconds (a string, or a number), else expires_in.
// Validates types, the token's characters (it goes into a header) and size, and that the
// expiry is in the future and at most a week after `now`.
Result<Expiring<std::string>> ParseAzureAdTokenAnswer(std::string_view body, std::time_t now);
Result<Expiring<std::string>> ParseManagedIdentityTokenAnswer(std::string_view body,
                                                              std::time_t now);

// The client assertion of a certificate credential (RFC 7523): a JWT signed RS256 with the
// PEM's private key, header {"alg":"RS256","typ":"JWT","x5t":<SHA-1 thumbprint of the
// certificate DER, base64url>,"x5t#S256":<SHA-256 thumbprint>}, claims aud=<token
// endpoint>, iss=sub=<client id>, jti, nbf=iat=now, exp=now+600. `pem` holds the private
// key and the certificate (any order); `password` decrypts an encrypted key.
Result<std::string> MakeAzureClientAssertion(std::string_view pem, const std::string& password,
                                             const std::string& client_id,
                                             const std::string& audience, std::time_t now);

// The DefaultAzureCredential token chain (see the top of this file).
class AzureCredentialProvider {
 public:
  enum class Link {
    kNone,
    kClientSecret,
    kClientCertificate,
    kWorkloadIdentity,
    kAppService,
    kImds
  };

  // Picks the link from the environment without any network access. An error when a link
  // is configured in a way mx cannot use (a variable holding a malformed URL, a managed
  // identity source mx does not implement).
  static Result<std::unique_ptr<AzureCredentialProvider>> FromEnvironment(
      const EnvLookup& env = ProcessEnvironment());
  ~AzureCredentialProvider();

  // A bearer token valid for at least kRefreshMargin. NotFound when no link is available
  // (no variables and no IMDS answering): the caller may read anonymously; that answer is
  // remembered. Any other error means a configured link failed.
  Result<std::string> Get();
  // Drops the cached token (a 401/403): the next Get() fetches a new one.
  void Invalidate();
  // The link, in the SDK's terms, with ids but no secret.
  std::string Source() const;
  // What the chain looked at, for "anonymous: nothing found; tried ...".
  std::string Tried() const;
  Link link() const { return link_; }

 private:
  AzureCredentialProvider() = default;
  Result<Expiring<std::string>> Fetch();
  Result<Expiring<std::string>> FetchFromAzureAd();
  Result<Expiring<std::string>> FetchFromManagedIdentity();

  Link link_ = Link::kNone;
  std::string tenant_id_, client_id_;
  std::string client_secret_;
  std::string certificate_path_, certificate_password_;
  std::string token_file_;
  std::string authority_host_;     // no trailing slash
  std::string identity_endpoint_;  // App Service or IMDS token URL (no query)
  std::string identity_header_;    // App Service's secret header value
  std::string endpoint_variable_;  // the variable that named identity_endpoint_
  bool probe_imds_ = false;        // the default IMDS address: probe it first
  bool imds_absent_ = false;       // probed, nothing there (sticky)
  mutable std::mutex tried_mu_;
  std::vector<std::string> tried_;  // guarded by tried_mu_
  std::unique_ptr<TokenCache<std::string>> cache_;
};

}  // namespace mx::cloud
