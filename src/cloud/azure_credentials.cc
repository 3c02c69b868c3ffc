#include "cloud/azure_credentials.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>

#include <algorithm>
#include <cctype>
#include <cmath>
#include <cstring>
#include <nlohmann/json.hpp>

#include "cloud/jwt.h"
#include "common/env.h"
#include "common/fs.h"
#include "common/hash.h"
#include "common/log.h"
#include "common/text.h"
#include "http/http.h"

namespace mx::cloud {
namespace {

using json = nlohmann::json;

// Token answers are small (a few KiB); anything near this is hostile.
constexpr size_t kMaxTokenAnswerBytes = 1u << 20;
// A bearer token goes into a header: a few KiB in practice.
constexpr size_t kMaxAccessTokenBytes = 64u << 10;
// The longest lifetime mx believes: managed identity tokens last up to 24 h; a week is
// generous, and an absurd expiry would otherwise pin a token forever.
constexpr std::time_t kMaxTokenLifetimeSeconds = 7 * 24 * 3600;
constexpr const char* kJwtBearerAssertionType =
    "urn:ietf:params:oauth:client-assertion-type:jwt-bearer";

std::string Lower(std::string_view s) {
  std::string out(s);
  std::transform(out.begin(), out.end(), out.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return out;
}

// Replaces every occurrence of each secret in text a server sent (a hostile endpoint may
// echo what it was given), then bounds and escapes it.
std::string Scrub(std::string text, const std::vector<std::string>& secrets) {
  for (const auto& secret : secrets) {
    if (secret.size() < 4) continue;
    for (size_t p = text.find(secret); p != std::string::npos; p = text.find(secret, p)) {
      text.replace(p, secret.size(), "[redacted]");
    }
  }
  std::string out;
  for (char c : text.substr(0, 300)) {
    unsigned char u = static_cast<unsigned char>(c);
    out += (u >= 0x20 && u < 0x7f) ? c : '?';
  }
  return out;
}

// A token endpoint's error answer: "invalid_client: AADSTS7000215: ..." (scrubbed), or "".
std::string DescribeErrorBody(const std::string& body, const std::vector<std::string>& secrets) {
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) return "";
  std::string out;
  auto field = [&](const char* name) -> std::string {
    auto it = j.find(name);
    return it != j.end() && it->is_string() ? it->get<std::string>() : "";
  };
  std::string error = field("error");
  std::string description = field("error_description");
  if (auto it = j.find("error"); it != j.end() && it->is_object()) {  // IMDS/App Service style
    auto code = it->find("code");
    auto message = it->find("message");
    if (code != it->end() && code->is_string()) error = code->get<std::string>();
    if (message != it->end() && message->is_string()) description = message->get<std::string>();
  }
  if (description.empty()) description = field("message");
  if (!error.empty()) out = Scrub(error, secrets);
  if (!description.empty()) out += (out.empty() ? "" : ": ") + Scrub(description, secrets);
  return out;
}

bool IsTokenChar(char c) { return c > 0x20 && c < 0x7f; }

// An expiry in epoch seconds from a JSON number or a numeric string.
Result<int64_t> JsonSeconds(const json& v, const char* name) {
  if (v.is_number_integer()) return v.get<int64_t>();
  if (v.is_number_float()) {
    double d = v.get<double>();
    if (std::isfinite(d) && std::fabs(d) < 1e15) return static_cast<int64_t>(d);
  }
  if (v.is_string()) {
    std::string s = v.get<std::string>();
    if (auto n = ParseInt64(s); n.ok()) return *n;
    if (auto t = ParseIso8601Utc(s); t.ok()) return static_cast<int64_t>(*t);
  }
  return Status::DataLoss(std::string("token answer: '") + name + "' is not a number of seconds");
}

Result<Expiring<std::string>> ParseTokenAnswer(std::string_view body, std::time_t now,
                                               bool managed_identity) {
  if (body.size() > kMaxTokenAnswerBytes) return Status::DataLoss("token answer is too large");
  json j = json::parse(body, nullptr, false);
  if (j.is_discarded() || !j.is_object()) {
    return Status::DataLoss("token answer is not a JSON object");
  }
  auto token = j.find("access_token");
  if (token == j.end() || !token->is_string()) {
    return Status::DataLoss("token answer has no 'access_token' string");
  }
  const std::string& value = token->get_ref<const std::string&>();
  if (value.empty() || value.size() > kMaxAccessTokenBytes) {
    return Status::DataLoss("token answer: 'access_token' is empty or too long");
  }
  if (!std::all_of(value.begin(), value.end(), IsTokenChar)) {
    return Status::DataLoss("token answer: 'access_token' has characters a header cannot carry");
  }
  if (auto type = j.find("token_type"); type != j.end()) {
    if (!type->is_string() || Lower(type->get<std::string>()) != "bearer") {
      return Status::DataLoss("token answer: 'token_type' is not Bearer");
    }
  }
  std::optional<int64_t> expires_at;
  if (auto on = j.find("expires_on"); managed_identity && on != j.end()) {
    MX_ASSIGN_OR_RETURN(int64_t at, JsonSeconds(*on, "expires_on"));
    expires_at = at;
  } else if (auto in = j.find("expires_in"); in != j.end()) {
    MX_ASSIGN_OR_RETURN(int64_t seconds, JsonSeconds(*in, "expires_in"));
    if (seconds > kMaxTokenLifetimeSeconds || seconds < -kMaxTokenLifetimeSeconds) {
      return Status::DataLoss("token answer: 'expires_in' is out of range");
    }
    expires_at = static_cast<int64_t>(now) + seconds;
  } else {
    return Status::DataLoss(managed_identity
                                ? "token answer has neither 'expires_on' nor 'expires_in'"
                                : "token answer has no 'expires_in'");
  }
  if (*expires_at <= static_cast<int64_t>(now)) {
    return Status::DataLoss("token answer: the token has already expired");
  }
  if (*expires_at - static_cast<int64_t>(now) > kMaxTokenLifetimeSeconds) {
    return Status::DataLoss("token answer: the expiry is implausibly far away");
  }
  return Expiring<std::string>{value, static_cast<std::time_t>(*expires_at)};
}

// OpenSSL objects freed on scope exit.
struct BioFree {
  void operator()(BIO* b) const { BIO_free(b); }
};
struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};

std::string Digest(const EVP_MD* md, std::string_view data) {
  unsigned char out[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_Digest(data.data(), data.size(), out, &len, md, nullptr);
  return std::string(reinterpret_cast<char*>(out), len);
}

std::string RandomId() {
  unsigned char b[16];
  if (RAND_bytes(b, sizeof b) != 1) {
    for (auto& c : b) c = static_cast<unsigned char>(std::rand());
  }
  b[6] = (b[6] & 0x0f) | 0x40;  // a version 4 UUID, as the SDKs send
  b[8] = (b[8] & 0x3f) | 0x80;
  std::string hex = HexEncode(std::string_view(reinterpret_cast<char*>(b), sizeof b));
  return hex.substr(0, 8) + "-" + hex.substr(8, 4) + "-" + hex.substr(12, 4) + "-" +
         hex.substr(16, 4) + "-" + hex.substr(20);
}

// Valid tenant ids are GUIDs or domain names (the SDK's checkTenantId).
bool IsValidTenant(std::string_view t) {
  return !t.empty() && t.size() <= 256 && std::all_of(t.begin(), t.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '.';
  });
}

Result<std::string> CheckUrl(const std::string& url, const char* variable, bool https_only) {
  std::string lower = Lower(url);
  bool https = lower.rfind("https://", 0) == 0;
  bool http = lower.rfind("http://", 0) == 0;
  if (!(https || (http && !https_only)) || url.find_first_of(" \r\n\t?#") != std::string::npos) {
    return Status::InvalidArgument(std::string(variable) + " must be an " +
                                   (https_only ? "https" : "http(s)") +
                                   " URL without a query, got '" + RedactUrl(url) + "'");
  }
  std::string out = url;
  while (!out.empty() && out.back() == '/') out.pop_back();
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------
// Storage-native secrets

Result<AzureConnectionString> ParseAzureConnectionString(std::string_view text) {
  AzureConnectionString cs;
  bool explicit_endpoint = false;
  size_t pos = 0;
  while (pos <= text.size()) {
    size_t semi = text.find(';', pos);
    std::string_view part =
        text.substr(pos, semi == std::string_view::npos ? std::string_view::npos : semi - pos);
    pos = semi == std::string_view::npos ? text.size() + 1 : semi + 1;
    part = TrimWhitespace(part);
    if (part.empty()) continue;
    size_t eq = part.find('=');
    if (eq == std::string_view::npos || eq == 0) {
      return Status::InvalidArgument(
          "AZURE_STORAGE_CONNECTION_STRING is not a list of Key=Value pairs separated by ';'");
    }
    std::string key = Lower(part.substr(0, eq));
    std::string value(part.substr(eq + 1));
    if (key == "accountname") cs.account = value;
    if (key == "accountkey") cs.account_key = value;
    if (key == "sharedaccesssignature") cs.sas = value[0] == '?' ? value.substr(1) : value;
    if (key == "blobendpoint") {
      cs.blob_endpoint = value;
      explicit_endpoint = true;
    }
    if (key == "defaultendpointsprotocol") cs.protocol = Lower(value);
    if (key == "endpointsuffix") cs.endpoint_suffix = value;
    if (key == "usedevelopmentstorage") cs.development_storage = Lower(value) == "true";
  }
  if (cs.development_storage) {
    cs.account = kAzuriteAccount;
    cs.account_key = kAzuriteKey;
    if (!explicit_endpoint) cs.blob_endpoint = kAzuriteBlobEndpoint;
    cs.protocol = "http";
  } else if (!explicit_endpoint && !cs.account.empty()) {
    if (cs.protocol != "http" && cs.protocol != "https") {
      return Status::InvalidArgument(
          "AZURE_STORAGE_CONNECTION_STRING: DefaultEndpointsProtocol must be http or https");
    }
    cs.blob_endpoint = cs.protocol + "://" + cs.account + ".blob." + cs.endpoint_suffix;
  }
  return cs;
}

Result<AzureStorageConfig> AzureStorageConfigFromEnvironment(const EnvLookup& env) {
  AzureStorageConfig c;
  AzureConnectionString cs;
  if (auto v = env("AZURE_STORAGE_CONNECTION_STRING")) {
    MX_ASSIGN_OR_RETURN(cs, ParseAzureConnectionString(*v));
  }
  // The account: mx's (and the Azure CLI's) name first, then the Dynamo guide's.
  if (auto v = env("AZURE_STORAGE_ACCOUNT")) {
    c.account = *v;
  } else if (auto v = env("AZURE_ACCOUNT_NAME")) {
    c.account = *v;
  } else {
    c.account = cs.account;
  }
  std::string encoded_key, key_variable;
  if (auto v = env("AZURE_STORAGE_KEY")) {
    encoded_key = *v, key_variable = "AZURE_STORAGE_KEY";
  } else if (auto v = env("AZURE_ACCOUNT_KEY")) {
    encoded_key = *v, key_variable = "AZURE_ACCOUNT_KEY";
  } else if (!cs.account_key.empty()) {
    encoded_key = cs.account_key, key_variable = "AZURE_STORAGE_CONNECTION_STRING";
  }
  std::string sas_variable;
  if (auto v = env("AZURE_STORAGE_SAS_TOKEN")) {
    c.sas = *v, sas_variable = "AZURE_STORAGE_SAS_TOKEN";
  } else if (!cs.sas.empty()) {
    c.sas = cs.sas, sas_variable = "AZURE_STORAGE_CONNECTION_STRING";
  }
  if (!c.sas.empty() && c.sas.front() == '?') c.sas.erase(0, 1);
  if (auto v = env("AZURE_STORAGE_BLOB_ENDPOINT")) {
    MX_ASSIGN_OR_RETURN(c.endpoint, CheckUrl(*v, "AZURE_STORAGE_BLOB_ENDPOINT", false));
  } else if (!cs.blob_endpoint.empty()) {
    MX_ASSIGN_OR_RETURN(
        c.endpoint,
        CheckUrl(cs.blob_endpoint, "AZURE_STORAGE_CONNECTION_STRING's BlobEndpoint", false));
  } else if (!c.account.empty()) {
    c.endpoint = "https://" + c.account + ".blob.core.windows.net";
  }
  if (c.endpoint.empty()) {
    return Status::InvalidArgument(
        "az:// needs a storage account: set AZURE_STORAGE_ACCOUNT (or AZURE_ACCOUNT_NAME), "
        "AZURE_STORAGE_BLOB_ENDPOINT or AZURE_STORAGE_CONNECTION_STRING");
  }
  if (!encoded_key.empty()) {
    auto key = Base64Decode(encoded_key);
    if (!key.ok() || key->empty()) {
      return Status::InvalidArgument(key_variable + ": the account key is not base64");
    }
    if (c.account.empty()) {
      return Status::InvalidArgument(key_variable +
                                     " is set but no account name: set AZURE_STORAGE_ACCOUNT "
                                     "(or AZURE_ACCOUNT_NAME)");
    }
    c.shared_key = std::move(*key);
    c.sas.clear();  // a key signs every request; a SAS beside it is not used
    c.source = cs.development_storage && key_variable == "AZURE_STORAGE_CONNECTION_STRING"
                   ? "development storage account " + c.account +
                         " (AZURE_STORAGE_CONNECTION_STRING UseDevelopmentStorage=true)"
                   : "account key for account " + c.account + " (" + key_variable + ")";
  } else if (!c.sas.empty()) {
    c.source = "shared access signature" +
               (c.account.empty() ? std::string() : " for account " + c.account) + " (" +
               sas_variable + ")";
  }
  return c;
}

// ---------------------------------------------------------------------------------------
// Token answers and client assertions

Result<Expiring<std::string>> ParseAzureAdTokenAnswer(std::string_view body, std::time_t now) {
  return ParseTokenAnswer(body, now, /*managed_identity=*/false);
}

Result<Expiring<std::string>> ParseManagedIdentityTokenAnswer(std::string_view body,
                                                              std::time_t now) {
  return ParseTokenAnswer(body, now, /*managed_identity=*/true);
}

Result<std::string> MakeAzureClientAssertion(std::string_view pem, const std::string& password,
                                             const std::string& client_id,
                                             const std::string& audience, std::time_t now) {
  auto bio = [&] {
    return std::unique_ptr<BIO, BioFree>(BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size())));
  };
  auto cert_bio = bio();
  std::unique_ptr<X509, X509Free> cert(
      PEM_read_bio_X509(cert_bio.get(), nullptr, PemPasswordCallback, nullptr));
  if (!cert) return Status::InvalidArgument("no PEM certificate in it");
  auto key_bio = bio();
  std::unique_ptr<EVP_PKEY, PkeyFree> key(PEM_read_bio_PrivateKey(
      key_bio.get(), nullptr, PemPasswordCallback, const_cast<std::string*>(&password)));
  if (!key) {
    return Status::InvalidArgument(
        password.empty() ? "no (unencrypted) PEM private key in it"
                         : "no PEM private key that AZURE_CLIENT_CERTIFICATE_PASSWORD opens");
  }
  if (EVP_PKEY_base_id(key.get()) != EVP_PKEY_RSA) {
    return Status::InvalidArgument("its private key is not RSA (RS256 needs RSA)");
  }
  if (X509_check_private_key(cert.get(), key.get()) != 1) {
    return Status::InvalidArgument("its private key does not match its certificate");
  }
  unsigned char* der = nullptr;
  int der_len = i2d_X509(cert.get(), &der);
  if (der_len <= 0) return Status::Internal("cannot encode the certificate");
  std::string der_bytes(reinterpret_cast<char*>(der), der_len);
  OPENSSL_free(der);

