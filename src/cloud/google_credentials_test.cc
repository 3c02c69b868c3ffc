#include "cloud/google_credentials.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "common/hash.h"

namespace mx::cloud {
namespace {

using json = nlohmann::json;

// A fresh 2048-bit RSA key as PKCS#8 PEM, and its public half (SubjectPublicKeyInfo PEM).
struct TestKey {
  std::string private_pem;
  std::string public_pem;
};

const TestKey& Key() {
  static const TestKey key = [] {
    TestKey k;
    EVP_PKEY* pkey = EVP_RSA_gen(2048);
    BIO* priv = BIO_new(BIO_s_mem());
    BIO* pub = BIO_new(BIO_s_mem());
    PEM_write_bio_PrivateKey(priv, pkey, nullptr, nullptr, 0, nullptr, nullptr);
    PEM_write_bio_PUBKEY(pub, pkey);
    char* data = nullptr;
    long n = BIO_get_mem_data(priv, &data);
    k.private_pem.assign(data, n);
    n = BIO_get_mem_data(pub, &data);
    k.public_pem.assign(data, n);
    BIO_free(priv);
    BIO_free(pub);
    EVP_PKEY_free(pkey);
    return k;
  }();
  return key;
}

std::string FromBase64Url(std::string s) {
  for (char& c : s) {
    if (c == '-') c = '+';
    if (c == '_') c = '/';
  }
  while (s.size() % 4) s += '=';
  Result<std::string> out = Base64Decode(s);
  return out.ok() ? *out : "<bad base64>";
}

bool VerifyRs256(const std::string& public_pem, const std::string& data, const std::string& sig) {
  BIO* bio = BIO_new_mem_buf(public_pem.data(), static_cast<int>(public_pem.size()));
  EVP_PKEY* pkey = PEM_read_bio_PUBKEY(bio, nullptr, nullptr, nullptr);
  BIO_free(bio);
  if (pkey == nullptr) return false;
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  bool ok = EVP_DigestVerifyInit(ctx, nullptr, EVP_sha256(), nullptr, pkey) == 1 &&
            EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                             reinterpret_cast<const unsigned char*>(data.data()), data.size()) == 1;
  EVP_MD_CTX_free(ctx);
  EVP_PKEY_free(pkey);
  return ok;
}

json ServiceAccountJson() {
  return {{"type", "service_account"},
          {"project_id", "proj"},
          {"private_key_id", "kid-1"},
          {"private_key", Key().private_pem},
          {"client_email", "sa@proj.iam.gserviceaccount.com"},
          {"token_uri", "http://127.0.0.9:1/token"}};
}

// ---------------------------------------------------------------------------------------
// Key files

TEST(GoogleCredentialFile, ServiceAccount) {
  auto f = ParseGoogleCredentialFile(ServiceAccountJson().dump(), "test");
  ASSERT_TRUE(f.ok()) << f.status().message();
  auto& key = std::get<GoogleServiceAccountKey>(*f);
  EXPECT_EQ(key.client_email, "sa@proj.iam.gserviceaccount.com");
  EXPECT_EQ(key.private_key_id, "kid-1");
  EXPECT_EQ(key.token_uri, "http://127.0.0.9:1/token");
  json j = ServiceAccountJson();
  j.erase("token_uri");
  f = ParseGoogleCredentialFile(j.dump(), "test");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(std::get<GoogleServiceAccountKey>(*f).token_uri, "https://oauth2.googleapis.com/token");
}

TEST(GoogleCredentialFile, ServiceAccountErrorsNameTheFieldNotTheSecret) {
  json j = ServiceAccountJson();
  j.erase("client_email");
  auto f = ParseGoogleCredentialFile(j.dump(), "GOOGLE_APPLICATION_CREDENTIALS /k.json");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("client_email"), std::string::npos);
  EXPECT_NE(f.status().message().find("GOOGLE_APPLICATION_CREDENTIALS"), std::string::npos);
  EXPECT_EQ(f.status().message().find("PRIVATE KEY"), std::string::npos);

