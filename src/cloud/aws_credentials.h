// The AWS default credential chain, in the order of the JS SDK's fromNodeProviderChain
// (@aws-sdk/credential-provider-node defaultProvider), which the tests use as the oracle:
//
//   1. environment: AWS_ACCESS_KEY_ID + AWS_SECRET_ACCESS_KEY (+ AWS_SESSION_TOKEN);
//      skipped when AWS_PROFILE is set (the JS SDK then prefers the profile; boto3 does not).
//   2. shared files: profile AWS_PROFILE (else "default") of AWS_CONFIG_FILE ([profile x])
//      merged under AWS_SHARED_CREDENTIALS_FILE ([x]): static keys, or role_arn +
//      web_identity_token_file (STS AssumeRoleWithWebIdentity).
//   3. web identity (IRSA): AWS_ROLE_ARN + AWS_WEB_IDENTITY_TOKEN_FILE
//      (+ AWS_ROLE_SESSION_NAME). boto3 tries this before the shared files; the JS SDK after.
//   4. container: AWS_CONTAINER_CREDENTIALS_RELATIVE_URI (ECS, 169.254.170.2) or
//      AWS_CONTAINER_CREDENTIALS_FULL_URI (EKS Pod Identity; https, loopback or the EKS/ECS
//      hosts only) with AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE or _TOKEN.
//   5. EC2 instance metadata (IMDSv2, v1 fallback as the SDK does), unless
//      AWS_EC2_METADATA_DISABLED; AWS_EC2_METADATA_SERVICE_ENDPOINT overrides the address.
//
// A link that is not configured is skipped; a link that is configured but broken (STS
// refuses, the token file is missing, the container endpoint answers garbage) is an error
// naming the link and the endpoint, never a silent fall to anonymous. When no link
// supplies an identity (instance metadata absent), Get() returns an anonymous credential
// (empty access key id): requests then go unsigned, for public buckets.
//
// STS is reached at AWS_ENDPOINT_URL_STS, else AWS_ENDPOINT_URL, else
// https://sts.<region>.amazonaws.com (region: AWS_REGION, AWS_DEFAULT_REGION, the profile's
// region, us-east-1). Temporary credentials are cached and refreshed kRefreshMargin before
// they expire (see token_cache.h for the provider contract). Thread-safe.
#pragma once

#include <ctime>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>

#include "cloud/token_cache.h"
#include "common/status.h"

namespace mx::cloud {

struct AwsCredentials {
  std::string access_key_id;  // empty: anonymous (nothing in the chain)
  std::string secret_access_key;
  std::string session_token;  // empty for long-term keys

  bool anonymous() const { return access_key_id.empty(); }
};

// --- Wire formats, exposed for the unit tests -----------------------------------------

// The body of an STS AssumeRoleWithWebIdentity answer (AWS query protocol, XML):
// Credentials/{AccessKeyId,SecretAccessKey,SessionToken,Expiration}. Every field is
// required; an expiry at or before `now` is an error.
Result<Expiring<AwsCredentials>> ParseStsCredentials(std::string_view xml, std::time_t now);

// "Code: Message" of an STS <ErrorResponse> (bounded, printable, every occurrence of
// `redact` replaced), or "" when there is none.
std::string StsErrorSummary(std::string_view xml, std::string_view redact = {});

// The JSON of the container endpoint and of instance metadata:
// {AccessKeyId, SecretAccessKey, Token, Expiration[, Code]}; Code, when present, must be
// "Success". Types, sizes and expiry are checked.
Result<Expiring<AwsCredentials>> ParseAwsCredentialJson(std::string_view json, std::time_t now);

// Profiles of a shared file: name -> key -> value. In a config file (`config_file`) only
// [default], [profile x] and [profile default] are profiles; in a credentials file every
// [x] is. Comments (# and ; at a line start or after a space) and indented sub-sections
// (`s3 =` then indented keys) are dropped.
using AwsProfiles = std::map<std::string, std::map<std::string, std::string>>;
AwsProfiles ParseAwsIni(std::string_view text, bool config_file);

// OK when the SDK would call this container credentials URL: https, or http to a loopback
// address (127.0.0.0/8, [::1], localhost) or to the ECS/EKS hosts (169.254.170.2,
// 169.254.170.23, [fd00:ec2::23]).
Status CheckContainerUrl(std::string_view url);

// --- The chain ----------------------------------------------------------------------

class AwsCredentialProvider {
 public:
  // The chain as the environment configures it (the process environment by default). No
  // network is touched here; files are read (shared files), token files are read per fetch.
  static std::shared_ptr<AwsCredentialProvider> FromEnvironment(EnvLookup env = nullptr);

  ~AwsCredentialProvider();
  AwsCredentialProvider(const AwsCredentialProvider&) = delete;
  AwsCredentialProvider& operator=(const AwsCredentialProvider&) = delete;

  // A credential valid for at least kRefreshMargin, anonymous when the chain is empty, or
  // the error of a configured but broken link (naming the link and the endpoint).
  Result<AwsCredentials> Get();

  // Drops the cached credential (an S3 401/403): the next Get() fetches again.
  void Invalidate();

  // True when Invalidate() may lead to a different credential (STS, container, instance
  // metadata); false for static keys and anonymous access.
  bool Refreshable() const;

  // Which link supplies the identity, without secrets. For instance metadata it is only
  // final after a Get() (the role name, or anonymous when the service is absent).
  std::string Source() const;

  // The region of the selected profile in the config file ("" when none).
  std::string ProfileRegion() const;

  struct Link;  // the selected link (defined in the .cc)

 private:
  explicit AwsCredentialProvider(std::unique_ptr<Link> link);
  Result<Expiring<AwsCredentials>> Fetch();

  std::unique_ptr<Link> link_;
  mutable std::mutex mu_;  // guards the fields below, which Fetch() learns
  std::string imds_role_;
  bool imds_absent_ = false;
  TokenCache<AwsCredentials> cache_;
};

}  // namespace mx::cloud