  json header = {{"alg", "RS256"},
                 {"typ", "JWT"},
                 {"x5t", Base64Url(Digest(EVP_sha1(), der_bytes))},
                 {"x5t#S256", Base64Url(Digest(EVP_sha256(), der_bytes))}};
  json claims = {{"aud", audience},          {"iss", client_id},    {"sub", client_id},
                 {"jti", RandomId()},        {"nbf", int64_t(now)}, {"iat", int64_t(now)},
                 {"exp", int64_t(now) + 600}};
  return MakeJwtRs256(header.dump(), claims.dump(), pem, password);
}

// ---------------------------------------------------------------------------------------
// The token chain

Result<std::unique_ptr<AzureCredentialProvider>> AzureCredentialProvider::FromEnvironment(
    const EnvLookup& env) {
  std::unique_ptr<AzureCredentialProvider> p(new AzureCredentialProvider());
  auto get = [&](const char* name) { return env(name).value_or(""); };
  p->tenant_id_ = get("AZURE_TENANT_ID");
  p->client_id_ = get("AZURE_CLIENT_ID");
  std::string authority = get("AZURE_AUTHORITY_HOST");
  if (authority.empty()) authority = kAzureDefaultAuthorityHost;

  // AZURE_TOKEN_CREDENTIALS narrows the chain as in the SDK: "prod" (the three links mx
  // has), or one credential's name. mx has none of the developer credentials.
  bool use_env = true, use_wi = true, use_mi = true;
  std::string only = Lower(get("AZURE_TOKEN_CREDENTIALS"));
  only.erase(0, only.find_first_not_of(" \t"));
  only.erase(only.find_last_not_of(" \t") + 1);
  if (only == "environmentcredential") {
    use_wi = use_mi = false;
  } else if (only == "workloadidentitycredential") {
    use_env = use_mi = false;
  } else if (only == "managedidentitycredential") {
    use_env = use_wi = false;
  } else if (only == "dev" || only == "visualstudiocodecredential" ||
             only == "azureclicredential" || only == "azurepowershellcredential" ||
             only == "azuredeveloperclicredential") {
    return Status::Unimplemented("AZURE_TOKEN_CREDENTIALS=" + only +
                                 " selects developer credentials, which mx does not have; use "
                                 "prod, EnvironmentCredential, WorkloadIdentityCredential or "
                                 "ManagedIdentityCredential");
  } else if (!only.empty() && only != "prod") {
    return Status::InvalidArgument(
        "AZURE_TOKEN_CREDENTIALS must be prod, dev or one credential's name "
        "(EnvironmentCredential, WorkloadIdentityCredential, ManagedIdentityCredential, ...)");
  }
  auto skipped = [&](const char* link) {
    p->tried_.push_back(std::string(link) + " (skipped: AZURE_TOKEN_CREDENTIALS=" + only + ")");
  };

  // 1. EnvironmentCredential: a service principal's secret, else its certificate.
  std::string secret = get("AZURE_CLIENT_SECRET");
  std::string cert = get("AZURE_CLIENT_CERTIFICATE_PATH");
  bool sp_ids = !p->tenant_id_.empty() && !p->client_id_.empty();
  if (!use_env) {
    skipped("environment");
  } else if (sp_ids && (!secret.empty() || !cert.empty())) {
    p->link_ = secret.empty() ? Link::kClientCertificate : Link::kClientSecret;
    p->client_secret_ = secret;
    p->certificate_path_ = cert;
    p->certificate_password_ = get("AZURE_CLIENT_CERTIFICATE_PASSWORD");
  } else if (sp_ids && env("AZURE_USERNAME") && env("AZURE_PASSWORD")) {
    return Status::Unimplemented(
        "environment: AZURE_USERNAME/AZURE_PASSWORD (the deprecated user password flow) is "
        "not supported by mx; use a service principal (AZURE_CLIENT_SECRET or "
        "AZURE_CLIENT_CERTIFICATE_PATH), workload identity or managed identity");
  } else {
    p->tried_.push_back(
        !secret.empty() || !cert.empty()
            ? "environment (AZURE_CLIENT_SECRET/AZURE_CLIENT_CERTIFICATE_PATH set but " +
                  std::string(p->tenant_id_.empty() ? "AZURE_TENANT_ID" : "AZURE_CLIENT_ID") +
                  " missing)"
            : "environment (AZURE_CLIENT_SECRET, AZURE_CLIENT_CERTIFICATE_PATH not set)");
  }
  // 2. WorkloadIdentityCredential.
  std::string token_file = get("AZURE_FEDERATED_TOKEN_FILE");
  if (p->link_ == Link::kNone && !use_wi) {
    skipped("workload identity");
  } else if (p->link_ == Link::kNone) {
    if (!token_file.empty() && !p->client_id_.empty() && !p->tenant_id_.empty()) {
      p->link_ = Link::kWorkloadIdentity;
      p->token_file_ = token_file;
    } else {
      p->tried_.push_back(
          token_file.empty()
              ? "workload identity (AZURE_FEDERATED_TOKEN_FILE not set)"
              : "workload identity (AZURE_FEDERATED_TOKEN_FILE set but " +
                    std::string(p->client_id_.empty() ? "AZURE_CLIENT_ID" : "AZURE_TENANT_ID") +
                    " missing)");
    }
  }
  if (p->link_ == Link::kClientSecret || p->link_ == Link::kClientCertificate ||
      p->link_ == Link::kWorkloadIdentity) {
    if (!IsValidTenant(p->tenant_id_)) {
      return Status::InvalidArgument(
          "AZURE_TENANT_ID must be a tenant id or domain (letters, digits, '-' and '.')");
    }
    MX_ASSIGN_OR_RETURN(p->authority_host_, CheckUrl(authority, "AZURE_AUTHORITY_HOST", true));
  }
  // 3. ManagedIdentityCredential, in MSAL's order of sources.
  if (p->link_ == Link::kNone && !use_mi) {
    skipped("managed identity");
  } else if (p->link_ == Link::kNone) {
    std::string endpoint = get("IDENTITY_ENDPOINT");
    std::string header = get("IDENTITY_HEADER");
    if (!endpoint.empty() && !header.empty() && env("IDENTITY_SERVER_THUMBPRINT")) {
      return Status::Unimplemented(
          "managed identity: Service Fabric (IDENTITY_ENDPOINT, IDENTITY_HEADER, "
          "IDENTITY_SERVER_THUMBPRINT) is not supported by mx");
    }
    if (!endpoint.empty() && !header.empty()) {
      p->link_ = Link::kAppService;
      MX_ASSIGN_OR_RETURN(p->identity_endpoint_, CheckUrl(endpoint, "IDENTITY_ENDPOINT", false));
      p->identity_header_ = header;
      p->endpoint_variable_ = "IDENTITY_ENDPOINT";
    } else if (env("MSI_ENDPOINT")) {
      return Status::Unimplemented(
          "managed identity: Cloud Shell / Azure Machine Learning (MSI_ENDPOINT) is not "
          "supported by mx");
    } else if (!endpoint.empty() && env("IMDS_ENDPOINT")) {
      return Status::Unimplemented(
          "managed identity: Azure Arc (IDENTITY_ENDPOINT, IMDS_ENDPOINT) is not supported by mx");
    } else {
      p->link_ = Link::kImds;
      if (auto host = env("AZURE_POD_IDENTITY_AUTHORITY_HOST")) {
        MX_ASSIGN_OR_RETURN(std::string h,
                            CheckUrl(*host, "AZURE_POD_IDENTITY_AUTHORITY_HOST", false));
        p->identity_endpoint_ = h + "/metadata/identity/oauth2/token";
        p->endpoint_variable_ = "AZURE_POD_IDENTITY_AUTHORITY_HOST";
      } else {
        // The SDK probes the default address first (1 s): off Azure nothing answers there.
        p->identity_endpoint_ = std::string(kAzureImdsHost) + "/metadata/identity/oauth2/token";
        p->endpoint_variable_ = "the default IMDS address";
        // Named alone, managed identity is meant: no probe (the SDK's sendProbeRequest=false).
        p->probe_imds_ = use_env;
      }
    }
  }
  AzureCredentialProvider* self = p.get();
  p->cache_ = std::make_unique<TokenCache<std::string>>([self] { return self->Fetch(); });
  return p;
}