  j = ServiceAccountJson();
  j["private_key"] = 42;
  EXPECT_FALSE(ParseGoogleCredentialFile(j.dump(), "t").ok());
  // A token_uri that would carry the assertion in clear to another host.
  j = ServiceAccountJson();
  j["token_uri"] = "http://evil.example/token";
  f = ParseGoogleCredentialFile(j.dump(), "t");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("not https"), std::string::npos);
  // Loopback means the address, not a name that starts like one.
  for (const char* uri : {"http://127.0.0.1.evil.example/t", "http://localhost.evil.example/t",
                          "http://127.0.0.1@evil.example/t", "http://[::1].evil/t",
                          "ftp://127.0.0.1/t", "http://1270.0.0.1/t"}) {
    j["token_uri"] = uri;
    EXPECT_FALSE(ParseGoogleCredentialFile(j.dump(), "t").ok()) << uri;
  }
  for (const char* uri : {"https://oauth2.googleapis.com/token", "http://127.0.0.5:8080/t",
                          "http://localhost:1/t", "http://[::1]:9/t", "HTTP://127.1.2.3/t"}) {
    j["token_uri"] = uri;
    EXPECT_TRUE(ParseGoogleCredentialFile(j.dump(), "t").ok()) << uri;
  }
}

TEST(GoogleCredentialFile, AuthorizedUser) {
  json j = {{"type", "authorized_user"},
            {"client_id", "cid.apps.googleusercontent.com"},
            {"client_secret", "csecret-XYZ"},
            {"refresh_token", "1//refresh-SECRET"}};
  auto f = ParseGoogleCredentialFile(j.dump(), "t");
  ASSERT_TRUE(f.ok()) << f.status().message();
  auto& user = std::get<GoogleAuthorizedUser>(*f);
  EXPECT_EQ(user.refresh_token, "1//refresh-SECRET");
  EXPECT_EQ(user.token_uri, "https://oauth2.googleapis.com/token");
  j["token_uri"] = "http://127.0.0.3:99/tok";
  f = ParseGoogleCredentialFile(j.dump(), "t");
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(std::get<GoogleAuthorizedUser>(*f).token_uri, "http://127.0.0.3:99/tok");
  j.erase("refresh_token");
  f = ParseGoogleCredentialFile(j.dump(), "t");
  ASSERT_FALSE(f.ok());
  EXPECT_NE(f.status().message().find("refresh_token"), std::string::npos);
  EXPECT_EQ(f.status().message().find("csecret-XYZ"), std::string::npos);
}

json ExternalJson() {
  return {{"type", "external_account"},
          {"audience",
           "//iam.googleapis.com/projects/1/locations/global/workloadIdentityPools/p/"
           "providers/q"},
          {"subject_token_type", "urn:ietf:params:oauth:token-type:jwt"},
          {"token_url", "http://127.0.0.4:5/v1/token"},
          {"credential_source", {{"file", "/var/run/token"}}}};
}

TEST(GoogleCredentialFile, ExternalAccountFileAndUrlSources) {
  auto f = ParseGoogleCredentialFile(ExternalJson().dump(), "t");
  ASSERT_TRUE(f.ok()) << f.status().message();
  auto ext = std::get<GoogleExternalAccount>(*f);
  EXPECT_EQ(ext.source_file, "/var/run/token");
  EXPECT_EQ(ext.format_type, "text");
  EXPECT_TRUE(ext.service_account_impersonation_url.empty());

  json j = ExternalJson();
  j["credential_source"] = {{"url", "http://169.254.169.254/token"},
                            {"headers", {{"Metadata", "True"}}},
                            {"format", {{"type", "json"}, {"subject_token_field_name", "tok"}}}};
  j["service_account_impersonation_url"] =
      "https://iamcredentials.googleapis.com/v1/projects/-/serviceAccounts/"
      "sa@p.iam.gserviceaccount.com:generateAccessToken";
  j["service_account_impersonation"] = {{"token_lifetime_seconds", 1200}};
  f = ParseGoogleCredentialFile(j.dump(), "t");
  ASSERT_TRUE(f.ok()) << f.status().message();
  ext = std::get<GoogleExternalAccount>(*f);
  EXPECT_EQ(ext.source_url, "http://169.254.169.254/token");
  ASSERT_EQ(ext.source_headers.size(), 1u);
  EXPECT_EQ(ext.source_headers[0], "Metadata: True");
  EXPECT_EQ(ext.format_type, "json");
  EXPECT_EQ(ext.subject_token_field_name, "tok");
  EXPECT_EQ(ext.impersonation_lifetime_seconds, 1200);
}

