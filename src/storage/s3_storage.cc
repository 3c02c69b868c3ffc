// S3 and GCS (XML API, S3-compatible): ListObjectsV2 for prefixes, SigV4-signed ranged GETs.
#include <algorithm>
#include <ctime>
#include <functional>
#include <map>
#include <mutex>
#include <optional>

#include "cloud/aws_credentials.h"
#include "cloud/google_credentials.h"
#include "common/env.h"
#include "common/hash.h"
#include "http/http.h"
#include "storage/backends.h"
#include "storage/signing.h"

namespace mx::storage {
namespace {

struct S3Config {
  std::string scheme;    // "s3" or "gs"
  std::string endpoint;  // scheme://host[:port], no trailing slash
  bool path_style = true;
  std::string region = "us-east-1";
  std::string access_key, secret_key, session_token;
  std::string bearer_token;  // GCS OAuth token instead of HMAC keys
  // The cloud's default credential chain (src/cloud), for the scheme in use.
  std::shared_ptr<cloud::AwsCredentialProvider> aws;        // s3
  std::shared_ptr<cloud::GoogleCredentialProvider> google;  // gs
};

extern "C" char** environ;

// One default-chain provider per process for each state of the environment the chain reads
// (every variable whose name starts with one of `prefixes`): stores opened alike share its
// cached credential, so a command (the streamer and its --verify reader) or mx-server (a store
// per request) fetches a token once, not once per store, and two stores never race to
// exchange the same rotating subject token. Changed settings give a new provider.
template <typename P>
std::shared_ptr<P> SharedProvider(std::initializer_list<std::string_view> prefixes,
                                  const std::function<std::shared_ptr<P>()>& make) {
  std::string settings;
  for (char** e = environ; e != nullptr && *e != nullptr; ++e) {
    std::string_view entry(*e);
    for (std::string_view prefix : prefixes) {
      if (entry.substr(0, prefix.size()) == prefix) {
        settings.append(entry).push_back('\0');
        break;
      }
    }
  }
  std::string key = Sha256Hex(settings);  // the values include secrets: only a digest is kept
  static std::mutex mu;
  static std::map<std::string, std::shared_ptr<P>> providers;
  std::lock_guard<std::mutex> lock(mu);
  auto it = providers.find(key);
  if (it != providers.end()) return it->second;
  if (providers.size() >= 16) providers.clear();  // bounded, should settings keep changing
  return providers[key] = make();
}

std::string FirstEnv(std::initializer_list<const char*> names) {
  for (const char* n : names) {
    if (auto v = GetEnv(n); v && !v->empty()) return *v;
  }
  return "";
}

void NormaliseEndpoint(S3Config* c) {
  while (!c->endpoint.empty() && c->endpoint.back() == '/') c->endpoint.pop_back();
  if (c->endpoint.find("://") == std::string::npos) c->endpoint = "http://" + c->endpoint;
}

S3Config GcsConfigFromEnvironment() {
  S3Config c;
  c.scheme = "gs";
  c.endpoint = FirstEnv({"GCS_ENDPOINT_URL", "STORAGE_EMULATOR_HOST"});
  if (c.endpoint.empty()) c.endpoint = "https://storage.googleapis.com";
  c.region = "auto";
  c.access_key = FirstEnv({"GCS_HMAC_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"});
  c.secret_key = FirstEnv({"GCS_HMAC_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"});
  c.bearer_token =
      FirstEnv({"GCS_OAUTH_TOKEN", "CLOUDSDK_AUTH_ACCESS_TOKEN", "GOOGLE_OAUTH_ACCESS_TOKEN"});
  // Explicit mx settings (a bearer token, HMAC keys) win; without them, Google's default
  // chain (Application Default Credentials), resolved on first use.
  bool hmac = !c.access_key.empty() && !c.secret_key.empty();
  if (c.bearer_token.empty() && !hmac)
    c.google = SharedProvider<cloud::GoogleCredentialProvider>(
        {"GOOGLE_", "GCE_", "CLOUDSDK_", "CLOUD_RUN_",
         "K_SERVICE=", "FUNCTION_NAME=", "METADATA_SERVER_DETECTION=", "HOME="},
        [] { return std::make_shared<cloud::GoogleCredentialProvider>(); });
  c.path_style = true;
  NormaliseEndpoint(&c);
  return c;
}

// MX_S3_ADDRESSING_STYLE as botocore spells it: path, virtual, or auto (the default rule).
// nullopt for auto or unset; an error for anything else, which must not silently pick one.
Result<std::optional<bool>> ForcedPathStyle() {
  std::string style = FirstEnv({"MX_S3_ADDRESSING_STYLE"});
  std::transform(style.begin(), style.end(), style.begin(), ::tolower);
  if (style.empty() || style == "auto") return std::optional<bool>();
  if (style == "path" || style == "virtual") return std::optional<bool>(style == "path");
  return Status::InvalidArgument("MX_S3_ADDRESSING_STYLE='" + FirstEnv({"MX_S3_ADDRESSING_STYLE"}) +
                                 "' is not one of path, virtual, auto (auto: path-style for a "
                                 "custom AWS_ENDPOINT_URL, virtual-hosted for AWS)");
}

S3Config AwsConfigFromEnvironment() {
  S3Config c;
  c.scheme = "s3";
  // The default credential chain (src/cloud/aws_credentials.h): environment keys, shared
  // files, web identity (IRSA), container, instance metadata. It also knows the profile's
  // region, which comes after AWS_REGION/AWS_DEFAULT_REGION.
  c.aws = SharedProvider<cloud::AwsCredentialProvider>(
      {"AWS_", "HOME="}, [] { return cloud::AwsCredentialProvider::FromEnvironment(); });
  c.region = FirstEnv({"AWS_REGION", "AWS_DEFAULT_REGION"});
  if (c.region.empty()) c.region = c.aws->ProfileRegion();
  if (c.region.empty()) c.region = "us-east-1";
  // AWS_IGNORE_CONFIGURED_ENDPOINT_URLS: the SDKs' switch to ignore both variables.
  if (!EnvIsTruthy("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS")) {
    c.endpoint = FirstEnv({"AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"});
  }
  bool custom = !c.endpoint.empty();
  if (!custom) c.endpoint = "https://s3." + c.region + ".amazonaws.com";
  // Custom endpoints (MinIO, s3rver, Ceph) usually want path-style; AWS wants virtual-hosted.
  // An unknown value never gets here: OpenS3Storage refuses it first.
  Result<std::optional<bool>> forced = ForcedPathStyle();
  c.path_style = forced.ok() && forced->has_value() ? **forced : custom;
  NormaliseEndpoint(&c);
  return c;
}

S3Config ConfigFromEnvironment(const std::string& scheme) {
  return scheme == "gs" ? GcsConfigFromEnvironment() : AwsConfigFromEnvironment();
}

std::string HostOf(const std::string& endpoint) {
  std::string rest = endpoint.substr(endpoint.find("://") + 3);
  return rest.substr(0, rest.find('/'));
}

class S3Storage : public Storage {
 public:
  S3Storage(S3Config c, const StorageOptions& o)
      : c_(std::move(c)), engine_(StartEngine(o.connections)) {}