AzureCredentialProvider::~AzureCredentialProvider() = default;

Result<std::string> AzureCredentialProvider::Get() { return cache_->Get(); }

void AzureCredentialProvider::Invalidate() { cache_->Invalidate(); }

std::string AzureCredentialProvider::Source() const {
  std::string ids = "client " + client_id_ + " tenant " + tenant_id_;
  switch (link_) {
    case Link::kClientSecret:
      return "environment (client secret): " + ids + " (AZURE_CLIENT_SECRET)";
    case Link::kClientCertificate:
      return "environment (client certificate): " + ids + " (AZURE_CLIENT_CERTIFICATE_PATH " +
             certificate_path_ + ")";
    case Link::kWorkloadIdentity:
      return "workload identity: " + ids + " (AZURE_FEDERATED_TOKEN_FILE)";
    case Link::kAppService:
      return "managed identity (App Service): " +
             (client_id_.empty() ? std::string("system-assigned") : "client " + client_id_) +
             " via " + RedactUrl(identity_endpoint_) + " (IDENTITY_ENDPOINT, IDENTITY_HEADER)";
    case Link::kImds:
      return "managed identity (IMDS): " +
             (client_id_.empty() ? std::string("system-assigned") : "client " + client_id_) +
             " via " + RedactUrl(identity_endpoint_) + " (" + endpoint_variable_ + ")";
    case Link::kNone:
      break;
  }
  return "none";
}

