#include "http/http.h"

#include <gtest/gtest.h>

#include "http/range_engine.h"

namespace mx::http {
namespace {

TEST(HttpTest, SplitIntoChunksAlignsToChunkSize) {
  auto r = SplitIntoChunks(5, 25, 10);
  ASSERT_EQ(r.size(), 3u);
  EXPECT_EQ(r[0].begin, 5u);
  EXPECT_EQ(r[0].end, 10u);
  EXPECT_EQ(r[1].begin, 10u);
  EXPECT_EQ(r[1].end, 20u);
  EXPECT_EQ(r[2].end, 25u);
  EXPECT_TRUE(SplitIntoChunks(7, 7, 10).empty());
}

TEST(HttpTest, RetryAfterAndBackoff) {
  EXPECT_EQ(*ParseRetryAfter("3"), 3.0);
  EXPECT_FALSE(ParseRetryAfter("soon").has_value());
  RetryPolicy p{5, 1.0, 8.0};
  for (int attempt = 1; attempt < 8; ++attempt) {
    double s = BackoffSeconds(attempt, p, std::nullopt);
    EXPECT_LE(s, 8.0);
    EXPECT_GE(s, 0.5 * std::min(8.0, 1.0 * (1 << (attempt - 1))));
  }
  EXPECT_EQ(BackoffSeconds(1, p, 2.5), 2.5);
  EXPECT_TRUE(IsRetryableStatus(429));
  EXPECT_TRUE(IsRetryableStatus(503));
  EXPECT_FALSE(IsRetryableStatus(404));
}

TEST(HttpTest, UrlHelpers) {
  EXPECT_EQ(UrlQuote("refs/pr/1"), "refs%2Fpr%2F1");
  EXPECT_EQ(UrlQuote("a b/c.txt", "/"), "a%20b/c.txt");
  EXPECT_EQ(OriginOf("HTTP://Example.com/x"), "http://example.com:80");
  EXPECT_EQ(OriginOf("https://h:8443/x?y"), "https://h:8443");
  EXPECT_EQ(ResolveUrl("http://a:1/x/y?q", "/api/z"), "http://a:1/api/z");
  EXPECT_EQ(ResolveUrl("http://a:1/x/y", "http://b:2/c"), "http://b:2/c");
}

TEST(HttpTest, SameOriginForCredentials) {
  EXPECT_TRUE(IsSameHttpOrigin("http://127.0.0.1:8/api/a", "HTTP://127.0.0.1:8/api/b?c=1"));
  EXPECT_TRUE(IsSameHttpOrigin("https://hub.example/x", "https://hub.example:443/y"));
  EXPECT_FALSE(IsSameHttpOrigin("http://127.0.0.1:8/a", "http://127.0.0.2:8/a"));   // host
  EXPECT_FALSE(IsSameHttpOrigin("http://127.0.0.1:8/a", "http://127.0.0.1:9/a"));   // port
  EXPECT_FALSE(IsSameHttpOrigin("https://hub.example/a", "http://hub.example/a"));  // scheme
  EXPECT_FALSE(IsSameHttpOrigin("http://hub.example/a", "http://hub.example.evil/a"));
  EXPECT_FALSE(IsSameHttpOrigin("http://hub.example/a", "http://hub.example@evil/a"));
  EXPECT_FALSE(IsSameHttpOrigin("ftp://h/a", "ftp://h/b"));  // only http(s)
  EXPECT_FALSE(IsSameHttpOrigin("file:///etc/passwd", "file:///etc/passwd"));
  EXPECT_FALSE(IsSameHttpOrigin("", ""));
}

TEST(HttpTest, PercentEncoderIsUppercaseRfc3986) {
  EXPECT_EQ(UrlQuote(std::string("\xff\x00~-._", 6)), "%FF%00~-._");
  EXPECT_EQ(UrlQuote("a=b&c"), "a%3Db%26c");
  EXPECT_EQ(UrlQuote("a=b", "="), "a=b");
}

TEST(HttpTest, OnlyHttpAndHttpsAreSpoken) {
  // file:// would read local files (file:///dev/zero until bad_alloc) and gopher:// would
  // write raw bytes to local services: libcurl must refuse both before connecting.
  for (const char* url : {"file:///etc/hostname", "gopher://127.0.0.1:1/_FLUSHALL",
                          "dict://127.0.0.1:1/x", "ftp://127.0.0.1:1/x"}) {
    Request req;
    req.url = url;
    auto r = Fetch(req, RetryPolicy{1, 0.0, 0.0});
    EXPECT_FALSE(r.ok()) << url;
    if (!r.ok()) {
      EXPECT_NE(r.status().message().find("not supported or disabled"), std::string::npos)
          << url << ": " << r.status().message();
    }
  }
}

TEST(HttpTest, StorageCredentialHeadersAreRecognised) {
  EXPECT_TRUE(CarriesStorageCredentials({"X-Amz-Security-Token: t"}));
  EXPECT_TRUE(CarriesStorageCredentials({"Authorization: a", "x-amz-date: d"}));
  EXPECT_TRUE(CarriesStorageCredentials({"x-ms-version: v"}));
  EXPECT_TRUE(CarriesStorageCredentials({"X-Goog-User-Project: p"}));
  EXPECT_FALSE(CarriesStorageCredentials({"Authorization: Bearer hf_x", "Range: bytes=0-0"}));
  EXPECT_FALSE(CarriesStorageCredentials({}));
}

}  // namespace
}  // namespace mx::http