TEST(GoogleCredentialFile, ExternalAccountRejects) {
  auto bad = [](json j) { return ParseGoogleCredentialFile(j.dump(), "t").status(); };
  json j = ExternalJson();
  j["credential_source"]["url"] = "http://127.0.0.1/x";  // both file and url
  EXPECT_EQ(bad(j).code(), StatusCode::kInvalidArgument);
  j = ExternalJson();
  j["credential_source"] = {{"environment_id", "aws1"}};
  EXPECT_EQ(bad(j).code(), StatusCode::kUnimplemented);
  j = ExternalJson();
  j["credential_source"]["format"] = {{"type", "json"}};  // no field name
  EXPECT_FALSE(bad(j).ok());
  j = ExternalJson();
  j["credential_source"]["headers"] = {{"X", "a\r\nInjected: 1"}};
  EXPECT_FALSE(bad(j).ok());
  j = ExternalJson();
  j.erase("audience");
  EXPECT_FALSE(bad(j).ok());
  j = ExternalJson();
  j["token_url"] = "http://sts.example.com/v1/token";
  EXPECT_FALSE(bad(j).ok());
}

TEST(GoogleCredentialFile, UnknownTypesAndHostileText) {
  auto f = ParseGoogleCredentialFile(R"({"type":"impersonated_service_account"})", "t");
  EXPECT_EQ(f.status().code(), StatusCode::kUnimplemented);
  EXPECT_NE(f.status().message().find("impersonated_service_account"), std::string::npos);
  EXPECT_FALSE(ParseGoogleCredentialFile("not json", "t").ok());
  EXPECT_FALSE(ParseGoogleCredentialFile("[]", "t").ok());
  EXPECT_FALSE(ParseGoogleCredentialFile("{}", "t").ok());
  EXPECT_EQ(ParseGoogleCredentialFile(std::string(2 << 20, ' '), "t").status().code(),
            StatusCode::kResourceExhausted);
}

// ---------------------------------------------------------------------------------------
// JWT

TEST(GoogleJwt, HeaderClaimsAndVerifiableSignature) {
  auto f = ParseGoogleCredentialFile(ServiceAccountJson().dump(), "t");
  ASSERT_TRUE(f.ok());
  auto& key = std::get<GoogleServiceAccountKey>(*f);
  auto jwt = BuildGoogleJwtAssertion(key, kGcsReadOnlyScope, 1700000000);
  ASSERT_TRUE(jwt.ok()) << jwt.status().message();
  size_t d1 = jwt->find('.'), d2 = jwt->rfind('.');
  ASSERT_NE(d1, d2);
  EXPECT_EQ(jwt->find_first_of("+/="), std::string::npos);  // base64url, unpadded
  json header = json::parse(FromBase64Url(jwt->substr(0, d1)));
  json claims = json::parse(FromBase64Url(jwt->substr(d1 + 1, d2 - d1 - 1)));
  EXPECT_EQ(header["alg"], "RS256");
  EXPECT_EQ(header["typ"], "JWT");
  EXPECT_EQ(header["kid"], "kid-1");
  EXPECT_EQ(claims["iss"], "sa@proj.iam.gserviceaccount.com");
  EXPECT_EQ(claims["aud"], "http://127.0.0.9:1/token");
  EXPECT_EQ(claims["scope"], kGcsReadOnlyScope);
  EXPECT_EQ(claims["iat"], 1700000000);
  EXPECT_EQ(claims["exp"], 1700003600);
  std::string sig = FromBase64Url(jwt->substr(d2 + 1));
  EXPECT_EQ(sig.size(), 256u);
  EXPECT_TRUE(VerifyRs256(Key().public_pem, jwt->substr(0, d2), sig));
  // The signature covers the claims: a changed claim no longer verifies.
  EXPECT_FALSE(VerifyRs256(Key().public_pem, jwt->substr(0, d2) + "x", sig));
}