  Result<std::vector<ObjectInfo>> List(const std::string& uri) override {
    std::string bucket, key;
    MX_RETURN_IF_ERROR(SplitBucketKey(uri, c_.scheme.size() + 3, &bucket, &key));
    // An exact object, else everything under "key/".
    MX_ASSIGN_OR_RETURN(auto objects, ListPrefix(bucket, key));
    for (const auto& o : objects) {
      if (o.key == key) return std::vector<ObjectInfo>{Info(bucket, o, key)};
    }
    std::string prefix = key.empty() || key.back() == '/' ? key : key + "/";
    std::vector<ObjectInfo> out;
    for (const auto& o : objects) {
      const std::string& k = o.key;
      if (k.rfind(prefix, 0) == 0 && k.size() > prefix.size() && k.back() != '/') {
        out.push_back(Info(bucket, o, prefix));
      }
    }
    if (out.empty())
      return Status::NotFound("no objects at " + uri + " (check the bucket and the key/prefix)");
    std::sort(out.begin(), out.end(),
              [](const ObjectInfo& a, const ObjectInfo& b) { return a.name < b.name; });
    return out;
  }

  Result<std::unique_ptr<RangeReader>> Open(const ObjectInfo& object) override {
    std::string bucket, key;
    MX_RETURN_IF_ERROR(SplitBucketKey(object.uri, c_.scheme.size() + 3, &bucket, &key));
    std::string path = ObjectPath(bucket, key);
    std::string url = BaseUrl(bucket) + path;
    // Fail here, with the chain's own message, when no identity can be had; a later
    // refresh failure (the token endpoint down) falls back to the still-valid token.
    MX_RETURN_IF_ERROR(Sign(bucket, path, {}).status());
    RangeSigner signer = [this, bucket, path](uint64_t, uint64_t) {
      Result<std::vector<std::string>> headers = Sign(bucket, path, {});
      return headers.ok() ? *headers : std::vector<std::string>{};
    };
    return MakeRemoteReader(object, url, signer, Hint(), engine_.get(),
                            [this] { return RenewAfterAuthFailure(); });
  }