std::string AzureCredentialProvider::Tried() const {
  std::lock_guard<std::mutex> lock(tried_mu_);
  std::string out;
  for (const auto& t : tried_) out += (out.empty() ? "" : ", ") + t;
  return out;
}

Result<Expiring<std::string>> AzureCredentialProvider::Fetch() {
  if (link_ == Link::kAppService || link_ == Link::kImds) return FetchFromManagedIdentity();
  if (link_ == Link::kNone) return Status::NotFound("no Azure credential configured");
  return FetchFromAzureAd();
}

Result<Expiring<std::string>> AzureCredentialProvider::FetchFromAzureAd() {
  std::string url = authority_host_ + "/" + tenant_id_ + "/oauth2/v2.0/token";
  std::string what = Source();
  std::vector<std::pair<std::string, std::string>> form = {{"client_id", client_id_},
                                                           {"scope", kAzureStorageScope},
                                                           {"grant_type", "client_credentials"}};
  std::vector<std::string> secrets;
  std::time_t now = std::time(nullptr);
  if (link_ == Link::kClientSecret) {
    form.emplace_back("client_secret", client_secret_);
    secrets.push_back(client_secret_);
  } else {
    std::string assertion;
    if (link_ == Link::kClientCertificate) {
      auto pem = ReadFile(certificate_path_, 1 << 20);
      if (!pem.ok()) {
        return Status(pem.status().code(),
                      what + ": cannot read the certificate: " + pem.status().message());
      }
      auto jwt = MakeAzureClientAssertion(*pem, certificate_password_, client_id_, url, now);
      if (!jwt.ok()) {
        return Status(jwt.status().code(), what + ": the certificate file " + certificate_path_ +
                                               ": " + jwt.status().message());
      }
      assertion = std::move(*jwt);
    } else {
      // The projected token rotates (kubelet rewrites it): read it for every request.
      auto token = ReadTokenFile(token_file_, "AZURE_FEDERATED_TOKEN_FILE");
      if (!token.ok()) return token.status().WithContext(what);
      assertion = std::move(*token);
    }
    form.emplace_back("client_assertion_type", kJwtBearerAssertionType);
    form.emplace_back("client_assertion", assertion);
    secrets.push_back(assertion);
  }
  http::Request req;
  req.method = "POST";
  req.url = url;
  req.body = FormEncode(form);
  req.headers = {"Content-Type: application/x-www-form-urlencoded", "Accept: application/json"};
  req.follow_redirects = false;
  req.timeout_seconds = 30;
  auto r = http::FetchMetadata(req, kMaxTokenAnswerBytes, http::RetryPolicy{3, 0.5, 4.0});
  if (!r.ok()) return r.status().WithContext(what);
  if (r->status != 200) {
    std::string detail = DescribeErrorBody(r->body, secrets);
    return Status::Unauthenticated(what + ": POST " + RedactUrl(url) + ": HTTP " +
                                   std::to_string(r->status) +
                                   (detail.empty() ? "" : " " + detail));
  }
  auto token = ParseAzureAdTokenAnswer(r->body, std::time(nullptr));
  if (!token.ok()) return token.status().WithContext(what + ": POST " + RedactUrl(url));
  spdlog::debug("azure: token from {} (expires in {} s)", what,
                token->expires_at ? *token->expires_at - std::time(nullptr) : 0);
  return token;
}