TEST(GoogleJwt, BadKeysAreErrorsWithoutTheKey) {
  GoogleServiceAccountKey key;
  key.client_email = "a@b";
  key.private_key =
      "-----BEGIN PRIVATE KEY-----\nTOTALLYSECRETGARBAGE\n-----END PRIVATE KEY-----\n";
  auto jwt = BuildGoogleJwtAssertion(key, kGcsReadOnlyScope, 1);
  ASSERT_FALSE(jwt.ok());
  EXPECT_EQ(jwt.status().message().find("TOTALLYSECRETGARBAGE"), std::string::npos);
  // An encrypted key fails instead of prompting for a passphrase.
  EVP_PKEY* pkey = EVP_RSA_gen(1024);
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PKCS8PrivateKey(bio, pkey, EVP_aes_128_cbc(), nullptr, 0, nullptr,
                                const_cast<char*>("pass"));
  char* data = nullptr;
  long n = BIO_get_mem_data(bio, &data);
  key.private_key.assign(data, n);
  BIO_free(bio);
  EVP_PKEY_free(pkey);
  EXPECT_FALSE(BuildGoogleJwtAssertion(key, kGcsReadOnlyScope, 1).ok());
}

// ---------------------------------------------------------------------------------------
// Token answers

TEST(GoogleTokenResponse, Valid) {
  auto t = ParseGoogleTokenResponse(R"({"access_token":"ya29.abc","expires_in":3599,
                                       "token_type":"Bearer"})",
                                    "ep", 1000);
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(t->value, "ya29.abc");
  EXPECT_EQ(t->expires_at, 1000 + 3599);
  t = ParseGoogleTokenResponse(R"({"access_token":"ya29.abc"})", "ep", 1000);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->expires_at, 1000 + 3600);  // absent: an hour
}

TEST(GoogleTokenResponse, Hostile) {
  auto bad = [](std::string body) { return !ParseGoogleTokenResponse(body, "ep", 1000).ok(); };
  EXPECT_TRUE(bad("{"));
  EXPECT_TRUE(bad("[]"));
  EXPECT_TRUE(bad("\"ya29\""));
  EXPECT_TRUE(bad(R"({"token":"x","expires_in":10})"));        // no access_token
  EXPECT_TRUE(bad(R"({"access_token":"","expires_in":10})"));  // empty
  EXPECT_TRUE(bad(R"({"access_token":42})"));
  EXPECT_TRUE(bad(R"({"access_token":"a\r\nX-Injected: 1"})"));
  EXPECT_TRUE(bad(R"({"access_token":"a b"})"));
  EXPECT_TRUE(bad(R"({"access_token":")" + std::string(20000, 'a') + "\"}"));
  EXPECT_TRUE(bad(R"({"access_token":"ok","expires_in":-5})"));
  EXPECT_TRUE(bad(R"({"access_token":"ok","expires_in":0})"));
  EXPECT_TRUE(bad(R"({"access_token":"ok","expires_in":"3600"})"));
  EXPECT_TRUE(bad(std::string(2 << 20, ' ')));  // oversized
  // A huge lifetime is capped at a day, so a hostile answer cannot pin a token forever.
  auto t = ParseGoogleTokenResponse(R"({"access_token":"ok","expires_in":1e300})", "ep", 1000);
  ASSERT_TRUE(t.ok());
  EXPECT_EQ(t->expires_at, 1000 + 86400);
  // Errors name the endpoint, never the body.
  auto e = ParseGoogleTokenResponse(R"({"access_token":"sec ret"})", "http://127.0.0.1/tok", 1);
  ASSERT_FALSE(e.ok());
  EXPECT_NE(e.status().message().find("http://127.0.0.1/tok"), std::string::npos);
  EXPECT_EQ(e.status().message().find("sec ret"), std::string::npos);
}