  Result<std::string> DescribeCredentials() override {
    return c_.scheme == "gs" ? DescribeGcs() : DescribeAws();
  }

 private:
  // One object of a listing.
  struct Listed {
    std::string key;
    uint64_t size = 0;
    std::string etag;  // quotes removed
  };

  ObjectInfo Info(const std::string& bucket, const Listed& o, const std::string& base) {
    const std::string& key = o.key;
    std::string name = key.substr(std::min(base.size(), key.size()));
    if (name.empty()) name = key.substr(key.rfind('/') + 1);
    return {c_.scheme + "://" + bucket + "/" + key, name, o.size, o.etag};
  }

  std::string Hint() const {
    return c_.scheme == "gs"
               ? "check the identity (mx stream --explain-credentials: GCS_OAUTH_TOKEN, HMAC "
                 "keys, or Application Default Credentials) and the bucket's permissions"
               : "check the identity (mx stream --explain-credentials: AWS_ACCESS_KEY_ID/"
                 "AWS_SECRET_ACCESS_KEY, a profile, IRSA web identity, a container or instance "
                 "role) and the bucket policy";
  }

  std::string BaseUrl(const std::string& bucket) const {
    if (c_.path_style) return c_.endpoint;
    size_t p = c_.endpoint.find("://") + 3;
    return c_.endpoint.substr(0, p) + bucket + "." + c_.endpoint.substr(p);
  }

  std::string ObjectPath(const std::string& bucket, const std::string& key) const {
    std::string path = "/" + http::UrlQuote(key, "/");
    return c_.path_style ? "/" + bucket + path : path;
  }

  // The headers of one signed request (path-style or virtual-hosted `path`, and the query
  // it carries); an error when the credential chain cannot supply an identity.
  Result<std::vector<std::string>> Sign(
      const std::string& bucket, const std::string& path,
      const std::vector<std::pair<std::string, std::string>>& query) const {
    return c_.scheme == "gs" ? SignGcs(bucket, path, query) : SignAws(bucket, path, query);
  }

