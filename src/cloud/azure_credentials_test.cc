#include "cloud/azure_credentials.h"

#include <gtest/gtest.h>
#include <netinet/in.h>
#include <openssl/bn.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>
#include <openssl/x509.h>
#include <sys/socket.h>
#include <unistd.h>

#include <map>
#include <nlohmann/json.hpp>

#include "common/hash.h"

namespace mx::cloud {
namespace {

using json = nlohmann::json;

EnvLookup MapEnv(std::map<std::string, std::string> vars) {
  return [vars = std::move(vars)](const char* name) -> std::optional<std::string> {
    auto it = vars.find(name);
    if (it == vars.end() || it->second.empty()) return std::nullopt;
    return it->second;
  };
}

// ---- token answers -------------------------------------------------------------------

TEST(AzureTokenAnswerTest, AzureAdExpiresInNumberOrString) {
  std::time_t now = 1'800'000'000;
  auto a = ParseAzureAdTokenAnswer(
      R"({"token_type":"Bearer","expires_in":3599,"ext_expires_in":3599,"access_token":"eyJ.a.b"})",
      now);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(a->value, "eyJ.a.b");
  EXPECT_EQ(*a->expires_at, now + 3599);
  auto b = ParseAzureAdTokenAnswer(
      R"({"token_type":"bearer","expires_in":"3600","access_token":"t"})", now);
  ASSERT_TRUE(b.ok()) << b.status().ToString();
  EXPECT_EQ(*b->expires_at, now + 3600);
  // AAD answers never use expires_on alone: an answer without expires_in is refused.
  EXPECT_FALSE(
      ParseAzureAdTokenAnswer(R"({"access_token":"t","expires_on":"1800003600"})", now).ok());
}

TEST(AzureTokenAnswerTest, ManagedIdentityExpiresOnEpochString) {
  std::time_t now = 1'800'000'000;
  auto a = ParseManagedIdentityTokenAnswer(
      R"({"access_token":"mi","client_id":"c","expires_in":"86399","expires_on":"1800086399",)"
      R"("ext_expires_in":"86399","not_before":"1800000000","resource":"https://storage.azure.com",)"
      R"("token_type":"Bearer"})",
      now);
  ASSERT_TRUE(a.ok()) << a.status().ToString();
  EXPECT_EQ(*a->expires_at, 1'800'086'399);
  auto number =
      ParseManagedIdentityTokenAnswer(R"({"access_token":"mi","expires_on":1800000600})", now);
  ASSERT_TRUE(number.ok());
  EXPECT_EQ(*number->expires_at, 1'800'000'600);
  auto iso = ParseManagedIdentityTokenAnswer(
      R"({"access_token":"mi","expires_on":"2027-01-15T09:00:00Z"})", now);
  ASSERT_TRUE(iso.ok()) << iso.status().ToString();
  EXPECT_EQ(*iso->expires_at, 1'800'003'600);
  auto fallback = ParseManagedIdentityTokenAnswer(R"({"access_token":"mi","expires_in":600})", now);
  ASSERT_TRUE(fallback.ok());
  EXPECT_EQ(*fallback->expires_at, now + 600);
}

TEST(AzureTokenAnswerTest, HostileBodiesAreRefused) {
  std::time_t now = 1'800'000'000;
  const char* bodies[] = {
      "",
      "not json",
      "[]",
      R"("a string")",
      R"({"access_token":42,"expires_in":3600})",
      R"({"access_token":"","expires_in":3600})",
      R"({"expires_in":3600})",
      R"({"access_token":"t"})",
      R"({"access_token":"t","expires_in":"soon"})",
      R"({"access_token":"t","expires_in":{"s":1}})",
      R"({"access_token":"t","expires_in":0})",
      R"({"access_token":"t","expires_in":-5})",
      R"({"access_token":"t","expires_in":1e300})",
      R"({"access_token":"t","expires_in":99999999999})",
      R"({"access_token":"t","expires_in":3600,"token_type":"MAC"})",
      R"({"access_token":"t","expires_in":3600,"token_type":7})",
      R"({"access_token":"a\r\nX-Injected: 1","expires_in":3600})",
      R"({"access_token":"a b","expires_in":3600})",
      R"({"access_token":"t\u0000","expires_in":3600})",
  };
  for (const char* body : bodies) {
    EXPECT_FALSE(ParseAzureAdTokenAnswer(body, now).ok()) << body;
    EXPECT_FALSE(ParseManagedIdentityTokenAnswer(body, now).ok()) << body;
  }
  std::string huge =
      R"({"access_token":")" + std::string(70 << 10, 'a') + R"(","expires_in":3600})";
  EXPECT_FALSE(ParseAzureAdTokenAnswer(huge, now).ok());
  std::string padded =
      R"({"access_token":"t","expires_in":3600,"pad":")" + std::string(2 << 20, 'x') + R"("})";
  EXPECT_FALSE(ParseAzureAdTokenAnswer(padded, now).ok());
  EXPECT_FALSE(
      ParseManagedIdentityTokenAnswer(R"({"access_token":"t","expires_on":"1799999999"})", now)
          .ok());
  EXPECT_FALSE(
      ParseManagedIdentityTokenAnswer(R"({"access_token":"t","expires_on":"tomorrow"})", now).ok());
  // Errors never quote the token.
  auto bad = ParseAzureAdTokenAnswer(R"({"access_token":"SECRET-TOKEN","expires_in":-1})", now);
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.status().message().find("SECRET-TOKEN"), std::string::npos);
}

// ---- connection strings and storage configuration ------------------------------------

TEST(AzureConnectionStringTest, ParsesFieldsCaseInsensitivelyWithEqualsInValues) {
  auto cs = ParseAzureConnectionString(
      "DefaultEndpointsProtocol=https;accountname=acct;AccountKey=a2V5PT0=;EndpointSuffix=core."
      "chinacloudapi.cn;");
  ASSERT_TRUE(cs.ok()) << cs.status().ToString();
  EXPECT_EQ(cs->account, "acct");
  EXPECT_EQ(cs->account_key, "a2V5PT0=");
  EXPECT_EQ(cs->blob_endpoint, "https://acct.blob.core.chinacloudapi.cn");
  auto sas = ParseAzureConnectionString(
      "BlobEndpoint=https://x.example/;SharedAccessSignature=?sv=2021&sig=abc%3D");
  ASSERT_TRUE(sas.ok());
  EXPECT_EQ(sas->sas, "sv=2021&sig=abc%3D");
  EXPECT_EQ(sas->blob_endpoint, "https://x.example/");
}

TEST(AzureConnectionStringTest, UseDevelopmentStorageIsAzurite) {
  auto cs = ParseAzureConnectionString("UseDevelopmentStorage=true");
  ASSERT_TRUE(cs.ok());
  EXPECT_TRUE(cs->development_storage);
  EXPECT_EQ(cs->account, "devstoreaccount1");
  EXPECT_EQ(cs->account_key, kAzuriteKey);
  EXPECT_EQ(cs->blob_endpoint, "http://127.0.0.1:10000/devstoreaccount1");
  auto c = AzureStorageConfigFromEnvironment(
      MapEnv({{"AZURE_STORAGE_CONNECTION_STRING", "UseDevelopmentStorage=true"}}));
  ASSERT_TRUE(c.ok()) << c.status().ToString();
  EXPECT_EQ(c->endpoint, "http://127.0.0.1:10000/devstoreaccount1");
  EXPECT_EQ(c->shared_key.size(), 64u);
  EXPECT_NE(c->source.find("UseDevelopmentStorage=true"), std::string::npos);
}

TEST(AzureConnectionStringTest, MalformedIsRefusedWithoutQuotingIt) {
  auto cs = ParseAzureConnectionString("AccountName=a;TOPSECRETKEYMATERIAL;");
  ASSERT_FALSE(cs.ok());
  EXPECT_EQ(cs.status().message().find("TOPSECRET"), std::string::npos);
  EXPECT_NE(cs.status().message().find("AZURE_STORAGE_CONNECTION_STRING"), std::string::npos);
}

TEST(AzureStorageConfigTest, GuideSpellingsAndPrecedence) {
  auto guide = AzureStorageConfigFromEnvironment(
      MapEnv({{"AZURE_ACCOUNT_NAME", "guide"}, {"AZURE_ACCOUNT_KEY", "Z3VpZGVrZXk="}}));
  ASSERT_TRUE(guide.ok()) << guide.status().ToString();
  EXPECT_EQ(guide->account, "guide");
  EXPECT_EQ(guide->shared_key, "guidekey");
  EXPECT_EQ(guide->endpoint, "https://guide.blob.core.windows.net");
  EXPECT_NE(guide->source.find("AZURE_ACCOUNT_KEY"), std::string::npos);

  // mx's (and the Azure CLI's) names win over the guide's; variables over the connection string.
  auto both = AzureStorageConfigFromEnvironment(
      MapEnv({{"AZURE_STORAGE_ACCOUNT", "mine"},
              {"AZURE_ACCOUNT_NAME", "guide"},
              {"AZURE_STORAGE_KEY", "bWluZQ=="},
              {"AZURE_ACCOUNT_KEY", "Z3VpZGVrZXk="},
              {"AZURE_STORAGE_CONNECTION_STRING", "AccountName=cs;AccountKey=Y3M="}}));
  ASSERT_TRUE(both.ok());
  EXPECT_EQ(both->account, "mine");
  EXPECT_EQ(both->shared_key, "mine");
  EXPECT_NE(both->source.find("AZURE_STORAGE_KEY"), std::string::npos);

  // A key wins over a SAS; a SAS alone is used; nothing: the token chain decides.
  auto key_and_sas =
      AzureStorageConfigFromEnvironment(MapEnv({{"AZURE_STORAGE_ACCOUNT", "a"},
                                                {"AZURE_STORAGE_KEY", "a2V5"},
                                                {"AZURE_STORAGE_SAS_TOKEN", "?sv=1"}}));
  ASSERT_TRUE(key_and_sas.ok());
  EXPECT_TRUE(key_and_sas->sas.empty());
  auto sas = AzureStorageConfigFromEnvironment(
      MapEnv({{"AZURE_STORAGE_ACCOUNT", "a"}, {"AZURE_STORAGE_SAS_TOKEN", "?sv=1&sig=x"}}));
  ASSERT_TRUE(sas.ok());
  EXPECT_EQ(sas->sas, "sv=1&sig=x");
  EXPECT_NE(sas->source.find("AZURE_STORAGE_SAS_TOKEN"), std::string::npos);
  auto none = AzureStorageConfigFromEnvironment(MapEnv({{"AZURE_STORAGE_ACCOUNT", "a"}}));
  ASSERT_TRUE(none.ok());
  EXPECT_TRUE(none->source.empty());
  EXPECT_TRUE(none->shared_key.empty());
}

TEST(AzureStorageConfigTest, ErrorsNameTheVariableNotTheValue) {
  auto bad = AzureStorageConfigFromEnvironment(
      MapEnv({{"AZURE_ACCOUNT_NAME", "a"}, {"AZURE_ACCOUNT_KEY", "not*base64*SECRET"}}));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("AZURE_ACCOUNT_KEY"), std::string::npos);
  EXPECT_EQ(bad.status().message().find("SECRET"), std::string::npos);
  EXPECT_FALSE(AzureStorageConfigFromEnvironment(MapEnv({})).ok());
  EXPECT_FALSE(
      AzureStorageConfigFromEnvironment(
          MapEnv({{"AZURE_STORAGE_BLOB_ENDPOINT", "https://x/"}, {"AZURE_STORAGE_KEY", "a2V5"}}))
          .ok());  // a key needs the account name
  EXPECT_FALSE(
      AzureStorageConfigFromEnvironment(
          MapEnv({{"AZURE_STORAGE_ACCOUNT", "a"}, {"AZURE_STORAGE_BLOB_ENDPOINT", "ftp://x"}}))
          .ok());
}

// ---- client assertion ------------------------------------------------------------------

struct TestCert {
  std::string pem;  // key + certificate
  std::string der;
  EVP_PKEY* key = nullptr;
  ~TestCert() { EVP_PKEY_free(key); }
};

void MakeTestCert(TestCert* out) {
  out->key = EVP_RSA_gen(2048);
  ASSERT_NE(out->key, nullptr);
  X509* x = X509_new();
  ASSERT_NE(x, nullptr);
  ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
  X509_gmtime_adj(X509_getm_notBefore(x), 0);
  X509_gmtime_adj(X509_getm_notAfter(x), 3600);
  X509_set_pubkey(x, out->key);
  X509_NAME* name = X509_get_subject_name(x);
  X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
                             reinterpret_cast<const unsigned char*>("mx-test"), -1, -1, 0);
  X509_set_issuer_name(x, name);
  ASSERT_GT(X509_sign(x, out->key, EVP_sha256()), 0);
  BIO* bio = BIO_new(BIO_s_mem());
  PEM_write_bio_PrivateKey(bio, out->key, nullptr, nullptr, 0, nullptr, nullptr);
  PEM_write_bio_X509(bio, x);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  out->pem.assign(data, len);
  BIO_free(bio);
  unsigned char* der = nullptr;
  int der_len = i2d_X509(x, &der);
  out->der.assign(reinterpret_cast<char*>(der), der_len);
  OPENSSL_free(der);
  X509_free(x);
}

std::string FromBase64Url(std::string s) {
  for (char& c : s) c = c == '-' ? '+' : c == '_' ? '/' : c;
  while (s.size() % 4) s += '=';
  auto d = Base64Decode(s);
  return d.ok() ? *d : "";
}

std::string B64Url(std::string_view bytes) {
  std::string s = Base64Encode(bytes);
  for (char& c : s) c = c == '+' ? '-' : c == '/' ? '_' : c;
  while (!s.empty() && s.back() == '=') s.pop_back();
  return s;
}

TEST(AzureClientAssertionTest, SignedRs256WithThumbprintsAndClaims) {
  TestCert cert;
  MakeTestCert(&cert);
  std::time_t now = 1'800'000'000;
  const std::string aud = "https://127.0.0.1:1/tenant/oauth2/v2.0/token";
  auto jwt = MakeAzureClientAssertion(cert.pem, "", "client-1", aud, now);
  ASSERT_TRUE(jwt.ok()) << jwt.status().ToString();
  size_t d1 = jwt->find('.'), d2 = jwt->rfind('.');
  ASSERT_NE(d1, d2);
  json header = json::parse(FromBase64Url(jwt->substr(0, d1)), nullptr, false);
  json claims = json::parse(FromBase64Url(jwt->substr(d1 + 1, d2 - d1 - 1)), nullptr, false);
  ASSERT_TRUE(header.is_object());
  ASSERT_TRUE(claims.is_object());
  EXPECT_EQ(header["alg"], "RS256");
  unsigned char sha1[20];
  EVP_Digest(cert.der.data(), cert.der.size(), sha1, nullptr, EVP_sha1(), nullptr);
  EXPECT_EQ(header["x5t"], B64Url(std::string_view(reinterpret_cast<char*>(sha1), 20)));
  EXPECT_EQ(claims["aud"], aud);
  EXPECT_EQ(claims["iss"], "client-1");
  EXPECT_EQ(claims["sub"], "client-1");
  EXPECT_EQ(claims["nbf"], now);
  EXPECT_EQ(claims["exp"], now + 600);
  EXPECT_TRUE(claims["jti"].is_string());

  // The signature verifies with the certificate's public key...
  std::string input = jwt->substr(0, d2);
  std::string sig = FromBase64Url(jwt->substr(d2 + 1));
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  ASSERT_EQ(EVP_DigestVerifyInit(ctx, nullptr, EVP_sha256(), nullptr, cert.key), 1);
  EXPECT_EQ(EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                             reinterpret_cast<const unsigned char*>(input.data()), input.size()),
            1);
  // ...and not over tampered claims.
  std::string tampered = input;
  tampered.back() = tampered.back() == 'A' ? 'B' : 'A';
  ASSERT_EQ(EVP_DigestVerifyInit(ctx, nullptr, EVP_sha256(), nullptr, cert.key), 1);
  EXPECT_NE(
      EVP_DigestVerify(ctx, reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                       reinterpret_cast<const unsigned char*>(tampered.data()), tampered.size()),
      1);
  EVP_MD_CTX_free(ctx);

