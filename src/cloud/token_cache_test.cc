#include "cloud/token_cache.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>

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

}  // namespace
}  // namespace mx::cloud