  Result<std::vector<std::string>> SignGcs(
      const std::string& bucket, const std::string& path,
      const std::vector<std::pair<std::string, std::string>>& query) const {
    if (!c_.bearer_token.empty())
      return std::vector<std::string>{"Authorization: Bearer " + c_.bearer_token};
    if (c_.google) {
      MX_ASSIGN_OR_RETURN(bool found, c_.google->Found());
      if (found) {
        MX_ASSIGN_OR_RETURN(std::string token, c_.google->Get());
        return std::vector<std::string>{"Authorization: Bearer " + token};
      }
      return std::vector<std::string>{};  // nothing found: anonymous (a public bucket)
    }
    return SigV4Headers(bucket, path, query, c_.access_key, c_.secret_key, "");
  }

  Result<std::vector<std::string>> SignAws(
      const std::string& bucket, const std::string& path,
      const std::vector<std::pair<std::string, std::string>>& query) const {
    // The chain's current credential (refreshed before expiry); anonymous when it is empty.
    MX_ASSIGN_OR_RETURN(cloud::AwsCredentials creds, c_.aws->Get());
    return SigV4Headers(bucket, path, query, creds.access_key_id, creds.secret_access_key,
                        creds.session_token);
  }

  // SigV4 headers for the given keys; none (anonymous: a public bucket) without keys.
  std::vector<std::string> SigV4Headers(
      const std::string& bucket, const std::string& path,
      const std::vector<std::pair<std::string, std::string>>& query, const std::string& access_key,
      const std::string& secret_key, const std::string& session_token) const {
    if (access_key.empty() || secret_key.empty()) return {};
    SigV4Request r;
    r.canonical_uri = path;
    r.query = query;
    std::string host = HostOf(BaseUrl(bucket));
    std::string date = AmzDate(std::time(nullptr));
    r.headers = {
        {"host", host}, {"x-amz-content-sha256", "UNSIGNED-PAYLOAD"}, {"x-amz-date", date}};
    if (!session_token.empty()) r.headers["x-amz-security-token"] = session_token;
    r.payload_hash = "UNSIGNED-PAYLOAD";
    std::vector<std::string> out = {
        "Authorization: " + SigV4Authorization(r, access_key, secret_key, c_.region, "s3"),
        "x-amz-content-sha256: UNSIGNED-PAYLOAD", "x-amz-date: " + date};
    if (!session_token.empty()) out.push_back("x-amz-security-token: " + session_token);
    return out;
  }

  // After a 401/403 on a read: true when a short-lived token was dropped and a fresh one may
  // succeed (see FetchJob::on_auth_failure).
  bool RenewAfterAuthFailure() const { return c_.scheme == "gs" ? RenewGcs() : RenewAws(); }
  // An ADC token is short-lived: drop it and let the next signature mint another. Explicit
  // tokens and HMAC keys cannot be renewed.
  bool RenewGcs() const {
    if (!c_.google || !c_.google->Refreshable()) return false;
    c_.google->Invalidate();
    return true;
  }
  // A temporary credential (STS, container, instance metadata) may have been revoked or have
  // expired early: drop it so that the retry signs with a fresh one. Static keys will not
  // get better.
  bool RenewAws() const {
    if (!c_.aws->Refreshable()) return false;
    c_.aws->Invalidate();
    return true;
  }

  Result<std::string> DescribeGcs() const {
    if (!c_.bearer_token.empty()) return std::string("bearer token from the environment");
    if (!c_.access_key.empty() && !c_.secret_key.empty())
      return std::string("HMAC keys (GCS_HMAC_ACCESS_KEY_ID)");
    if (c_.google) return c_.google->Source();
    return std::string("anonymous");
  }
  // Which link of the chain supplies the identity; fetching it first, so that a broken
  // link is reported as the error it is and instance metadata names its role.
  Result<std::string> DescribeAws() const {
    MX_RETURN_IF_ERROR(c_.aws->Get().status());
    return c_.aws->Source();
  }

