#include "cloud/token_cache.h"

#include <gtest/gtest.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include <cstdlib>
#include <fstream>
#include <memory>

#include "cloud/jwt.h"
#include "common/hash.h"

namespace mx::cloud {
namespace {

TEST(TokenCacheTest, FetchesOnceWhileValidAndRefreshesNearExpiry) {
  int fetches = 0;
  std::time_t expiry = std::time(nullptr) + 3600;
  TokenCache<std::string> cache([&]() -> Result<Expiring<std::string>> {
    ++fetches;
    return Expiring<std::string>{"t" + std::to_string(fetches), expiry};
  });
  EXPECT_EQ(*cache.Get(), "t1");
  EXPECT_EQ(*cache.Get(), "t1");
  EXPECT_EQ(fetches, 1);
  expiry = std::time(nullptr) + 60;  // the next token is inside the refresh margin
  cache.Invalidate();
  EXPECT_EQ(*cache.Get(), "t2");
  EXPECT_EQ(*cache.Get(), "t3");  // within kRefreshMargin of expiry: fetched again
}

TEST(TokenCacheTest, KeepsAStillValidTokenWhenRefreshFails) {
  int calls = 0;
  TokenCache<std::string> cache([&]() -> Result<Expiring<std::string>> {
    if (++calls == 1) return Expiring<std::string>{"old", std::time(nullptr) + 120};
    return Status::Unavailable("token endpoint down");
  });
  EXPECT_EQ(*cache.Get(), "old");
  EXPECT_EQ(*cache.Get(), "old");  // refresh failed, the old one still works for 2 min
  cache.Invalidate();
  EXPECT_FALSE(cache.Get().ok());  // invalidated: nothing to fall back on
}

TEST(TokenCacheTest, ParsesIso8601Utc) {
  EXPECT_EQ(*ParseIso8601Utc("1970-01-01T00:01:00Z"), 60);
  EXPECT_EQ(*ParseIso8601Utc("2026-11-30T23:00:00.123Z"), *ParseIso8601Utc("2026-11-30T23:00:00Z"));
  EXPECT_EQ(*ParseIso8601Utc("2026-11-30T23:00:00+00:00"), 1796079600);
  EXPECT_FALSE(ParseIso8601Utc("2026-11-30T23:00:00+02:00").ok());
  EXPECT_FALSE(ParseIso8601Utc("yesterday").ok());
  EXPECT_FALSE(ParseIso8601Utc("2026-13-30T23:00:00Z").ok());
}

TEST(TokenCacheTest, FormEncodeAndTokenFiles) {
  EXPECT_EQ(FormEncode({{"grant_type", "client_credentials"}, {"scope", "a b/.default"}}),
            "grant_type=client_credentials&scope=a%20b%2F.default");
  std::string path = ::testing::TempDir() + "/mx-token-file";
  { std::ofstream(path) << "  abc.def\n"; }
  EXPECT_EQ(*ReadTokenFile(path, "AWS_WEB_IDENTITY_TOKEN_FILE"), "abc.def");
  { std::ofstream(path) << "\n"; }
  Result<std::string> empty = ReadTokenFile(path, "AWS_WEB_IDENTITY_TOKEN_FILE");
  ASSERT_FALSE(empty.ok());
  EXPECT_NE(empty.status().message().find("AWS_WEB_IDENTITY_TOKEN_FILE"), std::string::npos);
  EXPECT_FALSE(ReadTokenFile(path + ".missing", "X").ok());
}

std::string FromBase64Url(std::string s) {
  for (char& c : s) c = c == '-' ? '+' : c == '_' ? '/' : c;
  while (s.size() % 4) s += '=';
  std::string out(s.size(), '\0');
  int n = EVP_DecodeBlock(reinterpret_cast<unsigned char*>(out.data()),
                          reinterpret_cast<const unsigned char*>(s.data()), s.size());
  out.resize(n - (s.size() - s.find_last_not_of('=') - 1));
  return out;
}

TEST(JwtTest, SignsRs256ThatThePublicKeyVerifies) {
  std::unique_ptr<EVP_PKEY, decltype(&EVP_PKEY_free)> key(EVP_RSA_gen(2048), EVP_PKEY_free);
  ASSERT_TRUE(key);
  std::unique_ptr<BIO, decltype(&BIO_free)> bio(BIO_new(BIO_s_mem()), BIO_free);
  ASSERT_EQ(PEM_write_bio_PrivateKey(bio.get(), key.get(), nullptr, nullptr, 0, nullptr, nullptr),
            1);
  char* data = nullptr;
  long size = BIO_get_mem_data(bio.get(), &data);
  std::string pem(data, static_cast<size_t>(size));

  Result<std::string> jwt = MakeJwtRs256(R"({"alg":"RS256"})", R"({"iss":"a"})", pem);
  ASSERT_TRUE(jwt.ok()) << jwt.status().message();
  size_t d1 = jwt->find('.'), d2 = jwt->rfind('.');
  EXPECT_EQ(FromBase64Url(jwt->substr(0, d1)), R"({"alg":"RS256"})");
  EXPECT_EQ(FromBase64Url(jwt->substr(d1 + 1, d2 - d1 - 1)), R"({"iss":"a"})");
  EXPECT_EQ(jwt->find_first_of("+/="), std::string::npos);  // base64url, unpadded
  std::string signed_part = jwt->substr(0, d2), sig = FromBase64Url(jwt->substr(d2 + 1));
  std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), EVP_MD_CTX_free);
  ASSERT_EQ(EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()), 1);
  EXPECT_EQ(EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()),
                             sig.size(), reinterpret_cast<const unsigned char*>(signed_part.data()),
                             signed_part.size()),
            1);
  // Another claim set does not verify with this signature.
  std::string forged = Base64Url(R"({"alg":"RS256"})") + "." + Base64Url(R"({"iss":"b"})");
  ASSERT_EQ(EVP_DigestVerifyInit(ctx.get(), nullptr, EVP_sha256(), nullptr, key.get()), 1);
  EXPECT_NE(
      EVP_DigestVerify(ctx.get(), reinterpret_cast<const unsigned char*>(sig.data()), sig.size(),
                       reinterpret_cast<const unsigned char*>(forged.data()), forged.size()),
      1);
}

TEST(JwtTest, RefusesWhatIsNotAnRsaKeyWithoutQuotingIt) {
  Result<std::string> jwt = MakeJwtRs256("{}", "{}", "-----BEGIN PRIVATE KEY-----\nSECRETBITS\n");
  ASSERT_FALSE(jwt.ok());
  EXPECT_EQ(jwt.status().message().find("SECRETBITS"), std::string::npos);
}

}  // namespace
}  // namespace mx::cloud