TEST(GoogleTokenResponse, Impersonation) {
  auto t = ParseGoogleImpersonationResponse(
      R"({"accessToken":"ya29.imp","expireTime":"2030-01-01T00:00:00Z"})", "ep", 1893452400);
  ASSERT_TRUE(t.ok()) << t.status().message();
  EXPECT_EQ(t->value, "ya29.imp");
  EXPECT_EQ(t->expires_at, 1893456000);
  EXPECT_FALSE(ParseGoogleImpersonationResponse(
                   R"({"accessToken":"x","expireTime":"2001-01-01T00:00:00Z"})", "ep", 1893452400)
                   .ok());
  EXPECT_FALSE(ParseGoogleImpersonationResponse(R"({"accessToken":"x"})", "ep", 1).ok());
  EXPECT_FALSE(
      ParseGoogleImpersonationResponse(R"({"expireTime":"2030-01-01T00:00:00Z"})", "ep", 1).ok());
}

// ---------------------------------------------------------------------------------------
// Precedence (the environment injected; no network: metadata detection is none or
// assume-present, and Source() fetches no token)

class GooglePrecedence : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           ("mx-google-test-" + std::to_string(::getpid()) + "-" +
            ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::create_directories(dir_ / "gcloud");
    std::filesystem::create_directories(dir_ / "home");
    Write(dir_ / "sa.json", ServiceAccountJson().dump());
    json user = {{"type", "authorized_user"},
                 {"client_id", "cid"},
                 {"client_secret", "cs"},
                 {"refresh_token", "rt"}};
    Write(dir_ / "gcloud" / "application_default_credentials.json", user.dump());
    env_ = {{"CLOUDSDK_CONFIG", (dir_ / "gcloud").string()},
            {"HOME", (dir_ / "home").string()},
            {"METADATA_SERVER_DETECTION", "none"}};
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  static void Write(const std::filesystem::path& p, const std::string& text) {
    std::ofstream(p) << text;
  }

  Result<std::string> Source() {
    GoogleCredentialProvider::Options o;
    auto env = env_;
    o.env = [env](const char* name) -> std::optional<std::string> {
      auto it = env.find(name);
      if (it == env.end()) return std::nullopt;
      return it->second;
    };
    GoogleCredentialProvider p(o);
    return p.Source();
  }

  std::filesystem::path dir_;
  std::map<std::string, std::string> env_;
};

TEST_F(GooglePrecedence, KeyFileBeatsGcloudFileBeatsMetadata) {
  env_["GOOGLE_APPLICATION_CREDENTIALS"] = (dir_ / "sa.json").string();
  env_["METADATA_SERVER_DETECTION"] = "assume-present";
  auto s = Source();
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_EQ(s->rfind("service account key file: sa@proj.iam.gserviceaccount.com "
                     "(GOOGLE_APPLICATION_CREDENTIALS",
                     0),
            0u)
      << *s;
  EXPECT_EQ(s->find("PRIVATE"), std::string::npos);

  env_.erase("GOOGLE_APPLICATION_CREDENTIALS");
  s = Source();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->rfind("authorized user (refresh token) file (gcloud ADC file ", 0), 0u) << *s;

  std::filesystem::remove(dir_ / "gcloud" / "application_default_credentials.json");
  env_["GCE_METADATA_HOST"] = "127.0.0.1:9";
  s = Source();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, "metadata server: default service account (GCE_METADATA_HOST=127.0.0.1:9)");
  env_["GCE_METADATA_IP"] = "127.0.0.2:7";  // google-auth reads it before GCE_METADATA_HOST
  s = Source();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, "metadata server: default service account (GCE_METADATA_IP=127.0.0.2:7)");

  env_["METADATA_SERVER_DETECTION"] = "none";
  s = Source();
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(s->rfind("anonymous: nothing found; tried GOOGLE_APPLICATION_CREDENTIALS (unset), ", 0),
            0u)
      << *s;
}