  // Every object whose key starts with `prefix`, following continuation.
  Result<std::vector<Listed>> ListPrefix(const std::string& bucket, const std::string& prefix) {
    std::vector<Listed> out;
    std::string token;
    std::string where = c_.scheme + "://" + bucket + "/" + prefix;
    for (int page = 0; page < 100000; ++page) {
      std::vector<std::pair<std::string, std::string>> q = {{"list-type", "2"}, {"prefix", prefix}};
      if (!token.empty()) q.emplace_back("continuation-token", token);
      std::string path = c_.path_style ? "/" + bucket : "/";
      std::string query;
      std::vector<std::pair<std::string, std::string>> sorted = q;
      std::sort(sorted.begin(), sorted.end());
      for (const auto& [k, v] : sorted)
        query += (query.empty() ? "?" : "&") + http::UrlQuote(k) + "=" + http::UrlQuote(v);
      http::Request req;
      req.url = BaseUrl(bucket) + path + query;
      MX_ASSIGN_OR_RETURN(req.headers, Sign(bucket, path, q));
      MX_ASSIGN_OR_RETURN(http::Response r, http::FetchMetadata(req));
      if (r.status != 200) return ListError(r, where);
      size_t pos = 0;
      std::string contents;
      while (NextXmlElement(r.body, "Contents", &pos, &contents)) {
        size_t p = 0;
        std::string key, size, etag;
        if (NextXmlElement(contents, "Key", &p, &key)) {
          p = 0;
          NextXmlElement(contents, "Size", &p, &size);
          p = 0;
          NextXmlElement(contents, "ETag", &p, &etag);
          MX_RETURN_IF_ERROR(CheckListedKey(key, prefix, where));
          auto n = ParseObjectSize(size);
          if (!n.ok()) return n.status().WithContext(where + ": listing size of " + key);
          // Kept only when it is plain printable text of a sane length: callers compare it.
          if (etag.size() >= 2 && etag.front() == '"' && etag.back() == '"')
            etag = etag.substr(1, etag.size() - 2);
          bool printable =
              etag.size() <= 128 && std::all_of(etag.begin(), etag.end(), [](unsigned char c) {
                return c > 0x20 && c < 0x7f && c != '"';
              });
          out.push_back({key, *n, printable ? etag : std::string()});
        }
      }
      size_t p = 0;
      std::string truncated;
      NextXmlElement(r.body, "IsTruncated", &p, &truncated);
      if (truncated != "true") return out;
      p = 0;
      if (!NextXmlElement(r.body, "NextContinuationToken", &p, &token)) return out;
    }
    return out;
  }

  Status ListError(const http::Response& r, const std::string& where) const {
    size_t p = 0;
    std::string code, message;
    NextXmlElement(r.body, "Code", &p, &code);
    p = 0;
    NextXmlElement(r.body, "Message", &p, &message);
    std::string what =
        where + ": HTTP " + std::to_string(r.status) + (code.empty() ? "" : " " + code);
    if (code == "NoSuchBucket") return Status::NotFound(what + ": the bucket does not exist");
    if (code == "InvalidAccessKeyId" || code == "SignatureDoesNotMatch" || code == "AccessDenied" ||
        r.status == 401 || r.status == 403) {
      return Status::PermissionDenied(what + ": " + Hint());
    }
    if (code == "PermanentRedirect" || code == "AuthorizationHeaderMalformed" || r.status == 301) {
      return Status::FailedPrecondition(what +
                                        ": wrong region? set AWS_REGION to the bucket's region");
    }
    return Status::Unavailable(what + (message.empty() ? "" : ": " + message));
  }

  S3Config c_;
  std::unique_ptr<http::RangeEngine> engine_;
};

}  // namespace

Result<std::unique_ptr<Storage>> OpenS3Storage(const std::string& scheme,
                                               const StorageOptions& options) {
  if (scheme == "s3") MX_RETURN_IF_ERROR(ForcedPathStyle().status());
  return std::unique_ptr<Storage>(new S3Storage(ConfigFromEnvironment(scheme), options));
}

}  // namespace mx::storage