Result<Expiring<std::string>> AzureCredentialProvider::FetchFromManagedIdentity() {
  std::string what = Source();
  if (imds_absent_) return Status::NotFound("no managed identity endpoint answered");
  if (probe_imds_) {
    // Like the SDK: a GET without the Metadata header. Any HTTP answer means IMDS is there.
    http::Request probe;
    probe.url = identity_endpoint_;
    probe.follow_redirects = false;
    probe.timeout_seconds = 1;
    auto r = http::FetchMetadata(probe, 64 << 10, http::RetryPolicy{1, 0, 0});
    if (!r.ok() || (r->status == 403 && r->body.find("unreachable") != std::string::npos)) {
      imds_absent_ = true;
      std::lock_guard<std::mutex> lock(tried_mu_);
      tried_.push_back("managed identity (IMDS " + identity_endpoint_ + ": no answer)");
      return Status::NotFound("no managed identity endpoint answered");
    }
    probe_imds_ = false;
  }
  std::string url = identity_endpoint_ +
                    "?api-version=" + (link_ == Link::kAppService ? "2019-08-01" : "2018-02-01") +
                    "&resource=" + http::UrlQuote(kAzureStorageResource);
  if (!client_id_.empty()) url += "&client_id=" + http::UrlQuote(client_id_);
  http::Request req;
  req.url = url;
  req.follow_redirects = false;
  req.timeout_seconds = 30;
  req.headers = {"Accept: application/json"};
  if (link_ == Link::kAppService) {
    req.headers.push_back("X-IDENTITY-HEADER: " + identity_header_);
  } else {
    req.headers.push_back("Metadata: true");
  }
  auto r = http::FetchMetadata(req, kMaxTokenAnswerBytes, http::RetryPolicy{3, 0.5, 4.0});
  if (!r.ok()) {
    if (link_ == Link::kImds) {
      // Nothing listens where IMDS should be: the chain ends (the SDK's
      // CredentialUnavailableError); the caller may read anonymously.
      imds_absent_ = true;
      std::lock_guard<std::mutex> lock(tried_mu_);
      tried_.push_back("managed identity (IMDS " + RedactUrl(identity_endpoint_) + " from " +
                       endpoint_variable_ + ": no answer)");
      spdlog::warn("azure: managed identity endpoint {} ({}) did not answer",
                   RedactUrl(identity_endpoint_), endpoint_variable_);
      return Status::NotFound("no managed identity endpoint answered");
    }
    return r.status().WithContext(what);
  }
  if (r->status != 200) {
    std::string detail = DescribeErrorBody(r->body, {identity_header_});
    if (link_ == Link::kImds && r->status == 400 && client_id_.empty()) {
      // IMDS answers 400 "Identity not found" on a VM without an identity: nothing to use.
      imds_absent_ = true;
      std::lock_guard<std::mutex> lock(tried_mu_);
      tried_.push_back("managed identity (IMDS " + RedactUrl(identity_endpoint_) +
                       ": no identity assigned" + (detail.empty() ? "" : ", " + detail) + ")");
      return Status::NotFound("no managed identity assigned");
    }
    return Status::Unauthenticated(what + ": GET " + RedactUrl(url) + ": HTTP " +
                                   std::to_string(r->status) +
                                   (detail.empty() ? "" : " " + detail));
  }
  auto token = ParseManagedIdentityTokenAnswer(r->body, std::time(nullptr));
  if (!token.ok()) return token.status().WithContext(what + ": GET " + RedactUrl(url));
  return token;
}

}  // namespace mx::cloud