  // Two assertions differ (jti), so a replayed one is recognisable.
  auto again = MakeAzureClientAssertion(cert.pem, "", "client-1", aud, now);
  ASSERT_TRUE(again.ok());
  EXPECT_NE(*again, *jwt);
}

TEST(AzureClientAssertionTest, EncryptedKeyNeedsItsPasswordAndNeverPrompts) {
  TestCert cert;
  MakeTestCert(&cert);
  BIO* bio = BIO_new(BIO_s_mem());
  const char* password = "pem-pass";
  ASSERT_EQ(PEM_write_bio_PKCS8PrivateKey(bio, cert.key, EVP_aes_256_cbc(), nullptr, 0, nullptr,
                                          const_cast<char*>(password)),
            1);
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  std::string pem(data, len);
  BIO_free(bio);
  pem += cert.pem.substr(cert.pem.find("-----BEGIN CERTIFICATE"));
  EXPECT_TRUE(MakeAzureClientAssertion(pem, password, "c", "a", 1).ok());
  EXPECT_FALSE(MakeAzureClientAssertion(pem, "wrong", "c", "a", 1).ok());
  EXPECT_FALSE(MakeAzureClientAssertion(pem, "", "c", "a", 1).ok());  // no terminal prompt
}

TEST(AzureClientAssertionTest, RefusesPemsWithoutKeyOrCertificate) {
  TestCert cert;
  MakeTestCert(&cert);
  std::string key_only = cert.pem.substr(0, cert.pem.find("-----BEGIN CERTIFICATE"));
  std::string cert_only = cert.pem.substr(cert.pem.find("-----BEGIN CERTIFICATE"));
  EXPECT_FALSE(MakeAzureClientAssertion(key_only, "", "c", "a", 1).ok());
  EXPECT_FALSE(MakeAzureClientAssertion(cert_only, "", "c", "a", 1).ok());
  EXPECT_FALSE(MakeAzureClientAssertion("garbage", "", "c", "a", 1).ok());
  TestCert other;
  MakeTestCert(&other);
  std::string mismatched = key_only + other.pem.substr(other.pem.find("-----BEGIN CERTIFICATE"));
  EXPECT_FALSE(MakeAzureClientAssertion(mismatched, "", "c", "a", 1).ok());
}

// ---- the chain's precedence ----------------------------------------------------------

using Link = AzureCredentialProvider::Link;

Link LinkFor(std::map<std::string, std::string> vars) {
  auto p = AzureCredentialProvider::FromEnvironment(MapEnv(std::move(vars)));
  EXPECT_TRUE(p.ok()) << p.status().ToString();
  return p.ok() ? (*p)->link() : Link::kNone;
}

TEST(AzureCredentialChainTest, FollowsDefaultAzureCredentialOrder) {
  std::map<std::string, std::string> sp = {{"AZURE_TENANT_ID", "t"}, {"AZURE_CLIENT_ID", "c"}};
  auto with = [&](std::map<std::string, std::string> more) {
    auto all = sp;
    all.insert(more.begin(), more.end());
    return all;
  };
  EXPECT_EQ(LinkFor(with({{"AZURE_CLIENT_SECRET", "s"}})), Link::kClientSecret);
  EXPECT_EQ(LinkFor(with({{"AZURE_CLIENT_CERTIFICATE_PATH", "/c.pem"}})), Link::kClientCertificate);
  // The secret wins over the certificate (EnvironmentCredential's order).
  EXPECT_EQ(LinkFor(with({{"AZURE_CLIENT_SECRET", "s"}, {"AZURE_CLIENT_CERTIFICATE_PATH", "/c"}})),
            Link::kClientSecret);
  // Environment beats workload identity beats managed identity.
  EXPECT_EQ(LinkFor(with({{"AZURE_CLIENT_SECRET", "s"},
                          {"AZURE_FEDERATED_TOKEN_FILE", "/f"},
                          {"IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi"},
                          {"IDENTITY_HEADER", "h"}})),
            Link::kClientSecret);
  EXPECT_EQ(LinkFor(with({{"AZURE_FEDERATED_TOKEN_FILE", "/f"},
                          {"IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi"},
                          {"IDENTITY_HEADER", "h"}})),
            Link::kWorkloadIdentity);
  // Workload identity needs all three; otherwise managed identity (AZURE_CLIENT_ID: user-assigned).
  EXPECT_EQ(LinkFor({{"AZURE_CLIENT_ID", "c"}, {"AZURE_FEDERATED_TOKEN_FILE", "/f"}}), Link::kImds);
  EXPECT_EQ(LinkFor({{"AZURE_CLIENT_SECRET", "s"}, {"AZURE_CLIENT_ID", "c"}}), Link::kImds);
  EXPECT_EQ(LinkFor({{"IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi"}, {"IDENTITY_HEADER", "h"}}),
            Link::kAppService);
  EXPECT_EQ(LinkFor({{"IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi"}}), Link::kImds);
  EXPECT_EQ(LinkFor({}), Link::kImds);
}

TEST(AzureCredentialChainTest, AzureTokenCredentialsNarrowsTheChain) {
  std::map<std::string, std::string> all = {{"AZURE_TENANT_ID", "t"},
                                            {"AZURE_CLIENT_ID", "c"},
                                            {"AZURE_CLIENT_SECRET", "s"},
                                            {"AZURE_FEDERATED_TOKEN_FILE", "/f"},
                                            {"IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi"},
                                            {"IDENTITY_HEADER", "h"}};
  auto with = [&](const char* value) {
    auto v = all;
    v["AZURE_TOKEN_CREDENTIALS"] = value;
    return v;
  };
  EXPECT_EQ(LinkFor(with("prod")), Link::kClientSecret);
  EXPECT_EQ(LinkFor(with(" WorkloadIdentityCredential ")), Link::kWorkloadIdentity);
  EXPECT_EQ(LinkFor(with("managedidentitycredential")), Link::kAppService);
  auto only_env = with("EnvironmentCredential");
  only_env.erase("AZURE_CLIENT_SECRET");
  EXPECT_EQ(LinkFor(only_env), Link::kNone);  // nothing else may be used
  EXPECT_FALSE(AzureCredentialProvider::FromEnvironment(MapEnv(with("dev"))).ok());
  EXPECT_FALSE(AzureCredentialProvider::FromEnvironment(MapEnv(with("AzureCliCredential"))).ok());
  EXPECT_FALSE(AzureCredentialProvider::FromEnvironment(MapEnv(with("bogus"))).ok());
}

TEST(AzureCredentialChainTest, UnsupportedOrMalformedConfigurationIsAnError) {
  auto bad = [](std::map<std::string, std::string> vars) {
    return !AzureCredentialProvider::FromEnvironment(MapEnv(std::move(vars))).ok();
  };
  EXPECT_TRUE(
      bad({{"AZURE_TENANT_ID", "t/../x"}, {"AZURE_CLIENT_ID", "c"}, {"AZURE_CLIENT_SECRET", "s"}}));
  EXPECT_TRUE(bad({{"AZURE_TENANT_ID", "t"},
                   {"AZURE_CLIENT_ID", "c"},
                   {"AZURE_CLIENT_SECRET", "s"},
                   {"AZURE_AUTHORITY_HOST", "http://login.example"}}));
  EXPECT_TRUE(bad({{"AZURE_TENANT_ID", "t"},
                   {"AZURE_CLIENT_ID", "c"},
                   {"AZURE_USERNAME", "u"},
                   {"AZURE_PASSWORD", "p"}}));
  EXPECT_TRUE(bad({{"IDENTITY_ENDPOINT", "https://x"},
                   {"IDENTITY_HEADER", "h"},
                   {"IDENTITY_SERVER_THUMBPRINT", "t"}}));
  EXPECT_TRUE(bad({{"MSI_ENDPOINT", "http://x"}}));
  EXPECT_TRUE(bad({{"IDENTITY_ENDPOINT", "http://x"}, {"IMDS_ENDPOINT", "http://y"}}));
  EXPECT_TRUE(bad({{"AZURE_POD_IDENTITY_AUTHORITY_HOST", "not a url"}}));
}

TEST(AzureCredentialChainTest, SourceNamesTheLinkButNoSecret) {
  auto p = AzureCredentialProvider::FromEnvironment(
      MapEnv({{"AZURE_TENANT_ID", "tenant-9"},
              {"AZURE_CLIENT_ID", "client-9"},
              {"AZURE_CLIENT_SECRET", "VERY-SECRET-VALUE"}}));
  ASSERT_TRUE(p.ok());
  std::string source = (*p)->Source();
  EXPECT_NE(source.find("environment (client secret)"), std::string::npos);
  EXPECT_NE(source.find("client-9"), std::string::npos);
  EXPECT_NE(source.find("tenant-9"), std::string::npos);
  EXPECT_EQ(source.find("VERY-SECRET"), std::string::npos);
  auto app = AzureCredentialProvider::FromEnvironment(MapEnv(
      {{"IDENTITY_ENDPOINT", "http://127.0.0.1:1/msi"}, {"IDENTITY_HEADER", "HEADER-SECRET"}}));
  ASSERT_TRUE(app.ok());
  EXPECT_EQ((*app)->Source().find("HEADER-SECRET"), std::string::npos);
}

int ClosedPort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  close(fd);  // nothing listens there now
  return port;
}