TEST_F(GooglePrecedence, HomeConfigGcloudWhenNoCloudsdkConfig) {
  env_.erase("CLOUDSDK_CONFIG");
  std::filesystem::create_directories(dir_ / "home" / ".config" / "gcloud");
  Write(dir_ / "home" / ".config" / "gcloud" / "application_default_credentials.json",
        ServiceAccountJson().dump());
  auto s = Source();
  ASSERT_TRUE(s.ok()) << s.status().message();
  EXPECT_NE(s->find("home/.config/gcloud/application_default_credentials.json"), std::string::npos)
      << *s;
}

TEST_F(GooglePrecedence, BrokenLinkIsAnErrorNotAFallThrough) {
  env_["GOOGLE_APPLICATION_CREDENTIALS"] = (dir_ / "missing.json").string();
  auto s = Source();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("GOOGLE_APPLICATION_CREDENTIALS"), std::string::npos);

  json j = ServiceAccountJson();
  j["private_key"] = "-----BEGIN PRIVATE KEY-----\nSECRETJUNK\n-----END PRIVATE KEY-----\n";
  Write(dir_ / "bad.json", j.dump());
  env_["GOOGLE_APPLICATION_CREDENTIALS"] = (dir_ / "bad.json").string();
  s = Source();
  ASSERT_FALSE(s.ok());
  EXPECT_NE(s.status().message().find("private_key"), std::string::npos);
  EXPECT_EQ(s.status().message().find("SECRETJUNK"), std::string::npos);

  env_.erase("GOOGLE_APPLICATION_CREDENTIALS");
  std::filesystem::remove(dir_ / "gcloud" / "application_default_credentials.json");
  env_["METADATA_SERVER_DETECTION"] = "sometimes";
  EXPECT_FALSE(Source().ok());
}

TEST_F(GooglePrecedence, NothingFoundGetIsAnErrorAndNotRefreshable) {
  std::filesystem::remove(dir_ / "gcloud" / "application_default_credentials.json");
  GoogleCredentialProvider::Options o;
  auto env = env_;
  o.env = [env](const char* name) -> std::optional<std::string> {
    auto it = env.find(name);
    return it == env.end() ? std::nullopt : std::optional<std::string>(it->second);
  };
  GoogleCredentialProvider p(o);
  auto found = p.Found();
  ASSERT_TRUE(found.ok());
  EXPECT_FALSE(*found);
  EXPECT_FALSE(p.Refreshable());
  EXPECT_EQ(p.Get().status().code(), StatusCode::kFailedPrecondition);
}

TEST_F(GooglePrecedence, ConcurrentFirstUseResolvesOnce) {
  env_["GOOGLE_APPLICATION_CREDENTIALS"] = (dir_ / "sa.json").string();
  GoogleCredentialProvider::Options o;
  auto env = env_;
  std::atomic<int> lookups{0};
  o.env = [env, &lookups](const char* name) -> std::optional<std::string> {
    if (std::string(name) == "GOOGLE_APPLICATION_CREDENTIALS") ++lookups;
    auto it = env.find(name);
    return it == env.end() ? std::nullopt : std::optional<std::string>(it->second);
  };
  GoogleCredentialProvider p(o);
  std::vector<std::thread> threads;
  std::vector<std::string> sources(8);
  for (int i = 0; i < 8; ++i) {
    threads.emplace_back([&, i] {
      auto s = p.Source();
      sources[i] = s.ok() ? *s : s.status().message();
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(lookups.load(), 1);
  for (const auto& s : sources) EXPECT_EQ(s, sources[0]);
  EXPECT_EQ(sources[0].rfind("service account key file:", 0), 0u) << sources[0];
  EXPECT_TRUE(p.Refreshable());
}

}  // namespace
}  // namespace mx::cloud