TEST(AzureCredentialChainTest, NoImdsMeansNothingFoundAndIsRemembered) {
  std::string host = "http://127.0.0.1:" + std::to_string(ClosedPort());
  auto p = AzureCredentialProvider::FromEnvironment(
      MapEnv({{"AZURE_POD_IDENTITY_AUTHORITY_HOST", host}}));
  ASSERT_TRUE(p.ok());
  auto token = (*p)->Get();
  ASSERT_FALSE(token.ok());
  EXPECT_EQ(token.status().code(), StatusCode::kNotFound);
  std::string tried = (*p)->Tried();
  EXPECT_NE(tried.find("environment"), std::string::npos) << tried;
  EXPECT_NE(tried.find("workload identity"), std::string::npos) << tried;
  EXPECT_NE(tried.find("managed identity"), std::string::npos) << tried;
  EXPECT_EQ((*p)->Get().status().code(), StatusCode::kNotFound);  // no second probe needed
}

TEST(AzureCredentialChainTest, ConfiguredLinkThatFailsIsAnErrorNotNothingFound) {
  std::string host = "https://127.0.0.1:" + std::to_string(ClosedPort());
  auto p = AzureCredentialProvider::FromEnvironment(MapEnv({{"AZURE_TENANT_ID", "t"},
                                                            {"AZURE_CLIENT_ID", "c"},
                                                            {"AZURE_CLIENT_SECRET", "SECRET-XYZ"},
                                                            {"AZURE_AUTHORITY_HOST", host}}));
  ASSERT_TRUE(p.ok());
  auto token = (*p)->Get();
  ASSERT_FALSE(token.ok());
  EXPECT_NE(token.status().code(), StatusCode::kNotFound);
  EXPECT_NE(token.status().message().find("environment (client secret)"), std::string::npos);
  EXPECT_NE(token.status().message().find("/t/oauth2/v2.0/token"), std::string::npos)
      << token.status().message();
  EXPECT_EQ(token.status().message().find("SECRET-XYZ"), std::string::npos);
}

}  // namespace
}  // namespace mx::cloud
